"""Video input: turn any supported clip into a stream of RGB uint8 frames.

A *clip* is one of

* a path (``str`` or :class:`pathlib.Path`) to a video file that OpenCV decodes (mp4, avi,
  mov, flv, webm, ...) or to a single image (jpg, png, bmp, ...);
* a numpy array ``(H, W, 3)`` (one frame) or ``(T, H, W, 3)`` (T frames), ``uint8``;
  gray ``(H, W)`` / ``(T, H, W)`` and RGBA ``(..., 4)`` arrays are converted;
* any iterable of such frames (a list, a generator reading a webcam, ...).

Files are recognised by content, not by name: a JPEG/PNG/BMP/TIFF/WebP named ``.mp4`` is
used as a one-frame clip and a video named ``.jpg`` is decoded as a video (each with a
warning). A truncated or corrupt video yields the frames that decode; when decoding stops
well short of the frame count the container announces, the last (partly decoded) frame is
dropped and a warning is logged. Missing, empty, non-regular (FIFO, device) and undecodable
files raise :class:`VideoDecodeError`. Frame sampling (``fps``) counts frames at the
container's nominal rate, also for variable-frame-rate files.

Frames are yielded one at a time (a long video is never loaded whole into memory) as
:class:`Frame` tuples of the frame index in the source and the RGB ``uint8`` array.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from ._paths import as_path
from .errors import InvalidInputError, VideoDecodeError

__all__ = [
    "Clip",
    "Frame",
    "Sampling",
    "iter_frames",
    "as_rgb_frame",
    "video_info",
    "source_rate",
    "camera_frames",
    "camera_index",
    "IMAGE_SUFFIXES",
    "DEFAULT_SOURCE_FPS",
    "MIN_FPS",
    "MAX_FPS",
    "MAX_CAMERA_INDEX",
    "MAX_FRAME_PIXELS",
]

log = logging.getLogger(__name__)

Clip = str | os.PathLike | np.ndarray | Iterable[Any]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


#: frame rate assumed for arrays and iterables of frames (and video files whose container gives
#: none) unless ``source_fps`` says otherwise
DEFAULT_SOURCE_FPS = 30.0
#: source frame rates (``source_fps``, what frame times and window lengths count at) lie in
#: ``[MIN_FPS, MAX_FPS]`` frames a second: a value outside is refused before it is used
#: (``1e308`` overflowed, ``5e-324`` put window ends at inf)
MIN_FPS = 1e-3
MAX_FPS = 1000.0
#: the largest camera index :func:`camera_index` accepts (OpenCV reads ``100 * k + n`` as camera
#: ``n`` of its capture backend ``k``, e.g. ``cv2.CAP_V4L2 + 0``); negative indexes are refused
#: (``cv2.VideoCapture(-1)`` crashes the interpreter on a machine without a camera)
MAX_CAMERA_INDEX = 9999


class Frame(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index (the field name is the API)
    """Index of the frame in the source clip (before sampling)."""
    image: np.ndarray
    """RGB ``uint8`` array ``(H, W, 3)``, C-contiguous."""


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip to use.

    Args:
        fps: keep about this many frames per second of video, counted at the source's frame
            rate (a video file's container rate; ``source_fps`` for arrays and iterables, which
            carry none). ``None`` keeps every frame.
        max_frames: stop after this many frames have been kept. ``None``: no limit.
        step: keep every ``step``-th frame (applied before ``fps``).
        source_fps: the frame rate of arrays and iterables, and of a video file whose container
            gives none (default :data:`DEFAULT_SOURCE_FPS`, 30), in ``[MIN_FPS, MAX_FPS]``. With ``fps=10`` a 60 fps
            webcam stream needs ``source_fps=60``, else every 3rd frame (not every 6th) is kept.
    """

    fps: float | None = None
    max_frames: int | None = None
    step: int = 1
    source_fps: float = DEFAULT_SOURCE_FPS

    def __post_init__(self) -> None:
        # numpy scalars are accepted (normalised to Python numbers); bools are rejected:
        # ``fps=True`` or ``step=False`` is a mistake, not a rate or a count.
        if self.fps is not None:  # a sampling rate only sets a stride: any positive number is usable
            object.__setattr__(self, "fps", _positive(self.fps, "fps"))
        if self.max_frames is not None:
            if not _is_int(self.max_frames) or int(self.max_frames) < 1:
                raise InvalidInputError(f"max_frames must be a positive int, got {self.max_frames!r}")
            object.__setattr__(self, "max_frames", int(self.max_frames))
        if not _is_int(self.step) or int(self.step) < 1:
            raise InvalidInputError(f"step must be a positive int, got {self.step!r}")
        object.__setattr__(self, "step", int(self.step))
        object.__setattr__(self, "source_fps", _rate(self.source_fps, "source_fps"))


