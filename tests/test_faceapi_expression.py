"""face-api.js's faceExpressionNet rebuilt as a TFLite emotion backbone: parity with the upstream
graph on real faces, class order, provenance.

Reference: ``tests/fixtures/faceapi_expression_reference.npz`` (``scripts/make_faceapi_expression_fixtures.py``):
for real photos, our MTCNN landmarks, the template of the 112x112 crops, and the outputs of
face-api's own ``FaceExpressionNet`` run by TF.js (the package's bundle, CPU backend) on those
crops, with the weight files' sha256.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from emoadapt.alignment import norm_crop

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "faceapi_expression_reference.npz"
MODEL_FILE = ROOT / "models" / "faceapi_expression_f32.tflite"
FER = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
#: face-api's class names -> FER2013's (the shipped model's order)
UPSTREAM_TO_FER = {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry", "fearful": "fear", "disgusted": "disgust", "surprised": "surprise"}

sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def crops(ref, data_dir):
    size = int(ref["size"])
    out = []
    for name, lm in zip(ref["names"], ref["landmarks"]):
        img = cv2.cvtColor(cv2.imread(str(data_dir / "faces" / str(name))), cv2.COLOR_BGR2RGB)
        out.append(norm_crop(img, lm, size, ref["template"]))
    return np.stack(out)


def _upstream_in_fer_order(ref) -> np.ndarray:
    cols = [[UPSTREAM_TO_FER[str(c)] for c in ref["upstream_classes"]].index(k) for k in FER]
    return ref["upstream_probs"][:, cols]


def _run_file(path: Path, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    inp = it.get_input_details()[0]
    assert list(inp["shape"][1:]) == [112, 112, 3]
    it.resize_tensor_input(inp["index"], [len(crops), 112, 112, 3])
    it.allocate_tensors()
    it.set_tensor(inp["index"], crops.astype(np.float32))
    it.invoke()
    outs = {int(d["shape"][-1]): it.get_tensor(d["index"]) for d in it.get_output_details()}
    return outs[7], outs[256]


def test_shipped_file_reproduces_the_upstream_graph(ref, crops):
    probs, feats = _run_file(MODEL_FILE, crops)
    want = _upstream_in_fer_order(ref)
    assert probs.shape == want.shape == (len(ref["names"]), 7)
    # The network is float32 like TF.js's CPU backend; what reaches it is a uint8 crop made by
    # cv2.warpAffine, whose rounding may move single pixels by one grey level between OpenCV
    # releases: the probabilities stay within 2e-3 of TF.js's, the answers are the same.
    assert np.abs(probs - want).max() < 2e-3, np.abs(probs - want).max()
    assert np.array_equal(probs.argmax(1), want.argmax(1))
    cos = (feats * ref["upstream_features"]).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(ref["upstream_features"], axis=1))
    assert cos.min() > 0.9999, cos.min()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # the batch dimension is free: one face at a time gives the same answers
    p1, _ = _run_file(MODEL_FILE, crops[:1])
    np.testing.assert_allclose(p1, probs[:1], atol=1e-6)


def test_outputs_are_in_fer2013_order(ref, crops):
    """The fc columns were permuted by name: on the fixture's Taiwanese photos acted as happy
    (letter b) the model answers happy, as face-api does under its own name for it."""
    probs, _ = _run_file(MODEL_FILE, crops)
    names = [str(n) for n in ref["names"]]
    happy = [i for i, n in enumerate(names) if n.startswith("taiwanese/") and n.split("/")[1][4] == "b"]
    assert happy, "the fixture holds happy photos"
    assert all(FER[probs[i].argmax()] == "happy" for i in happy)
    up = [str(c) for c in ref["upstream_classes"]]
    assert all(up[ref["upstream_probs"][i].argmax()] == "happy" for i in happy)


def test_fixture_names_the_published_weight_files(ref):
    from builders import faceapi_expression as fa

    stored = dict(str(s).split(" ") for s in ref["upstream_sha256"])
    assert stored == {k: v for k, v in fa.UPSTREAM_SHA256.items() if fa.MODEL in k}
    assert "@vladmandic/face-api@1.7.15" in str(ref["source"]) and "TF.js" in str(ref["source"])
    assert list(ref["upstream_classes"]) == list(fa.FACEAPI_CLASSES)
    assert [fa.CLASSES[i] for i in np.argsort(fa.ORDER)] == [UPSTREAM_TO_FER[c] for c in fa.FACEAPI_CLASSES]


@pytest.mark.live
def test_numpy_reference_and_tflite_export_match_the_upstream_graph(ref, crops):
    """The builder's numpy reimplementation (from the weight file, sha256 checked) reproduces
    TF.js's outputs; the TF rebuild exported float32 reproduces both (needs the unpacked npm
    package and TensorFlow)."""
    from builders import faceapi_expression as fa

    try:
        weights = fa.load_weights(fa.package_dir(fetch=False))
    except FileNotFoundError as e:
        pytest.skip(str(e))
    logits, feats = fa.reference_forward(weights, crops.astype(np.float32))
    np.testing.assert_allclose(fa.softmax(logits), ref["upstream_probs"], atol=1e-5)
    np.testing.assert_allclose(feats, ref["upstream_features"], rtol=1e-4, atol=1e-5)
    pytest.importorskip("tensorflow")
    import tempfile

    module = fa.build_tf_module(weights)
    with tempfile.TemporaryDirectory() as tmp:
        f = fa.convert(module, Path(tmp) / "x.tflite", quantize=False)
        probs, _ = _run_file(f, crops)
    np.testing.assert_allclose(probs, _upstream_in_fer_order(ref), atol=1e-5)
