"""Builder for the identity embedder: dlib's ResNet face descriptor (128-D) as TFLite.

Source of the weights: the npm package ``@vladmandic/face-api`` 1.7.15 (MIT), folder
``model/``: ``face_recognition_model-weights_manifest.json`` + ``face_recognition_model.bin``.
They are the weights of dlib's ``dlib_face_recognition_resnet_model_v1`` (Davis King, CC0,
99.38% on LFW) exported by face-api, most tensors stored as uint8 with a per-tensor
``{scale, min}`` (``w = q * scale + min``), a few (the 64-channel stage's filters) as float32.

There is no graph in the package: the network is rebuilt here from face-api's own source
(``src/faceRecognitionNet/*.ts``) and dlib's definition (``dnn_face_recognition_ex.cpp``)::

    input 150x150x3 RGB, (x - [122.782, 117.001, 104.298]) / 256        (dlib input_rgb_image)
    conv 7x7/2 32 'valid' + affine + relu, maxpool 3x3/2 'valid'        -> 35x35x32
    3 x residual(32)                                                    -> 35x35x32
    residual_down(64) + 3 x residual(64)                                -> 17x17x64
    residual_down(128) + 2 x residual(128)                              -> 8x8x128
    residual_down(256) + 2 x residual(256)                              -> 4x4x256
    residual_down(256)                                                  -> 2x2x256
    global average pool, fully connected 256 -> 128 (no bias)           -> 128

    residual(x)      = relu(x + A2(conv3x3/1 'same'(relu(A1(conv3x3/1 'same'(x))))))
    residual_down(x) = relu(pad(avgpool2x2/2 'valid'(x)) + A2(conv3x3/1 'same'(relu(A1(conv3x3/2 'valid'(x))))))

where ``A(y) = y * scale + offset`` is dlib's ``affine`` layer (batch norm in inference form),
folded here into the preceding convolution's weights and bias. ``pad`` adds zero channels to
the shortcut when the width doubles, and when the strided branch is one pixel smaller than
the pooled shortcut (8x8 -> 3x3 vs 4x4, 4x4 -> 1x1 vs 2x2) the branch is zero-padded at the
bottom/right (dlib's ``add_prev`` adds tensors of different sizes that way; face-api does the
same). The descriptor is the fc output, **not** L2-normalized, like dlib's
``compute_face_descriptor``.

Normalization: face-api divides by 255, dlib's ``input_rgb_image_sized<150>`` by 256; we
follow dlib (the reference we test against). The normalization is inside the model: its
input is the raw RGB chip as float32 in [0, 255], shape [N, 150, 150, 3] (batch dynamic).

Getting the package (nothing is downloaded by this module unless asked)::

    cd /tmp && npm pack @vladmandic/face-api@1.7.15 && tar xzf vladmandic-face-api-1.7.15.tgz
    # -> /tmp/package ; or point FACE_API_DIR at another unpacked copy

``build()`` runs exactly those two commands when the directory is missing and ``npm`` is on
PATH. Needs TensorFlow (the ``build`` extra).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from . import npm, tfjs
from .tflite_export import module_to_tflite as convert

log = logging.getLogger(__name__)

PACKAGE = "@vladmandic/face-api"
VERSION = "1.7.15"
DEFAULT_DIR = Path("/tmp/package")
MEAN_RGB = (122.782, 117.001, 104.298)
INPUT_DIVISOR = 256.0  # dlib; face-api uses 255
INPUT_SIZE = 150
WEIGHTS_MANIFEST = "face_recognition_model-weights_manifest.json"

#: (block name, channels, kind) in network order; kind: "res" or "down".
BLOCKS: list[tuple[str, int, str]] = [
    ("conv32_1", 32, "res"),
    ("conv32_2", 32, "res"),
    ("conv32_3", 32, "res"),
    ("conv64_down", 64, "down"),
    ("conv64_1", 64, "res"),
    ("conv64_2", 64, "res"),
    ("conv64_3", 64, "res"),
    ("conv128_down", 128, "down"),
    ("conv128_1", 128, "res"),
    ("conv128_2", 128, "res"),
    ("conv256_down", 256, "down"),
    ("conv256_1", 256, "res"),
    ("conv256_2", 256, "res"),
    ("conv256_down_out", 256, "down"),
]


def package_dir(path: str | os.PathLike[str] | None = None, fetch: bool = True) -> Path:
    """The unpacked npm package: ``path``, else ``$FACE_API_DIR``, else ``/tmp/package``.

    When it is missing and ``fetch`` is true, run ``npm pack @vladmandic/face-api@1.7.15`` in
    its parent directory and untar it there.
    """
    return npm.package_dir(f"{PACKAGE}@{VERSION}", "FACE_API_DIR", DEFAULT_DIR, f"model/{WEIGHTS_MANIFEST}", path, fetch)


def load_weights(pkg: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """Dequantized float32 weights by face-api name (``conv32_1/conv1/conv/filters`` ...)."""
    return tfjs.load_weights(package_dir(pkg) / "model", WEIGHTS_MANIFEST)


def folded_conv(w: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(HWIO filters, bias) of conv + affine folded: ``(conv(x)+b)*s+t = conv(x, W*s) + b*s+t``."""
    f = w[f"{prefix}/conv/filters"].astype(np.float64)
    b = w[f"{prefix}/conv/bias"].astype(np.float64)
    s = w[f"{prefix}/scale/weights"].astype(np.float64)
    t = w[f"{prefix}/scale/biases"].astype(np.float64)
    return (f * s).astype(np.float32), (b * s + t).astype(np.float32)