def _positive(value: Any, what: str) -> float:
    """A positive finite number as a float, else InvalidInputError (never OverflowError)."""
    if _is_real(value):
        try:
            v = float(value)
        except (OverflowError, ValueError):  # a huge int or Fraction
            v = math.inf
        if v > 0 and math.isfinite(v):
            return v
    raise InvalidInputError(f"{what} must be a positive number, got {value!r}")


def _rate(value: Any, what: str) -> float:
    """A frame rate in ``[MIN_FPS, MAX_FPS]`` as a float, else InvalidInputError."""
    if not _is_real(value):
        raise InvalidInputError(f"{what} must be a number of frames a second, got {value!r}")
    try:
        v = float(value)
    except (OverflowError, ValueError):  # a huge int or Fraction
        v = math.inf
    if not MIN_FPS <= v <= MAX_FPS:  # NaN fails too
        raise InvalidInputError(f"{what} must be in [{MIN_FPS:g}, {MAX_FPS:g}] frames a second, got {value!r}")
    return v


def camera_index(value: Any) -> int:
    """``value`` as a camera index for ``cv2.VideoCapture``: an int (numpy ints too, not bools)
    in ``[0, MAX_CAMERA_INDEX]``, else InvalidInputError -- checked before OpenCV sees it."""
    if not _is_int(value) or not 0 <= int(value) <= MAX_CAMERA_INDEX:
        raise InvalidInputError(f"a camera index must be an int in [0, {MAX_CAMERA_INDEX}], got {value!r}")
    return int(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def as_rgb_frame(frame: Any, color: str = "rgb") -> np.ndarray:
    """Validate one frame and return it as a C-contiguous RGB ``uint8`` ``(H, W, 3)`` array.

    Accepted:

    * gray ``(H, W)`` / ``(H, W, 1)``, RGB ``(H, W, 3)`` and RGBA ``(H, W, 4)`` (alpha is
      dropped; with ``color="bgr"`` the colour channels are swapped);
    * ``uint8``; ``uint16`` as 16-bit data (the high byte is kept; a warning is
      logged when every value is below 256, which usually means 8-bit data stored as uint16);
      other integer dtypes and ``bool`` whose values lie in ``0..255`` (``True`` is 255);
    * floats in ``[0, 1]`` (scaled by 255) or ``[0, 255]``, with 1% tolerance for interpolation
      overshoot (clipped). A float frame whose maximum is at most 1.01 is taken as ``[0, 1]``.

    NaN/inf, values outside those ranges, empty, wrongly shaped, complex, string and object
    arrays, and frames of more than :data:`MAX_FRAME_PIXELS` pixels raise
    :class:`InvalidInputError` (the pixel count is checked before any conversion or copy).
    """
    if color not in ("rgb", "bgr"):
        raise InvalidInputError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if not isinstance(frame, np.ndarray):
        _check_pixels(getattr(frame, "shape", None) or _pil_shape(frame))
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
    _check_pixels(frame.shape)  # before any conversion or copy
    if frame.dtype == np.uint8:
        pass
    elif frame.dtype == np.uint16:
        if int(frame.max()) < 256:
            log.warning("uint16 frame with all values below 256: taken as 16-bit data (nearly black); convert 8-bit data to uint8 first")
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype.kind == "f":
        with np.errstate(all="ignore"):
            lo, hi = float(frame.min()), float(frame.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InvalidInputError("frame contains NaN or infinite values")
        scale = 255.0 if hi <= 1.01 else 1.0
        if lo * scale < -2.55 or hi * scale > 257.55:
            raise InvalidInputError(f"float frame values must lie in [0, 1] or [0, 255], got [{lo:.4g}, {hi:.4g}]")
        frame = np.clip(frame.astype(np.float32) * np.float32(scale) + np.float32(0.5), 0, 255).astype(np.uint8)
    elif frame.dtype == np.bool_:
        frame = frame.astype(np.uint8) * np.uint8(255)
    elif frame.dtype.kind in "iu":
        if frame.min() < 0 or frame.max() > 255:
            raise InvalidInputError(f"integer frame values outside 0..255 (dtype {frame.dtype})")
        frame = frame.astype(np.uint8)
    else:
        raise InvalidInputError(f"unsupported frame dtype {frame.dtype}")
    if frame.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_GRAY2RGB))
    if frame.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB if color == "bgr" else cv2.COLOR_RGBA2RGB
        return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(frame), code))
    if color == "bgr":  # cvtColor: the same pixels as frame[:, :, ::-1], 40x faster than numpy's strided copy
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(frame)


