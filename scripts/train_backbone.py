#!/usr/bin/env python
"""Train emoadapt's own FER2013 emotion backbone on CPU and export it to TFLite.

    # time a design (no checkpoint written)
    python -m scripts.train_backbone --probe-steps 200
    # full run, resumable (re-running the same command continues from the last epoch)
    nice -n 5 python -m scripts.train_backbone --epochs 24 --workdir runs/backbone
    # export the best checkpoint (by public-test accuracy) and register it in models/manifest.json
    python -m scripts.train_backbone --export-only --workdir runs/backbone
    # face-pretrained path: faceres (VGGFace2 MobileNet) at 96x96, blocks 12-13 + new head
    # trained on cached activations of the frozen blocks below (see scripts/face_backbone.py)
    nice -n 15 python -m scripts.train_backbone --arch faceres --input-size 96 --unfreeze-from 12 \
        --labels ferplus-soft --epochs 8 --lr 1e-3 --weight-decay 1e-4 --workdir runs/faceres96_u12_soft
    python -m scripts.train_backbone --arch faceres --export-only --workdir runs/faceres96_u12_soft
    # (re)choose the runtime's flip-TTA setting of the shipped files on the public test
    python -m scripts.train_backbone --choose-tta

Data: ``fer2013.npz`` (``$EMOADAPT_DATA`` or ``../shared/data``): ``x_train``/``y_train`` to
train, ``x_public_test`` for early stopping and model choice, ``x_private_test`` only for the
final figure printed by the export step.

Network: a compact VGG-style CNN with BatchNorm (3x3 convs, widths 32-64-128-256, max-pool
between stages), global average pooling, a 256-d hidden layer (the ``features`` output) and a
7-way softmax. It trains on 44x44 crops taken by a random affine warp of the 48x48 face
(flip, rotation +-10 deg, scale +-10 %, shift +-10 %) plus brightness/contrast jitter and
random erasing; the exported model takes the full 48x48 face and centre-crops it inside.
Class imbalance: per-sample weights (n_max / n_c) ** 0.5 (normalized to mean 1) and label
smoothing 0.1. Optimizer: SGD + Nesterov, one-cycle LR (linear warm-up, cosine decay),
decoupled weight decay. Every epoch writes a checkpoint (weights, optimizer state, epoch,
RNG state, history) to ``--workdir``; shuffling and augmentation use stateless RNG seeded by
(seed, epoch, step), so a resumed run is identical to an uninterrupted one.

Exported contract (``models/emoadapt_fer_f32.tflite`` and the dynamic-range quantized
``models/emoadapt_fer_int8.tflite``): input float32 ``(N, 48, 48, 1)`` raw gray 0..255
(normalization is the model's first layer; N is dynamic), signature ``serving_default`` with
two outputs ``probs`` (N, 7) softmax in FER2013 class order and ``features`` (N, 256).

Needs the ``build`` extra (TensorFlow + tf-keras); the runtime never imports this.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("train_backbone")


from scripts._common import data_dir  # noqa: E402 - $EMOADAPT_DATA or ../shared/data
from scripts.backbone_common import (  # noqa: E402 - the network, data, export and TTA helpers (shared with face_backbone)
    CLASSES,
    FEAT_DIM,
    IMG,
    build_core,
    build_export,
    choose_tta,
    end_epoch,
    epochs_to_run,
    fer_input_spec,
    init_from_tflite,
    load_fer,
    recalibrate_bn,
    run_tflite,
    setup_tf,
    tflite_outputs,
    time_tflite,
    write_tflite,
)

# ----------------------------------------------------------------------------------- model


# ------------------------------------------------------------------------ weight averaging


def average(args) -> int:
    """``--average SRC [SRC ...]``: the mean of the weights of several checkpoints of one
    architecture (checkpoint prefixes such as ``DIR/ckpt/ckpt-12`` or ``DIR/best/weights``, or
    exported float32 ``.tflite`` files, rebuilt with ``--seed``), BatchNorm statistics
    recalibrated on training faces, written to ``--workdir/best`` so that ``--export-only``
    exports it. Weight averaging of points on one training trajectory (stochastic weight
    averaging) costs nothing at inference. The configuration (architecture, training history)
    is taken from ``--config-from`` (default: the workdir of the first checkpoint source)."""
    tf, keras = setup_tf(args.threads)
    srcs = [str(s) for s in args.average]
    cfg_dir = Path(args.config_from) if args.config_from else next((Path(s).parent.parent for s in srcs if not s.endswith(".tflite")), None)
    if cfg_dir is None:
        raise SystemExit("--config-from is needed when every source is a .tflite file")
    cfg = json.loads((cfg_dir / "config.json").read_text())
    widths = [int(v) for v in cfg["widths"].split(",")]
    convs = [int(v) for v in cfg["convs"].split(",")]
    crop = int(cfg["crop"])
    d = load_fer()
    xpu, ypu = d["x_public_test"], d["y_public_test"].astype(np.int64)
    cores, members = [], []
    for s in srcs:
        core = build_core(tf, keras, widths, convs, crop, cfg["mean"], cfg["std"], cfg["dropout"])
        if s.endswith(".tflite"):
            info = init_from_tflite(tf, core, Path(s), d["x_train"], crop, seed=args.seed)
            src = {"file": Path(s).name, "sha256": info["sha256"], "rebuilt_with_seed": args.seed}
        else:
            tf.train.Checkpoint(model=core).read(s).expect_partial()
            src = {"checkpoint": s}
        acc, _, _ = evaluate(tf, core, xpu, ypu, crop=crop)
        acc_tta, _, _ = evaluate(tf, core, xpu, ypu, tta=True, crop=crop)
        src.update(public_acc=round(acc, 4), public_acc_flip_tta=round(acc_tta, 4))
        log.info("member %s: public acc %.4f (tta %.4f)", s, acc, acc_tta)
        cores.append(core)
        members.append(src)
    avg = build_core(tf, keras, widths, convs, crop, cfg["mean"], cfg["std"], cfg["dropout"])
    avg.set_weights([np.mean([c.get_weights()[i] for c in cores], axis=0) for i in range(len(avg.get_weights()))])
    recalibrate_bn(tf, keras, avg, d["x_train"], crop, seed=args.seed)
    acc, _, _ = evaluate(tf, avg, xpu, ypu, crop=crop)
    acc_tta, _, _ = evaluate(tf, avg, xpu, ypu, tta=True, crop=crop)
    log.info("average of %d: public acc %.4f (tta %.4f)", len(cores), acc, acc_tta)
    wd = Path(args.workdir)
    (wd / "best").mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(model=avg).write(str(wd / "best" / "weights"))
    hist = json.loads((cfg_dir / "history.json").read_text())
    (wd / "history.json").write_text(json.dumps(hist) + "\n")
    best_epoch = max(int(h["epoch"]) for h in hist["epochs"]) if hist["epochs"] else 0
    (wd / "best" / "meta.json").write_text(json.dumps({"epoch": best_epoch, "public_acc": acc}) + "\n")
    cfg["weight_average"] = {
        "how": f"mean of the members' weights, BatchNorm statistics recalibrated on 8192 training faces (seed {args.seed})",
        "members": members,
        "public_acc": round(acc, 4),
        "public_acc_flip_tta": round(acc_tta, 4),
    }
    (wd / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(json.dumps(cfg["weight_average"], indent=2))
    return 0


# ------------------------------------------------------------------------------ augmentation
def make_augment(tf, crop, erase_p, strength=1.0):
    """Vectorized batch augmentation with stateless RNG: (x uint8 (B,48,48), seed[2]).

    ``strength`` scales the ranges of rotation, scale, shift, brightness and contrast."""
    pi = np.float32(np.pi)
    k = float(strength)

    def augment(x, seed):
        b = tf.shape(x)[0]
        x = tf.cast(x, tf.float32)[..., None]
        seeds = tf.random.experimental.stateless_split(seed, 12)

        def u(i, lo, hi, shape=None):
            return tf.random.stateless_uniform(shape if shape is not None else [b], seeds[i], lo, hi)

        ang = u(0, -10.0 * k, 10.0 * k) * pi / 180.0
        scale = u(1, 1.0 - 0.1 * k, 1.0 + 0.1 * k)
        tx = u(2, -0.1 * k, 0.1 * k) * IMG
        ty = u(3, -0.1 * k, 0.1 * k) * IMG
        flip = tf.where(u(4, 0.0, 1.0) < 0.5, -1.0, 1.0)
        # output pixel (x, y) -> input pixel: R(ang)/scale * diag(flip,1) * (out - c_out) + c_in + t
        cos, sin = tf.cos(ang) / scale, tf.sin(ang) / scale
        co, ci = (crop - 1) / 2.0, (IMG - 1) / 2.0
        a0, a1 = cos * flip, -sin
        b0, b1 = sin * flip, cos
        a2 = ci + tx - a0 * co - a1 * co
        b2 = ci + ty - b0 * co - b1 * co
        z = tf.zeros_like(a0)
        mats = tf.stack([a0, a1, a2, b0, b1, b2, z, z], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=mats, output_shape=tf.constant([crop, crop]), fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT"
        )
        # brightness / contrast
        mu = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        con = tf.reshape(u(5, 1.0 - 0.25 * k, 1.0 + 0.25 * k), [-1, 1, 1, 1])
        bri = tf.reshape(u(6, -25.0 * k, 25.0 * k), [-1, 1, 1, 1])
        x = tf.clip_by_value((x - mu) * con + mu + bri, 0.0, 255.0)
        # random erasing: one rectangle, 2-15 % of the area, aspect 0.4-2.5, filled with noise
        area = u(7, 0.02, 0.15) * crop * crop
        asp = tf.exp(u(8, np.log(0.4), np.log(2.5)))
        eh = tf.clip_by_value(tf.sqrt(area * asp), 1.0, crop - 1.0)
        ew = tf.clip_by_value(tf.sqrt(area / asp), 1.0, crop - 1.0)
        ey = u(9, 0.0, 1.0) * (crop - eh)
        ex = u(10, 0.0, 1.0) * (crop - ew)
        on = tf.cast(u(11, 0.0, 1.0, [b, 2])[:, 0] < erase_p, tf.float32)
        r = tf.range(crop, dtype=tf.float32)
        my = tf.cast((r[None, :] >= ey[:, None]) & (r[None, :] < (ey + eh)[:, None]), tf.float32)
        mx = tf.cast((r[None, :] >= ex[:, None]) & (r[None, :] < (ex + ew)[:, None]), tf.float32)
        mask = (my[:, :, None] * mx[:, None, :] * on[:, None, None])[..., None]
        noise = tf.random.stateless_uniform(tf.shape(x), seeds[11], 0.0, 255.0)
        x = x * (1.0 - mask) + noise * mask
        return x

    return augment


# ------------------------------------------------------------------------- warm start (tflite)


# ----------------------------------------------------------------------------------- training


def class_weights(y: np.ndarray, power: float) -> np.ndarray:
    n = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    w = (n.max() / n) ** power
    w /= (w[y]).mean()  # mean sample weight 1
    return w.astype(np.float32)


class OneCycle:
    """Linear warm-up from lr/25 to lr, then cosine decay to lr/1000, per optimizer step."""

    def __new__(cls, tf, keras, peak, warmup, total):
        class _S(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                step = tf.cast(step, tf.float32)
                w = tf.cast(max(warmup, 1), tf.float32)
                t = tf.cast(max(total, 1), tf.float32)
                warm = peak / 25.0 + (peak - peak / 25.0) * step / w
                prog = tf.clip_by_value((step - w) / tf.maximum(t - w, 1.0), 0.0, 1.0)
                cos = peak / 1000.0 + 0.5 * (peak - peak / 1000.0) * (1.0 + tf.cos(np.pi * prog))
                return tf.where(step < w, warm, cos)

            def get_config(self):
                return {"peak": peak, "warmup": warmup, "total": total}

        return _S()


def evaluate(tf, model, x, y, batch=500, tta=False, crop=44):
    """Accuracy (and mean CE loss) of the core model on centre crops (optionally + flip)."""
    m = (IMG - crop) // 2
    probs = []
    for i in range(0, len(x), batch):
        xb = tf.constant(x[i : i + batch, m : m + crop, m : m + crop, None].astype(np.float32))
        p = model(xb, training=False)[0].numpy()
        if tta:
            p = 0.5 * (p + model(xb[:, :, ::-1, :], training=False)[0].numpy())
        probs.append(p)
    p = np.concatenate(probs)
    acc = float((p.argmax(1) == y).mean())
    loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1)).mean())
    return acc, loss, p


def train(args) -> int:
    tf, keras = setup_tf(args.threads)
    keras.backend.experimental.enable_tf_random_generator()
    keras.utils.set_random_seed(args.seed)
    wd = Path(args.workdir)
    probe = args.probe_steps > 0
    if not probe:
        wd.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(wd / "train_events.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(fh)

    d = load_fer()
    xtr, ytr = d["x_train"], d["y_train"].astype(np.int64)
    if args.train_subset:  # for quick tests of the pipeline / resume
        sub = np.sort(np.random.default_rng(args.seed).permutation(len(xtr))[: args.train_subset])
        xtr, ytr = xtr[sub], ytr[sub]  # random: the arrays are ordered by class
    # soft targets (issue 28: FERPlus votes, or a teacher's probabilities), mixed into the labels;
    # rows without one (NaN) train on the label alone
    soft = np.full((len(d["x_train"]), len(CLASSES)), np.nan, np.float32)
    if args.soft_targets:
        with np.load(args.soft_targets, allow_pickle=False) as z:
            soft = z["train"].astype(np.float32)
        if soft.shape != (len(d["x_train"]), len(CLASSES)):
            raise SystemExit(f"--soft-targets: 'train' must be ({len(d['x_train'])}, {len(CLASSES)}), got {soft.shape}")
    if args.train_subset:
        soft = soft[sub]
    has_soft = np.isfinite(soft).all(1).astype(np.float32)
    soft = np.nan_to_num(soft)
    xva, yva = d["x_public_test"], d["y_public_test"].astype(np.int64)
    mean = float(xtr.mean() / 255.0)
    std = float(xtr.std() / 255.0)
    cw = class_weights(ytr, args.cw_power)
    log.info("class weights (power %.2f): %s", args.cw_power, np.round(cw, 3).tolist())

    widths = [int(v) for v in args.widths.split(",")]
    convs = [int(v) for v in args.convs.split(",")]
    core = build_core(tf, keras, widths, convs, args.crop, mean, std, args.dropout)
    n_params = core.count_params()
    log.info("core params: %d (%s widths, %s convs, crop %d)", n_params, widths, convs, args.crop)

    steps_per_epoch = len(xtr) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    sched = OneCycle(tf, keras, args.lr, int(args.warmup_epochs * steps_per_epoch), total_steps)
    opt = keras.optimizers.SGD(learning_rate=sched, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    opt.build(core.trainable_variables)

    epoch_var = tf.Variable(0, dtype=tf.int64, name="epoch", trainable=False)
    best_var = tf.Variable(-1.0, dtype=tf.float64, name="best_public_acc", trainable=False)
    bad_var = tf.Variable(0, dtype=tf.int64, name="epochs_since_best", trainable=False)
    rng = tf.random.Generator.from_seed(args.seed)  # master RNG (state checkpointed)
    ckpt = tf.train.Checkpoint(model=core, optimizer=opt, epoch=epoch_var, best=best_var, bad=bad_var, rng=rng)
    mgr = tf.train.CheckpointManager(ckpt, str(wd / "ckpt"), max_to_keep=2)
    best_ckpt = tf.train.Checkpoint(model=core)
    hist_path = wd / "history.json"
    history: list[dict] = []
    init_info: dict = {}
    if not probe and args.resume and mgr.latest_checkpoint:
        ckpt.restore(mgr.latest_checkpoint).assert_existing_objects_matched()
        if hist_path.exists():
            history = json.loads(hist_path.read_text())["epochs"][: int(epoch_var.numpy())]
        log.info("resumed from %s: epoch %d, best public acc %.4f", mgr.latest_checkpoint, int(epoch_var.numpy()), float(best_var.numpy()))
    elif not probe and args.init_from and not mgr.latest_checkpoint:
        # second phase (fine-tuning): start from another run's best weights, fresh optimizer
        tf.train.Checkpoint(model=core).read(str(Path(args.init_from) / "best" / "weights")).expect_partial()
        log.info("initialized weights from %s/best (fresh optimizer and schedule)", args.init_from)
    elif not probe and args.init_from_tflite and not mgr.latest_checkpoint:
        # continue from a shipped model (its checkpoints are gone): rebuild its weights
        src = init_from_tflite(tf, core, Path(args.init_from_tflite), xtr, args.crop, member=args.init_member, seed=args.seed)
        va0, _, _ = evaluate(tf, core, xva, yva, crop=args.crop)
        log.info("initialized weights from %s (sha256 %s...): public acc %.4f before training", src["file"], src["sha256"][:12], va0)
        # its manifest history now: export replaces that manifest entry
        init_info.update(src, public_acc_at_start=va0, training=_shipped_training(src["sha256"], Path(args.out_dir)))
    elif not probe and mgr.latest_checkpoint:
        log.info("--no-resume: ignoring existing checkpoints in %s (they will be overwritten)", wd)

    augment = make_augment(tf, args.crop, args.erase_p, args.aug_strength)
    ls = args.label_smoothing
    ncls = len(CLASSES)

    logits_layer = core.get_layer("logits")

    def train_step_fn(x, y, w, seed, st, ms):
        yt = tf.one_hot(y, ncls) * (1.0 - ls) + ls / ncls
        a = args.soft_weight * ms[:, None]  # 0 where a face has no soft target
        yt = (1.0 - a) * yt + a * st
        with tf.GradientTape() as tape:
            # dropout with a stateless seed (seed, epoch, step) instead of the Dropout layer's
            # own RNG, so that a resumed run draws exactly the same masks
            _, feats, _ = core(x, training=True)
            feats = tf.nn.experimental.stateless_dropout(feats, args.dropout, seed) if args.dropout else feats
            logits = logits_layer(feats)
            ce = tf.nn.softmax_cross_entropy_with_logits(yt, logits)
            loss = tf.reduce_sum(ce * w) / tf.cast(tf.shape(x)[0], tf.float32)
        grads = tape.gradient(loss, core.trainable_variables)
        opt.apply_gradients(zip(grads, core.trainable_variables))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.float32))
        return loss, acc

    train_step = tf.function(train_step_fn, jit_compile=args.jit)

    def epoch_dataset(epoch: int):
        # stateless: permutation and augmentation depend only on (seed, epoch, step)
        perm = np.random.default_rng([args.seed, epoch]).permutation(len(xtr))
        perm = perm[: steps_per_epoch * args.batch_size]
        ds = tf.data.Dataset.from_tensor_slices((xtr[perm], ytr[perm], cw[ytr[perm]], soft[perm], has_soft[perm]))
        ds = ds.batch(args.batch_size, drop_remainder=True).enumerate()

        def aug(i, batch):
            x, y, w, st, ms = batch
            seed = tf.stack([tf.constant(args.seed * 100003 + epoch, tf.int64), i])
            return augment(x, seed), y, w, tf.stack([seed[0] + 7919, i]), st, ms

        return ds.map(aug, num_parallel_calls=args.map_threads, deterministic=True).prefetch(2)

    if probe:
        ds = epoch_dataset(0)
        it = iter(ds)
        t0 = None
        warm = 5
        for s in range(args.probe_steps + warm):
            x, y, w, sd, st, ms = next(it)
            loss, acc = train_step(x, y, w, sd, st, ms)
            if s == warm - 1:
                _ = float(loss)
                t0 = time.perf_counter()
        _ = float(loss)
        dt = (time.perf_counter() - t0) / args.probe_steps
        t1 = time.perf_counter()
        evaluate(tf, core, xva, yva, crop=args.crop)
        ev = time.perf_counter() - t1
        log.info(
            "PROBE: %.4f s/step at batch %d = %.1f img/s -> %.0f s/epoch train + %.0f s eval (params %d)",
            dt,
            args.batch_size,
            args.batch_size / dt,
            dt * steps_per_epoch,
            ev,
            n_params,
        )
        print(json.dumps({"s_per_step": dt, "img_per_s": args.batch_size / dt, "s_per_epoch": dt * steps_per_epoch + ev, "params": n_params}))
        return 0

    config = {k: v for k, v in vars(args).items()}
    config.update(mean=mean, std=std, params=n_params, steps_per_epoch=steps_per_epoch, class_weights=cw.tolist())
    if init_info:
        config["init_from_tflite_info"] = init_info
    elif (wd / "config.json").exists():  # resumed: keep what the first invocation recorded
        prev = json.loads((wd / "config.json").read_text()).get("init_from_tflite_info")
        if prev:
            config["init_from_tflite_info"] = prev
    (wd / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    for epoch in epochs_to_run(args, epoch_var, bad_var):
        t0 = time.perf_counter()
        lsum = asum = 0.0
        n = 0
        for x, y, w, sd, st, ms in epoch_dataset(epoch):
            loss, acc = train_step(x, y, w, sd, st, ms)
            lsum += float(loss)
            asum += float(acc)
            n += 1
            if n % 50 == 0:
                log.info(
                    "epoch %d step %d/%d loss %.4f acc %.4f (%.2f s/step)", epoch + 1, n, steps_per_epoch, lsum / n, asum / n, (time.perf_counter() - t0) / n
                )
        t_train = time.perf_counter() - t0
        va, vl, _ = evaluate(tf, core, xva, yva, crop=args.crop)
        va_tta, _, _ = evaluate(tf, core, xva, yva, crop=args.crop, tta=True)
        lr_now = float(sched(opt.iterations))
        rec = {
            "epoch": epoch + 1,
            "lr_end": lr_now,
            "train_loss": lsum / n,
            "train_acc": asum / n,
            "public_loss": vl,
            "public_acc": va,
            "public_acc_tta": va_tta,
            "train_s": t_train,
            "epoch_s": time.perf_counter() - t0,
        }
        end_epoch(wd, epoch, rec, va, (epoch_var, best_var, bad_var), best_ckpt, mgr, history, config)
        log.info(
            "EPOCH %d/%d: train loss %.4f acc %.4f | public acc %.4f (tta %.4f) loss %.4f | best %.4f | lr %.5f | %.0f s",
            epoch + 1,
            args.epochs,
            rec["train_loss"],
            rec["train_acc"],
            va,
            va_tta,
            vl,
            float(best_var.numpy()),
            lr_now,
            rec["epoch_s"],
        )
    log.info("training done; best public acc %.4f", float(best_var.numpy()))
    if args.export_after:
        return export(args)
    return 0


# ------------------------------------------------------------------------------------ export


def choose_tta_for_shipped(args) -> int:
    """``--choose-tta``: choose and record the TTA setting of the shipped ``emoadapt_fer_*``
    files (TFLite runtime only; no TensorFlow)."""
    d = load_fer()
    path = Path(args.out_dir) / "manifest.json"
    man = json.loads(path.read_text())
    for kind in ("f32", "int8"):
        name = f"emoadapt_fer_{kind}"
        f = Path(args.out_dir) / man["models"][name]["file"]
        outs = [run_tflite(f, x)[0] for x in (d["x_public_test"], d["x_public_test"][:, :, ::-1], d["x_private_test"], d["x_private_test"][:, :, ::-1])]
        c = choose_tta(outs[0], outs[1], d["y_public_test"], outs[2], outs[3], d["y_private_test"])
        e = man["models"][name]
        e["tta"], e["tta_threshold"] = c["tta"], c["tta_threshold"]
        e["metrics"].update(c["metrics"])
        log.info(
            "%s: tta=%s threshold %.2f, private %.4f (mirrored %.1f %%), public by threshold %s",
            name,
            c["tta"],
            c["tta_threshold"],
            c["metrics"]["private_test_acc_tta_default"],
            100 * c["metrics"]["tta_mirrored_fraction_private"],
            c["metrics"]["public_test_acc_by_tta_threshold"],
        )
    from scripts.build_models import write_manifest

    write_manifest(man, path)
    return 0


#: the settings of a run's ``config.json`` that the manifest's training record repeats, in this order
RECIPE_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "cw_power",
    "dropout",
    "erase_p",
    "seed",
    "widths",
    "convs",
    "crop",
)


def _phase_summary(wd: Path) -> dict:
    """Config and public-accuracy curve of a finished run (for the manifest)."""
    cfg = json.loads((wd / "config.json").read_text())
    hist = json.loads((wd / "history.json").read_text())["epochs"]
    out = {k: cfg.get(k) for k in RECIPE_KEYS}
    out["aug_strength"] = 1.0 if cfg.get("aug_strength") is None else cfg["aug_strength"]  # 1.0: runs from before the flag existed
    out.update(
        workdir=str(wd),
        epochs_run=len(hist),
        public_acc_curve=[round(h["public_acc"], 4) for h in hist],
        mean_epoch_s_2cpu=float(np.mean([h["epoch_s"] for h in hist])),
    )
    if cfg.get("init_from"):
        out["previous_phase"] = _phase_summary(Path(cfg["init_from"]))
    return out


def _shipped_training(sha: str, models_dir: Path) -> dict:
    """The manifest's training block of the model file with this sha256 (before it is replaced):
    looked up in ``models_dir`` and in the repository's ``models/``."""
    for man in dict.fromkeys([Path(models_dir) / "manifest.json", ROOT / "models" / "manifest.json"]):
        if man.exists():
            for e in json.loads(man.read_text())["models"].values():
                if e.get("sha256") == sha and "training" in e:
                    return dict(e["training"])
    return {}


