#!/usr/bin/env python
"""Linear probes of face-recognition trunks as emotion features, against today's backbone.

For each candidate trunk (``faceres``: MobileNet v1 trained on VGGFace2, see
``scripts/builders/faceres.py``; ``mobilefacenet``: the ArcFace MobileFaceNet, see
``scripts/builders/mobilefacenet.py``) at a given input side, the 48x48 gray faces are resized
(bilinear) to the input and repeated to RGB (what the exported model would do inside), and
the feature maps at a few depths are global-average-pooled. A standardised multinomial
logistic regression is fitted on the FER2013 training faces (``--train-n`` of them, seeded
class-stratified), its C chosen on the public test; reported: FER2013 public/private
(original labels), FER2013 private with FERPlus-majority labels, CK+ (6 shared classes, argmax
over those 6) and the Taiwanese photos through the runtime's detection and alignment
(MTCNN + ``norm_crop`` onto the ``fer2013`` template, 48x48 gray, as the shipped backbone
sees them). The shipped backbone (``emoadapt_fer_int8``) is probed the same way on its
256-D features, and its own softmax is reported beside it.

Domain (``--domain``): today's backbone on CK+ and Taiwanese crops as they are, histogram-
equalised (``cv2.equalizeHist``) and CLAHE'd (clip 2, 8x8 tiles), since the FER2013 copy is
equalised with clipping and runtime crops are not.

Everything expensive (features, landmarks) is cached under ``cache/face_probe`` (gitignored).

    nice -n 15 python -m scripts.probe_face_backbones --arch faceres --size 96 --train-n 10000
    nice -n 15 python -m scripts.probe_face_backbones --domain
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from scripts.face_backbone import ferplus_majority, ferplus_soft, taiwanese_label

log = logging.getLogger("probe_face_backbones")
CACHE = ROOT / "cache" / "face_probe"
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
CK_TO_FER = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy", "sadness": "sad", "surprise": "surprise"}
#: feature taps per trunk: name -> layer whose output is pooled
TAPS = {
    "faceres": {"b9": "conv_pw_9_relu", "b11": "conv_pw_11_relu", "b13": "conv_pw_13_relu"},
    "mobilefacenet": {},  # filled from the model (see mfn_taps)
}


from scripts._common import data_dir, require  # noqa: E402 - $EMOADAPT_DATA or ../shared/data

require("sklearn")  # the probes are logistic regressions: the eval extra, said in one line


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def cached(tag: str, key: str, fn: Any) -> Any:
    path = CACHE / f"{tag}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    out = fn()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def stratified(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if n <= 0 or n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = [rng.choice(np.flatnonzero(y == c), max(1, round(np.sum(y == c) * n / len(y))), replace=False) for c in np.unique(y)]
    return np.sort(np.concatenate(idx))


def load_sets(train_n: int) -> dict[str, dict[str, np.ndarray]]:
    """x (N,48,48) uint8 gray and y (FER2013 ids) per evaluation set; ``y_plus`` = FERPlus majority."""
    d = data_dir()
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(d / "fer2013.npz", allow_pickle=False) as z, np.load(d / "fer2013_ferplus_votes.npz", allow_pickle=False) as v:
        for split in ("train", "public_test", "private_test"):
            x, y, votes = z[f"x_{split}"], z[f"y_{split}"].astype(np.int64), v[f"votes_{split}"]
            idx = stratified(y, train_n) if split == "train" else np.arange(len(y))
            out[split] = {"x": x[idx], "y": y[idx], "y_plus": ferplus_majority(votes[idx]), "soft_plus": ferplus_soft(votes[idx])}
    with np.load(d / "ckplus48.npz", allow_pickle=False) as z:
        ckc = [str(c) for c in z["classes"]]
        names = np.array([CK_TO_FER.get(ckc[i], "") for i in z["y"]])
        keep = names != ""
        out["ckplus"] = {"x": z["x"][keep], "y": np.array([CLASSES.index(n) for n in names[keep]])}
    out["taiwanese"] = taiwanese_crops()
    return out


def taiwanese_crops() -> dict[str, np.ndarray]:
    """The runtime's 48x48 gray crops of the Taiwanese photos (MTCNN, top confident face, norm_crop
    onto the ``fer2013`` template), cached; photos without a face are dropped (counted)."""
    files = sorted((data_dir() / "faces" / "taiwanese").glob("*.jpg"))

    def compute() -> dict[str, np.ndarray]:
        from emoadapt.alignment import norm_crop
        from emoadapt.detection import MTCNN

        det = MTCNN(num_threads=1)
        xs, ys, names = [], [], []
        for f in files:
            img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
            r = det.detect(img)
            ok = np.flatnonzero(r.scores >= 0.9) if len(r) else []
            if len(ok) == 0:
                log.warning("no face in %s", f.name)
                continue
            b = r.boxes[ok]
            k = ok[int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))]
            xs.append(norm_crop(img, r.landmarks[k], (48, 48), "fer2013", gray=True))
            ys.append(CLASSES.index(taiwanese_label(f.name)))
            names.append(f.name)
        return {"x": np.stack(xs).reshape(-1, 48, 48), "y": np.array(ys), "name": np.array(names), "files": np.array(len(files))}

    return cached("taiwanese", _digest([f.name for f in files], 1), compute)


def to_input(x: np.ndarray, size: int) -> np.ndarray:
    """48x48 gray uint8 -> (N,size,size,3) float32 0..255 (bilinear), what the exported model does inside."""
    r = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in x]).astype(np.float32)
    return np.repeat(r[..., None], 3, axis=-1)


def trunk(arch: str, size: int) -> tuple[Any, list[str]]:
    """A Keras model with one pooled output per tap, and the tap names."""
    if arch == "faceres":
        import tf_keras as keras

        from scripts.builders import faceres

        m = faceres.build_keras(input_size=size, trainable=False)
        taps = TAPS["faceres"]
    else:
        import keras

        from scripts.builders import mobilefacenet

        m = mobilefacenet.build_keras(input_size=size, include_embedding=False, trainable=False)
        # taps: the output of each stage's last block (spatial size changes) + the final 1x1 conv
        adds = [layer.name for layer in m.layers if isinstance(layer, keras.layers.Add)]
        taps = {"s8_last": adds[len(adds) // 2], "s16_last": adds[-1], "final": m.layers[-1].name}
    L = keras.layers
    outs = [L.GlobalAveragePooling2D()(m.get_layer(n).output) for n in taps.values()]
    return keras.Model(m.input, outs), list(taps)


def features(arch: str, size: int, sets: dict[str, dict[str, np.ndarray]], batch: int = 64) -> dict[str, dict[str, np.ndarray]]:
    model, taps = None, None
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, s in sets.items():

        def compute(s: dict[str, np.ndarray] = s, name: str = name) -> dict[str, np.ndarray]:
            nonlocal model, taps
            if model is None:
                model, taps = trunk(arch, size)
            t = time.perf_counter()
            parts: list[list[np.ndarray]] = []
            for i in range(0, len(s["x"]), batch):
                o = model(to_input(s["x"][i : i + batch], size), training=False)
                o = o if isinstance(o, (list, tuple)) else [o]
                parts.append([np.asarray(a, np.float32) for a in o])
                if i and i % (batch * 40) == 0:
                    log.info("%s %s %d: %d/%d (%.1f ms/face)", arch, name, size, i, len(s["x"]), (time.perf_counter() - t) / i * 1e3)
            res = {tap: np.concatenate([p[j] for p in parts]) for j, tap in enumerate(taps)}
            log.info("%s %s %d: %d faces in %.0f s", arch, name, size, len(s["x"]), time.perf_counter() - t)
            return res

        out[name] = cached(f"{arch}{size}-{name}", _digest(s["x"][::97], len(s["x"]), 3), compute)
    return out


def shipped(sets: dict[str, dict[str, np.ndarray]], prep: str = "none") -> dict[str, dict[str, np.ndarray]]:
    from emoadapt.features import Backbone

    bb = Backbone("emoadapt_fer_int8", tta=False, num_threads=1)
    out = {}
    for name, s in sets.items():

        def compute(s: dict[str, np.ndarray] = s) -> dict[str, np.ndarray]:
            x = preprocess(s["x"], prep)
            probs, feats = [], []
            for i in range(0, len(x), 256):
                p, f = bb.infer(x[i : i + 256])
                probs.append(p)
                feats.append(f)
            return {"features": np.concatenate(feats), "probs": np.concatenate(probs)}

        out[name] = cached(f"shipped-{prep}-{name}", _digest(s["x"][::97], len(s["x"]), 1), compute)
    return out


def preprocess(x: np.ndarray, prep: str) -> np.ndarray:
    if prep == "none":
        return x
    if prep == "equalize":
        return np.stack([cv2.equalizeHist(f) for f in x])
    if prep == "clahe":
        c = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        return np.stack([c.apply(f) for f in x])
    raise ValueError(prep)


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    ok = y >= 0
    return float(np.mean(y[ok] == pred[ok]))


def set_scores(sets: dict[str, dict[str, np.ndarray]], P: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracies of probability matrices per set (CK+: argmax over its 6 classes)."""
    ck6 = [CLASSES.index(c) for c in CK_TO_FER.values()]
    return {
        "public": accuracy(sets["public_test"]["y"], P["public_test"].argmax(1)),
        "private": accuracy(sets["private_test"]["y"], P["private_test"].argmax(1)),
        "private_plus": accuracy(sets["private_test"]["y_plus"], P["private_test"].argmax(1)),
        "ckplus6": accuracy(sets["ckplus"]["y"], np.array(ck6)[P["ckplus"][:, ck6].argmax(1)]),
        "taiwanese": accuracy(sets["taiwanese"]["y"], P["taiwanese"].argmax(1)),
    }


