"""face-api.js's faceExpressionNet rebuilt as a TFLite emotion backbone: parity with the upstream
graph on real faces, class order, provenance.

Reference: ``tests/fixtures/faceapi_expression_reference.npz`` (``scripts/make_faceapi_expression_fixtures.py``):
for real photos, our MTCNN landmarks, the template of the 112x112 crops, and the outputs of
face-api's own ``FaceExpressionNet`` run by TF.js (the package's bundle, CPU backend) on those
crops, with the weight files' sha256.
"""

from __future__ import annotations

import hashlib
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
    from scripts.builders import faceapi_expression as fa

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
    from scripts.builders import faceapi_expression as fa

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


# ------------------------------------------------------------------ the ensemble candidate builder


def test_ensemble_weights_are_chosen_on_the_selection_sets_and_beat_both_members(fer2013):
    """``expression_ensemble.choose`` on the shipped members' real probabilities (FER2013's public
    test, the selection set): the chosen mix is at least as accurate there as either member
    alone, and logit averaging is a weighted geometric mean of the probabilities."""
    from scripts.builders import expression_ensemble as ens

    x, y = fer2013["x_public_test"][::3], fer2013["y_public_test"][::3].astype(np.int64)
    p_ours, p_fa = ens.member_probs(x)
    assert p_ours.shape == p_fa.shape == (len(x), 7)
    choice = ens.choose({"fer2013_public": (p_ours, p_fa, y)})
    assert choice["selection_sets"] == ["fer2013_public"] and choice["mode"] in ("prob", "logit")
    best = choice["best"]["fer2013_public"]
    assert best >= max(np.mean(p_ours.argmax(1) == y), np.mean(p_fa.argmax(1) == y))
    geo = p_ours**0.7 * p_fa**0.3
    np.testing.assert_allclose(ens.combine(p_ours, p_fa, 0.3, "logit"), geo / geo.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ens.combine(p_ours, p_fa, 0.3, "prob"), 0.7 * p_ours + 0.3 * p_fa)


@pytest.mark.live
def test_ensemble_reemits_our_network_exactly(fer2013):
    """The ensemble's copy of our network (the float32 TFLite file re-emitted op by op as TF ops)
    computes what the shipped file computes, logits included (needs TensorFlow)."""
    tf = pytest.importorskip("tensorflow")
    from scripts.builders import expression_ensemble as ens

    x = fer2013["x_private_test"][:64, :, :, None].astype(np.float32)
    run = ens.tflite_to_tf(ens.OURS_F32)
    t = run(tf.constant(x))
    want = ens._run_batched(ens.OURS_F32, x)
    np.testing.assert_allclose(t[run.probs].numpy(), want, atol=1e-5)
    np.testing.assert_allclose(tf.nn.softmax(t[run.logits]).numpy(), want, atol=1e-5)
    assert t[run.features].shape == (64, 256)


# ------------------------------------------------------------------ the shipped entry and the runtime


def test_manifest_entry_names_the_published_files_and_the_shipped_file():
    from emoadapt import zoo
    from scripts.builders import faceapi_expression as fa

    e = zoo.model_entry("faceapi_expression")
    assert e["file"] == MODEL_FILE.name and e["sha256"] == hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest()
    assert e["kind"] == "emotion_backbone" and e["classes"] == FER
    assert (e["source"]["package"], e["source"]["version"], e["source"]["registry"]) == ("@vladmandic/face-api", "1.7.15", "npm")
    assert e["source"]["sha256"] == {k: v for k, v in fa.UPSTREAM_SHA256.items() if fa.MODEL in k}
    assert e["licence"].startswith("MIT")
    assert e["adapts"] is False and e["heads"]["universal_head"] == "mean_probability"
    np.testing.assert_allclose(e["inputs"]["align"]["template"], fa.FACEAPI_LANDMARKS)


def test_backbone_and_recognizer_run_the_shipped_model(ref, crops, tmp_path, data_dir):
    """Through :class:`emoadapt.features.Backbone` (the manifest's input spec) the model gives the
    upstream graph's answers; a Recognizer on it, with face-api's crop geometry, labels a real
    photo acted as happy as happy."""
    import emoadapt
    from emoadapt.features import Backbone

    bb = Backbone("faceapi_expression", num_threads=1)
    assert (bb.classes, bb.input_size, bb.channels, bb.dim) == (FER, (112, 112), 3, 256)
    p = bb.predict_proba(crops)
    want = _upstream_in_fer_order(ref)
    assert np.abs(p - want).max() < 2e-3 and np.array_equal(p.argmax(1), want.argmax(1))
    happy = next(str(n) for n in ref["names"] if str(n).startswith("taiwanese/") and str(n).split("/")[1][4] == "b")
    rec = emoadapt.Recognizer(home=tmp_path / "home", backbone="faceapi_expression", num_threads=1)
    try:
        img = cv2.cvtColor(cv2.imread(str(data_dir / "faces" / happy)), cv2.COLOR_BGR2RGB)
        assert rec.predict(img).label == "happy"
    finally:
        rec.close()
