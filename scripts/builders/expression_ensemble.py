"""Builder: one TFLite emotion backbone that averages our ``emoadapt_fer`` network and face-api's
``faceExpressionNet`` (issue 28's ensemble candidate).

Both networks read the **same** crop: the 48x48 gray face aligned with the ``fer2013`` template,
our network's own input. Inside the model:

* our network, exactly as shipped: its float32 TFLite file (``models/emoadapt_fer_f32.tflite``)
  is re-emitted op by op as TensorFlow ops (:func:`tflite_to_tf`; the file holds STRIDED_SLICE,
  MUL, ADD, CONV_2D, MAX_POOL_2D, MEAN, FULLY_CONNECTED, SOFTMAX) so its logits are at hand;
* faceExpressionNet (``scripts/builders/faceapi_expression.py``) on the crop repeated to RGB and
  resized 48 -> 112 (bilinear, half-pixel centres, as ``cv2.resize(INTER_LINEAR)`` in
  ``Backbone.prepare``): on the Taiwanese dev photos it scores 57.3 % this way against 55.8 % on
  112 px RGB crops of the same template;
* ``probs`` = the weighted mean of the two probability vectors (``mode="prob"``) or the softmax
  of the weighted mean of the two logit vectors (``mode="logit"``, a weighted geometric mean),
  weight ``w`` on faceExpressionNet; ``features`` = our 256 features followed by face-api's 256.

``w`` and the mode are chosen by :func:`choose` on FER2013's public test and the Taiwanese dev
photos only (mean of the two accuracies), never on the FER2013 private test, CK+ or CREMA-D.

Export: dynamic-range int8 weights (float activations), like the shipped ``emoadapt_fer_int8``,
and float32. Needs TensorFlow (the ``build`` extra) and the face-api npm package
(``FACE_API_DIR``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import faceapi_expression as fa
from .tflite_export import module_to_tflite as convert
from .tflite_export import read_graph, run_batched

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
OURS_F32 = ROOT / "models" / "emoadapt_fer_f32.tflite"
IMG = 48

# TFLite builtin operator codes (tensorflow/lite/schema/schema.fbs)
_OPS = {0: "ADD", 3: "CONV_2D", 9: "FULLY_CONNECTED", 17: "MAX_POOL_2D", 18: "MUL", 25: "SOFTMAX", 40: "MEAN", 45: "STRIDED_SLICE"}
_ACT = {0: None, 1: "relu"}


def read_tflite(path: str | os.PathLike[str]) -> tuple[list[tuple[str, list[int], list[int], dict]], dict[int, np.ndarray], int]:
    """(ops as (kind, inputs, outputs, options), constant tensors, input tensor) of a
    single-subgraph float32 TFLite file (``tensorflow.lite.tools.flatbuffer_utils``)."""
    ops, consts, g = read_graph(path, _OPS)
    for kind, _ins, _outs, opts in ops:
        if _ACT.get(opts.get("fusedActivationFunction", 0), "x") == "x":
            raise ValueError(f"{kind}: unsupported fused activation {opts['fusedActivationFunction']}")
    return ops, consts, int(g.inputs[0])


def tflite_to_tf(path: str | os.PathLike[str]) -> Any:
    """A function ``f(x) -> {tensor index: tf tensor}`` that computes the TFLite file's graph
    with TensorFlow ops on ``x`` (its input), keeping every intermediate tensor (the logits are
    the SOFTMAX's input)."""
    import tensorflow as tf

    ops, consts, inp = read_tflite(path)
    cvars = {i: tf.constant(v) for i, v in consts.items()}

    def act(y: Any, opts: dict) -> Any:
        return tf.nn.relu(y) if _ACT[opts.get("fusedActivationFunction", 0)] == "relu" else y

    def run(x: Any) -> dict[int, Any]:
        t: dict[int, Any] = dict(cvars)
        t[inp] = x
        for kind, ins, outs, o in ops:
            a = t[ins[0]]
            if kind == "STRIDED_SLICE":
                if o.get("ellipsisMask") or o.get("newAxisMask") or o.get("shrinkAxisMask"):
                    raise ValueError("STRIDED_SLICE with ellipsis / new-axis / shrink masks is not handled")
                y = tf.strided_slice(a, consts[ins[1]], consts[ins[2]], consts[ins[3]], begin_mask=o["beginMask"], end_mask=o["endMask"])
            elif kind in ("MUL", "ADD"):
                y = act(a * t[ins[1]] if kind == "MUL" else a + t[ins[1]], o)
            elif kind == "CONV_2D":
                if o.get("dilationWFactor", 1) != 1 or o.get("dilationHFactor", 1) != 1:
                    raise ValueError("dilated CONV_2D is not handled")
                w = np.transpose(consts[ins[1]], (1, 2, 3, 0))  # OHWI -> HWIO
                y = tf.nn.conv2d(a, w, [1, o["strideH"], o["strideW"], 1], "SAME" if o["padding"] == 0 else "VALID")
                y = act(tf.nn.bias_add(y, t[ins[2]]) if len(ins) > 2 and ins[2] >= 0 else y, o)
            elif kind == "MAX_POOL_2D":
                y = act(tf.nn.max_pool2d(a, [o["filterHeight"], o["filterWidth"]], [o["strideH"], o["strideW"]], "SAME" if o["padding"] == 0 else "VALID"), o)
            elif kind == "MEAN":
                y = tf.reduce_mean(a, axis=[int(v) for v in np.ravel(consts[ins[1]])], keepdims=bool(o.get("keepDims")))
            elif kind == "FULLY_CONNECTED":
                if o.get("keepNumDims"):
                    raise ValueError("FULLY_CONNECTED with keepNumDims is not handled")
                y = tf.matmul(a, consts[ins[1]], transpose_b=True)
                y = act(y + t[ins[2]] if len(ins) > 2 and ins[2] >= 0 else y, o)
            elif kind == "SOFTMAX":
                y = tf.nn.softmax(a * float(o.get("beta", 1.0)))
            else:  # pragma: no cover - _OPS lists the handled kinds
                raise ValueError(kind)
            t[outs[0]] = y
        return t

    softmax = [(ins[0], outs[0]) for kind, ins, outs, _ in ops if kind == "SOFTMAX"]
    if len(softmax) != 1:
        raise ValueError(f"expected one SOFTMAX in {path}")
    # the features: the input of the FULLY_CONNECTED that makes the logits
    fc = [ins[0] for kind, ins, outs, _ in ops if kind == "FULLY_CONNECTED" and outs[0] == softmax[0][0]]
    run.logits, run.probs, run.features = softmax[0][0], softmax[0][1], fc[0]  # type: ignore[attr-defined]
    return run


def combine(p_ours: np.ndarray, p_fa: np.ndarray, w: float, mode: str) -> np.ndarray:
    """The ensemble's probabilities from the members' (numpy; what the exported graph computes,
    up to float rounding: logits and log-probabilities differ by a per-face constant)."""
    if mode == "prob":
        return (1 - w) * p_ours + w * p_fa
    z = (1 - w) * np.log(np.maximum(p_ours, 1e-30)) + w * np.log(np.maximum(p_fa, 1e-30))
    return fa.softmax(z)


def choose(members: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], weights: tuple[float, ...] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))) -> dict:
    """The weight and mode with the best mean accuracy over the selection sets: ``members`` maps
    a set name to (our probs, face-api probs, labels). Returns the choice and the whole grid."""
    grid = []
    for mode in ("prob", "logit"):
        for w in weights:
            accs = {k: float(np.mean(combine(a, b, float(w), mode).argmax(1) == y)) for k, (a, b, y) in members.items()}
            grid.append({"mode": mode, "w": float(w), **accs, "mean": float(np.mean(list(accs.values())))})
    best = max(grid, key=lambda r: (round(r["mean"], 6), -r["w"]))
    return {"w": best["w"], "mode": best["mode"], "selection_sets": sorted(members), "best": best, "grid": grid}