def probe(sets: dict[str, dict[str, np.ndarray]], F: dict[str, np.ndarray], labels: str = "orig") -> dict[str, Any]:
    """Logistic regression on train features (C chosen on public); accuracies per set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    ytr = sets["train"]["y"] if labels == "orig" else sets["train"]["y_plus"]
    keep = ytr >= 0
    sc = StandardScaler().fit(F["train"][keep])
    Z = {k: sc.transform(v) for k, v in F.items()}
    best = None
    with threadpool_limits(1):
        for C in (0.01, 0.1, 1.0):
            clf = LogisticRegression(C=C, max_iter=300).fit(Z["train"][keep], ytr[keep])
            yp = sets["public_test"]["y"] if labels == "orig" else sets["public_test"]["y_plus"]
            acc = accuracy(yp, clf.predict(Z["public_test"]))
            if best is None or acc > best[0]:
                best = (acc, C, clf)
    assert best is not None
    P = {k: best[2].predict_proba(z) for k, z in Z.items()}
    return {"C": best[1], **set_scores(sets, P)}


def trunk_cost(arch: str, size: int, tap: str, reps: int = 100) -> dict[str, Any]:
    """Single-thread ms per face (batch 1, median and minimum of ``reps`` after 20 warm-up runs:
    the machine is shared, the minimum is the closest to an idle core) and MB of the trunk cut at ``tap``
    (+ global average pooling), exported to TFLite with dynamic-range int8 weights."""
    import tempfile

    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model, taps = trunk(arch, size)
    sub = model.outputs[taps.index(tap)]
    fn = tf.function(lambda x: model(x, training=False)[taps.index(tap)] if len(taps) > 1 else model(x, training=False))
    with tempfile.TemporaryDirectory() as tmp:
        conc = fn.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
        conv = tf.lite.TFLiteConverter.from_concrete_functions([conc], fn)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        path = Path(tmp) / "t.tflite"
        path.write_bytes(conv.convert())
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        inp = it.get_input_details()[0]["index"]
        x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
        ts = []
        for i in range(reps + 20):
            t = time.perf_counter()
            it.set_tensor(inp, x)
            it.invoke()
            if i >= 20:
                ts.append(time.perf_counter() - t)
        del sub
        return {
            "model": f"{arch}@{size} {tap}",
            "ms_per_face_int8_1thread": float(np.median(ts) * 1e3),
            "ms_per_face_int8_1thread_min": float(np.min(ts) * 1e3),
            "mb": path.stat().st_size / 1e6,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=("faceres", "mobilefacenet", "shipped"), default="shipped")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--train-n", type=int, default=10000, help="FER2013 training faces for the probe (stratified; 0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--domain", action="store_true", help="today's backbone with none / equalize / clahe on the cross-data-set sets")
    ap.add_argument("--cost", default=None, help="comma-separated taps: only time the int8 TFLite trunk cut there (ms/face, MB)")
    ap.add_argument("--json", type=Path, default=None, help="append the result as a JSON line here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.cost:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        for tap in args.cost.split(","):
            r = trunk_cost(args.arch, args.size, tap)
            print(json.dumps(r))
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
        return 0
    sets = load_sets(args.train_n)
    log.info("taiwanese: %d of %d photos with a face", len(sets["taiwanese"]["y"]), int(sets["taiwanese"]["files"]))
    rows: list[dict[str, Any]] = []
    if args.domain:
        for prep in ("none", "equalize", "clahe"):
            S = shipped({k: sets[k] for k in ("public_test", "private_test", "ckplus", "taiwanese")}, prep)
            rows.append({"model": "emoadapt_fer_int8 softmax", "prep": prep, **set_scores(sets, {k: v["probs"] for k, v in S.items()})})
    elif args.arch == "shipped":
        S = shipped(sets)
        rows.append({"model": "emoadapt_fer_int8 softmax", **set_scores(sets, {k: v["probs"] for k, v in S.items()})})
        for labels in ("orig", "plus"):
            rows.append({"model": "emoadapt_fer_int8 features + LR", "labels": labels, **probe(sets, {k: v["features"] for k, v in S.items()}, labels)})
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        Fs = features(args.arch, args.size, sets)
        for tap in next(iter(Fs.values())):
            for labels in ("orig", "plus"):
                r = probe(sets, {k: v[tap] for k, v in Fs.items()}, labels)
                rows.append({"model": f"{args.arch}@{args.size} {tap} + LR", "dim": int(Fs["train"][tap].shape[1]), "labels": labels, **r})
    for r in rows:
        r["train_n"] = len(sets["train"]["y"])
        print(json.dumps(r))
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
