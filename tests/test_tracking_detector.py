"""Face tracking between detections: MTCNN.refine (O-Net on given boxes), TrackingDetector,
and the Recognizer's detect_every, on the real CREMA-D clips and group photos."""

from __future__ import annotations

import numpy as np
import pytest

from emoadapt.detection import MTCNN, Detections, TrackingDetector
from emoadapt.errors import InvalidInputError
from emoadapt.video import iter_frames


@pytest.fixture(scope="module")
def det() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def clip_frames(cremad_clips) -> list[np.ndarray]:
    return [f.image for f in iter_frames(cremad_clips[3])]  # 1001_DFA_HAP_XX, 56 frames


@pytest.fixture(scope="module")
def reference(det, clip_frames) -> list[Detections]:
    """The full cascade on every frame."""
    return [det.detect(f) for f in clip_frames]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.clip(rb - lt, 0, None).prod())
    area = lambda z: float((z[2] - z[0]) * (z[3] - z[1]))  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_refine_chained_over_a_clip_stays_on_the_face(det, clip_frames, reference):
    # track the face through the whole clip from the first detection only, never re-detecting
    box = reference[0].boxes[:1]
    errs, ious = [], []
    for frame, ref in zip(clip_frames[1:], reference[1:]):
        r = det.refine(frame, box)
        assert len(r) == 1 and r.scores[0] >= 0.95
        errs.append(np.linalg.norm(r.landmarks[0] - ref.landmarks[0], axis=1).mean())
        ious.append(_iou(r.boxes[0], ref.boxes[0]))
        box = r.boxes
    # landmarks about 1 px from the per-frame full detection (faces are ~140 px tall) and no drift
    assert np.mean(errs) < 1.5 and np.max(errs) < 3.5, (np.mean(errs), np.max(errs))
    assert min(ious) > 0.85
    assert np.mean(errs[-10:]) < 2.0


def test_refine_contract(det, clip_frames, reference):
    f = clip_frames[5]
    face = reference[4].boxes[0]
    off = np.array([-500, -500, -400, -400], np.float32)  # entirely outside the image
    background = np.array([0, 0, 60, 60], np.float32)  # top-left corner: no face
    r = det.refine(f, np.stack([off, face, background]))
    assert r.boxes.shape == (3, 4) and r.scores.shape == (3,) and r.landmarks.shape == (3, 5, 2)
    assert r.boxes.dtype == r.scores.dtype == r.landmarks.dtype == np.float32
    # input order kept, not thresholded: the off-image box keeps its box with score 0
    assert r.scores[0] == 0 and np.array_equal(r.boxes[0], off)
    assert r.scores[1] > 0.95 and r.scores[2] < 0.5
    # landmarks of the real face are inside its box, eyes above the mouth
    lm = r.landmarks[1]
    assert (lm[:, 0] > r.boxes[1, 0]).all() and (lm[:, 0] < r.boxes[1, 2]).all()
    assert lm[0, 1] < lm[3, 1] and lm[0, 0] < lm[1, 0]
    # a single box as a flat sequence, and no boxes at all
    assert np.allclose(det.refine(f, face.tolist()).boxes, r.boxes[1:2])
    assert len(det.refine(f, np.zeros((0, 4)))) == 0
    # deterministic
    assert np.array_equal(det.refine(f, face[None]).landmarks, det.refine(f, face[None]).landmarks)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), [[0, 0, np.inf, 10]], [[np.nan, 0, 5, 5]], "box", np.zeros((1, 2, 4))])
def test_refine_rejects_bad_boxes(det, clip_frames, bad):
    with pytest.raises(InvalidInputError):
        det.refine(clip_frames[0], bad)


def test_tracking_detector_schedule_and_accuracy(det, clip_frames, reference):
    # the default schedule: one full detection, then tracking; every 10th frame the new-face
    # check, which on a talking head before a static background searches at most a region or two
    t = TrackingDetector(det, detect_every=10, min_score=0.95)
    out = [t(f) for f in clip_frames]
    n = len(clip_frames)
    assert t.counts["full"] == 1 and t.counts["tracked"] == n - 1 and t.counts["checks"] == (n - 1) // 10
    assert t.counts["local"] == t.counts["dropped"] == t.counts["new"] == 0 and t.counts["searched"] <= 2
    assert np.array_equal(out[0].boxes, reference[0].boxes) and np.array_equal(out[0].landmarks, reference[0].landmarks)
    errs = [np.linalg.norm(o.landmarks[0] - ref.landmarks[0], axis=1).mean() for o, ref in zip(out, reference)]
    assert all(len(o) == 1 and o.scores[0] >= 0.95 for o in out)
    # about the per-frame detection's own landmark motion between consecutive frames (1.2 px
    # mean, 3.0 px max on this clip, whose mouth opens wide)
    assert np.mean(errs) < 1.5 and np.max(errs) < 4.0, (np.mean(errs), np.max(errs))


