"""Native code never sees an unchecked value (issue 23, item 3).

Camera indexes, frame rates and frame sizes are checked in Python and refused with
:class:`~emoadapt.errors.InvalidInputError` before OpenCV (or the analysis arithmetic) sees
them: ``cv2.VideoCapture(-1)`` kills the interpreter with SIGSEGV on a machine without a
camera, ``source_fps=1e308`` overflowed, ``source_fps=5e-324`` put window ends at ``inf``,
and a frame over the pixel bound was converted (copied) before anything looked at its size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from emoadapt.errors import InvalidInputError
from emoadapt.video import MAX_CAMERA_INDEX, MAX_FPS, MAX_FRAME_PIXELS, MIN_FPS, Sampling, as_rgb_frame, camera_frames, camera_index, iter_frames

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "cremad_1001_DFA_HAP_XX.flv"  # shipped with the repository


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """The first 12 frames of the repository's example clip (a real face)."""
    return [f.image for f in iter_frames(CLIP, sampling=Sampling(max_frames=12))]


_NEGATIVE_CAMERA = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import emoadapt
    from emoadapt.video import camera_frames

    rec = emoadapt.Recognizer(home=sys.argv[1])
    out = []
    for index in (-1, -2, np.int64(-1)):
        for what, call in (("stream", lambda: next(rec.stream(index))), ("camera_frames", lambda: camera_frames(index))):
            try:
                call()
                out.append([what, int(index), "no error"])
            except emoadapt.EmoadaptError as e:
                out.append([what, int(index), type(e).__name__])
    print(json.dumps(out))
    """
)


def test_a_negative_camera_index_is_refused_not_a_segfault(tmp_path):
    """In a subprocess (today's code dies there with SIGSEGV inside OpenCV): every negative
    index is an InvalidInputError raised before cv2.VideoCapture is called."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _NEGATIVE_CAMERA, str(tmp_path / "home")], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert p.returncode == 0, f"exit status {p.returncode} (-11 is SIGSEGV): {p.stderr[-2000:]}"
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(got) == 6 and all(r[2] == "InvalidInputError" for r in got), got


@pytest.mark.parametrize("index", [-1, -2, np.int64(-3), MAX_CAMERA_INDEX + 1, 2**31, 2**64, True, 0.0, 1.5, "0", None])
def test_camera_indexes_are_checked_before_opencv(index, recognizer, monkeypatch):
    """Nothing but an int in [0, MAX_CAMERA_INDEX] reaches cv2.VideoCapture: the call is not made."""
    import cv2

    opened = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: opened.append(a))
    with pytest.raises(InvalidInputError):
        camera_index(index)
    with pytest.raises(InvalidInputError):
        camera_frames(index)
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):  # other types are not camera sources at all
        with pytest.raises(InvalidInputError, match="camera index"):
            recognizer.stream(index)
    assert opened == []


def test_valid_camera_indexes_pass():
    assert camera_index(0) == 0 and camera_index(np.uint8(3)) == 3 and camera_index(MAX_CAMERA_INDEX) == MAX_CAMERA_INDEX


BAD_RATES = [1e308, 5e-324, MAX_FPS * 1.001, MIN_FPS / 2, 0.0, -30.0, float("nan"), float("inf"), 10**400, True, "30"]


@pytest.mark.parametrize("rate", BAD_RATES, ids=repr)
def test_source_frame_rates_out_of_range_are_invalid_input(rate, recognizer, frames):
    """``source_fps`` (what frame times and window lengths count at) outside [MIN_FPS, MAX_FPS]
    and non-numbers are refused by every entry point when called: no OverflowError, no windows
    ending at inf."""
    with pytest.raises(InvalidInputError, match="source_fps"):
        Sampling(source_fps=rate)
    with pytest.raises(InvalidInputError, match="source_fps"):
        recognizer.stream(frames, source_fps=rate)
    with pytest.raises(InvalidInputError, match="source_fps"):
        recognizer.predict(frames, source_fps=rate)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf"), 10**400, True, "30"], ids=repr)
def test_sampling_rates_that_are_not_positive_numbers_are_invalid_input(rate, recognizer, frames):
    """``fps`` only sets a stride (any positive number works, see test_bad_inputs), but an int
    too large for a float raised a raw OverflowError."""
    with pytest.raises(InvalidInputError, match="fps"):
        Sampling(fps=rate)
    with pytest.raises(InvalidInputError, match="fps"):
        recognizer.stream(frames, fps=rate)


def test_extreme_sampling_rates_give_finite_windows(recognizer, frames):
    for fps in (5e-324, 1e308):
        windows = list(recognizer.stream(frames, fps=fps, window=1.0, hop=0.1))
        assert windows and all(np.isfinite([w.end for w in windows])), fps


def test_the_extreme_valid_rates_give_finite_windows(recognizer, frames):
    """At the ends of the range: windows with finite, ordered times (5e-324 gave ``end=inf``)."""
    for rate in (MIN_FPS, MAX_FPS):
        windows = list(recognizer.stream(frames, source_fps=rate, window=min(2.0, 4096 / rate), hop=1 / rate * 4))
        assert windows, rate
        ends = [w.end for w in windows]
        assert all(np.isfinite([w.start for w in windows] + ends)) and ends == sorted(ends), (rate, ends)
        assert windows[-1].end == pytest.approx(len(frames) / rate)


def test_a_frame_over_the_pixel_bound_is_refused_before_any_copy(recognizer):
    """A frame of more than MAX_FRAME_PIXELS pixels (a broadcast view: no memory behind it) is
    refused with InvalidInputError before it is converted: nothing near its size is
    allocated (today it was copied: a 12000x12000 array peaked at 1.37 GB in predict)."""
    side = int(MAX_FRAME_PIXELS**0.5) + 2
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (side, side, 3))
    huge_float = np.broadcast_to(np.zeros((1, 1, 3), np.float32), (side, side, 3))
    for frame in (huge, huge[:, :, 0], huge[:, :, :1], huge_float):
        tracemalloc.start()
        try:
            with pytest.raises(InvalidInputError, match="MP"):
                as_rgb_frame(frame)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, peak  # the frame would be 150 MB
    with pytest.raises(InvalidInputError, match="MP"):
        recognizer.predict(huge)
    with pytest.raises(InvalidInputError, match="MP"):
        recognizer.predict(np.broadcast_to(huge, (2, side, side, 3)))
    with pytest.raises(InvalidInputError, match="MP"):
        next(recognizer.stream(iter([huge])))
    # at the bound: accepted
    ok = np.zeros((1000, MAX_FRAME_PIXELS // 1000, 3), np.uint8)
    assert as_rgb_frame(ok).shape == ok.shape


def test_an_array_like_over_the_bound_is_refused_before_conversion():
    """Array-likes with a shape (and PIL-like images with a size) are checked before np.asarray."""

    class Huge:
        shape = (20000, 20000, 3)

        def __array__(self, *a, **k):  # would allocate 1.2 GB
            raise AssertionError("converted before its size was checked")

    with pytest.raises(InvalidInputError, match="MP"):
        as_rgb_frame(Huge())

    class PilLike:
        size = (30000, 30000)

        def getdata(self):
            raise AssertionError("read before its size was checked")

        def __array__(self, *a, **k):
            raise AssertionError("converted before its size was checked")

    with pytest.raises(InvalidInputError, match="MP"):
        as_rgb_frame(PilLike())
