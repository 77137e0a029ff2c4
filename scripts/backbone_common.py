"""The FER2013 backbone's pieces shared by ``scripts.train_backbone`` and
``scripts.face_backbone``: the data and input spec, the network (VGG-style core, export
wrapper, BatchNorm recalibration, weights read back from an exported file), TensorFlow
setup, the epochs a resumable run trains and the record of each, the TFLite export and its checks (outputs, speed),
and the choice of the runtime's flip-TTA setting. Needs the ``build`` extra (TensorFlow +
tf-keras) for the network parts; the runtime never imports this.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from scripts._common import data_dir  # $EMOADAPT_DATA or ../shared/data

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
IMG = 48
FEAT_DIM = 256
log = logging.getLogger("train_backbone")


def fer_input_spec(note: str) -> dict[str, object]:
    """The manifest's ``inputs`` of a backbone that reads FER2013-style faces (48x48 gray, raw
    0..255, FER2013 alignment); ``note`` says what the network does with them inside."""
    return {
        "shape": [None, IMG, IMG, 1],
        "dtype": "float32",
        "channels": 1,
        "color": "gray",
        "scale": 1.0,
        "offset": 0.0,
        "classes": CLASSES,
        "name": "image",
        "align": "fer2013",
        "note": note,
    }


def load_fer() -> dict[str, np.ndarray]:
    with np.load(data_dir() / "fer2013.npz", allow_pickle=False) as d:
        return {k: d[k] for k in ("x_train", "y_train", "x_public_test", "y_public_test", "x_private_test", "y_private_test")}


def build_core(tf, keras, widths, convs, crop, mean, std, dropout):
    """The trainable network on ``crop x crop`` raw-pixel input -> (probs, features)."""
    L = keras.layers
    wd_free = dict(use_bias=False, kernel_initializer="he_normal")
    inp = keras.Input((crop, crop, 1), name="image")
    # raw 0..255 -> (x/255 - mean) / std
    x = L.Rescaling(1.0 / (255.0 * std), offset=-mean / std, name="normalize")(inp)
    for s, (w, n) in enumerate(zip(widths, convs)):
        if s > 0:
            x = L.MaxPooling2D(2, name=f"pool{s}")(x)
        for c in range(n):
            x = L.Conv2D(w, 3, padding="same", name=f"conv{s}_{c}", **wd_free)(x)
            x = L.BatchNormalization(name=f"bn{s}_{c}")(x)
            x = L.ReLU(name=f"relu{s}_{c}")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(FEAT_DIM, use_bias=False, kernel_initializer="he_normal", name="fc")(x)
    x = L.BatchNormalization(name="fc_bn")(x)
    feats = L.ReLU(name="features")(x)
    x = L.Dropout(dropout, name="drop")(feats)
    logits = L.Dense(len(CLASSES), name="logits")(x)
    probs = L.Softmax(name="probs")(logits)
    return keras.Model(inp, [probs, feats, logits], name="emoadapt_fer_core")


def build_export(tf, keras, cores, crop):
    """48x48 raw-pixel input -> centre crop -> core(s); outputs {probs, features}.

    With several cores (an ensemble of trained networks of one architecture) ``probs`` is
    the mean of their probabilities and ``features`` the concatenation of their features."""
    cores = list(cores) if isinstance(cores, (list, tuple)) else [cores]
    inp = keras.Input((IMG, IMG, 1), name="image")
    m = (IMG - crop) // 2
    x = keras.layers.Cropping2D(m, name="center_crop")(inp) if m else inp
    outs = [c(x, training=False) for c in cores]
    if len(outs) == 1:
        probs, feats = outs[0][0], outs[0][1]
    else:
        probs = keras.layers.Average(name="mean_probs")([o[0] for o in outs])
        feats = keras.layers.Concatenate(name="concat_features")([o[1] for o in outs])
    return keras.Model(inp, {"probs": probs, "features": feats}, name="emoadapt_fer")


def sample_crops(faces: np.ndarray, crop: int, n_sample: int, seed: int) -> np.ndarray:
    """``n_sample`` of the raw 48x48 ``faces`` drawn with ``seed`` (the arrays are ordered by
    class), centre-cropped to ``crop``: float32 (n, crop, crop, 1), what BatchNorm statistics
    are computed on."""
    pick = np.random.default_rng(seed).permutation(len(faces))[:n_sample]
    m = (IMG - crop) // 2
    return faces[pick, m : m + crop, m : m + crop, None].astype(np.float32)


def recalibrate_bn(tf, keras, core, faces: np.ndarray, crop: int, n_sample: int = 8192, seed: int = 0) -> None:
    """Set every BatchNorm's moving mean / variance to the exact statistics of its input over
    ``n_sample`` training faces (centre crops), layer by layer in network order, so that each
    layer is calibrated on the already calibrated layers before it. Needed after averaging
    weights: the average of the members' moving statistics is not the statistics of the
    averaged network."""
    x = sample_crops(faces, crop, n_sample, seed)
    for layer in core.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        probe = keras.Model(core.input, layer.input)
        z = np.concatenate([probe(x[i : i + 512], training=False).numpy() for i in range(0, len(x), 512)])
        axes = tuple(range(z.ndim - 1))
        gamma, beta, _, _ = layer.get_weights()
        layer.set_weights([gamma, beta, z.mean(axes).astype(np.float32), z.var(axes).astype(np.float32)])


def init_from_tflite(tf, core, path: Path, faces: np.ndarray, crop: int, member: int = 0, seed: int = 0, n_sample: int = 4096) -> dict:
    """Load the weights of an exported ``emoadapt_fer`` TFLite file into ``core``.

    The converter folded every BatchNorm into the conv / dense layer before it (kernel ``W'``,
    bias ``b'``), so the original BN parameters cannot be recovered; they are rebuilt instead:
    each kernel is rescaled per output channel by ``r = 1 / std(W' x)`` (a BN-followed layer's
    output does not depend on its kernel's scale; unit variance keeps BN's epsilon from
    distorting training-mode outputs), and the BN after it gets ``moving_mean = m``,
    ``moving_variance = 1 - eps``, ``gamma = 1 / r``, ``beta = m / r + b'``, where ``m`` is the
    per-channel mean of the rescaled pre-activation over ``n_sample`` of ``faces`` (raw 48x48
    training faces, drawn with ``seed``, centre-cropped to ``crop``). The core then computes exactly what the TFLite file computes at inference,
    and the same up to batch statistics in training mode, and trains on from there.

    ``member``: which network of an exported ensemble (``--ensemble-with-tflite``) to load."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    const = {}
    for t in it.get_tensor_details():
        try:
            const[t["name"]] = (len(t["shape"]), it.get_tensor(t["index"]))
        except ValueError:  # a tensor without a readable buffer
            continue

    def find(key: str, ndim: int) -> np.ndarray:
        # kernels: the tensor name ends with the op (".../conv1_0/Conv2D"); folded biases: a fused
        # name that contains the BN layer (".../relu1_0/Relu;.../bn1_0/FusedBatchNorm...")
        hits = [v for n, (d, v) in const.items() if d == ndim and scope in n and (n.endswith(key) or (ndim == 1 and "/" + key in n))]
        if len(hits) != 1:
            raise ValueError(f"{path}: expected one {ndim}-D tensor for {key!r}, found {len(hits)}")
        return np.asarray(hits[0], np.float32)

    scope = "/emoadapt_fer_core/" if member == 0 else f"/emoadapt_fer_core_{member}/"
    h = core.get_layer("normalize")(tf.constant(sample_crops(faces, crop, n_sample, seed))).numpy()

    def rebuild(layer, bn, w: np.ndarray, bias: np.ndarray, x: np.ndarray, op) -> np.ndarray:
        z = op(x, w)  # pre-activation of the folded layer, W' x
        axes = tuple(range(z.ndim - 1))
        r = 1.0 / np.maximum(z.std(axes), 1e-6)
        z = z * r
        m = z.mean(axes)
        layer.set_weights([(w * r).astype(np.float32)])
        bn.set_weights(
            [(1.0 / r).astype(np.float32), (m / r + bias).astype(np.float32), m.astype(np.float32), np.full_like(m, 1.0 - bn.epsilon, dtype=np.float32)]
        )
        log.debug("%s: kernel norms after rescaling %.3g..%.3g", layer.name, *np.percentile(np.sqrt(((w * r) ** 2).reshape(-1, len(r)).sum(0)), [5, 95]))
        return np.maximum(z / r + bias, 0.0)  # ReLU(BN(z)) == ReLU(W' x + b')

    def conv_op(x, w):
        return tf.nn.conv2d(x, w.astype(np.float32), 1, "SAME").numpy()

    stage = 0
    while True:
        try:
            core.get_layer(f"conv{stage}_0")
        except ValueError:
            break
        if stage > 0:
            h = tf.nn.max_pool2d(h, 2, 2, "VALID").numpy()
        c = 0
        while True:
            try:
                conv = core.get_layer(f"conv{stage}_{c}")
            except ValueError:
                break
            w = find(f"conv{stage}_{c}/Conv2D", 4).transpose(1, 2, 3, 0)  # OHWI -> HWIO
            h = rebuild(conv, core.get_layer(f"bn{stage}_{c}"), w, find(f"bn{stage}_{c}/", 1), h, conv_op)
            c += 1
        stage += 1
    rebuild(core.get_layer("fc"), core.get_layer("fc_bn"), find("fc_bn/batchnorm/mul_1", 2).T, find("fc_bn/", 1), h.mean(axis=(1, 2)), lambda x, w: x @ w)
    core.get_layer("logits").set_weights([find("logits/MatMul", 2).T, find("logits/BiasAdd", 1)])
    from emoadapt.zoo import sha256_file

    return {"file": str(path), "sha256": sha256_file(path)}


def setup_tf(threads: int):
    import tensorflow as tf
    import tf_keras as keras

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads))
    except RuntimeError:  # TensorFlow already initialised in this process (tests): keep its setting
        log.info("TensorFlow already initialised: thread settings unchanged")
    return tf, keras


