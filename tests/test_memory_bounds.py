"""Memory bounded by the design, not by luck (issue 23, item 6).

* What ``predict`` keeps per frame is small and bounded: the per-frame timeline is stored as
  arrays (about 100 bytes a face, was about 4.3 KB of objects), the heads pool the features of
  at most ``MAX_POOLED_FACES`` faces (an evenly spaced subset of a longer input's frames), and
  ``timeline=False`` keeps nothing per frame at all.
* A stream's window holds at most ``MAX_WINDOW_FRAMES`` sampled frames: ``window=1e9`` is
  refused when ``stream`` is called (or when a camera reports its rate).

Inputs are real: the repository's example clip (a real face), its frames repeated to make a
long input; the analysed frames fed to :class:`FaceTable` come from the real analysis path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from emoadapt.analysis import MAX_POOLED_FACES, AnalyzedFace, AnalyzedFrame, FaceTable
from emoadapt.errors import InvalidInputError
from emoadapt.recognizer import MAX_WINDOW_FRAMES, Timeline
from emoadapt.video import iter_frames

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "cremad_1001_DFA_HAP_XX.flv"  # shipped with the repository


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    return [f.image for f in iter_frames(CLIP)]


@pytest.fixture(scope="module")
def analysed(recognizer, clip_frames) -> list[AnalyzedFrame]:
    """The example clip's first 20 frames through the real analysis path (identity embeddings too)."""
    out = list(recognizer.scanner.analysis().frames(clip_frames[:20], identity=True))
    assert all(len(f.faces) == 1 for f in out)
    return out


def _long_input(analysed: list[AnalyzedFrame], n: int, marks: dict[int, int], at: tuple[int, ...]) -> Iterator[AnalyzedFrame]:
    """``n`` analysed frames (the real ones repeated, each face with its own arrays, as the
    analysis makes them), recording tracemalloc's current size when frame ``at[i]`` is asked for."""
    for i in range(n):
        if i in at:
            marks[i] = tracemalloc.get_traced_memory()[0]
        src = analysed[i % len(analysed)].faces[0]
        face = AnalyzedFace(
            0,
            src.box.copy(),
            src.score,
            src.landmarks.copy(),
            None if src.probabilities is None else src.probabilities.copy(),
            None if src.features is None else src.features.copy(),
            src.identity.copy() if src.identity is not None and i < 40 else None,  # the identity cap: a few per track
        )
        yield AnalyzedFrame(i, i + 1, [face])


@pytest.mark.parametrize("timeline,bound", [(True, 6 << 20), (False, 1 << 20)])
def test_a_face_table_does_not_grow_with_the_input(analysed, timeline, bound):
    """Python-visible memory (tracemalloc: objects and numpy buffers) held by a FaceTable
    between frame 5,000 and 20,000 of one face track: with the timeline, about 100 bytes a
    face (15,000 faces: 1.5 MB, its arrays doubling once: 3 MB, bound 6 MB; the objects kept
    before held about 1.7 KB a face: 25 MB); without it, nothing (bound 1 MB)."""
    marks: dict[int, int] = {}
    tracemalloc.start()
    try:
        frames = _long_input(analysed, 20_001, marks, (5_000, 20_000))
        table = FaceTable(frames) if timeline else FaceTable(frames, timeline=False)
    finally:
        tracemalloc.stop()
    grown = marks[20_000] - marks[5_000]
    print(f"timeline={timeline}: {grown / 2**20:.2f} MB over 15,000 frames")
    assert grown < bound, f"{grown / 2**20:.1f} MB"
    assert table.frames == table.faces == 20_001
    (track,) = table.tracks()
    assert track.faces == 20_001 and len(track.rows) == (20_001 if timeline else len(table.features(track.rows)[0]))
    feats, _ = table.features(track.rows)
    assert len(feats) <= MAX_POOLED_FACES + 1  # evenly spaced: every stride-th frame, from the first
    assert table.track_embedding(track) is not None


def test_a_long_input_pools_an_evenly_spaced_subset_the_same_with_or_without_timeline(recognizer, clip_frames):
    """predict on an input longer than the pooling bound (here a bound of 256 faces, through the
    same code as MAX_POOLED_FACES): the heads pool an evenly spaced subset of its frames (from
    the first), ``feature_rows`` says which, and ``timeline=False`` gives the same answer
    keeping nothing per frame."""
    frames = [clip_frames[i % len(clip_frames)] for i in range(700)]
    full = recognizer._predict(frames, max_features=256)
    lean = recognizer._predict(frames, max_features=256, timeline=False)
    assert full.label == lean.label and full.faces == lean.faces == len(full.timeline)
    assert full.probabilities == pytest.approx(lean.probabilities, abs=1e-12)
    assert isinstance(full.timeline, Timeline) and len(lean.timeline) == 0
    assert full.feature_rows is not None and lean.feature_rows is None
    assert len(full.features) == len(full.feature_rows) == len(lean.features) == len(lean.frame_probabilities) <= 256 + len(full.tracks)
    kept = np.array([full.timeline[int(i)].index for i in full.feature_rows])
    step = np.diff(kept)
    assert full.timeline[0].index == kept[0] and (step == step[0]).all() and step[0] in (2, 4, 8), kept[:10]
    np.testing.assert_array_equal(full.features, lean.features)
    np.testing.assert_array_equal(full.frame_probabilities[full.feature_rows], lean.frame_probabilities)
    # all features when asked for (annotate's windows and extract's frame tables need them)
    every = recognizer._predict(frames[:300], max_features=None)
    assert every.feature_rows is None and len(every.features) == every.faces == len(every.timeline)


