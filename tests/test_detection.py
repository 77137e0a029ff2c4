"""MTCNN on TFLite vs facenet-pytorch (recorded fixture and, with -m live, the real thing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from _scripts import EXAMPLE_CLIP
from conftest import need_data

from emoadapt.detection import MTCNN, Detections
from emoadapt.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "mtcnn_reference.json"
CONFIDENT = 0.9
MIN_IOU = 0.95
MAX_LANDMARK_PX = 2.0


@pytest.fixture(scope="module")
def det() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text())["files"]


def _rgb(name: str) -> np.ndarray:
    """``faces/<name>`` of the real data (the tests' skip when the data is absent)."""
    path = need_data("faces", *name.split("/"))
    img = cv2.imread(str(path))
    if img is None:
        pytest.fail(f"real data unreadable: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _photos() -> list[str]:
    return json.loads(FIXTURE.read_text())["files"].keys() if FIXTURE.exists() else []


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) of x1,y1,x2,y2 boxes."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def compare(ref_boxes, ref_probs, ref_landmarks, ours: Detections) -> dict:
    """Match confident reference faces to ours and ours to the reference; returns the stats
    and the list of failures (empty when parity holds)."""
    rb = np.asarray(ref_boxes, float).reshape(-1, 4)
    rp = np.asarray(ref_probs, float).reshape(-1)
    rl = np.asarray(ref_landmarks, float).reshape(-1, 5, 2)
    iou = _iou(rb, ours.boxes)
    fails, ious, lm_errs = [], [], []
    for i in np.flatnonzero(rp >= CONFIDENT):
        if len(ours) == 0:
            fails.append(f"reference face {i} (p={rp[i]:.3f}) not found")
            continue
        j = int(iou[i].argmax())
        err = float(np.linalg.norm(rl[i] - ours.landmarks[j], axis=1).max())
        ious.append(float(iou[i, j]))
        lm_errs.append(err)
        if iou[i, j] < MIN_IOU or err > MAX_LANDMARK_PX:
            fails.append(f"reference face {i}: best IoU {iou[i, j]:.3f}, landmark error {err:.2f}px")
    for j in np.flatnonzero(ours.scores >= CONFIDENT):
        if rb.shape[0] == 0 or iou[:, j].max() < MIN_IOU:
            fails.append(f"extra confident face {ours.boxes[j].round(1).tolist()} (p={ours.scores[j]:.3f})")
    return {"fails": fails, "ious": ious, "landmark_errors": lm_errs}


# ------------------------------------------------------------------ parity with the fixture
def test_fixture_covers_every_photo(reference):
    identity, actors = need_data("faces", "identity"), need_data("faces", "ravdess_actors")
    photos = sorted(f"{p.parent.name}/{p.name}" for p in list(identity.glob("*.jpg")) + list(actors.glob("*.png")))
    assert photos, f"no photos under {identity.parent}"
    assert sorted(reference) == photos, "tests/fixtures/mtcnn_reference.json is stale: rerun scripts/make_reference_fixtures.py mtcnn"
    # the group photos hold many faces: the comparison is not only on easy single portraits
    assert sum(len(v["probs"]) for k, v in reference.items() if "sample" in k) >= 15


@pytest.mark.parametrize("name", sorted(_photos()))
def test_parity_with_facenet_pytorch(det, reference, name):
    ref = reference[name]
    img = _rgb(name)
    assert list(img.shape) == ref["shape"]
    ours = det.detect(img)
    res = compare(ref["boxes"], ref["probs"], ref["landmarks"], ours)
    assert not res["fails"], f"{name}: {res['fails']}"
    # the parity is essentially exact (same weights, same resampling, float32 throughout)
    if res["ious"]:
        assert min(res["ious"]) > 0.999 and max(res["landmark_errors"]) < 0.05, res


def test_detections_contract(det, photo):
    d = det.detect(photo("sample4.jpg"))
    assert len(d) >= 4
    assert d.boxes.dtype == np.float32 and d.boxes.shape == (len(d), 4)
    assert d.scores.dtype == np.float32 and d.scores.shape == (len(d),)
    assert d.landmarks.dtype == np.float32 and d.landmarks.shape == (len(d), 5, 2)
    assert np.all(np.diff(d.scores) <= 0), "sorted by score, highest first"
    assert np.all(d.boxes[:, 2] > d.boxes[:, 0]) and np.all(d.boxes[:, 3] > d.boxes[:, 1])
    # every landmark lies inside its (square) box
    lm, b = d.landmarks, d.boxes[:, None, :]
    assert np.all((lm[..., 0] >= b[..., 0]) & (lm[..., 0] <= b[..., 2]) & (lm[..., 1] >= b[..., 1]) & (lm[..., 1] <= b[..., 3]))


@pytest.mark.parametrize("name", ["Actor_01.png", "Actor_08.png", "Actor_17.png", "obama.jpg"])
def test_landmark_order_on_upright_faces(det, photo, name):
    d = det.detect(photo(name))
    k = int(np.argmax(d.scores))
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = d.landmarks[k]
    assert lex < nx < rex and lmx < rmx, "left eye/mouth corner has the smaller x"
    assert max(ley, rey) < ny < min(lmy, rmy), "eyes above nose above mouth"


def test_video_frame_has_one_face(det):
    cap = cv2.VideoCapture(str(EXAMPLE_CLIP))  # the shipped copy of the data's 1001_DFA_HAP_XX.flv
    ok, bgr = cap.read()
    cap.release()
    assert ok, "CREMA-D clip not decodable"
    frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert frame.shape == (360, 480, 3)
    d = det.detect(frame)
    assert (d.scores >= CONFIDENT).sum() == 1
    x1, y1, x2, y2 = d.boxes[0]
    assert 60 < x2 - x1 < 250 and 0 <= x1 and x2 <= 480


# ------------------------------------------------------------------ behaviour
@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_image_has_no_face(det, value):
    d = det.detect(np.full((360, 480, 3), value, np.uint8))
    assert len(d) == 0
    assert d.boxes.shape == (0, 4) and d.scores.shape == (0,) and d.landmarks.shape == (0, 5, 2)


def test_tiny_image_has_no_face(det):
    assert len(det.detect(np.zeros((10, 10, 3), np.uint8))) == 0
    assert len(det.detect(np.zeros((1, 1, 3), np.uint8))) == 0


def test_deterministic(det, photo):
    img = photo("obama.jpg")
    a, b = det.detect(img), det.detect(img.copy())
    c = MTCNN().detect(img)
    for x in (b, c):
        np.testing.assert_array_equal(a.boxes, x.boxes)
        np.testing.assert_array_equal(a.scores, x.scores)
        np.testing.assert_array_equal(a.landmarks, x.landmarks)


def test_input_not_modified_and_views_accepted(det, photo):
    img = photo("biden.jpg")
    before = img.copy()
    full = det.detect(img)
    np.testing.assert_array_equal(img, before)
    # a non-contiguous view (every channel reversed twice) gives the same result
    view = img[:, :, ::-1][:, :, ::-1]
    np.testing.assert_array_equal(det.detect(view).boxes, full.boxes)


def test_roi_and_min_face_size_hooks(det, photo):
    img = photo("Actor_05.png")
    full = det.detect(img)
    assert len(full) >= 1
    x1, y1, x2, y2 = full.boxes[0]
    pad = 40
    roi = (max(0, x1 - pad), max(0, y1 - pad), min(img.shape[1], x2 + pad), min(img.shape[0], y2 + pad))
    part = det.detect(img, roi=roi)
    assert len(part) >= 1
    # same face, reported in full-image coordinates
    assert _iou(full.boxes[:1], part.boxes[:1])[0, 0] > 0.8
    assert np.abs(part.landmarks[0] - full.landmarks[0]).max() < 6
    # a region without the face finds nothing confident
    assert not (det.detect(img, roi=(0, 0, 40, 40)).scores >= CONFIDENT).any()
    # faces smaller than min_face_size are not searched for
    side = float(x2 - x1)
    assert len(det.detect(img, min_face_size=4 * side)) == 0
    assert det.min_face_size == 20  # a per-call override does not stick


def test_detect_batch_and_pil(det, photo):
    imgs = [photo("obama.jpg"), photo("Actor_02.png")]
    batch = det.detect_batch(imgs)
    for img, d in zip(imgs, batch):
        np.testing.assert_array_equal(d.boxes, det.detect(img).boxes)
    Image = pytest.importorskip("PIL.Image")
    np.testing.assert_array_equal(det.detect(Image.fromarray(imgs[0])).boxes, batch[0].boxes)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((100, 100, 3), np.float32),
        np.zeros((100, 100), np.uint8),
        np.zeros((100, 100, 4), np.uint8),
        np.zeros((100, 100, 1), np.uint8),
        np.zeros((2, 100, 100, 3), np.uint8),
        np.zeros((0, 100, 3), np.uint8),
        [[1, 2, 3]],
        None,
        "face.jpg",
    ],
    ids=["float32", "gray", "rgba", "1ch", "4d", "empty", "list", "none", "str"],
)
def test_invalid_input(det, bad):
    with pytest.raises(InvalidInputError):
        det.detect(bad)