def build_tf_module(w: float, mode: str, ours: str | os.PathLike[str] = OURS_F32, pkg: str | os.PathLike[str] | None = None) -> Any:
    """The ensemble as a ``tf.Module``: [N,48,48,1] raw gray (0..255) -> ``{"probs": (N,7),
    "features": (N,512)}`` (both members in FER2013 class order)."""
    import tensorflow as tf

    if mode not in ("prob", "logit") or not 0.0 <= w <= 1.0:
        raise ValueError(f"bad ensemble setting w={w} mode={mode}")
    ours_fn = tflite_to_tf(ours)
    fa_weights = fa.load_weights(pkg)
    fa_module = fa.build_tf_module(fa_weights)
    fa_fc_w = tf.constant(fa_weights["fc/weights"][:, fa.ORDER])
    fa_fc_b = tf.constant(fa_weights["fc/bias"][fa.ORDER])
    wt = tf.constant(np.float32(w))

    class Ensemble(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="emoadapt_faceapi_ensemble")
            self.fa = fa_module

        @tf.function(input_signature=[tf.TensorSpec([None, IMG, IMG, 1], tf.float32, name="image")])
        def __call__(self, image: Any) -> dict[str, Any]:
            t = ours_fn(image)
            rgb = tf.image.resize(tf.tile(image, [1, 1, 1, 3]), [fa.INPUT_SIZE, fa.INPUT_SIZE], method="bilinear")
            fa_out = self.fa(rgb)
            if mode == "prob":
                probs = (1.0 - wt) * t[ours_fn.probs] + wt * fa_out["probs"]
            else:
                fa_logits = tf.matmul(fa_out["features"], fa_fc_w) + fa_fc_b
                probs = tf.nn.softmax((1.0 - wt) * t[ours_fn.logits] + wt * fa_logits)
            feats = tf.concat([t[ours_fn.features], fa_out["features"]], axis=1)
            return {"probs": tf.identity(probs, name="probs"), "features": tf.identity(feats, name="features")}

    return Ensemble()