def build_tf_module(weights: dict[str, np.ndarray]):
    """A ``tf.Module`` whose ``__call__`` maps [N,150,150,3] float RGB (0..255) to [N,128]."""
    import tensorflow as tf

    convs: dict[str, tuple[tf.Variable, tf.Variable]] = {}

    def var(prefix: str) -> tuple[tf.Variable, tf.Variable]:
        f, b = folded_conv(weights, prefix)
        convs[prefix] = (
            tf.Variable(f, trainable=False, name=prefix.replace("/", "_") + "_w"),
            tf.Variable(b, trainable=False, name=prefix.replace("/", "_") + "_b"),
        )
        return convs[prefix]

    stem = var("conv32_down")
    blocks = [(name, ch, kind, var(f"{name}/conv1"), var(f"{name}/conv2")) for name, ch, kind in BLOCKS]
    fc = tf.Variable(weights["fc"], trainable=False, name="fc")
    mean = tf.constant(np.array(MEAN_RGB, np.float32).reshape(1, 1, 1, 3))
    inv = tf.constant(np.float32(1.0 / INPUT_DIVISOR))

    def conv(x, wb, stride, padding, relu):
        y = tf.nn.bias_add(tf.nn.conv2d(x, wb[0], stride, padding), wb[1])
        return tf.nn.relu(y) if relu else y

    class DlibResNet(tf.Module):
        def __init__(self):
            super().__init__(name="dlib_resnet")
            self.vars = [v for pair in convs.values() for v in pair] + [fc]

        @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32, name="chips")])
        def __call__(self, chips):
            x = (chips - mean) * inv
            x = conv(x, stem, 2, "VALID", True)  # 72x72x32
            x = tf.nn.max_pool2d(x, 3, 2, "VALID")  # 35x35x32
            for _name, ch, kind, c1, c2 in blocks:
                if kind == "res":
                    y = conv(x, c1, 1, "SAME", True)
                    y = conv(y, c2, 1, "SAME", False)
                    x = tf.nn.relu(x + y)
                else:
                    y = conv(x, c1, 2, "VALID", True)
                    y = conv(y, c2, 1, "SAME", False)
                    sc = tf.nn.avg_pool2d(x, 2, 2, "VALID")
                    in_ch = x.shape[-1]
                    if ch != in_ch:
                        sc = tf.pad(sc, [[0, 0], [0, 0], [0, 0], [0, ch - in_ch]])
                    dh = sc.shape[1] - y.shape[1]
                    dw = sc.shape[2] - y.shape[2]
                    if dh or dw:
                        y = tf.pad(y, [[0, 0], [0, dh], [0, dw], [0, 0]])
                    x = tf.nn.relu(sc + y)
            x = tf.reduce_mean(x, axis=[1, 2])  # global average pool
            return tf.identity(tf.matmul(x, fc), name="descriptor")

    return DlibResNet()


def _entry(name: str, file: str, quantization: str) -> dict:
    from .tflite_export import rgb_float_input

    return {
        "name": name,
        "file": file,
        "source": {
            "package": PACKAGE,
            "version": VERSION,
            "registry": "npm",
            "path": "model/face_recognition_model-*",
        },
        "licence": "MIT (package); model weights CC0 (dlib, Davis King)",
        "architecture": "dlib_face_recognition_resnet_model_v1 (29-conv ResNet, 128-D metric embedding)",
        "quantization": quantization,
        "inputs": rgb_float_input(
            INPUT_SIZE,
            "in-model: (x - [122.782, 117.001, 104.298]) / 256 (dlib input_rgb_image)",
            {
                "method": "dlib get_face_chip",
                "size": INPUT_SIZE,
                "padding": 0.25,
                "landmarks": "5-point; for MTCNN landmarks use emoadapt.identity.MTCNN_CHIP_TEMPLATE",
            },
        ),
        "outputs": {"descriptor": 128, "l2_normalized": False, "same_person_threshold_euclidean": 0.6},
    }


def build(out_dir: Path, pkg: str | os.PathLike[str] | None = None, ship_f32: bool = False) -> list[dict]:
    """Build ``dlib_resnet_int8.tflite`` (shipped default, manifest name ``dlib_resnet``) and,
    when ``ship_f32`` (or ``$DLIB_RESNET_F32=1``), ``dlib_resnet_f32.tflite``
    (``dlib_resnet_f32``). Returns the manifest entries."""
    out_dir = Path(out_dir)
    weights = load_weights(pkg)
    module = build_tf_module(weights)
    convert(module, out_dir / "dlib_resnet_int8.tflite", quantize=True)
    entries = [_entry("dlib_resnet", "dlib_resnet_int8.tflite", "dynamic-range int8 weights, float32 activations")]
    if ship_f32 or os.environ.get("DLIB_RESNET_F32") == "1":
        convert(module, out_dir / "dlib_resnet_f32.tflite", quantize=False)
        entries.append(_entry("dlib_resnet_f32", "dlib_resnet_f32.tflite", "float32"))
    return entries