def epochs_to_run(args, epoch_var, bad_var):
    """The epochs this invocation runs: from the checkpoint's epoch to ``--epochs`` (at most
    ``--stop-after`` of them), stopping early once ``bad_var`` epochs without a public-test
    improvement reach ``--patience`` (checked before each epoch)."""
    start = int(epoch_var.numpy())
    stop_at = args.epochs if args.stop_after is None else min(args.epochs, start + args.stop_after)
    for epoch in range(start, stop_at):
        if int(bad_var.numpy()) >= args.patience:
            log.info("early stop: no public-test improvement for %d epochs", args.patience)
            return
        yield epoch


def end_epoch(wd: Path, epoch: int, rec: dict, score: float, state: tuple, best_ckpt, mgr, history: list, config: dict) -> None:
    """Record finished epoch ``epoch`` (0-based) of a resumable run in ``wd``: ``rec`` appended
    to ``history`` and the epoch counter advanced; when ``score`` beats the best so far, the
    best weights (``best_ckpt``) and ``rec`` written to ``wd/best`` and the count of epochs
    without improvement reset, else that count incremented; then the checkpoint (``mgr``)
    saved and ``wd/history.json`` rewritten. ``state``: the run's ``(epoch_var, best_var,
    bad_var)`` (see :func:`epochs_to_run`)."""
    epoch_var, best_var, bad_var = state
    history.append(rec)
    epoch_var.assign(epoch + 1)
    if score > float(best_var.numpy()):
        best_var.assign(score)
        bad_var.assign(0)
        best_ckpt.write(str(wd / "best" / "weights"))
        (wd / "best" / "meta.json").write_text(json.dumps(rec, indent=2) + "\n")
    else:
        bad_var.assign_add(1)
    mgr.save(checkpoint_number=epoch + 1)
    (wd / "history.json").write_text(json.dumps({"config": config, "epochs": history}, indent=1, default=str) + "\n")