def test_full_every_detect_every_is_the_periodic_schedule(det, clip_frames, reference):
    t = TrackingDetector(det, detect_every=10, full_every=10)
    out = [t(f) for f in clip_frames]
    n = len(clip_frames)
    assert t.counts == {"frames": n, "full": -(-n // 10), "tracked": n - (-(-n // 10)), "local": 0, "dropped": 0, "checks": 0, "searched": 0, "new": 0}
    errs = []
    for k, (o, ref) in enumerate(zip(out, reference)):
        if k % 10 == 0:  # the full detections are exactly MTCNN.detect
            assert np.array_equal(o.boxes, ref.boxes) and np.array_equal(o.landmarks, ref.landmarks)
        assert len(o) == 1 and o.scores[0] >= 0.9
        errs.append(np.linalg.norm(o.landmarks[0] - ref.landmarks[0], axis=1).mean())
    assert np.mean(errs) < 1.5 and np.max(errs) < 4.0, (np.mean(errs), np.max(errs))
    # full_every bounds the time between full detections in the default schedule too
    t = TrackingDetector(det, detect_every=5, full_every=20)
    for f in clip_frames[:41]:
        t(f)
    assert t.counts["full"] == 3 and t.counts["checks"] == 6


def test_detect_every_1_is_plain_detection(det, clip_frames, reference):
    t = TrackingDetector(det, detect_every=1)
    for f, ref in zip(clip_frames[:6], reference[:6]):
        o = t(f)
        assert np.array_equal(o.boxes, ref.boxes) and np.array_equal(o.scores, ref.scores)
    assert t.counts["full"] == 6 and t.counts["tracked"] == 0


def test_lost_face_is_found_again(det, clip_frames):
    t = TrackingDetector(det, detect_every=50)
    t(clip_frames[0])
    t(clip_frames[1])
    # the face jumps 40 px right (a camera pan): the O-Net square misses it, the local search finds it
    moved = np.ascontiguousarray(np.roll(clip_frames[2], 40, axis=1))
    o = t(moved)
    ref = det.detect(moved)
    assert len(o) == 1 and _iou(o.boxes[0], ref.boxes[0]) > 0.8
    assert t.counts["full"] == 1
    # the face leaves the picture: the track is dropped and the frame gets a full detection
    blank = np.full_like(clip_frames[3], 127)
    assert len(t(blank)) == 0 and t.counts["full"] == 2
    # nothing tracked: every frame is a full detection until a face is found again
    assert len(t(blank)) == 0 and t.counts["full"] == 3
    assert len(t(clip_frames[4])) == 1 and t.counts["full"] == 4
    assert len(t(clip_frames[5])) == 1 and t.counts["full"] == 4


def test_frame_size_change_and_reset_force_detection(det, clip_frames):
    t = TrackingDetector(det, detect_every=100)
    t(clip_frames[0])
    t(clip_frames[1])
    assert t.counts["full"] == 1
    t(np.ascontiguousarray(clip_frames[2][:300]))  # another frame size
    assert t.counts["full"] == 2
    t.reset()
    t(clip_frames[3])
    assert t.counts["full"] == 3


def test_group_photo_keeps_every_face(det, photo):
    img = photo("sample5.jpg")  # five people
    ref = det.detect(img)
    t = TrackingDetector(det, detect_every=10)
    outs = [t(img) for _ in range(5)]
    assert t.counts["full"] == 1 and t.counts["tracked"] == 4
    conf = ref.boxes[ref.scores >= 0.9]
    assert len(conf) == 5
    for o in outs[1:]:
        assert (o.scores >= 0.9).sum() == 5
        for b in conf:  # every face tracked in place
            assert max(_iou(b, ob) for ob in o.boxes) > 0.8


def test_invalid_arguments(det):
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(InvalidInputError):
            TrackingDetector(det, detect_every=bad)
    with pytest.raises(InvalidInputError):
        TrackingDetector(det, min_score=1.5)
    with pytest.raises(InvalidInputError):
        TrackingDetector(det, max_scale_change=1.0)
    for bad in (9, 0, 2.5, True):  # full_every: an int >= detect_every
        with pytest.raises(InvalidInputError):
            TrackingDetector(det, detect_every=10, full_every=bad)
    with pytest.raises(InvalidInputError):
        TrackingDetector(det)(np.zeros((10, 10), np.uint8))


def test_recognizer_tracking_matches_per_frame_detection(tmp_path, cremad_clips):
    import emoadapt

    clip = cremad_clips[0]  # 1001_DFA_ANG_XX, 67 frames
    plain = emoadapt.Recognizer(home=tmp_path, detect_every=1).predict(clip)
    fast = emoadapt.Recognizer(home=tmp_path, detect_every=10).predict(clip)
    assert fast.frames == plain.frames and fast.faces == plain.faces == plain.frames
    assert [f.index for f in fast.timeline] == [f.index for f in plain.timeline]
    assert fast.label == plain.label
    diff = np.abs(fast.frame_probabilities - plain.frame_probabilities)
    # per-frame probabilities differ by about what a different pyramid factor changes (~0.035)
    assert diff.mean() < 0.05
    for k in plain.probabilities:
        assert fast.probabilities[k] == pytest.approx(plain.probabilities[k], abs=0.05)
    with pytest.raises(InvalidInputError):
        emoadapt.Recognizer(home=tmp_path, detect_every=0)


# --------------------------------------------------------------------------- new faces, lost faces
@pytest.fixture(scope="module")
def face_patch(det, photo) -> np.ndarray:
    """A real face to hold up in the clip: Obama's portrait, cut around his face, 110x110 px."""
    import cv2

    img = photo("obama.jpg")
    b = det.detect(img).boxes[0]
    cx, cy, s = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, 0.62 * max(b[2] - b[0], b[3] - b[1])
    cut = img[max(0, int(cy - s)) : int(cy + s), max(0, int(cx - s)) : int(cx + s)]
    return cv2.resize(cut, (110, 110), interpolation=cv2.INTER_AREA)


def _with_patch(frame: np.ndarray, patch: np.ndarray, x: int, y: int) -> np.ndarray:
    out = frame.copy()  # the green background left (x < 130) and right (x > 300) of the actor
    out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return out


def _confident(d: Detections, score: float = 0.95) -> np.ndarray:
    return d.boxes[d.scores >= score]


def test_a_face_entering_mid_clip_is_found_within_detect_every_frames(det, clip_frames, face_patch):
    enter = 23
    frames = [_with_patch(f, face_patch, 20, 40) if i >= enter else f for i, f in enumerate(clip_frames)]
    t = TrackingDetector(det, detect_every=10, min_score=0.95)
    out = [t(f) for f in frames]
    found = next(i for i, o in enumerate(out) if len(_confident(o)) == 2)
    assert enter <= found <= enter + 9
    # found by the check's search of the region that changed, not by a full detection
    assert t.counts["full"] == 1 and t.counts["new"] == 1 and t.counts["searched"] <= 4
    for i in range(found, len(frames)):  # from then on both faces are tracked, where they are
        ref = _confident(det.detect(frames[i]))
        got = _confident(out[i])
        assert len(ref) == len(got) == 2
        assert all(max(_iou(r, g) for g in got) > 0.8 for r in ref)
    # with detect_every=4 the same face is found sooner
    t = TrackingDetector(det, detect_every=4, min_score=0.95)
    found4 = next(i for i, f in enumerate(frames) if len(_confident(t(f))) == 2)
    assert enter <= found4 <= enter + 3


def test_a_lost_face_not_found_nearby_triggers_the_full_cascade(det, clip_frames, face_patch):
    # two faces from the first frame; at frame 15 the held-up face jumps across the picture
    # (330 px, beyond the local search around its last box) while the actor stays tracked
    frames = [_with_patch(f, face_patch, 20 if i < 15 else 350, 40) for i, f in enumerate(clip_frames[:20])]
    t = TrackingDetector(det, detect_every=10, min_score=0.95)
    out = [t(f) for f in frames[:15]]
    assert t.counts["full"] == 1 and all(len(_confident(o)) == 2 for o in out)
    jumped = t(frames[15])
    assert t.counts["dropped"] == 1 and t.counts["full"] == 2  # the full cascade on that very frame
    assert np.array_equal(jumped.boxes, det.detect(frames[15]).boxes)
    boxes = _confident(jumped)
    assert len(boxes) == 2 and max(b[0] for b in boxes) > 340
    for f in frames[16:]:  # then both are tracked again
        assert len(_confident(t(f))) == 2
    assert t.counts["full"] == 2


def test_a_face_lost_soon_after_a_full_detection_waits_for_the_next_check(det, clip_frames, face_patch):
    # the same jump 3 frames after the first detection: the frame keeps the actor (tracked),
    # and the held-up face is found by the full cascade at the next check, 10 frames after the first
    frames = [_with_patch(f, face_patch, 20 if i < 3 else 350, 40) for i, f in enumerate(clip_frames[:12])]
    t = TrackingDetector(det, detect_every=10, min_score=0.95)
    out = [t(f) for f in frames]
    assert [len(_confident(o)) for o in out] == [2, 2, 2] + [1] * 7 + [2, 2]
    assert t.counts["dropped"] == 1 and t.counts["full"] == 2 and t.counts["checks"] == 0


def test_a_cut_to_another_scene_gets_the_full_cascade_at_the_next_check(det, clip_frames, photo):
    import cv2

    group = cv2.resize(photo("sample5.jpg"), (480, 360), interpolation=cv2.INTER_AREA)  # five people
    ref = det.detect(group)
    t = TrackingDetector(det, detect_every=10, min_score=0.95)
    out = [t(f) for f in [*clip_frames[:5], *[group] * 8]]
    # O-Net may follow the actor's box onto someone in the new scene until the check at frame
    # 10 sees most of the picture changed and runs the full cascade there (as the periodic full
    # detection did), at most detect_every - 1 frames after the cut
    assert t.counts["full"] == 2 and t.counts["checks"] == 1
    assert np.array_equal(out[10].boxes, ref.boxes)
    assert all(len(_confident(o)) == len(_confident(ref)) == 5 for o in out[10:])