def _run(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=2)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp, x.astype(np.float32))
    it.invoke()
    outs = {int(d["shape"][-1]): it.get_tensor(d["index"]) for d in it.get_output_details()}
    return outs[7], outs[512]


def entry(name: str, file: str, quantization: str, choice: dict, tta: bool, tta_threshold: float, check: dict) -> dict:
    from scripts.backbone_common import fer_input_spec

    classes = list(fa.CLASSES)
    return {
        "name": name,
        "file": file,
        "kind": "emotion_backbone",
        "classes": classes,
        "tta": tta,
        "tta_threshold": tta_threshold,
        "adapts": False,
        "adapts_note": "a candidate: no universal heads, personal warm start or replay set are trained on its 512 features",
        "heads": {"universal_head": "mean_probability", "trained": []},
        "source": {
            "package": "emoadapt (scripts/builders/expression_ensemble.py)",
            "members": [
                "emoadapt_fer (models/emoadapt_fer_f32.tflite, ours, trained on FER2013)",
                f"faceapi_expression (npm {fa.PACKAGE}@{fa.VERSION} model/{fa.MODEL}*)",
            ],
            "registry": None,
        },
        "licence": "MIT (both members). Our member is trained on FER2013 (research use only); face-api's training data is not published.",
        "architecture": f"ensemble: emoadapt_fer (48x48 gray) + faceExpressionNet (the same crop as RGB, resized to 112); {choice['mode']} averaging, weight {choice['w']} on faceExpressionNet",
        "quantization": quantization,
        "ensemble": {k: v for k, v in choice.items() if k != "grid"},
        "inputs": fer_input_spec(
            "raw gray pixels 0..255 aligned like FER2013 (our member's crop); face-api's member sees it repeated to RGB and resized to 112 in the graph"
        ),
        "outputs": {
            "probs": {"shape": [None, 7], "activation": "softmax", "signature_key": "probs"},
            "features": {
                "shape": [None, 512],
                "signature_key": "features",
                "layer": "our 256 features (post-ReLU hidden layer) then face-api's 256 pooled features",
            },
            "identify": "by last dimension: 7 = probs, 512 = features",
        },
        "check_vs_members": check,
    }