def _pil_shape(obj: Any) -> tuple[int, ...] | None:
    """(height, width) of a PIL image (its ``size`` is (width, height)), else None."""
    size = getattr(obj, "size", None) if hasattr(obj, "getdata") else None
    return (size[1], size[0]) if isinstance(size, tuple) and len(size) == 2 else None


def _check_pixels(shape: Any) -> None:
    """InvalidInputError for a frame ``shape`` (H, W, ...) of more than MAX_FRAME_PIXELS pixels."""
    try:
        h, w = int(shape[0]), int(shape[1])
    except (TypeError, ValueError, IndexError, OverflowError):
        return  # not a frame's shape: the checks after the conversion decide
    if h * w > MAX_FRAME_PIXELS:
        raise InvalidInputError(f"a {w}x{h} frame has more than the {MAX_FRAME_PIXELS // 10**6} MP a frame may have here: downscale it first")


#: image files larger than this are refused before anything is read (a legitimate 50 MP PNG
#: or TIFF is well below; a sparse file that starts with JPEG magic is not read at all)
MAX_IMAGE_BYTES = 256 * 2**20
#: images and video frames whose header declares more pixels than this are refused before
#: decoding (a few-KB PNG can declare 24000x24000 pixels: 1.7 GB decoded)
MAX_FRAME_PIXELS = 50_000_000


def _check_file(path: Path) -> int:
    """The size of a readable regular file, else VideoDecodeError (never a raw OSError)."""
    import stat

    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise VideoDecodeError(f"no such file: {path}") from None
    except OSError as e:  # EACCES on a directory on the way, ELOOP, ENAMETOOLONG, EIO...
        raise VideoDecodeError(f"cannot access {path}: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        raise VideoDecodeError(f"is a directory, not a clip: {path}")
    if not stat.S_ISREG(st.st_mode):  # a FIFO, socket or device: opening it could block forever
        raise VideoDecodeError(f"not a regular file: {path}")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise VideoDecodeError(f"cannot read {path}: {e.strerror or e}") from e
    if st.st_size == 0:
        raise VideoDecodeError(f"empty file: {path}")
    return int(st.st_size)


#: leading bytes of the still-image formats OpenCV decodes (a file with one of these is read
#: as an image whatever its suffix; any other file is handed to the video decoder)
_IMAGE_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)


