"""Windows over a stream of frames (:meth:`emoadapt.recognizer.Recognizer.stream`).

Every frame is read, detected, aligned and run through the backbone once
(:meth:`~emoadapt.analysis.Analysis.frames`); a ring buffer keeps the per-frame outputs (boxes,
probabilities, features -- never images) of the last ``window`` seconds only, so memory stays
constant over an endless source, and each window re-runs only the clip heads on them. A window
covering a whole clip gives exactly what ``predict`` gives for it (up to float rounding).

Windows end after the frames ``hop``, ``2*hop``, ... seconds into the source, and once more at
its end when frames came after the last one (a clip shorter than ``window`` thus ends with a
window over all of it). Identity embeddings are sampled per track as in ``predict``, with the
``identity_frames`` cap counted per window, so a long track keeps being identified; the
enrolled users are read when the stream starts.

Latency: a window's result is yielded right after its last frame is read, tracked, aligned and
its last few face crops (at most :data:`STREAM_CHUNK`) are run through the backbone, plus the
clip heads (measured in docs/live.md, ``benchmarks/stream.py``). A frame waits up to ``hop``
more for its window to end. Frames read meanwhile wait in the source (a camera drops what it
cannot buffer).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import number
from ._paths import as_path
from .analysis import MAX_POOLED_FACES, Analysis, AnalyzedFrame, FaceTable
from .errors import InvalidInputError
from .results import Result
from .scanning import clip_fps
from .video import Clip, Sampling, camera_frames, camera_index

__all__ = ["STREAM_CHUNK", "MAX_WINDOW_FRAMES", "StreamSpec", "check_window", "windows"]

#: face crops per backbone batch in a stream (small: a window's result waits for its last batch)
STREAM_CHUNK = 4

#: the most sampled frames a stream's window may hold (its ring buffer's bound: 136 s at 30 fps;
#: longer windows sample fewer frames with ``fps``)
MAX_WINDOW_FRAMES = MAX_POOLED_FACES

#: what classifies a window's face table against the enrolled users' gallery
Classify = Callable[[FaceTable, dict[str, np.ndarray]], Result]


def check_window(window: float, rate: float, fps: float | None) -> None:
    """InvalidInputError when a ``window`` of seconds holds more than MAX_WINDOW_FRAMES sampled frames."""
    per_s = min(rate, fps) if fps is not None else rate
    if window * per_s > MAX_WINDOW_FRAMES:
        raise InvalidInputError(
            f"window={window:g} s at {per_s:g} frames a second would hold {window * per_s:.0f} frames: a window holds at most "
            f"{MAX_WINDOW_FRAMES} ({MAX_WINDOW_FRAMES / per_s:g} s at this rate); shorten it, or sample fewer frames a second with fps="
        )


@dataclass(frozen=True)
class StreamSpec:
    """A stream's checked arguments: the source (a camera index, opened when the stream starts,
    or a clip), its name and frame rate (``None`` for a camera until it is opened), the window
    and hop in seconds."""

    source: int | Clip
    name: str | None
    rate: float | None
    color: str
    sampling: Sampling
    window: float
    hop: float

    @classmethod
    def check(cls, source: int | Clip, *, window: float, hop: float, fps: float | None, color: str, source_fps: float) -> StreamSpec:
        """The arguments of :meth:`~emoadapt.recognizer.Recognizer.stream`, checked before
        anything reaches OpenCV (InvalidInputError); a file's window length is checked here, a
        camera's when it is opened."""
        window = number(window, "window", 1e-3, 1e9)
        hop = number(hop, "hop", 1e-3, 1e9)
        if color not in ("rgb", "bgr"):
            raise InvalidInputError(f"color must be 'rgb' or 'bgr', got {color!r}")
        sampling = Sampling(fps=fps, source_fps=source_fps)
        if isinstance(source, (int, np.integer)) and not isinstance(source, (bool, np.bool_)):
            return cls(camera_index(source), None, None, color, sampling, window, hop)
        clip: Any = as_path(source, "source") if isinstance(source, (str, os.PathLike)) else source
        rate = clip_fps(clip, sampling) or sampling.source_fps
        check_window(window, rate, sampling.fps)
        return cls(clip, os.fspath(clip) if isinstance(clip, os.PathLike) else None, rate, color, sampling, window, hop)


def windows(
    spec: StreamSpec, analysis: Analysis, classify: Classify, gallery: Callable[[], dict[str, np.ndarray]], chunk: int
) -> Generator[Result, None, None]:
    """One :class:`Result` per window of ``spec``: each window's face table classified by
    ``classify`` against the ``gallery()`` read when the stream starts (a camera is opened, and
    a file or iterable read, when iteration starts; closing the generator releases it)."""
    clip: Any = spec.source
    rate, color = spec.rate, spec.color
    camera: Any = None
    if isinstance(clip, int):
        cam_rate, clip = camera_frames(clip)
        camera, rate, color = clip, cam_rate or spec.sampling.source_fps, "rgb"
        try:
            check_window(spec.window, rate, spec.sampling.fps)
        except InvalidInputError:
            camera.close()  # releases the camera
            raise
    assert rate is not None
    sampling = Sampling(fps=spec.sampling.fps, source_fps=rate)
    span, step = max(1, round(spec.window * rate)), max(1, round(spec.hop * rate))  # in source frames
    users = gallery()
    buffer: deque[AnalyzedFrame] = deque()
    next_end = step  # the next window ends after the frame of index next_end - 1

    def result(end: int) -> Result:
        res = classify(FaceTable(buffer, source=spec.name, fps=rate), users)
        for r in res.tracks or [res]:
            r.start, r.end = round(max(0, end - span) / rate, 6), round(end / rate, 6)
        return res

    frames_in = analysis.frames(
        clip,
        color=color,
        sampling=sampling,
        identity=bool(users),
        identity_window=span,
        chunk=min(chunk, STREAM_CHUNK),
        flush=lambda i: i + 1 >= next_end,
    )
    pending = False  # frames read since the last window
    try:
        for fr in frames_in:
            buffer.append(fr)
            while buffer[0].index <= fr.index - span:
                buffer.popleft()
            pending = True
            if fr.index + 1 >= next_end:
                next_end = (fr.index + 1) // step * step + step
                pending = False
                yield result(fr.index + 1)
        if pending:
            yield result(buffer[-1].index + 1)
    finally:
        frames_in.close()
        if camera is not None:
            camera.close()
