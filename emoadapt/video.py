"""Video input: turn any supported clip into a stream of RGB uint8 frames.

A *clip* is one of

* a path (``str`` or :class:`pathlib.Path`) to a video file that OpenCV decodes (mp4, avi,
  mov, flv, webm, ...) or to a single image (jpg, png, bmp, ...);
* a numpy array ``(H, W, 3)`` (one frame) or ``(T, H, W, 3)`` (T frames), ``uint8``;
  gray ``(H, W)`` / ``(T, H, W)`` and RGBA ``(..., 4)`` arrays are converted;
* any iterable of such frames (a list, a generator reading a webcam, ...).

Frames are yielded one at a time (a long video is never loaded whole into memory) as
:class:`Frame` tuples of the frame index in the source and the RGB ``uint8`` array.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Union

import cv2
import numpy as np

from .errors import InvalidInputError, VideoDecodeError

__all__ = ["Clip", "Frame", "Sampling", "iter_frames", "as_rgb_frame", "video_info", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)

Clip = Union[str, os.PathLike, np.ndarray, Iterable[Any]]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class Frame(NamedTuple):
    index: int
    """Index of the frame in the source clip (before sampling)."""
    image: np.ndarray
    """RGB ``uint8`` array ``(H, W, 3)``, C-contiguous."""


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip to use.

    Args:
        fps: keep about this many frames per second of video (needs the source frame rate;
            for arrays and iterables ``source_fps`` is assumed). ``None`` keeps every frame.
        max_frames: stop after this many frames have been kept. ``None``: no limit.
        step: keep every ``step``-th frame (applied before ``fps``).
        source_fps: frame rate assumed when the source does not say (arrays, iterables).
    """

    fps: float | None = None
    max_frames: int | None = None
    step: int = 1
    source_fps: float = 30.0

    def __post_init__(self) -> None:
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and self.fps > 0 and math.isfinite(self.fps)):
            raise InvalidInputError(f"fps must be a positive number, got {self.fps!r}")
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or self.max_frames < 1):
            raise InvalidInputError(f"max_frames must be a positive int, got {self.max_frames!r}")
        if not isinstance(self.step, int) or self.step < 1:
            raise InvalidInputError(f"step must be a positive int, got {self.step!r}")


