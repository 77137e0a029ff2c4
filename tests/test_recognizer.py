from __future__ import annotations

import numpy as np
import pytest

import emoadapt
from emoadapt.errors import InvalidInputError


@pytest.fixture(scope="module")
def cremad_results(recognizer, cremad_clips):
    return {p.name: recognizer.predict(p) for p in cremad_clips}


def test_every_cremad_clip_gets_a_face_in_95pct_of_frames_and_a_label(cremad_results, recognizer):
    for name, res in cremad_results.items():
        assert res.frames >= 56, name
        assert res.faces >= 0.95 * res.frames, (name, res.faces, res.frames)
        assert res.label in recognizer.classes
        assert set(res.probabilities) == set(recognizer.classes)
        assert sum(res.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert res.label == max(res.probabilities, key=res.probabilities.get)
        assert res.user is None
        assert len(res.timeline) == res.faces
        t0 = res.timeline[0]
        x1, y1, x2, y2 = t0.box
        # the actor's face is in the middle of a 480x360 frame and roughly 100-200 px tall
        assert 0 <= x1 < x2 <= 480 and 0 <= y1 < y2 <= 360 and 60 < y2 - y1 < 260
        assert t0.score >= 0.9 and set(t0.probabilities) == set(recognizer.classes)


def test_happy_clip_is_happy(cremad_results):
    # the one clip whose expression is unmistakable on every frame
    assert cremad_results["1001_DFA_HAP_XX.flv"].label == "happy"


def test_array_iterable_and_bgr_inputs_agree_with_path(recognizer, cremad_clips):
    from emoadapt.video import Sampling, iter_frames

    frames = np.stack([f.image for f in iter_frames(cremad_clips[3], sampling=Sampling(max_frames=8))])
    a = recognizer.predict(cremad_clips[3], max_frames=8)
    b = recognizer.predict(frames)
    c = recognizer.predict(iter(list(frames[..., ::-1])), color="bgr")
    for r in (b, c):
        assert r.frames == a.frames == 8 and r.faces == a.faces
        for k in a.probabilities:
            assert r.probabilities[k] == pytest.approx(a.probabilities[k], abs=1e-5)


def test_sampling_arguments(recognizer, cremad_clips):
    r = recognizer.predict(cremad_clips[0], fps=10)
    assert 21 <= r.frames <= 23
    assert [f.index for f in r.timeline][:3] == [0, 3, 6]


def test_single_image_path_and_group_photo(recognizer, data_dir):
    r = recognizer.predict(data_dir / "faces" / "identity" / "obama.jpg")
    assert r.frames == 1 and r.faces == 1 and r.label in recognizer.classes
    faces = recognizer.faces_in(__import__("cv2").imread(str(data_dir / "faces" / "identity" / "sample3.jpg")), color="bgr")
    assert len(faces) >= 2


def test_still_images_get_the_backbones_tta_and_video_frames_only_with_video_tta(recognizer, cremad_clips, tmp_path):
    """A one-frame input is a still image: it gets the backbone's mirror averaging (like
    faces_in); the frames of a video get it only with video_tta=True."""
    import emoadapt
    from emoadapt.video import Sampling, iter_frames

    assert recognizer.backbone.tta, "the default backbone recommends flip TTA"
    bb = emoadapt.Backbone(tta=True, tta_threshold=1.0)  # mirror every face: every frame differs
    rec = emoadapt.Recognizer(home=tmp_path / "a", backbone=bb)
    frames = np.stack([f.image for f in iter_frames(cremad_clips[3], sampling=Sampling(max_frames=6))])
    still = rec.analyze(frames[:1])
    face = rec.faces_in(frames[0])[0]
    assert still.frame_probabilities.shape == (1, len(rec.classes))
    np.testing.assert_allclose(still.frame_probabilities[0], [face.probabilities[c] for c in bb.classes], atol=1e-6)
    video = rec.analyze(frames)
    both = emoadapt.Recognizer(home=tmp_path / "b", backbone=bb, video_tta=True).analyze(frames)
    assert video.faces == both.faces == 6
    # with video_tta the first frame is exactly the still image's result; without it, not
    np.testing.assert_allclose(both.frame_probabilities[0], still.frame_probabilities[0], atol=1e-6)
    assert np.abs(video.frame_probabilities[0] - still.frame_probabilities[0]).max() > 1e-3
    # the plain frames are the backbone without TTA on the same crops
    np.testing.assert_allclose(video.features, bb.infer(_crops(rec, frames), tta=False)[1], atol=1e-4)
    assert np.abs(video.frame_probabilities - both.frame_probabilities).mean() < 0.1


def _crops(rec, frames):
    """The aligned crops the Recognizer feeds its backbone (one face per frame here)."""
    from emoadapt.alignment import norm_crop
    from emoadapt.detection import TrackingDetector

    det = TrackingDetector(rec.detector, detect_every=rec.scanner.settings.detect_every, min_score=rec.scanner.settings.min_face_score)
    out = []
    for f in frames:
        d = det(f)
        i = rec.scanner.analysis().select(d)[0]
        out.append(norm_crop(f, d.landmarks[i], rec.backbone.input_size, rec.backbone.template, gray=rec.backbone.channels == 1))
    return np.stack(out)


def test_backbone_worker_keeps_frame_order_and_passes_errors_on(tmp_path, cremad_clips, monkeypatch):
    """The emotion network runs in a worker thread on chunks of crops: results come back in
    frame order whatever the chunk size, and an error in it reaches the caller."""
    import cv2

    import emoadapt
    from emoadapt.video import Sampling, iter_frames

    frames = np.stack([f.image for f in iter_frames(cremad_clips[0], sampling=Sampling(max_frames=20))])
    one = emoadapt.Recognizer(home=tmp_path / "a", chunk=1, opencv_threads=None).analyze(frames)
    big = emoadapt.Recognizer(home=tmp_path / "b", chunk=64, opencv_threads=1).analyze(frames)
    assert one.faces == big.faces == 20
    np.testing.assert_allclose(one.frame_probabilities, big.frame_probabilities, atol=1e-5)
    assert cv2.getNumThreads() == 1  # opencv_threads=1, asked for (the default leaves OpenCV alone)
    rec = emoadapt.Recognizer(home=tmp_path / "c", chunk=4)

    def broken(*a, **k):
        raise RuntimeError("backbone failed")

    monkeypatch.setattr(rec.backbone, "infer", broken)
    with pytest.raises(RuntimeError, match="backbone failed"):
        rec.analyze(frames)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(emoadapt.InvalidInputError):
            emoadapt.Recognizer(home=tmp_path / "d", opencv_threads=bad)


def test_no_face_gives_none(recognizer, photo):
    blank = np.full((5, 240, 320, 3), 127, np.uint8)
    r = recognizer.predict(blank)
    assert r.label is None and r.probabilities == {} and r.frames == 5 and r.faces == 0 and r.timeline == []
    # a real photo with the face cut out has no face either
    img = photo("obama.jpg")
    r = recognizer.predict(img[:150, :150])
    assert r.label is None


def test_bad_arrays_raise_invalid_input(recognizer):
    # unreadable files (missing, empty, garbage, truncated) raising VideoDecodeError: tests/reliability/test_bad_inputs.py
    for bad in (np.zeros((2, 3, 10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.complex64), [], 3.5):
        with pytest.raises(InvalidInputError):
            recognizer.predict(bad)


def test_truncated_but_partly_decodable_video_uses_the_frames_it_has(recognizer, tmp_path, cremad_clips):
    data = cremad_clips[2].read_bytes()
    half = tmp_path / "half.flv"
    half.write_bytes(data[: len(data) // 2])
    r = recognizer.predict(half)
    assert 0 < r.frames < 65 and r.label is not None


def test_home_resolution(tmp_path, monkeypatch):
    from emoadapt.recognizer import default_home

    monkeypatch.setenv("EMOADAPT_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    monkeypatch.delenv("EMOADAPT_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "emoadapt"


def test_public_api_surface():
    for name in ("Recognizer", "Result", "Backbone", "EmoadaptError", "InvalidInputError", "VideoDecodeError", "ModelIntegrityError"):
        assert hasattr(emoadapt, name)
