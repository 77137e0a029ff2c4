"""Convert facenet-pytorch's MTCNN (P-Net, R-Net, O-Net) to float32 TFLite.

Source: PyPI package ``facenet-pytorch`` 2.6.0 (MIT), state dicts
``facenet_pytorch/data/{pnet,rnet,onet}.pt`` (themselves converted by the facenet-pytorch
authors from davidsandberg/facenet's MTCNN, i.e. the original Zhang et al. 2016 Caffe weights).

The three networks are rebuilt in Keras (tf_keras) with identical weights:

* conv kernels OIHW -> HWIO, PReLU per-channel slopes (shared over the spatial axes);
* torch ``MaxPool2d(ceil_mode=True)`` -> ``padding="same"`` where that gives the same windows
  (the extra window hangs over the bottom/right edge, padding ignored by max) and
  ``padding="valid"`` where ceil mode adds no window;
* facenet-pytorch flattens R-Net/O-Net features after ``x.permute(0, 3, 2, 1)``, i.e. in
  (W, H, C) order; Keras flattens NHWC in (H, W, C) order, so the rows of the first dense
  kernel are permuted accordingly (no transpose op in the graph).

Input normalisation ``(x - 127.5) * 0.0078125`` is **inside** the graphs: every model takes
raw RGB pixel values 0..255 as float32 NHWC. The runtime (``emoadapt/detection/``) only
resizes (area averaging, exactly as ``torch.nn.functional.interpolate(mode="area")``).

* ``mtcnn_pnet``: input ``(1, H, W, 3)`` with H, W dynamic (the runtime calls
  ``resize_tensor_input`` per pyramid level); outputs ``prob`` ``(1, h, w, 2)`` (softmax,
  channel 1 = face) and ``reg`` ``(1, h, w, 4)`` with h = ceil((H-2)/2) - 4.
* ``mtcnn_rnet``: input ``(N, 24, 24, 3)``; outputs ``prob`` ``(N, 2)``, ``reg`` ``(N, 4)``.
* ``mtcnn_onet``: input ``(N, 48, 48, 3)``; outputs ``prob`` ``(N, 2)``, ``reg`` ``(N, 4)``,
  ``landmarks`` ``(N, 10)`` (x1..x5 then y1..y5, relative to the box).

Outputs are told apart by their last dimension (2, 4, 10), which is unique per model.

The builder asserts Keras == torch (max abs diff < 1e-4) and TFLite == torch (< 1e-4) on
random inputs before writing the manifest entries.

Import order: torch is imported before TensorFlow (the other order segfaults in one process).
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("build_models.mtcnn")

PACKAGE = "facenet-pytorch"
SCALE = 0.0078125  # facenet-pytorch: (x - 127.5) * 0.0078125
OFFSET = -127.5 * SCALE
TOL = 1e-4

FILES = {"pnet": "mtcnn_pnet.tflite", "rnet": "mtcnn_rnet.tflite", "onet": "mtcnn_onet.tflite"}


# --------------------------------------------------------------------------- torch side
def ensure_torchvision() -> str:
    """Make ``import facenet_pytorch`` work without a usable torchvision (see
    :mod:`builders.torchvision_standin`); returns ``"torchvision"`` or ``"stand-in"``."""
    from .torchvision_standin import install

    how = install()
    if how != "torchvision":
        log.info("torchvision not usable: registered a minimal stand-in (nms, batched_nms, to_tensor)")
    return how


def _torch_nets():
    import torch  # noqa: F401  (first: torch before tensorflow)

    ensure_torchvision()
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    nets = {"pnet": PNet(pretrained=False), "rnet": RNet(pretrained=False), "onet": ONet(pretrained=False)}
    data = _data_dir()
    for name, net in nets.items():
        sd = torch.load(data / f"{name}.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(sd)
        net.eval()
    return nets


def _data_dir() -> Path:
    import facenet_pytorch

    return Path(facenet_pytorch.__file__).resolve().parent / "data"


def _sd(net) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}


# --------------------------------------------------------------------------- keras side
def _conv(K, sd, name, filters, k, x):
    layer = K.layers.Conv2D(filters, k, name=name)
    y = layer(x)
    w = sd[f"{name}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
    layer.set_weights([w, sd[f"{name}.bias"]])
    return y


def _prelu(K, sd, name, x, spatial: bool):
    layer = K.layers.PReLU(shared_axes=[1, 2] if spatial else None, name=name)
    y = layer(x)
    a = sd[f"{name}.weight"]
    layer.set_weights([a.reshape(1, 1, -1) if spatial else a])
    return y


def _dense(K, sd, name, units, x, flatten_hwc: tuple[int, int, int] | None = None):
    layer = K.layers.Dense(units, name=name)
    y = layer(x)
    w = sd[f"{name}.weight"].T  # (in, out)
    if flatten_hwc is not None:
        h, wd, c = flatten_hwc
        # torch input index is (w, h, c) [after permute(0,3,2,1)], keras is (h, w, c)
        w = w.reshape(wd, h, c, units).transpose(1, 0, 2, 3).reshape(h * wd * c, units)
    layer.set_weights([w, sd[f"{name}.bias"]])
    return y


def _norm(K, x):
    return K.layers.Rescaling(SCALE, offset=OFFSET, name="normalize")(x)


def _trunk(K, sd, x, layers):
    """The convolutions of a stage: for each ``(channels, kernel, pool)`` of ``layers`` (i = 1,
    2, ...), ``conv{i}`` + ``prelu{i}``, then, when ``pool`` is ``(size, stride, padding)``,
    max pooling ``pool{i}``."""
    for i, (channels, kernel, pool) in enumerate(layers, 1):
        x = _prelu(K, sd, f"prelu{i}", _conv(K, sd, f"conv{i}", channels, kernel, x), True)
        if pool is not None:
            size, stride, padding = pool
            x = K.layers.MaxPooling2D(size, stride, padding=padding, name=f"pool{i}")(x)
    return x


def keras_pnet(K, sd):
    inp = K.Input((None, None, 3), batch_size=1, name="image")
    x = _trunk(K, sd, _norm(K, inp), [(10, 3, (2, 2, "same")), (16, 3, None), (32, 3, None)])
    prob = K.layers.Softmax(axis=-1, name="prob")(_conv(K, sd, "conv4_1", 2, 1, x))
    reg = _conv(K, sd, "conv4_2", 4, 1, x)
    return K.Model(inp, [prob, reg], name="mtcnn_pnet")


def keras_rnet(K, sd):
    inp = K.Input((24, 24, 3), name="image")
    # sizes: 24 -> conv1 22 -> pool1 11 (ceil) -> conv2 9 -> pool2 4 (ceil == floor) -> conv3 3
    x = _trunk(K, sd, _norm(K, inp), [(28, 3, (3, 2, "same")), (48, 3, (3, 2, "valid")), (64, 2, None)])
    x = K.layers.Flatten()(x)
    x = _prelu(K, sd, "prelu4", _dense(K, sd, "dense4", 128, x, (3, 3, 64)), False)
    prob = K.layers.Softmax(name="prob")(_dense(K, sd, "dense5_1", 2, x))
    reg = _dense(K, sd, "dense5_2", 4, x)
    return K.Model(inp, [prob, reg], name="mtcnn_rnet")


def keras_onet(K, sd):
    inp = K.Input((48, 48, 3), name="image")
    # sizes: 48 -> conv1 46 -> pool1 23 (ceil) -> conv2 21 -> pool2 10 -> conv3 8 -> pool3 4 -> conv4 3
    x = _trunk(K, sd, _norm(K, inp), [(32, 3, (3, 2, "same")), (64, 3, (3, 2, "valid")), (64, 3, (2, 2, "valid")), (128, 2, None)])
    x = K.layers.Flatten()(x)
    x = _prelu(K, sd, "prelu5", _dense(K, sd, "dense5", 256, x, (3, 3, 128)), False)
    prob = K.layers.Softmax(name="prob")(_dense(K, sd, "dense6_1", 2, x))
    reg = _dense(K, sd, "dense6_2", 4, x)
    lms = _dense(K, sd, "dense6_3", 10, x)
    return K.Model(inp, [prob, reg, lms], name="mtcnn_onet")


# --------------------------------------------------------------------------- parity
def _torch_outputs(net, name: str, x_nhwc: np.ndarray) -> dict[int, np.ndarray]:
    """Torch outputs of ``net`` on raw pixels, keyed by last dim, in NHWC."""
    import torch

    t = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()
    t = (t - 127.5) * 0.0078125
    with torch.no_grad():
        outs = net(t)
    res = {}
    for o in outs:
        o = o.numpy()
        if o.ndim == 4:
            o = o.transpose(0, 2, 3, 1)
        res[o.shape[-1]] = o
    return res


def _max_diff(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> float:
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    for k in a:
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _tflite_outputs(path: Path, x: np.ndarray) -> dict[int, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(d["index"], x)
    it.invoke()
    return {int(o["shape"][-1]): it.get_tensor(o["index"]).copy() for o in it.get_output_details()}


def _inputs(name: str) -> dict:
    shape = {"pnet": [1, None, None, 3], "rnet": [None, 24, 24, 3], "onet": [None, 48, 48, 3]}[name]
    return {
        "shape": shape,
        "dtype": "float32",
        "layout": "NHWC",
        "color": "RGB",
        "range": [0, 255],
        "normalization": "in-model: (x - 127.5) * 0.0078125 (facenet-pytorch); feed raw pixel values",
        "resize": "runtime: area averaging (torch interpolate mode='area', i.e. adaptive average pooling)",
        "dynamic": "H and W: resize_tensor_input per pyramid level"
        if name == "pnet"
        else "batch: one invoke for all candidate boxes (resize_tensor_input on dim 0)",
    }


def _outputs(name: str, names: dict[int, str]) -> dict:
    if name == "pnet":
        o = {
            "prob": {"shape": [1, None, None, 2], "match": "last dim 2", "what": "softmax, channel 1 = face"},
            "reg": {"shape": [1, None, None, 4], "match": "last dim 4", "what": "box offsets dx1, dy1, dx2, dy2"},
        }
    else:
        o = {
            "prob": {"shape": [None, 2], "match": "last dim 2", "what": "softmax, column 1 = face"},
            "reg": {"shape": [None, 4], "match": "last dim 4", "what": "box offsets dx1, dy1, dx2, dy2 (x box size)"},
        }
        if name == "onet":
            o["landmarks"] = {
                "shape": [None, 10],
                "match": "last dim 10",
                "what": "x of left eye, right eye, nose, mouth left, mouth right, then their y; fractions of the box",
            }
    for v in o.values():
        v["tensor"] = names.get(int(v["shape"][-1]))
    return o


# --------------------------------------------------------------------------- build
def build(out_dir: Path) -> list[dict]:
    import tensorflow as tf
    import tf_keras as K
    import torch  # noqa: F401  (must precede tensorflow)

    version = importlib.metadata.version(PACKAGE)
    torch_nets = _torch_nets()
    makers = {"pnet": keras_pnet, "rnet": keras_rnet, "onet": keras_onet}
    rng = np.random.default_rng(0)
    test_inputs = {
        "pnet": [
            rng.uniform(0, 255, (1, 37, 53, 3)).astype(np.float32),
            rng.uniform(0, 255, (1, 12, 12, 3)).astype(np.float32),
            rng.uniform(0, 255, (1, 120, 91, 3)).astype(np.float32),
        ],
        "rnet": [rng.uniform(0, 255, (7, 24, 24, 3)).astype(np.float32)],
        "onet": [rng.uniform(0, 255, (5, 48, 48, 3)).astype(np.float32)],
    }
    entries = []
    for name, maker in makers.items():
        net = torch_nets[name]
        km = maker(K, _sd(net))
        keras_err = 0.0
        for x in test_inputs[name]:
            ref = _torch_outputs(net, name, x)
            got = {o.shape[-1]: o for o in (np.asarray(t) for t in km(x, training=False))}
            keras_err = max(keras_err, _max_diff(ref, got))
        log.info("%s: Keras vs torch max abs diff %.2e", name, keras_err)
        assert keras_err < TOL, f"{name}: Keras differs from torch by {keras_err}"

        conv = tf.lite.TFLiteConverter.from_keras_model(km)
        out = Path(out_dir) / FILES[name]
        out.write_bytes(conv.convert())

        tfl_err = 0.0
        for x in test_inputs[name]:
            tfl_err = max(tfl_err, _max_diff(_torch_outputs(net, name, x), _tflite_outputs(out, x)))
        log.info("%s: TFLite vs torch max abs diff %.2e", name, tfl_err)
        assert tfl_err < TOL, f"{name}: TFLite differs from torch by {tfl_err}"

        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(out))
        names = {int(o["shape_signature"][-1]): o["name"] for o in it.get_output_details()}
        entries.append(
            {
                "name": f"mtcnn_{name}",
                "file": FILES[name],
                "kind": "face_detector",
                "source": {
                    "package": PACKAGE,
                    "version": version,
                    "registry": "PyPI",
                    "path": f"facenet_pytorch/data/{name}.pt",
                    "notes": "MTCNN (Zhang et al. 2016) weights as shipped by facenet-pytorch; rebuilt in Keras "
                    "with identical weights and converted to float32 TFLite",
                },
                "licence": "MIT",
                "inputs": _inputs(name),
                "outputs": _outputs(name, names),
                "parity": {"max_abs_diff_keras_vs_torch": keras_err, "max_abs_diff_tflite_vs_torch": tfl_err},
            }
        )
    return entries
