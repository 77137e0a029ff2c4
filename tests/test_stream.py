"""Recognizer.stream and ``emoadapt live`` on the real CREMA-D clips: windows and their times,
the same answer as predict and annotate, bounded buffers on an endless source, a camera, Ctrl-C."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import emoadapt
from emoadapt.annotate import label_windows
from emoadapt.video import Sampling, iter_frames

ROOT = Path(__file__).resolve().parents[1]
CREMA = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}


def _frames(clip: Path, n: int | None = None) -> np.ndarray:
    return np.stack([f.image for f in iter_frames(clip, sampling=Sampling(max_frames=n))])


def _same(a: emoadapt.Result, b: emoadapt.Result) -> None:
    assert a.label == b.label and a.user == b.user and a.frames == b.frames and a.faces == b.faces
    assert set(a.probabilities) == set(b.probabilities)
    assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) <= 1e-6
    assert len(a.tracks) == len(b.tracks)


def test_a_window_over_the_whole_clip_is_predict_and_annotate(recognizer, cremad_clips):
    """On every real clip: the last window of a stream whose window is longer than the clip is
    exactly predict's result, and annotate labels every face with it too."""
    for clip in cremad_clips:
        ref = recognizer.predict(clip)
        windows = list(recognizer.stream(clip, window=60.0, hop=0.5))
        last = windows[-1]
        _same(last, ref)
        assert last.start == 0.0 and last.end == pytest.approx(ref.frames / ref.fps, abs=1e-5)
        assert [w.end for w in windows] == sorted(w.end for w in windows)
    res, labels = label_windows(recognizer, clip, window=None)
    assert {f.label for fl in labels.values() for f in fl} == {last.label} == {res.label}


def test_windows_hop_over_the_source_with_their_times(recognizer, cremad_clips):
    clip = cremad_clips[0]
    fps = emoadapt.video.source_rate(clip)
    n = sum(1 for _ in iter_frames(clip))
    span, step = round(1.0 * fps), round(0.5 * fps)
    windows = list(recognizer.stream(clip, window=1.0, hop=0.5))
    ends = [round(w.end * fps) for w in windows]
    # a window after every `step` frames, and one more at the end of the clip
    assert ends == [*range(step, n + 1, step), *([n] if n % step else [])]
    for w, end in zip(windows, ends):
        assert w.frames == min(span, end) and w.faces == w.frames  # one face in every frame
        assert w.start == pytest.approx(max(0, end - span) / fps, abs=1e-5)
        assert w.label in CREMA.values() and abs(sum(w.probabilities.values()) - 1) < 1e-6
        assert all(w.start * fps - 1e-3 <= f.index < w.end * fps for f in w.timeline)
    # each window pools exactly its frames' outputs, which are the whole clip's (one pass)
    ref = recognizer.predict(clip)
    at = {f.index: j for j, f in enumerate(ref.timeline)}
    for w in windows:
        sel = [at[f.index] for f in w.timeline]
        np.testing.assert_array_equal(w.features, ref.features[sel])
        part = emoadapt.Result(
            label=None, probabilities={}, frames=len(sel), faces=len(sel), features=ref.features[sel], frame_probabilities=ref.frame_probabilities[sel]
        )
        recognizer.personal.classify(part, None)
        assert w.label == part.label
        assert max(abs(w.probabilities[k] - part.probabilities[k]) for k in part.probabilities) <= 1e-6


def test_an_endless_source_keeps_bounded_buffers(recognizer, cremad_clips):
    """A looped clip as an endless generator: the ring buffer never holds more than a
    window of frames, and never an image."""
    frames = _frames(cremad_clips[3], 30)
    read = itertools.count()

    def endless():
        for i in itertools.count():
            next(read)
            yield frames[i % len(frames)]

    stream = recognizer.stream(endless(), window=0.5, hop=0.2, source_fps=30)
    seen = []
    for res in itertools.islice(stream, 12):
        buffer = stream.gi_frame.f_locals["buffer"]
        seen.append(len(buffer))
        assert all(fr.image is None for fr in buffer)
        assert res.frames <= 15 and res.end - res.start <= 0.5 + 1e-9
    stream.close()
    assert max(seen) == 15 and seen[-1] == 15  # full windows, never more
    assert next(read) < 12 * 6 + 8  # frames are read as the windows are consumed, not ahead


