"""Annotated video: each face boxed and labelled with the emotion :meth:`Recognizer.predict` sees.

The analysis is predict's own (:meth:`Recognizer.predict`: face tracking, identity, the personal
head of a recognised user, else the universal head). For a label that is stable over frames,
each face track is cut into windows of about ``window`` seconds, and each window is classified
as a whole by the track's head (as predict classifies a whole clip): the label changes at most
once per window instead of flickering from frame to frame.

    from emoadapt import Recognizer
    from emoadapt.annotate import annotated_frames
    for index, image_bgr, labels in annotated_frames(Recognizer(), "clip.mp4"):
        ...  # write image_bgr to a video

Writing (:func:`open_writer`, what ``emoadapt annotate`` uses): the codec follows the output's
suffix (:data:`DEFAULT_FOURCC`), chosen so that current browsers play the file: VP9 in ``.mp4``
(``vp09``), VP8 in ``.webm``. The FFmpeg inside OpenCV's wheels has no H.264 encoder, and its
``mp4v`` (MPEG-4 Part 2, the codec OpenCV suggests for ``.mp4``) plays in desktop players but in
no browser. docs/cli.md has the table of what plays where.

Drawing: a box in the class colour (:data:`COLORS`) and the label on a filled box of the same
colour, in black or white, whichever contrasts more with it (WCAG contrast ratio at least 4.5 on
every class colour).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .recognizer import Recognizer, Result
from .video import Clip, Sampling, iter_frames

__all__ = [
    "COLORS",
    "DEFAULT_FOURCC",
    "FALLBACK_FOURCC",
    "FaceLabel",
    "label_windows",
    "annotated_frames",
    "default_fourcc",
    "open_writer",
    "draw_face",
    "text_color",
    "contrast_ratio",
]

#: BGR colours per emotion for annotated videos.
COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (0, 0, 255),
    "disgust": (0, 128, 0),
    "fear": (128, 0, 128),
    "happy": (0, 215, 255),
    "sad": (255, 0, 0),
    "surprise": (255, 255, 0),
    "neutral": (200, 200, 200),
}

#: default length of a label window, seconds
DEFAULT_WINDOW = 1.0

#: The video codec (FourCC) written by default for an output suffix: what current browsers play
#: (Chromium, Firefox, Edge; Safari on recent macOS and iOS) and OpenCV's FFmpeg can encode. VP9 in
#: MP4 is slower to encode than VP8 in WebM (docs/cli.md has the figures).
DEFAULT_FOURCC: dict[str, str] = {".mp4": "vp09", ".m4v": "vp09", ".webm": "VP80", ".mkv": "VP80"}
#: The codec for any other suffix (``.avi``, ``.mov``, ...): MPEG-4 Part 2, which desktop players
#: (VLC, mpv, QuickTime) play and browsers do not.
FALLBACK_FOURCC = "mp4v"
#: What OpenCV prints itself (``fprintf``, not its logger) when it maps a FourCC to a container,
#: e.g. ``OpenCV: FFMPEG: tag 0x30385056/'VP80' is not supported with codec id 139 and format
#: 'webm / WebM'``: a notice, not an error (a codec that cannot be written fails to open).
_OPENCV_NOTICES = (b"OpenCV: FFMPEG: ",)


def default_fourcc(path: str | os.PathLike[str]) -> str:
    """The FourCC :func:`open_writer` uses for ``path`` by default (by its suffix, any case)."""
    return DEFAULT_FOURCC.get(os.path.splitext(os.fspath(path))[1].lower(), FALLBACK_FOURCC)


def open_writer(path: str | os.PathLike[str], fps: float, size: tuple[int, int], fourcc: str | None = None, *, quiet: bool = False) -> Any | None:
    """An opened ``cv2.VideoWriter`` of ``size`` (width, height) BGR frames at ``fps`` to
    ``path``, whose suffix picks the container; ``fourcc`` the codec (default
    :func:`default_fourcc`). ``None`` when OpenCV cannot write that codec in that container.

    ``quiet``: drop the notices OpenCV itself prints to standard error while the writer opens
    (a FourCC it maps to the container's own tag, ``OpenCV: FFMPEG: tag ... fallback to use
    tag ...``). That redirects file descriptor 2 *of the process* for the call, so only a
    caller that owns its process should ask (the command line does).
    """
    import cv2

    from .zoo.interpreters import native_stderr_filtered

    code = cv2.VideoWriter.fourcc(*(fourcc or default_fourcc(path)))
    with native_stderr_filtered((), drop_prefixes=_OPENCV_NOTICES) if quiet else contextlib.nullcontext():
        try:
            writer = cv2.VideoWriter(os.fspath(path), code, float(fps), (int(size[0]), int(size[1])))
            opened = writer.isOpened()
        except cv2.error:
            return None
    if not opened:
        writer.release()
        return None
    return writer


@dataclass(frozen=True)
class FaceLabel:
    """What is drawn on one face of one frame."""

    track: int
    """Face track (0 = the main track, as in :attr:`Result.tracks`)."""
    box: tuple[float, float, float, float]
    """Face box (x1, y1, x2, y2) in pixels, this frame's."""
    label: str
    """The window's emotion."""
    probability: float
    """The window's probability of ``label``."""
    user: str | None
    """The recognised user of the track, else ``None``."""

    @property
    def text(self) -> str:
        who = f"{self.user}: " if self.user else ""
        return f"{who}{self.label} {self.probability:.0%}"