def _looks_like_image(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise VideoDecodeError(f"cannot read {path}: {e}") from e
    if head.startswith(_IMAGE_MAGIC):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return len(head) >= 2 and head[:1] == b"P" and head[1:2] in b"1234567" and path.suffix.lower() in (".ppm", ".pgm", ".pbm", ".pnm")


def _jpeg_size(f: Any) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF segment, walking the segments by their lengths
    (bounded seeks, never a read of the whole file); None when there is none before the scan."""
    f.seek(2)
    for _ in range(4096):
        b = f.read(1)
        while b == b"\xff":  # fill bytes before a marker
            b = f.read(1)
        if not b:
            return None
        m = b[0]
        if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:  # markers without a length
            continue
        seg = f.read(2)
        if len(seg) < 2 or m in (0xD9, 0xDA):  # end of image / start of scan before a SOF
            return None
        length = struct.unpack(">H", seg)[0]
        if m in _JPEG_SOF:
            sof = f.read(5)
            if len(sof) < 5:
                return None
            h, w = struct.unpack(">HH", sof[1:5])
            return (w, h) if w and h else None  # height 0 (set by a DNL marker later): refused
        if length < 2:
            return None
        f.seek(length - 2, 1)
        # the next byte must be a marker
        nxt = f.read(1)
        if nxt != b"\xff":
            return None
        f.seek(-1, 1)
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _tiff_size(f: Any, head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first IFD of a TIFF (tags 256/257)."""
    end = "<" if head[:2] == b"II" else ">"
    f.seek(struct.unpack(end + "I", head[4:8])[0])
    raw = f.read(2)
    if len(raw) < 2:
        return None
    n = struct.unpack(end + "H", raw)[0]
    entries = f.read(12 * min(n, 4096))
    dims: dict[int, int] = {}
    for i in range(len(entries) // 12):
        tag, typ, _count = struct.unpack(end + "HHI", entries[12 * i : 12 * i + 8])
        if tag in (256, 257):
            dims[tag] = struct.unpack(end + ("H" if typ == 3 else "I"), entries[12 * i + 8 : 12 * i + (10 if typ == 3 else 12)])[0]
    return (dims[256], dims[257]) if len(dims) == 2 else None


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) the header of an image file declares, read with a few bounded reads;
    None when the header does not say (OpenCV would not decode such a file either)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head.startswith(b"\xff\xd8\xff"):
                return _jpeg_size(f)
            if head.startswith(b"BM") and len(head) >= 26:
                if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 header: 16-bit sizes
                    return struct.unpack("<HH", head[18:22])
                w, h = struct.unpack("<ii", head[18:26])
                return abs(w), abs(h)
            if head[:4] in (b"II*\x00", b"MM\x00*"):
                return _tiff_size(f, head)
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                chunk = head[12:16]
                if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
                    w, h = struct.unpack("<HH", head[26:30])
                    return w & 0x3FFF, h & 0x3FFF
                if chunk == b"VP8L" and head[20] == 0x2F:
                    bits = int.from_bytes(head[21:25], "little")
                    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
                if chunk == b"VP8X":
                    return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
                return None
            if head[:1] == b"P":  # PNM: magic, then width and height as text (comments allowed)
                text = (head + f.read(1024)).split(b"\n")
                tokens: list[bytes] = []
                for line in text:
                    tokens += line.split(b"#")[0].split()
                    if len(tokens) >= 3:
                        break
                return (int(tokens[1]), int(tokens[2])) if len(tokens) >= 3 and tokens[1].isdigit() and tokens[2].isdigit() else None
    except (OSError, struct.error, ValueError, IndexError) as e:
        log.debug("cannot read the image header of %s: %s", path, e)
    return None


def _read_image(path: Path, size: int) -> np.ndarray | None:
    """Decode an image file, bounded: the file size and the pixel count its header declares
    are checked before anything more than the header is read."""
    if size > MAX_IMAGE_BYTES:
        raise VideoDecodeError(f"{path.name} is {size / 2**20:.0f} MiB: image files are limited to {MAX_IMAGE_BYTES // 2**20} MiB")
    dims = _image_size(path)
    if dims is None:
        return None
    w, h = dims
    flags = cv2.IMREAD_COLOR
    if w * h > MAX_FRAME_PIXELS:
        raise VideoDecodeError(
            f"{path.name} declares {dims[0]}x{dims[1]} pixels, more than the {MAX_FRAME_PIXELS // 10**6} MP "
            "an image may have here (a decompression bomb, or a photo to downscale first)"
        )
    # no image needs more bytes than 8 per pixel (16-bit RGBA, uncompressed) plus metadata:
    # anything beyond is not image data (a sparse or padded file) and is not read
    limit = min(MAX_IMAGE_BYTES, w * h * 8 + (16 << 20))
    if size > limit:
        raise VideoDecodeError(f"{path.name} is {size / 2**20:.1f} MiB, more than a {w}x{h} image can need ({limit / 2**20:.1f} MiB)")
    try:
        img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8, count=size), flags)
    except cv2.error:
        return None
    if img is None or img.size == 0:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second full-size copy