def test_invalid_arguments(det):
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(InvalidInputError):
        det.detect(img, roi=(60, 60, 80, 80))
    with pytest.raises(InvalidInputError):
        det.detect(img, roi=(1, 2))
    for roi in ((0, 0, float("inf"), 10), (0, float("nan"), 10, 10), "abcd", 5):
        with pytest.raises(InvalidInputError):
            det.detect(img, roi=roi)
    with pytest.raises(InvalidInputError):
        det.detect(img, min_face_size=0)
    with pytest.raises(InvalidInputError):
        det.detect_batch(np.zeros((50, 50, 3), np.uint8))
    for kw in ({"thresholds": (0.6, 0.7)}, {"thresholds": (0.6, 0.7, 1.5)}, {"factor": 1.0}, {"min_face_size": -3}, {"num_threads": 0}):
        with pytest.raises(InvalidInputError):
            MTCNN(**kw)


def test_runtime_imports_neither_tensorflow_nor_torch():
    code = (
        "import sys, numpy as np; from emoadapt.detection import MTCNN; "
        "MTCNN().detect(np.zeros((64, 64, 3), np.uint8)); "
        "bad = [m for m in ('tensorflow', 'torch', 'tf_keras', 'keras', 'facenet_pytorch') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------ live reference
@pytest.fixture(scope="module")
def facenet():
    import importlib.util

    pytest.importorskip("torch")
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch not installed")
    sys.path.insert(0, str(ROOT / "scripts"))  # facenet_mtcnn() stands in for torchvision if needed
    from make_reference_fixtures import facenet_mtcnn, run_facenet

    model, _ = facenet_mtcnn()
    return lambda img: run_facenet(model, img)


@pytest.mark.live
@pytest.mark.parametrize("name", ["identity/sample1.jpg", "identity/obama_partial_face.jpg", "ravdess_actors/Actor_13.png", "cremad"])
def test_live_parity_with_facenet_pytorch(det, facenet, name):
    if name == "cremad":
        cap = cv2.VideoCapture(str(need_data("clips", "cremad", "1001_DFA_SAD_XX.flv")))
        for _ in range(20):
            ok, bgr = cap.read()
        cap.release()
        assert ok
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    else:
        img = _rgb(name)
    ref = facenet(img)
    ours = det.detect(img)
    assert len(ours) == len(ref["probs"])
    res = compare(ref["boxes"], ref["probs"], ref["landmarks"], ours)
    assert not res["fails"], res["fails"]
    np.testing.assert_allclose(np.sort(ours.scores), np.sort(np.asarray(ref["probs"], np.float32)), atol=1e-4)