def _windows(indices: list[int], length: int) -> list[list[int]]:
    """Positions 0..n-1 of a track's faces grouped by source frame index into windows of
    ``length`` source frames; a last window shorter than half of one joins the one before."""
    groups: dict[int, list[int]] = {}
    for pos, idx in enumerate(indices):
        groups.setdefault(idx // length, []).append(pos)
    out = [groups[k] for k in sorted(groups)]
    if len(out) > 1 and indices[out[-1][-1]] - indices[out[-1][0]] + 1 < length / 2:
        out[-2].extend(out.pop())
    return out


def label_windows(
    rec: Recognizer, clip: Clip, *, sampling: Sampling | None = None, window: float | None = DEFAULT_WINDOW, color: str = "rgb", progress: bool = False
) -> tuple[Result, dict[int, list[FaceLabel]]]:
    """Predict ``clip`` and label every face of every sampled frame by its track's window.

    Args:
        rec: the recognizer (its personal heads are used for recognised users).
        clip: as for :meth:`Recognizer.predict`.
        sampling: which frames (default: all).
        window: window length in seconds of the source (``None``: one window per track, so
            every face of a track carries the track's clip-level label, exactly predict's).
        color: ``"rgb"`` or ``"bgr"`` for arrays and iterables.
        progress: show a progress bar of the analysis on stderr.

    Returns:
        predict's :class:`Result` and, per source frame index, the labels of its faces.
    """
    sampling = sampling or Sampling()
    if window is not None and not (isinstance(window, (int, float)) and math.isfinite(window) and window > 0):
        raise InvalidInputError(f"window must be a positive number of seconds or None, got {window!r}")
    res = rec._predict(  # every frame's features: each window is classified on its own frames
        clip, color=color, fps=sampling.fps, max_frames=sampling.max_frames, step=sampling.step, source_fps=sampling.source_fps, progress=progress,
        max_features=None,
    )  # fmt: skip
    labels: dict[int, list[FaceLabel]] = {}
    for t, track in enumerate(res.tracks or ([res] if res.timeline else [])):
        indices = [f.index for f in track.timeline]
        length = max(1, round(window * res.fps)) if window is not None and res.fps else max(indices) + 1
        for pos in _windows(indices, length):
            part = Result(
                label=None,
                probabilities={},
                frames=len(pos),
                faces=len(pos),
                features=_rows(track.features, pos),
                frame_probabilities=_rows(track.frame_probabilities, pos),
                embedding=track.embedding,
            )
            rec.personal.classify(part, track.user)
            assert part.label is not None
            for j in pos:
                f = track.timeline[j]
                labels.setdefault(f.index, []).append(FaceLabel(t, f.box, part.label, part.probabilities[part.label], track.user))
    return res, labels


def _rows(a: np.ndarray | None, pos: list[int]) -> np.ndarray:
    assert a is not None
    return a[pos]


def annotated_frames(
    rec: Recognizer, clip: Clip, *, sampling: Sampling | None = None, window: float | None = DEFAULT_WINDOW, color: str = "rgb", progress: bool = False
) -> Iterator[tuple[int, np.ndarray, list[FaceLabel]]]:
    """Yield ``(frame index, BGR image with faces drawn, labels)`` for every sampled frame.

    The clip is analysed first (:func:`label_windows`, arguments as there), then read again to
    draw: it must be readable twice (a path or an array, not a one-shot generator).
    """
    import cv2

    sampling = sampling or Sampling()
    _, labels = label_windows(rec, clip, sampling=sampling, window=window, color=color, progress=progress)
    for fr in iter_frames(clip, color=color, sampling=sampling):
        img = cv2.cvtColor(fr.image, cv2.COLOR_RGB2BGR)
        faces = labels.get(fr.index, [])
        for f in faces:
            draw_face(img, f.box, f.label, text=f.text)
        yield fr.index, img, faces


def _luminance(bgr: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour given as BGR."""

    def lin(c: int) -> float:
        v = c / 255.0
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    b, g, r = bgr
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG contrast ratio of two BGR colours (1 to 21)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background`` (BGR)."""
    black, white = (0, 0, 0), (255, 255, 255)
    return black if contrast_ratio(background, black) >= contrast_ratio(background, white) else white


def draw_face(img: np.ndarray, box: Any, label: str, prob: float | None = None, *, text: str | None = None) -> None:
    """Draw a box in ``label``'s colour and a caption on a BGR image in place.

    The caption (``text``, default ``"<label> <prob>%"``) is written on a filled box of the
    class colour, above the face (below it when there is no room), in :func:`text_color`.
    """
    import cv2

    color = COLORS.get(label, (255, 255, 255))
    if text is None:
        text = label if prob is None else f"{label} {prob:.0%}"
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    t = max(1, round(min(img.shape[:2]) / 240))
    cv2.rectangle(img, (x1, y1), (x2, y2), color, t)
    scale = max(0.4, min(img.shape[:2]) / 720)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, t)
    ty = y1 - 4 if y1 - th - base - 4 >= 0 else y2 + th + 4
    cv2.rectangle(img, (x1, ty - th - base), (x1 + tw + 4, ty + base), color, -1)
    cv2.putText(img, text, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, text_color(color), t, cv2.LINE_AA)