def member_probs(faces: np.ndarray, ours: str | os.PathLike[str] = OURS_F32, fa_file: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The members' probabilities on 48x48 gray ``faces`` as the ensemble computes them: our
    float32 file on the faces, faceExpressionNet's float32 file on the faces repeated to RGB and
    resized to 112 in float (``cv2.INTER_LINEAR`` = bilinear with half-pixel centres, the graph's
    ``tf.image.resize``). No test-time augmentation."""
    import cv2

    fa_file = fa_file or ROOT / "models" / "faceapi_expression_f32.tflite"
    x = np.asarray(faces, np.float32).reshape(-1, IMG, IMG)
    p_ours = _run_batched(Path(ours), x[..., None])
    rgb = np.stack([cv2.resize(np.repeat(f[:, :, None], 3, axis=2), (fa.INPUT_SIZE, fa.INPUT_SIZE), interpolation=cv2.INTER_LINEAR) for f in x])
    return p_ours, _run_batched(Path(fa_file), rgb)


def _run_batched(path: Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return run_batched(path, x, len(fa.CLASSES), batch)


def selection_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The faces the weights are chosen on, as 48x48 gray crops and FER2013 label ids: FER2013's
    public test (the dataset crops) and the Taiwanese dev photos (MTCNN, the largest confident
    face, ``norm_crop`` onto the fer2013 template, as the runtime does)."""
    import cv2

    from emoadapt.alignment import norm_crop
    from emoadapt.detection import MTCNN
    from scripts._common import data_dir, taiwanese_label

    data = data_dir()
    with np.load(data / "fer2013.npz", allow_pickle=False) as z:
        out = {"fer2013_public": (z["x_public_test"], z["y_public_test"].astype(np.int64))}
    det = MTCNN(num_threads=2)
    crops, ys = [], []
    for f in sorted((data / "faces" / "taiwanese").glob("*.jpg")):
        img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        r = det.detect(img)
        ok = np.flatnonzero(r.scores >= 0.9) if len(r) else np.zeros(0, int)
        if not ok.size:
            continue  # (every dev photo has a face)
        b = r.boxes[ok]
        k = ok[np.lexsort((-r.scores[ok], -(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))[0]]
        crops.append(norm_crop(img, r.landmarks[k], IMG, "fer2013", gray=True))
        ys.append(list(fa.CLASSES).index(taiwanese_label(f.name)))
    out["taiwanese_dev"] = (np.stack(crops), np.array(ys))
    return out


#: a candidate registered under this name prefix (``<name>_int8`` / ``<name>_f32``)
NAME = "emoadapt_faceapi"


def build(out_dir: Path, pkg: str | os.PathLike[str] | None = None) -> list[dict]:
    """Choose the weight and mode on the selection sets (:func:`selection_sets`,
    :func:`choose`), write ``emoadapt_faceapi_int8.tflite`` and ``emoadapt_faceapi_f32.tflite``,
    check each export against the members combined in numpy on the selection faces, and return
    the manifest entries (not shipped by default: a candidate)."""
    sets = selection_sets()
    members = {k: (*member_probs(x), y) for k, (x, y) in sets.items()}
    choice = choose({k: (a, b, y) for k, (a, b, y) in members.items()})
    log.info("ensemble choice: %s", {k: v for k, v in choice.items() if k != "grid"})
    module = build_tf_module(choice["w"], choice["mode"], pkg=pkg)
    x = np.concatenate([sets[k][0] for k in sets])[::7]
    want = combine(*member_probs(x), choice["w"], choice["mode"])
    entries = []
    for variant, quantize, what in (("int8", True, "dynamic-range int8 weights, float32 activations"), ("f32", False, "float32")):
        f = convert(module, Path(out_dir) / f"{NAME}_{variant}.tflite", quantize)
        probs, _ = _run(f, x[..., None].astype(np.float32))
        check = fa.compare(probs, want)
        log.info("%s_%s vs the members combined on %d faces: %s", NAME, variant, len(x), check)
        ok = check["max_abs_prob_diff"] < 1e-3 if not quantize else check["top1_agreement"] >= 0.97
        if not ok:
            raise ValueError(f"{NAME}_{variant} does not compute the ensemble: {check}")
        entries.append(entry(f"{NAME}_{variant}", f.name, what, choice, True, 0.6, {k: round(v, 6) for k, v in check.items()}))
    return entries


def write_soft_targets(out_dir: str | os.PathLike[str], w: float = 0.25, mode: str = "prob") -> dict[str, Path]:
    """Per-face training targets for ``python -m scripts.train_backbone --soft-targets`` (issue 28's
    candidates), each an npz whose ``train`` is (28709, 7) in FER2013 order:

    * ``soft_distill_ens.npz``: the ensemble teacher (``w`` / ``mode`` as chosen by :func:`build`)
      on every FER2013 training face, the face's and its mirror image's members averaged first;
    * ``soft_ferplus.npz``: the FERPlus crowd votes of the 7 FER2013 emotions, renormalised
      (contempt / unknown / not-a-face dropped); NaN rows where none is left (unmatched faces)."""
    from scripts._common import data_dir

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data_dir()
    with np.load(data / "fer2013.npz", allow_pickle=False) as z:
        x = z["x_train"]
    pa, pb = member_probs(x)
    pam, pbm = member_probs(np.ascontiguousarray(x[:, :, ::-1]))
    teacher = combine((pa + pam) / 2, (pb + pbm) / 2, w, mode).astype(np.float32)
    paths = {"distill": out / "soft_distill_ens.npz", "ferplus": out / "soft_ferplus.npz"}
    np.savez(paths["distill"], train=teacher, note=np.array(f"{NAME} teacher: {mode} mix w={w} of emoadapt_fer_f32 and faceapi_expression_f32, face + mirror"))
    with np.load(data / "fer2013_ferplus_votes.npz", allow_pickle=False) as v:
        votes = v["votes_train"].astype(np.float32)
        names = [str(n) for n in v["vote_names"]]
    cols = [names.index(n) for n in ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")]
    sv = votes[:, cols]
    ok = (votes[:, 0] >= 0) & (sv.sum(1) > 0)
    soft = np.full_like(sv, np.nan)
    soft[ok] = sv[ok] / sv[ok].sum(1, keepdims=True)
    np.savez(paths["ferplus"], train=soft, note=np.array("FERPlus votes of the 7 FER2013 emotions, renormalised; NaN where none"))
    return paths