def test_predict_keeps_every_frames_features_up_to_the_bound(recognizer, clip_frames):
    res = recognizer.predict(clip_frames)
    assert res.feature_rows is None and len(res.features) == res.faces == len(res.timeline) == len(res.frame_probabilities)


_LONG_PREDICT = textwrap.dedent(
    """
    import json, sys
    import cv2
    import emoadapt
    from emoadapt.video import iter_frames

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def peak_mb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

    face = cv2.resize(next(iter_frames(sys.argv[2])).image, None, fx=0.3, fy=0.3)  # a real face, small: fast
    marks = {}

    def frames(n):
        for i in range(n):
            if i in (5_000, 20_000):
                marks[i] = rss_mb()
            yield face

    rec = emoadapt.Recognizer(home=sys.argv[1])
    res = rec.predict(frames(20_001), timeline=sys.argv[3] == "1")
    print(json.dumps({"rss": marks, "peak": peak_mb(), "faces": res.faces, "label": res.label, "pooled": len(res.features)}))
    """
)


@pytest.mark.slow  # 20,000 frames through the real pipeline: 30-50 s on 2 shared cores
@pytest.mark.parametrize("timeline", [True, False])
def test_predict_on_a_long_input_keeps_rss_flat(tmp_path, timeline):
    """RSS of a fresh process running predict on 20,001 frames of a real face: between frame
    5,000 and 20,000, and up to its peak after the result is built, it grows by a few MB
    (measured: 4 / 6 MB with the timeline, 0 / 2 MB without; before: 27 / 66 MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-c", _LONG_PREDICT, str(tmp_path / "home"), str(CLIP), "1" if timeline else "0"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(r)
    assert r["faces"] == 20_001 and r["label"] is not None and r["pooled"] <= MAX_POOLED_FACES + 1
    at5k, at20k = r["rss"]["5000"], r["rss"]["20000"]
    assert at20k - at5k < 16, r
    assert r["peak"] - at5k < 24, r


# -- stream windows -------------------------------------------------------------------------


def test_a_window_longer_than_the_bound_is_refused(recognizer, clip_frames):
    """``window=1e9`` (accepted before, its ring buffer growing without bound) is refused when
    ``stream`` is called; the bound counts sampled frames, so ``fps`` allows long windows."""
    with pytest.raises(InvalidInputError, match="window"):
        recognizer.stream(clip_frames, window=1e9)
    with pytest.raises(InvalidInputError, match=str(MAX_WINDOW_FRAMES)):
        recognizer.stream(clip_frames, window=(MAX_WINDOW_FRAMES + 30) / 30, source_fps=30)
    with pytest.raises(InvalidInputError, match="window"):
        recognizer.stream(CLIP, window=(MAX_WINDOW_FRAMES + 60) / 29.97)  # the file's own rate
    recognizer.stream(clip_frames, window=MAX_WINDOW_FRAMES / 30, source_fps=30).close()
    windows = list(recognizer.stream(clip_frames, window=600.0, fps=5, hop=1.0))  # 3,000 sampled frames at most
    assert windows and windows[-1].start == 0.0


class _Camera:
    """cv2.VideoCapture stand-in: a camera reporting 30 fps that gives the clip's frames."""

    released = False

    def __init__(self, frames):
        self.frames = iter(frames)

    def isOpened(self):
        return True

    def get(self, prop):
        import cv2

        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        f = next(self.frames, None)
        return (f is not None), (None if f is None else f[:, :, ::-1].copy())

    def release(self):
        type(self).released = True


def test_a_cameras_window_is_checked_at_its_own_rate(monkeypatch, recognizer, clip_frames):
    """A camera's rate is known when it opens: a window over the bound at that rate is refused
    then, and the camera is released."""
    import cv2

    monkeypatch.setattr(cv2, "VideoCapture", lambda index: _Camera(clip_frames))
    stream = recognizer.stream(0, window=(MAX_WINDOW_FRAMES + 30) / 30, source_fps=5)  # 5 fps: fine until the camera says 30
    with pytest.raises(InvalidInputError, match="window"):
        next(stream)
    assert _Camera.released
    assert next(recognizer.stream(0, window=1.0, hop=0.5)).end == pytest.approx(0.5)