def test_a_recognised_users_personal_head_labels_the_windows(tmp_path, recognizer, cremad_clips):
    rec = emoadapt.Recognizer(home=tmp_path / "home", backbone=recognizer.backbone, adapt_every=0)
    try:
        for clip in cremad_clips:
            rec.correct(_frames(clip, 24)[::2], CREMA[clip.stem.split("_")[2]], user="actor1001")
        assert rec.adapt("actor1001").accepted
        frames = _frames(cremad_clips[1], 45)
        ref = rec.predict(frames)
        windows = list(rec.stream(frames, window=10.0, hop=0.5))
        assert ref.user == "actor1001" and all(w.user == "actor1001" for w in windows)
        _same(windows[-1], ref)
    finally:
        rec.close()


class _FakeCamera:
    """Stands in for cv2.VideoCapture(index): a real clip's frames in BGR at 25 fps."""

    frames: list[np.ndarray] = []
    released = False

    def __init__(self, index):
        self.index, self.pos = index, 0

    def isOpened(self):
        return self.index == 0

    def get(self, prop):
        import cv2

        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if self.pos >= len(self.frames):
            return False, None
        self.pos += 1
        return True, self.frames[self.pos - 1][:, :, ::-1].copy()

    def release(self):
        type(self).released = True


def test_a_camera_index_reads_the_camera(monkeypatch, recognizer, cremad_clips):
    import cv2

    frames = _frames(cremad_clips[4], 30)
    _FakeCamera.frames = list(frames)
    monkeypatch.setattr(cv2, "VideoCapture", _FakeCamera)
    windows = list(recognizer.stream(0, window=2.0, hop=0.4))
    assert _FakeCamera.released
    assert [round(w.end * 25) for w in windows] == [10, 20, 30]  # the camera's 25 fps
    _same(windows[-1], recognizer.predict(frames))  # BGR from the camera, converted once
    with pytest.raises(emoadapt.errors.VideoDecodeError, match="camera 3"):
        next(recognizer.stream(3))
    with pytest.raises(emoadapt.errors.InvalidInputError, match="hop"):
        next(recognizer.stream(0, hop=0))


def _default_sigint() -> None:
    # a test run started in the background (nohup, `cmd &` in a script) ignores SIGINT, and
    # children inherit that: the live process gets the default disposition, as at a terminal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _live(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "emoadapt.cli", "-q", "live", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
        **kw,
    )


def test_live_prints_a_line_per_window(tmp_path, cremad_clips):
    clip = str(cremad_clips[3])
    p = _live(clip, "--home", str(tmp_path), "--window", "1", "--hop", "0.5")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("0.00-0.50s\thappy\t") and "faces 15/15" in lines[0]
    p = _live(clip, "--home", str(tmp_path), "--json", "--loop", "--max-windows", "7")
    out, err = p.communicate(timeout=300)
    rows = [json.loads(line) for line in out.splitlines()]
    assert p.returncode == 0 and len(rows) == 7, err
    assert rows[-1]["end"] > 3.4 and rows[-1]["start"] == pytest.approx(rows[-1]["end"] - 2, abs=0.01)  # looped past the clip's end
    assert all(r["label"] in CREMA.values() and r["faces"] == r["frames"] for r in rows)


def test_live_stops_cleanly_on_ctrl_c(tmp_path, cremad_clips):
    p = _live(str(cremad_clips[0]), "--home", str(tmp_path), "--loop")
    try:
        first = p.stdout.readline()
        assert "\t" in first and p.stdout.readline()  # windows are coming
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode in (0, 130) and "Traceback" not in err and "KeyboardInterrupt" not in err