def as_rgb_frame(frame: Any, color: str = "rgb") -> np.ndarray:
    """Validate one frame and return it as a C-contiguous RGB ``uint8`` ``(H, W, 3)`` array.

    Accepts ``uint8`` gray ``(H, W)``/``(H, W, 1)``, RGB(A) ``(H, W, 3|4)``; ``uint16`` is scaled
    down; float arrays in ``[0, 1]`` are scaled to ``[0, 255]``. NaN/inf, empty or wrongly shaped
    arrays raise :class:`InvalidInputError`. ``color="bgr"`` swaps the channels.
    """
    if not isinstance(frame, np.ndarray):
        try:  # PIL images and array-likes
            frame = np.asarray(frame)
        except Exception as e:  # noqa: BLE001 - anything unconvertible is invalid input
            raise InvalidInputError(f"frame is not an image array: {type(frame).__name__}") from e
        if frame.dtype == object:
            raise InvalidInputError("frame is not a numeric image array")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise InvalidInputError(f"a frame must be (H,W), (H,W,1), (H,W,3) or (H,W,4); got shape {frame.shape}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InvalidInputError(f"empty frame of shape {frame.shape}")
    if frame.dtype == np.uint8:
        pass
    elif frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif np.issubdtype(frame.dtype, np.floating):
        if not np.isfinite(frame).all():
            raise InvalidInputError("frame contains NaN or infinite values")
        hi = float(frame.max()) if frame.size else 0.0
        scale = 255.0 if hi <= 1.0 else 1.0
        frame = np.clip(frame * scale + 0.5, 0, 255).astype(np.uint8)
    elif frame.dtype == np.bool_ or np.issubdtype(frame.dtype, np.integer):
        if frame.dtype != np.bool_ and (frame.min() < 0 or frame.max() > 255):
            raise InvalidInputError(f"integer frame values outside 0..255 (dtype {frame.dtype})")
        frame = frame.astype(np.uint8) * (255 if frame.dtype == np.bool_ else 1)
    else:
        raise InvalidInputError(f"unsupported frame dtype {frame.dtype}")
    if color not in ("rgb", "bgr"):
        raise InvalidInputError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if frame.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_GRAY2RGB))
    if frame.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB if color == "bgr" else cv2.COLOR_RGBA2RGB
        return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(frame), code))
    if color == "bgr":
        return np.ascontiguousarray(frame[:, :, ::-1])
    return np.ascontiguousarray(frame)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(f"no such file: {path}")
    if path.is_dir():
        raise VideoDecodeError(f"is a directory, not a clip: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as e:
        raise VideoDecodeError(f"cannot read {path}: {e}") from e
    if size == 0:
        raise VideoDecodeError(f"empty file: {path}")


def _read_image(path: Path) -> np.ndarray | None:
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        return None
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def video_info(path: str | os.PathLike) -> dict[str, float]:
    """Frame count, fps, width and height as reported by the container (may be approximate)."""
    p = Path(path)
    _check_file(p)
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise VideoDecodeError(f"cannot decode {p.name} as video")
        return {
            "frames": float(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
            "width": float(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": float(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        }
    finally:
        cap.release()


def _iter_video(path: Path) -> tuple[float | None, Iterator[np.ndarray]]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoDecodeError(f"cannot decode {path.name}: not a video or image OpenCV can read")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
    if fps is not None and not (0 < fps < 1000):
        fps = None
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise VideoDecodeError(f"cannot decode any frame of {path.name} (empty, truncated or not a video)")

    def gen() -> Iterator[np.ndarray]:
        try:
            frame = first
            while frame is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = cap.read()
                if not ok:
                    break
        finally:
            cap.release()

    return fps, gen()


def _source(clip: Clip, color: str) -> tuple[float | None, Iterator[np.ndarray]]:
    if isinstance(clip, (str, os.PathLike)):
        path = Path(clip)
        _check_file(path)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            img = _read_image(path)
            if img is None:
                raise VideoDecodeError(f"cannot decode image {path.name}")
            return None, iter([img])
        try:
            return _iter_video(path)
        except VideoDecodeError:
            img = _read_image(path)  # an image with a video suffix (e.g. a JPEG named .mp4)
            if img is None:
                raise
            log.warning("%s is an image, not a video: using it as a one-frame clip", path.name)
            return None, iter([img])
    if isinstance(clip, np.ndarray):
        if clip.ndim == 4 or (clip.ndim == 3 and clip.shape[-1] not in (1, 3, 4)):
            if clip.shape[0] == 0:
                raise InvalidInputError("the clip array has no frames")
            return None, (as_rgb_frame(f, color) for f in clip)
        return None, iter([as_rgb_frame(clip, color)])
    if isinstance(clip, (bytes, bytearray)):
        raise InvalidInputError("raw bytes are not a clip: write them to a file or decode them first")
    if isinstance(clip, Iterable):
        return None, (as_rgb_frame(f, color) for f in clip)
    if hasattr(clip, "__array__") or hasattr(clip, "getdata"):  # PIL image
        return None, iter([as_rgb_frame(clip, color)])
    raise InvalidInputError(f"unsupported clip type {type(clip).__name__}: give a path, an array or an iterable of frames")


def iter_frames(clip: Clip, *, color: str = "rgb", sampling: Sampling | None = None) -> Iterator[Frame]:
    """Yield the sampled frames of ``clip`` as :class:`Frame` (index, RGB uint8 image).

    Raises :class:`VideoDecodeError` for missing/empty/undecodable files and
    :class:`InvalidInputError` for bad arrays or an iterable that yields no frame. Errors raised
    by a user's generator midway propagate as :class:`InvalidInputError` with the original
    exception chained.
    """
    if color not in ("rgb", "bgr"):
        raise InvalidInputError(f"color must be 'rgb' or 'bgr', got {color!r}")
    sampling = sampling or Sampling()
    src_fps, frames = _source(clip, color)
    fps = src_fps or sampling.source_fps
    stride = 1.0 if sampling.fps is None else max(1.0, fps / sampling.fps)
    it = iter(frames)
    try:
        yield from _sample(it, sampling, stride)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _sample(it: Iterator[np.ndarray], sampling: Sampling, stride: float) -> Iterator[Frame]:
    next_keep = 0.0
    kept = 0
    n = 0
    while True:
        try:
            img = next(it)
        except StopIteration:
            break
        except (InvalidInputError, VideoDecodeError):
            raise
        except Exception as e:  # a user's generator failed midway
            raise InvalidInputError(f"the frame source raised {type(e).__name__} at frame {n}: {e}") from e
        i = n
        n += 1
        if i % sampling.step:
            continue
        if i + 1e-9 < next_keep:
            continue
        next_keep += stride
        while next_keep <= i:
            next_keep += stride
        yield Frame(i, img)
        kept += 1
        if sampling.max_frames is not None and kept >= sampling.max_frames:
            break
    if n == 0:
        raise InvalidInputError("the clip has no frames")