def export(args) -> int:
    tf, keras = setup_tf(args.threads)
    wd = Path(args.workdir)
    cfg = json.loads((wd / "config.json").read_text())
    widths = [int(v) for v in cfg["widths"].split(",")]
    convs = [int(v) for v in cfg["convs"].split(",")]
    crop = int(cfg["crop"])
    core = build_core(tf, keras, widths, convs, crop, cfg["mean"], cfg["std"], cfg["dropout"])
    tf.train.Checkpoint(model=core).read(str(wd / "best" / "weights")).expect_partial()
    meta = json.loads((wd / "best" / "meta.json").read_text())
    hist = json.loads((wd / "history.json").read_text())["epochs"]
    log.info("best checkpoint: epoch %d, public acc %.4f", meta["epoch"], meta["public_acc"])
    d = load_fer()
    cores, members = [core], []
    for i, path in enumerate(args.ensemble_with_tflite or []):
        # another trained network of the same architecture, from its exported float32 file
        extra = build_core(tf, keras, widths, convs, crop, cfg["mean"], cfg["std"], cfg["dropout"])
        extra._name = f"emoadapt_fer_core_{i + 1}"
        info = init_from_tflite(tf, extra, Path(path), d["x_train"], crop, seed=i)
        info["training"] = _shipped_training(info["sha256"], Path(args.out_dir))
        cores.append(extra)
        members.append(info)
        log.info("ensemble member %s (sha256 %s...)", path, info["sha256"][:12])
    model = build_export(tf, keras, cores, crop)
    feat_dim = FEAT_DIM * len(cores)

    xpu, ypu = d["x_public_test"], d["y_public_test"].astype(np.int64)
    xpr, ypr = d["x_private_test"], d["y_private_test"].astype(np.int64)

    def keras_eval(x, y):
        xb = x[..., None].astype(np.float32)
        out = model.predict(xb, batch_size=500, verbose=0)
        outf = model.predict(xb[:, :, ::-1], batch_size=500, verbose=0)
        p, ptta = out["probs"], 0.5 * (out["probs"] + outf["probs"])
        return p, out["features"], float((p.argmax(1) == y).mean()), float((ptta.argmax(1) == y).mean())

    kp_pu, _, acc_pu, acc_pu_tta = keras_eval(xpu, ypu)
    kp_pr, kf_pr, acc_pr, acc_pr_tta = keras_eval(xpr, ypr)
    log.info("keras: public %.4f (tta %.4f), private %.4f (tta %.4f)", acc_pu, acc_pu_tta, acc_pr, acc_pr_tta)

    @tf.function(input_signature=[tf.TensorSpec([None, IMG, IMG, 1], tf.float32, name="image")])
    def serve(image):
        out = model(image, training=False)
        return {"probs": out["probs"], "features": out["features"]}

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"f32": out_dir / "emoadapt_fer_f32.tflite", "int8": out_dir / "emoadapt_fer_int8.tflite"}
    write_tflite(tf, model, serve, files)

    metrics: dict[str, dict] = {}
    for kind, path in files.items():
        tp_pu, _ = run_tflite(path, xpu)
        tp_pr, tf_pr = run_tflite(path, xpr)
        tpf_pu, _ = run_tflite(path, xpu[:, :, ::-1])
        tpf_pr, _ = run_tflite(path, xpr[:, :, ::-1])
        m = {
            "public_test_acc": float((tp_pu.argmax(1) == ypu).mean()),
            "private_test_acc": float((tp_pr.argmax(1) == ypr).mean()),
            "public_test_acc_flip_tta": float(((tp_pu + tpf_pu).argmax(1) == ypu).mean()),
            "private_test_acc_flip_tta": float(((tp_pr + tpf_pr).argmax(1) == ypr).mean()),
            "probs_max_abs_diff_vs_keras": float(np.abs(tp_pr - kp_pr).max()),
            "features_max_abs_diff_vs_keras": float(np.abs(tf_pr - kf_pr).max()),
            "ms_per_face_1thread_batch1": time_tflite(path, 1, 200),
            "ms_per_face_1thread_batch32": time_tflite(path, 32, 20),
            "size_bytes": path.stat().st_size,
        }
        per_class = [float((tp_pr.argmax(1)[ypr == c] == c).mean()) for c in range(len(CLASSES))]
        m["private_test_recall_per_class"] = dict(zip(CLASSES, np.round(per_class, 4).tolist()))
        m["tta_choice"] = choose_tta(tp_pu, tpf_pu, ypu, tp_pr, tpf_pr, ypr)
        metrics[kind] = m
        log.info("%s: %s", kind, json.dumps(m))
    assert metrics["f32"]["probs_max_abs_diff_vs_keras"] < 1e-4, metrics["f32"]
    drop = acc_pr - metrics["int8"]["private_test_acc"]
    assert drop < 0.005, f"quantized accuracy drop {drop:.4f} >= 0.5 pt"

    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(files["f32"]))
    pi, fi = tflite_outputs(it)
    odet = it.get_output_details()
    summary = {
        "keras_public_test_acc": acc_pu,
        "keras_public_test_acc_flip_tta": acc_pu_tta,
        "keras_private_test_acc": acc_pr,
        "keras_private_test_acc_flip_tta": acc_pr_tta,
        "best_epoch": meta["epoch"],
        "epochs_run": len(hist),
        "public_acc_curve": [round(h["public_acc"], 4) for h in hist],
        "mean_epoch_s": float(np.mean([h["epoch_s"] for h in hist])),
    }
    (wd / "export_metrics.json").write_text(json.dumps({"summary": summary, "tflite": metrics}, indent=2) + "\n")

    train_cfg = {k: cfg[k] for k in (*RECIPE_KEYS, "params")}
    train_cfg.update(
        best_epoch=meta["epoch"],
        epochs_run=len(hist),
        optimizer="SGD nesterov 0.9",
        schedule="one-cycle (linear warm-up, cosine)",
        augmentation="flip, rotation +-10 deg, scale +-10%, shift +-10%, 44x44 crop, brightness +-25, contrast +-25%, random erasing",
        imbalance="class weights (n_max/n_c)^cw_power + label smoothing",
        mean_epoch_s_2cpu=summary["mean_epoch_s"],
        public_acc_curve=summary["public_acc_curve"],
    )
    train_cfg["aug_strength"] = cfg.get("aug_strength", 1.0)
    if cfg.get("init_from"):  # fine-tuning phase: describe the run it started from too
        train_cfg["phase"] = "fine-tuning from the best weights of the previous phase"
        train_cfg["previous_phase"] = _phase_summary(Path(cfg["init_from"]))
    elif cfg.get("init_from_tflite_info"):  # continued from a shipped model: keep its history
        info = cfg["init_from_tflite_info"]
        train_cfg["phase"] = "continued training from the weights of an earlier shipped model"
        train_cfg["previous_phase"] = dict(info.get("training") or {}, sha256=info["sha256"], public_acc_at_start=info["public_acc_at_start"])
    if cfg.get("weight_average"):  # an average of several checkpoints (--average)
        train_cfg["weight_average"] = cfg["weight_average"]
    if members:  # the other networks of an ensemble, with their own training histories
        train_cfg["ensemble"] = {
            "how": "mean of the members' probabilities; features concatenated",
            "members": [{"sha256": mb["sha256"], "file_then": Path(mb["file"]).name, "training": mb["training"]} for mb in members],
        }
    entries = []
    for kind, path in files.items():
        m = metrics[kind]
        entries.append(
            {
                "name": f"emoadapt_fer_{kind}",
                "file": path.name,
                "kind": "emotion_backbone",
                "classes": CLASSES,
                # the runtime's default test-time augmentation (mean with the mirror image), chosen
                # on the public test like every other model choice
                "tta": m["tta_choice"]["tta"],
                "tta_threshold": m["tta_choice"]["tta_threshold"],
                "source": {
                    "package": "emoadapt (trained by scripts/train_backbone.py)",
                    "data": "FER2013 train split",
                    "version": "0.1.0",
                    "registry": None,
                    "path": "scripts/train_backbone.py",
                    "quantization": "dynamic-range (tf.lite.Optimize.DEFAULT)" if kind == "int8" else "none (float32)",
                },
                "licence": "MIT (emoadapt's own weights). Trained on FER2013, whose terms allow research use only; check them before commercial use.",
                "inputs": fer_input_spec(
                    "raw gray pixels 0..255, face aligned/cropped as FER2013; model normalizes and centre-crops 44x44 internally; batch dimension is dynamic"
                ),
                "outputs": {
                    "probs": {
                        "shape": [None, len(CLASSES)],
                        "name": odet[pi]["name"],
                        "output_position": pi,
                        "tensor_index": int(odet[pi]["index"]),
                        "signature_key": "probs",
                        "activation": "softmax",
                    },
                    "features": {
                        "shape": [None, feat_dim],
                        "name": odet[fi]["name"],
                        "output_position": fi,
                        "tensor_index": int(odet[fi]["index"]),
                        "signature_key": "features",
                        "layer": "post-ReLU 256-d hidden layer before the classifier"
                        + (f", concatenated over the {len(cores)} ensemble members" if members else ""),
                    },
                    "identify": "preferred: get_signature_runner('serving_default') output keys 'probs' / 'features'; "
                    "raw interpreter: get_output_details() tensor names are generic "
                    f"(StatefulPartitionedCall:N), so pick by last dimension (7 = probs, {feat_dim} = features); "
                    "output_position / tensor_index are recorded for this exact file",
                },
                "metrics": {
                    "public_test_acc": m["public_test_acc"],
                    "private_test_acc": m["private_test_acc"],
                    "public_test_acc_flip_tta": m["public_test_acc_flip_tta"],
                    "private_test_acc_flip_tta": m["private_test_acc_flip_tta"],
                    "private_test_recall_per_class": m["private_test_recall_per_class"],
                    "probs_max_abs_diff_vs_keras": m["probs_max_abs_diff_vs_keras"],
                    "ms_per_face_1thread_batch1": round(m["ms_per_face_1thread_batch1"], 3),
                    "ms_per_face_1thread_batch32": round(m["ms_per_face_1thread_batch32"], 3),
                    **m["tta_choice"]["metrics"],
                },
                "training": train_cfg,
            }
        )
    if args.register:
        from scripts.build_models import update_manifest

        update_manifest(entries, out_dir)
    print(json.dumps({"summary": summary, "tflite": metrics}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--arch",
        choices=("vgg", "faceres"),
        default="vgg",
        help="vgg: our VGG-style CNN from scratch; faceres: the VGGFace2 MobileNet, identity weights, fine-tuned (scripts/face_backbone.py)",
    )
    ap.add_argument("--input-size", type=int, default=96, help="faceres: side the 48x48 face is resized to")
    ap.add_argument("--unfreeze-from", type=int, default=12, help="faceres: first trainable block (1..13); the blocks below are frozen and cached")
    ap.add_argument(
        "--labels",
        choices=("orig", "ferplus-soft", "ferplus-majority"),
        default="orig",
        help="faceres: FER2013 labels, FERPlus votes as soft targets, or the FERPlus majority",
    )
    ap.add_argument("--cache-dir", default=str(ROOT / "cache" / "face_backbone"), help="faceres: where the frozen blocks' outputs are cached")
    ap.add_argument("--trunk-lr-mult", type=float, default=0.1, help="faceres: learning rate of the pretrained blocks relative to --lr (the new head's)")
    ap.add_argument(
        "--face-name", default="emoadapt_faceres", help="faceres export: manifest name prefix (<name>_f32 / <name>_int8) in a non-default --out-dir"
    )
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05, help="peak learning rate (SGD)")
    ap.add_argument("--warmup-epochs", type=float, default=1.5)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument(
        "--soft-targets",
        default=None,
        help="vgg: npz whose 'train' (N, 7) rows are target distributions for the training faces in FER2013 order "
        "(FERPlus votes, a teacher's probabilities; NaN rows: the label alone), mixed into the labels with --soft-weight",
    )
    ap.add_argument("--soft-weight", type=float, default=1.0, help="vgg: weight of --soft-targets in the training target (0..1)")
    ap.add_argument("--cw-power", type=float, default=0.5, help="class weight (n_max/n_c)**power; 0 = none")
    ap.add_argument("--dropout", type=float, default=0.4)
    ap.add_argument("--erase-p", type=float, default=0.5)
    ap.add_argument("--aug-strength", type=float, default=1.0, help="scale of the affine / photometric augmentation ranges")
    ap.add_argument("--init-from", default=None, help="workdir of a previous run: start from its best weights (fine-tuning phase)")
    ap.add_argument(
        "--init-from-tflite",
        default=None,
        help="an exported emoadapt_fer float32 .tflite: continue training from its weights "
        "(BatchNorm rebuilt from the folded layers; fresh optimizer and schedule; "
        "--widths/--convs/--crop must match it)",
    )
    ap.add_argument("--init-member", type=int, default=0, help="with --init-from-tflite on an exported ensemble: which network to continue (0 = first)")
    ap.add_argument(
        "--ensemble-with-tflite",
        action="append",
        default=None,
        metavar="F32_TFLITE",
        help="export: average the trained network with this exported float32 model of the same architecture (repeatable); features are concatenated",
    )
    ap.add_argument(
        "--average",
        nargs="+",
        default=None,
        metavar="SRC",
        help="average these checkpoints' weights (checkpoint prefixes or float32 .tflite files), recalibrate BatchNorm, write --workdir/best for --export-only",
    )
    ap.add_argument("--config-from", default=None, help="with --average: the run whose config.json / history.json describe the network")
    ap.add_argument("--widths", default="32,64,128,256")
    ap.add_argument("--convs", default="1,2,2,2")
    ap.add_argument("--crop", type=int, default=44)
    ap.add_argument("--patience", type=int, default=8, help="early stopping on public-test accuracy")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--map-threads", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=0, help="use a random subset of N training images (tests)")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this many epochs in this invocation (simulates an interruption)")
    ap.add_argument("--jit", action="store_true", help="XLA-compile the train step")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "backbone"))
    ap.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--probe-steps", type=int, default=0, help="time N train steps and exit")
    ap.add_argument("--export-only", action="store_true", help="export the best checkpoint and exit")
    ap.add_argument(
        "--choose-tta",
        action="store_true",
        help="choose and record the runtime TTA setting (selective threshold) of the shipped "
        "emoadapt_fer files in <out-dir>/manifest.json, then exit (no TensorFlow needed)",
    )
    ap.add_argument("--export-after", action="store_true", help="export when training ends")
    ap.add_argument("--out-dir", default=str(ROOT / "models"))
    ap.add_argument("--register", action=argparse.BooleanOptionalAction, default=True, help="register the exported files in <out-dir>/manifest.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.choose_tta:
        return choose_tta_for_shipped(args)
    if args.arch == "faceres":
        from scripts import face_backbone

        tf, keras = setup_tf(args.threads)
        fn = face_backbone.export_face if args.export_only else face_backbone.train_face
        return fn(args, tf, keras, load_fer, data_dir())
    if args.average:
        return average(args)
    if args.export_only:
        return export(args)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