def video_info(path: str | os.PathLike) -> dict[str, float]:
    """Frame count, fps, width and height as reported by the container (may be approximate)."""
    p = as_path(path, "video path")
    _check_file(p)
    cap = _open_capture(p)
    try:
        return {
            "frames": float(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
            "width": float(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": float(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        }
    finally:
        cap.release()


def _capture(target: str | int, what: str, why: str) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture(target)``, else VideoDecodeError ``"cannot <what>: <why>"``."""
    try:
        cap = cv2.VideoCapture(target)
        ok = cap.isOpened()
    except cv2.error as e:
        raise VideoDecodeError(f"cannot {what}: {e}") from e
    if not ok:
        cap.release()
        raise VideoDecodeError(f"cannot {what}: {why}")
    return cap


def _open_capture(path: Path) -> cv2.VideoCapture:
    cap = _capture(str(path), f"decode {path.name}", "not a video or image OpenCV can read")
    w, h = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    if not (math.isfinite(w) and math.isfinite(h)) or w * h > MAX_FRAME_PIXELS:
        cap.release()
        raise VideoDecodeError(f"{path.name} declares {w:.0f}x{h:.0f} frames, more than the {MAX_FRAME_PIXELS // 10**6} MP a frame may have here")
    return cap


def _read(cap: cv2.VideoCapture) -> np.ndarray | None:
    """The next decoded frame as RGB uint8, or None at the end of the decodable data."""
    try:
        ok, frame = cap.read()
    except cv2.error as e:
        log.warning("the video decoder failed: %s", e)
        return None
    if not ok or frame is None or frame.size == 0:
        return None
    if frame.dtype != np.uint8:
        frame = as_rgb_frame(frame, "bgr")
        return frame
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB if frame.shape[2] == 4 else cv2.COLOR_BGR2RGB)


#: a file that decodes to fewer frames than its container announces, minus this slack (the
#: count is an estimate from the duration in some containers), is treated as truncated
_TRUNCATION_SLACK = 2


def _iter_video(path: Path) -> tuple[float | None, Iterator[np.ndarray]]:
    """Decode a video file lazily.

    A truncated or corrupt file yields the frames that decode. When it stops well before the
    frame count its container announces, the last decoded frame (which a cut packet leaves
    partly decoded: garbage) is dropped and a warning is logged.
    """
    cap = _open_capture(path)
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
    if fps is not None and not (0 < fps < 1000):
        fps = None
    expected = float(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    expected = int(expected) if math.isfinite(expected) and 0 < expected < 2**31 else 0
    first = _read(cap)
    if first is None:
        cap.release()
        raise VideoDecodeError(f"cannot decode any frame of {path.name} (empty, truncated or not a video)")

    def gen() -> Iterator[np.ndarray]:
        n = 1
        try:
            frame = first
            while True:
                nxt = _read(cap)
                if nxt is None:
                    break
                yield frame  # held back one frame: the last one is checked first
                frame, n = nxt, n + 1
            if expected and n + _TRUNCATION_SLACK < expected:
                log.warning(
                    "%s decoded only %d of the %d frames its container announces: the file is truncated "
                    "or corrupt; its last, possibly incomplete, frame is dropped",
                    path.name,
                    n,
                    expected,
                )
                if n == 1:
                    raise VideoDecodeError(f"{path.name} is truncated: not one complete frame decodes")
                return
            yield frame
        finally:
            cap.release()

    return fps, gen()


def _source(clip: Clip, color: str) -> tuple[float | None, Iterator[np.ndarray]]:
    if isinstance(clip, (str, os.PathLike)):
        path = as_path(clip, "the clip path")
        size = _check_file(path)
        suffix = path.suffix.lower()
        if _looks_like_image(path):
            img = _read_image(path, size)
            if img is None:
                raise VideoDecodeError(f"cannot decode image {path.name} (truncated or corrupt)")
            if suffix not in IMAGE_SUFFIXES:
                log.warning("%s is an image, not a video: using it as a one-frame clip", path.name)
            return None, iter([img])
        if suffix in IMAGE_SUFFIXES:
            try:
                src = _iter_video(path)
            except VideoDecodeError:
                raise VideoDecodeError(f"cannot decode image {path.name}") from None
            log.warning("%s is named as an image but holds a video: decoding it as a video", path.name)
            return src
        return _iter_video(path)
    if isinstance(clip, (list, tuple)) and clip and isinstance(clip[0], (list, tuple)):
        # nested sequences of numbers (``frame.tolist()``): one array-like frame or clip; when
        # ragged (frames of different sizes), each element is taken as a frame below
        try:
            arr = np.asarray(clip)
        except (ValueError, TypeError):
            arr = None
        if arr is not None and arr.dtype != object:
            clip = arr
    if isinstance(clip, np.ndarray):
        if clip.ndim == 4 or (clip.ndim == 3 and clip.shape[-1] not in (1, 3, 4)):
            if clip.shape[0] == 0:
                raise InvalidInputError("the clip array has no frames")
            return None, (as_rgb_frame(f, color) for f in clip)
        return None, iter([as_rgb_frame(clip, color)])
    if isinstance(clip, (bytes, bytearray, memoryview)):
        raise InvalidInputError("raw bytes are not a clip: write them to a file or decode them first")
    if isinstance(clip, (dict, set, frozenset)):
        raise InvalidInputError(f"unsupported clip type {type(clip).__name__}: give a path, an array or an iterable of frames")
    if isinstance(clip, Iterable):
        return None, (as_rgb_frame(f, color) for f in clip)
    if hasattr(clip, "__array__") or hasattr(clip, "getdata"):  # PIL image
        return None, iter([as_rgb_frame(clip, color)])
    raise InvalidInputError(f"unsupported clip type {type(clip).__name__}: give a path, an array or an iterable of frames")


def camera_frames(index: int) -> tuple[float | None, Iterator[np.ndarray]]:
    """Open camera ``index`` (``cv2.VideoCapture(index)``): its frame rate as the driver reports
    it (``None`` when it reports none) and a lazy iterator of its frames as RGB uint8, which
    ends when the camera stops giving frames and releases the camera when closed.
    VideoDecodeError when the camera cannot be opened; InvalidInputError for an index that is
    not one (:func:`camera_index`)."""
    index = camera_index(index)
    cap = _capture(index, f"open camera {index}", "no such device, or it is busy")
    try:
        fps = _valid_rate(float(cap.get(cv2.CAP_PROP_FPS)))
    except (TypeError, ValueError):
        fps = None
    return fps, _CameraFrames(cap)


class _CameraFrames(Iterator[np.ndarray]):
    """:func:`camera_frames`' iterator: ``close()`` releases the camera also before the first
    frame is read (a generator's ``finally`` would not run then)."""

    def __init__(self, cap: cv2.VideoCapture) -> None:
        self._cap: cv2.VideoCapture | None = cap

    def __next__(self) -> np.ndarray:
        frame = None if self._cap is None else _read(self._cap)
        if frame is None:
            self.close()
            raise StopIteration
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __del__(self) -> None:
        self.close()


def _valid_rate(fps: float) -> float | None:
    return fps if math.isfinite(fps) and 0 < fps < 1000 else None


def source_rate(path: str | os.PathLike, sampling: Sampling | None = None) -> float | None:
    """The frame rate :func:`iter_frames` counts a file's frames at: the container's rate for a
    video, ``sampling.source_fps`` when the container gives none (or the file cannot be opened:
    :func:`iter_frames` then raises), ``None`` for a still image."""
    from ._paths import as_path

    sampling = sampling or Sampling()
    p = as_path(path, "clip")
    try:
        _check_file(p)
        if _looks_like_image(p):
            return None
        cap = _open_capture(p)
    except VideoDecodeError:
        return sampling.source_fps
    try:
        return _valid_rate(float(cap.get(cv2.CAP_PROP_FPS))) or sampling.source_fps
    finally:
        cap.release()


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