def tflite_outputs(interp) -> tuple[int, int]:
    """(probs index, features index) among ``get_output_details()``, identified by name, else shape."""
    det = interp.get_output_details()
    byname = {}
    for i, o in enumerate(det):
        for key in ("probs", "features"):
            if key in o["name"]:
                byname[key] = i
    if len(byname) == 2:
        return byname["probs"], byname["features"]
    pi = [i for i, o in enumerate(det) if int(o["shape"][-1]) == len(CLASSES)]
    fi = [i for i, o in enumerate(det) if int(o["shape"][-1]) != len(CLASSES)]
    assert len(pi) == 1 and len(fi) == 1, det
    return pi[0], fi[0]


def run_tflite(path: Path, x: np.ndarray, batch: int = 256, threads: int = 2):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    runner = it.get_signature_runner("serving_default")
    P, F = [], []
    for i in range(0, len(x), batch):
        out = runner(image=x[i : i + batch, :, :, None].astype(np.float32))
        P.append(out["probs"])
        F.append(out["features"])
    return np.concatenate(P), np.concatenate(F)


def time_tflite(path: Path, batch: int, reps: int) -> float:
    """Median ms per face, single thread, via the raw interpreter API."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [batch, IMG, IMG, 1])
    it.allocate_tensors()
    x = np.random.default_rng(0).integers(0, 256, (batch, IMG, IMG, 1)).astype(np.float32)
    pi, _ = tflite_outputs(it)
    for _ in range(5):
        it.set_tensor(inp["index"], x)
        it.invoke()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        it.set_tensor(inp["index"], x)
        it.invoke()
        it.get_tensor(it.get_output_details()[pi]["index"])
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1000.0 / batch


#: selective flip-TTA thresholds tried on the public test: mirror only the faces whose top
#: probability is below the threshold (1.0 = every face)
TTA_THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def choose_tta(p_pu: np.ndarray, pm_pu: np.ndarray, y_pu: np.ndarray, p_pr: np.ndarray, pm_pr: np.ndarray, y_pr: np.ndarray) -> dict:
    """The runtime's default test-time augmentation for a model, chosen on the public test
    from its probabilities on the faces (``p_*``) and their mirror images (``pm_*``).

    Flip TTA is on if mirroring every face beats the plain model on the public test; its
    ``tta_threshold`` is then the smallest of :data:`TTA_THRESHOLDS` whose selective TTA (the
    runtime's ``Backbone(tta_threshold=...)``) is as accurate on the public test as mirroring
    every face: the cheapest setting that keeps the whole gain. Returns the manifest fields
    ``tta`` / ``tta_threshold`` and ``metrics`` (``*_tta_default``: accuracy as the runtime
    runs by default; ``tta_mirrored_fraction_*``: the share of faces mirrored)."""

    def run(p, pm, y, thr):
        sel = p.max(1) < thr if thr < 1.0 else np.ones(len(p), bool)
        q = np.where(sel[:, None], (p + pm) / 2, p)
        return float((q.argmax(1) == y).mean()), float(sel.mean())

    plain = float((p_pu.argmax(1) == y_pu).mean())
    curve = {t: run(p_pu, pm_pu, y_pu, t)[0] for t in TTA_THRESHOLDS}
    tta = curve[1.0] > plain
    thr = min(t for t in TTA_THRESHOLDS if curve[t] >= curve[1.0]) if tta else 1.0
    if tta:
        (acc_pu, frac_pu), (acc_pr, frac_pr) = run(p_pu, pm_pu, y_pu, thr), run(p_pr, pm_pr, y_pr, thr)
    else:
        acc_pu, acc_pr, frac_pu, frac_pr = plain, float((p_pr.argmax(1) == y_pr).mean()), 0.0, 0.0
    return {
        "tta": bool(tta),
        "tta_threshold": float(thr),
        "metrics": {
            "public_test_acc_tta_default": acc_pu,
            "private_test_acc_tta_default": acc_pr,
            "tta_mirrored_fraction_public": frac_pu,
            "tta_mirrored_fraction_private": frac_pr,
            "public_test_acc_by_tta_threshold": {str(t): round(a, 4) for t, a in curve.items()},
        },
    }


def write_tflite(tf, model, serve, files: dict[str, Path]) -> None:
    """Save ``model`` with the ``serve`` signature and convert it to ``files['f32']`` (float32)
    and ``files['int8']`` (dynamic-range quantization)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mod = tf.Module()
        mod.model = model
        tf.saved_model.save(mod, tmp, signatures={"serving_default": serve})
        for kind, path in files.items():
            conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if kind == "int8":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range quantization
            path.write_bytes(conv.convert())
            log.info("wrote %s (%.2f MB)", path, path.stat().st_size / 1e6)
