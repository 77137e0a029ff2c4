"""MTCNN face detection on TFLite, reproducing facenet-pytorch's ``MTCNN.detect``.

The three networks (P-Net, R-Net, O-Net) are facenet-pytorch 2.6.0's weights converted to
float32 TFLite by ``scripts/build_models.py mtcnn`` (``mtcnn_pnet``, ``mtcnn_rnet``,
``mtcnn_onet`` in the manifest; the input normalisation ``(x - 127.5) * 0.0078125`` is inside
the graphs, so they take raw RGB pixel values). This module re-implements facenet-pytorch's
``detect_face`` in numpy, step for step and in float32 like the original:

1. image pyramid: scales ``12 / min_face_size * factor**k`` while the short side stays
   >= 12 px; each level is ``int(h * s + 1) x int(w * s + 1)``, resized by *area averaging*
   exactly as ``torch.nn.functional.interpolate(mode="area")`` (adaptive average pooling),
   computed from one integral image of the frame;
2. P-Net on every level, candidates with face probability >= ``thresholds[0]``, NMS 0.5 per
   level, NMS 0.7 over all levels, box regression, squaring (``rerec``), clipping (``pad``);
3. R-Net on 24x24 area-resized crops of all candidates in one batch, probability >
   ``thresholds[1]``, NMS 0.7, regression, squaring;
4. O-Net on 48x48 crops, probability > ``thresholds[2]``, 5 landmarks, regression, and a
   final NMS 0.7 with the "Min" overlap (intersection over the smaller box).

NMS follows torchvision's CPU kernel (stages 2-3: IoU with ``(x2-x1)*(y2-y1)`` areas,
suppress ``IoU > t``) and facenet-pytorch's ``nms_numpy`` (stage 4: ``+1`` areas). The only
intended difference: boxes with exactly equal scores are ordered by index here, while torch's
unstable sort orders them arbitrarily. Parity with facenet-pytorch on real photos is tested in
``tests/test_detection.py`` (boxes and landmarks agree to about 1e-3 px).

For video, :meth:`MTCNN.refine` runs O-Net alone on given boxes (the faces' boxes in the
previous frame): about 0.3 ms instead of 10 ms of CPU per 480x360 frame, landmarks within
about 1 px of a full detection (``tests/test_tracking_detector.py``). :class:`TrackingDetector`
tracks the faces with it and runs the full cascade only at a track's start, when a face is
lost, and where a cheap new-face check (every ``detect_every`` frames) saw the picture change.

Only numpy, OpenCV and ai_edge_litert are used (no TensorFlow, no torch). Interpreters are
built once per input shape and cached: one per P-Net pyramid level size (a video has a fixed
frame size, so after the first frame nothing is allocated again; the cache is bounded by
``_PIXEL_BUDGET`` so a stream of differently sized photos does not grow memory) and one per
power-of-two batch size for R-Net/O-Net (N candidates run as N's binary decomposition in one
invocation per set bit, so no tensor is reallocated and no padding is computed). The pyramid
buffers are likewise allocated once per level shape. Large levels run through P-Net as
horizontal bands (bit-identical outputs, a fraction of the activation memory).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from . import zoo
from .errors import InvalidInputError, ModelIntegrityError
from .tracking import iou_matrix

__all__ = ["MTCNN", "Detections", "TrackingDetector"]

log = logging.getLogger(__name__)

_F32 = np.float32
#: cached P-Net interpreters (and pyramid buffers) hold at most about this many level pixels
#: (one 1920x1280 pyramid is 1.8 M); a video reuses its few level shapes frame after frame
_PIXEL_BUDGET = 2_000_000
#: P-Net runs on horizontal bands of about this many input pixels (bounds interpreter memory)
_PNET_BAND_PIXELS = 16_384
#: :meth:`MTCNN.refine` feeds O-Net a square of this many times the tracked box's longer side
TRACK_SQUARE = 0.9
#: :meth:`MTCNN.detect` searches an image (or region) of more pixels than this on a copy
#: downscaled to this many pixels (area averaging), and maps the boxes and landmarks back:
#: bounds the detector's memory for any input (4K frames, 48 MP photos) at the cost of faces
#: smaller than ``max(min_face_size, 12 / scale)`` pixels in such images
MAX_DETECT_PIXELS = 1 << 22  # 4.19 M, e.g. 2731x1536


@dataclass(frozen=True, eq=False)
class Detections:
    """Faces found in one image, sorted by score, highest first.

    Attributes:
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` in pixels of the input image (may extend
            past the image border, as facenet-pytorch's do).
        scores: ``(N,)`` float32 O-Net face probabilities.
        landmarks: ``(N, 5, 2)`` float32 ``(x, y)`` of left eye, right eye, nose, left mouth
            corner, right mouth corner in facenet-pytorch's order, where left/right are as
            seen in the image: the "left eye" has the smaller x in an upright face.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), _F32), np.zeros((0,), _F32), np.zeros((0, 5, 2), _F32))

    def shifted(self, dx: float, dy: float) -> Detections:
        """The same detections translated by ``(dx, dy)`` pixels."""
        off = np.array([dx, dy], _F32)
        return Detections(self.boxes + np.tile(off, 2), self.scores.copy(), self.landmarks + off)


# --------------------------------------------------------------------------- numeric helpers
def _integral(img: np.ndarray, buf: np.ndarray | None = None) -> np.ndarray:
    """``(H+1, W+1, 3)`` integral image; int32 when it cannot overflow, else float64 (exact).
    ``buf`` (from a previous call on a same-size image) is reused when it fits."""
    h, w = img.shape[:2]
    big = h * w * 255 >= 2**31
    depth, dtype = (cv2.CV_64F, np.float64) if big else (cv2.CV_32S, np.int32)
    if buf is None or buf.shape != (h + 1, w + 1, img.shape[2]) or buf.dtype != dtype:
        buf = np.empty((h + 1, w + 1, img.shape[2]), dtype)
    ii = cv2.integral(img, sum=buf, sdepth=depth)
    return ii.reshape(h + 1, w + 1, -1)


def _bins(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-average-pooling bins of ``length`` input cells into ``out`` cells, offset by
    ``start``: ``[floor(i*L/out), ceil((i+1)*L/out))`` (torch's start/end_index), shape (N, out)."""
    i = np.arange(out, dtype=np.int64)
    length = length.astype(np.int64)[:, None]
    lo = (i * length) // out
    hi = -((-(i + 1) * length) // out)
    s = start.astype(np.int64)[:, None]
    return s + lo, s + hi


def _cells(a: np.ndarray) -> np.ndarray:
    """View an ``(..., C)`` array as ``(...)`` of opaque C-element cells (one gather per pixel
    instead of C: numpy's fancy indexing is much faster on single items)."""
    return a.view(np.dtype((np.void, a.itemsize * a.shape[-1])))[..., 0]


#: :func:`_area_resize` handles up to this many windows one by one (faster than the gather of all at once)
_FEW_WINDOWS = 8


def _area_resize(ii: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: np.ndarray, w: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-resize N windows ``[y0, y0+h) x [x0, x0+w)`` of the image whose integral is ``ii``
    to ``(N, out_h, out_w, C)`` float32, bit-compatible with torch ``interpolate(mode="area")``."""
    n, c = y0.shape[0], ii.shape[2]
    r0, r1 = _bins(y0, h, out_h)
    c0, c1 = _bins(x0, w, out_w)
    if n <= _FEW_WINDOWS:  # a few windows (tracking): row then column gathers, window by window
        out = np.empty((n, out_h, out_w, c), _F32)
        for i in range(n):
            rows = np.take(ii, r1[i], axis=0)
            rows -= np.take(ii, r0[i], axis=0)
            a = np.take(rows, c1[i], axis=1)
            a -= np.take(rows, c0[i], axis=1)
            o = out[i]
            np.copyto(o, a, casting="unsafe")
            np.divide(o, (r1[i] - r0[i]).astype(_F32)[:, None, None], out=o)
            np.divide(o, (c1[i] - c0[i]).astype(_F32)[None, :, None], out=o)
        return out
    r0, r1 = r0[:, :, None], r1[:, :, None]
    c0, c1 = c0[:, None, :], c1[:, None, :]
    cells = _cells(ii)

    def corner(r: np.ndarray, col: np.ndarray) -> np.ndarray:
        return cells[r, col].view(ii.dtype).reshape(n, out_h, out_w, c)

    s = corner(r1, c1) - corner(r0, c1)
    s -= corner(r1, c0)
    s += corner(r0, c0)
    kh = (r1 - r0).astype(_F32)[..., None]
    kw = (c1 - c0).astype(_F32)[..., None]
    out = s.astype(_F32)
    np.divide(out, kh, out=out)
    np.divide(out, kw, out=out)
    return out


class _PyramidLevel:
    """Whole-image area resize ``(h, w) -> (out_h, out_w)`` with precomputed bins and
    preallocated buffers (a video reuses the same few levels for every frame)."""

    def __init__(self, h: int, w: int, out_h: int, out_w: int, dtype: np.dtype, channels: int = 3) -> None:
        zero = np.zeros(1, np.int64)
        r0, r1 = _bins(zero, np.array([h]), out_h)
        c0, c1 = _bins(zero, np.array([w]), out_w)
        self.r0, self.r1, self.c0, self.c1 = r0[0], r1[0], c0[0], c1[0]
        self.kh = (self.r1 - self.r0).astype(_F32)[:, None, None]
        # full-size divisor: a broadcast over the middle axis is several times slower
        self.kw = np.ascontiguousarray(np.broadcast_to((self.c1 - self.c0).astype(_F32)[None, :, None], (out_h, out_w, channels)))
        self.rows = np.empty((out_h, w + 1, channels), dtype)
        self.rows0 = np.empty_like(self.rows)
        self.a = np.empty((out_h, out_w, channels), dtype)
        self.b = np.empty_like(self.a)
        self.out = np.empty((1, out_h, out_w, channels), _F32)

    def __call__(self, ii: np.ndarray) -> np.ndarray:
        # mode="clip": the indices are in range by construction, and "raise" buffers `out`
        np.take(ii, self.r1, axis=0, out=self.rows, mode="clip")
        np.take(ii, self.r0, axis=0, out=self.rows0, mode="clip")
        np.subtract(self.rows, self.rows0, out=self.rows)
        np.take(self.rows, self.c1, axis=1, out=self.a, mode="clip")
        np.take(self.rows, self.c0, axis=1, out=self.b, mode="clip")
        np.subtract(self.a, self.b, out=self.a)
        o = self.out[0]
        np.copyto(o, self.a, casting="unsafe")
        np.divide(o, self.kh, out=o)
        np.divide(o, self.kw, out=o)
        return self.out


def _onet_landmarks(boxes: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """O-Net's 5 landmarks ``(N, 10)`` (x's then y's, relative to the input boxes) decoded to
    image coordinates ``(N, 5, 2)`` float32, as facenet-pytorch does."""
    wi = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    hi = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    return np.stack([wi * pts[:, :5] + boxes[:, 0:1] - 1, hi * pts[:, 5:] + boxes[:, 1:2] - 1], 2).astype(_F32)


def _nms_union(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """torchvision ``nms``: indices kept, by descending score; suppress IoU > threshold.

    Same float32 arithmetic as torchvision's CPU kernel. Up to 256 boxes the IoU matrix is
    computed at once and the greedy pass only reads it; beyond, one vectorised row per kept box.
    """
    n = boxes.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    zero = _F32(0)
    if n <= 256:
        x1, y1, x2, y2, areas = x1[order], y1[order], x2[order], y2[order], areas[order]
        w = np.maximum(zero, np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]))
        h = np.maximum(zero, np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            over = inter / (areas[:, None] + areas[None] - inter) > threshold
        suppressed = np.zeros(n, bool)
        kept = []
        for i in range(n):
            if not suppressed[i]:
                kept.append(i)
                suppressed |= over[i]
        return order[np.asarray(kept, np.int64)]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(ovr > threshold)]
    return np.asarray(keep, np.int64)


def _nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """facenet-pytorch ``nms_numpy(..., 'Min')``: overlap = intersection / smaller (+1) area."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    x1, y1, x2, y2 = (boxes[:, k].copy() for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size:
        i = order[-1]
        keep.append(i)
        idx = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[idx]) - np.maximum(x1[i], x1[idx]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[idx]) - np.maximum(y1[i], y1[idx]) + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            o = (w * h) / np.minimum(area[i], area[idx])
        order = order[np.where(o <= threshold)]
    return np.asarray(keep, np.int64)


def _rerec(b: np.ndarray) -> np.ndarray:
    """Square the boxes around their centres (side = the longer side), in place."""
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply R-/O-Net box regression (offsets times the +1 box size), in place."""
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] = b[:, 0] + reg[:, 0] * w
    b[:, 1] = b[:, 1] + reg[:, 1] * h
    b[:, 2] = b[:, 2] + reg[:, 2] * w
    b[:, 3] = b[:, 3] + reg[:, 3] * h
    return b


def _crop_windows(b: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """facenet-pytorch ``pad``: truncated, clipped windows ``(y0, x0, hh, ww)`` and a validity mask."""
    t = np.trunc(b[:, :4]).astype(np.int64)
    x = np.maximum(t[:, 0], 1)
    y = np.maximum(t[:, 1], 1)
    ex = np.minimum(t[:, 2], w)
    ey = np.minimum(t[:, 3], h)
    valid = (ey > y - 1) & (ex > x - 1)
    return y - 1, x - 1, ey - (y - 1), ex - (x - 1), valid


# --------------------------------------------------------------------------- caches
class _BudgetLRU:
    """LRU cache whose entries have a cost (elements of their largest buffer); the least
    recently used entries are dropped while the total exceeds ``budget`` (the newest entry is
    always kept). Bounds memory when many image sizes pass through (photos), while a video's
    fixed set of shapes stays resident."""

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self._d: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._total = 0

    def get(self, key: Any) -> Any:
        hit = self._d.get(key)
        if hit is None:
            return None
        self._d.move_to_end(key)
        return hit[0]

    def put(self, key: Any, value: Any, cost: int) -> Any:
        self._d[key] = (value, int(cost))
        self._total += int(cost)
        while self._total > self.budget and len(self._d) > 1:
            _, (_, c) = self._d.popitem(last=False)
            self._total -= c
        return value

    def __len__(self) -> int:
        return len(self._d)


# --------------------------------------------------------------------------- TFLite wrappers
class _Net:
    """One TFLite model, with one allocated interpreter per input shape (cached, LRU)."""

    def __init__(self, name: str, content: bytes, num_threads: int, cache_budget: int) -> None:
        self.name = name
        self._content = content  # sha256-verified bytes (zoo.model_bytes)
        self._threads = num_threads
        self._cache = _BudgetLRU(cache_budget)  # budget in input elements
        self._probe = self._make(None)  # kept: an interpreter is never dropped right after it is made
        self.input_shape = tuple(self._probe[3])

    def _make(self, shape: tuple[int, ...] | None):
        from ai_edge_litert.interpreter import Interpreter

        try:
            it = Interpreter(model_content=self._content, num_threads=self._threads)
            d = it.get_input_details()[0]
            if shape is not None:
                it.resize_tensor_input(d["index"], list(shape), strict=True)
                it.allocate_tensors()
            outs = {int(o["shape_signature"][-1]): int(o["index"]) for o in it.get_output_details()}
        except (ValueError, RuntimeError) as e:
            raise ModelIntegrityError(f"TFLite could not load {self.name}: {e}") from e
        return it, int(d["index"]), outs, [int(v) for v in d["shape_signature"]]

    def run(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """Invoke on ``x`` (float32, any shape the model accepts); outputs keyed by last dim."""
        key = x.shape
        hit = self._cache.get(key)
        if hit is None:
            it, idx, outs, _ = self._make(key)
            hit = self._cache.put(key, (it, idx, outs), int(np.prod(key)))
            log.debug("%s: interpreter for input %s", self.name, key)
        it, idx, outs = hit
        it.set_tensor(idx, x)
        it.invoke()
        return {k: it.get_tensor(i) for k, i in outs.items()}

    def run_batch(self, x: np.ndarray, max_batch: int = 64) -> dict[int, np.ndarray]:
        """Run N samples as chunks of power-of-two batch sizes (cached interpreters, no padding)."""
        n = x.shape[0]
        parts: list[dict[int, np.ndarray]] = []
        start = 0
        while start < n:
            left = n - start
            b = max_batch if left >= max_batch else 1 << (left.bit_length() - 1)
            parts.append(self.run(np.ascontiguousarray(x[start : start + b])))
            start += b
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- the detector
class MTCNN:
    """MTCNN face detector (P-Net/R-Net/O-Net cascade) on TFLite.

    Args:
        min_face_size: smallest face side in pixels to look for (default 20, as in
            facenet-pytorch). Larger values skip the biggest pyramid levels and are much faster.
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net (default
            ``(0.6, 0.7, 0.7)``).
        factor: scale step between pyramid levels (default 0.709).
        num_threads: TFLite threads per network (default ``$EMOADAPT_THREADS`` or 1).

    The interpreters are created here and reused (one per input shape, see the module
    docstring); the three networks are leased from a process-wide pool
    (:class:`emoadapt.zoo.Lease`) and given back by :meth:`close` or when the detector is
    collected. ``detect`` is thread-safe (a lock serialises calls on one instance).

    Example:
        >>> det = MTCNN()
        >>> faces = det.detect(rgb_uint8_frame)
        >>> faces.boxes, faces.scores, faces.landmarks
    """

    def __init__(
        self,
        min_face_size: float = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        num_threads: int | None = None,
    ) -> None:
        self.min_face_size = self._check_min_face(min_face_size)
        th = tuple(float(t) for t in thresholds)
        if len(th) != 3 or not all(0.0 <= t <= 1.0 for t in th):
            raise InvalidInputError(f"thresholds must be three probabilities, got {thresholds!r}")
        self.thresholds: tuple[float, float, float] = th
        if not 0.0 < float(factor) < 1.0:
            raise InvalidInputError(f"factor must be in (0, 1), got {factor!r}")
        self.factor = float(factor)
        threads = zoo.check_threads(num_threads)
        self.num_threads = threads
        content = {n: zoo.model_bytes(n) for n in ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")}

        def nets() -> tuple[_Net, _Net, _Net]:
            # budgets in input elements: P-Net see _PIXEL_BUDGET; R-/O-Net all batch sizes <= 64
            return (
                _Net("mtcnn_pnet", content["mtcnn_pnet"][0], threads, cache_budget=3 * _PIXEL_BUDGET),
                _Net("mtcnn_rnet", content["mtcnn_rnet"][0], threads, cache_budget=128 * 24 * 24 * 3),
                _Net("mtcnn_onet", content["mtcnn_onet"][0], threads, cache_budget=128 * 48 * 48 * 3),
            )

        # the three networks (with their per-shape interpreters) are leased from the
        # process-wide pool and given back, not destroyed, by close() or collection
        self._nets = zoo.Lease(("mtcnn", tuple(d for _, d in content.values()), threads), nets)
        self._nets.get()
        self._lock = threading.Lock()
        self._levels = _BudgetLRU(3 * _PIXEL_BUDGET)
        self._ii: np.ndarray | None = None

    @property
    def _pnet(self) -> _Net:
        return self._nets.get()[0]

    @property
    def _rnet(self) -> _Net:
        return self._nets.get()[1]

    @property
    def _onet(self) -> _Net:
        return self._nets.get()[2]

    def close(self) -> None:
        """Give the networks back to the process-wide pool (leased again when next used)."""
        with self._lock:
            self._nets.release()

    def _level(self, h: int, w: int, hs: int, ws: int, dtype: np.dtype) -> _PyramidLevel:
        key = (h, w, hs, ws, np.dtype(dtype).num)
        lvl = self._levels.get(key)
        if lvl is None:
            lvl = self._levels.put(key, _PyramidLevel(h, w, hs, ws, dtype), hs * (w + 1) * 3)
        return lvl

    @staticmethod
    def _check_min_face(v: float) -> float:
        try:
            f = float(v)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"min_face_size must be a number, got {v!r}") from e
        if not math.isfinite(f) or f < 1:
            raise InvalidInputError(f"min_face_size must be >= 1 pixel, got {v!r}")
        return f

    # -- input ----------------------------------------------------------------------------
    @staticmethod
    def _as_image(image: Any) -> np.ndarray:
        if not isinstance(image, np.ndarray) and hasattr(image, "convert") and hasattr(image, "size"):
            image = np.asarray(image.convert("RGB"))  # a PIL image (PIL is not imported here)
        if not isinstance(image, np.ndarray):
            raise InvalidInputError(f"image must be a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise InvalidInputError(f"image must be uint8, got {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInputError(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise InvalidInputError(f"image is empty: shape {image.shape}")
        return np.ascontiguousarray(image)

    @staticmethod
    def _roi(roi: Any, h: int, w: int) -> tuple[int, int, int, int]:
        try:
            x1, y1, x2, y2 = (int(math.floor(float(v))) for v in roi)
        except (TypeError, ValueError, OverflowError) as e:  # OverflowError: an infinite coordinate
            raise InvalidInputError(f"roi must be (x1, y1, x2, y2), got {roi!r}") from e
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if x2 <= x1 or y2 <= y1:
            raise InvalidInputError(f"roi {tuple(roi)} does not overlap the {w}x{h} image")
        return x1, y1, x2, y2

    # -- public API -----------------------------------------------------------------------
    def detect(self, image: np.ndarray, *, roi: Sequence[float] | None = None, min_face_size: float | None = None) -> Detections:
        """Detect faces in one RGB ``uint8`` image ``(H, W, 3)`` (a PIL image is accepted too).

        Args:
            image: the frame.
            roi: optional ``(x1, y1, x2, y2)`` pixel region; only that part of the image is
                searched (boxes and landmarks are returned in full-image coordinates).
            min_face_size: override the instance's ``min_face_size`` for this call.

        Returns:
            :class:`Detections`, sorted by score (highest first); empty when no face passes.

        Raises:
            InvalidInputError: not an ``(H, W, 3)`` uint8 array, or a bad ``roi``.
        """
        img = self._as_image(image)
        mfs = self.min_face_size if min_face_size is None else self._check_min_face(min_face_size)
        if roi is not None:
            x1, y1, x2, y2 = self._roi(roi, img.shape[0], img.shape[1])
            with self._lock:
                det = self._detect_capped(img[y1:y2, x1:x2], mfs)
            return det.shifted(x1, y1) if len(det) else det
        with self._lock:
            return self._detect_capped(img, mfs)

    def _detect_capped(self, img: np.ndarray, min_face_size: float) -> Detections:
        """:meth:`_detect` on ``img``, or on a copy downscaled to :data:`MAX_DETECT_PIXELS`
        when larger (results mapped back to ``img``'s pixels)."""
        h, w = img.shape[:2]
        if h * w <= MAX_DETECT_PIXELS:
            return self._detect(np.ascontiguousarray(img), min_face_size)
        s = math.sqrt(MAX_DETECT_PIXELS / (h * w))
        ws, hs = max(1, int(w * s)), max(1, int(h * s))
        small = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA)
        log.debug("detecting on %dx%d instead of %dx%d (MAX_DETECT_PIXELS)", ws, hs, w, h)
        # the same physical face size, but never a pyramid that starts above the small copy
        det = self._detect(small, max(min_face_size * ws / w, 12.0))
        if len(det) == 0:
            return det
        sx, sy = _F32(w / ws), _F32(h / hs)
        return Detections(det.boxes * np.array([sx, sy, sx, sy], _F32), det.scores, det.landmarks * np.array([sx, sy], _F32))

    def detect_batch(self, images: Iterable[Any], **kw: Any) -> list[Detections]:
        """:meth:`detect` on each image of a list / ``(B, H, W, 3)`` array / iterable."""
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise InvalidInputError(f"a batch array must be (B, H, W, 3), got shape {images.shape}")
        unknown = sorted(set(kw) - {"roi", "min_face_size"})
        if unknown:
            raise InvalidInputError(f"detect_batch: unexpected keyword argument(s) {unknown}; accepted: ['min_face_size', 'roi']")
        return [self.detect(im, **kw) for im in images]

    def refine(self, image: np.ndarray, boxes: Any) -> Detections:
        """Run O-Net alone on given face boxes: the tracking step between full detections.

        Each box (typically the face's box in the previous video frame) is replaced by a
        square around its centre whose side is :data:`TRACK_SQUARE` (0.9) times the box's
        longer side -- about the square O-Net sees inside the cascade, where R-Net's squared
        boxes are 0.89x (sd 0.05) the side of the final boxes on the CREMA-D clips -- then
        cropped and area-resized to 48x48 as in the cascade, all boxes in one O-Net batch. O-Net's box regression, face probability
        and landmarks give the face's box in *this* frame. On 480x360 talking-head video this
        costs about 0.5 ms of CPU per face instead of about 18 ms for :meth:`detect`, and
        chaining it over whole CREMA-D clips keeps the landmarks within about 1 px of a full
        detection on every frame (see ``tests/test_tracking_detector.py``).

        Args:
            image: the frame, RGB ``uint8`` ``(H, W, 3)``.
            boxes: ``(N, 4)`` ``x1, y1, x2, y2`` pixel boxes (finite; any may lie partly
                outside the image).

        Returns:
            :class:`Detections` with one row per input box, **in input order** (not sorted,
            not thresholded): the regressed boxes, O-Net face probabilities (0 for a box
            with no pixel inside the image, which keeps its input box) and landmarks.

        Raises:
            InvalidInputError: a bad image or boxes not ``(N, 4)`` finite numbers.
        """
        img = self._as_image(image)
        try:
            b = np.asarray(boxes, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"boxes must be an (N, 4) array of x1, y1, x2, y2, got {type(boxes).__name__}") from e
        if b.size == 0:
            return Detections.empty()
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2 or b.shape[1] != 4:
            raise InvalidInputError(f"boxes must have shape (N, 4), got {b.shape}")
        if not np.isfinite(b).all() or np.abs(b).max() > 1e7:
            raise InvalidInputError("boxes must hold finite pixel coordinates")
        with self._lock:
            return self._track(img, b.astype(_F32))

    def _track(self, img: np.ndarray, boxes: np.ndarray) -> Detections:
        h, w = img.shape[:2]
        n = boxes.shape[0]
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * _F32(TRACK_SQUARE)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) * _F32(0.5), (boxes[:, 1] + boxes[:, 3]) * _F32(0.5)
        x1, y1 = cx - side * _F32(0.5), cy - side * _F32(0.5)
        b = np.stack([x1, y1, x1 + side, y1 + side, np.zeros(n, _F32)], 1).astype(_F32)
        y0, x0, hh, ww, valid = _crop_windows(b, w, h)
        scores = np.zeros(n, _F32)
        points = np.repeat(((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None, :], 5, axis=1).astype(_F32)
        out_boxes = boxes.copy()
        if valid.any():
            v = np.flatnonzero(valid)
            bv = b[v]
            # integral image of just the region the windows cover (not the whole frame)
            ys, xs = int(y0[v].min()), int(x0[v].min())
            ye, xe = int((y0[v] + hh[v]).max()), int((x0[v] + ww[v]).max())
            ii = _integral(np.ascontiguousarray(img[ys:ye, xs:xe]))
            crops = _area_resize(ii, y0[v] - ys, x0[v] - xs, hh[v], ww[v], 48, 48)
            out = self._onet.run_batch(crops)
            points[v] = _onet_landmarks(bv, out[10])
            out_boxes[v] = _bbreg(bv, out[4])[:, :4]
            scores[v] = out[2][:, 1]
        return Detections(np.ascontiguousarray(out_boxes, _F32), scores, np.ascontiguousarray(points, _F32))

    __call__ = detect

    # -- the cascade ----------------------------------------------------------------------
    def _scales(self, h: int, w: int, min_face_size: float) -> list[float]:
        m = 12.0 / min_face_size
        minl = min(h, w) * m
        scales = []
        s = m
        while minl >= 12:
            scales.append(s)
            s = s * self.factor
            minl = minl * self.factor
        return scales

    def _detect(self, img: np.ndarray, min_face_size: float) -> Detections:
        h, w = img.shape[:2]
        scales = self._scales(h, w, min_face_size)
        if not scales:
            return Detections.empty()
        ii = self._ii = _integral(img, self._ii)
        t0, t1, t2 = self.thresholds

        # stage 1: P-Net over the pyramid
        picked: list[np.ndarray] = []
        for s in scales:
            hs, ws = int(h * s + 1), int(w * s + 1)
            x = self._level(h, w, hs, ws, ii.dtype)(ii)
            out = self._pnet_run(x)
            prob = out[2][0, :, :, 1]
            ys, xs = np.nonzero(prob >= t0)
            if ys.size == 0:
                continue
            reg = out[4][0, ys, xs]
            bb = np.stack([xs, ys], 1).astype(_F32)
            sc = _F32(s)
            q1 = np.floor((2 * bb + 1) / sc)
            q2 = np.floor((2 * bb + 12) / sc)
            boxes = np.concatenate([q1, q2, prob[ys, xs][:, None], reg], 1).astype(_F32)
            picked.append(boxes[_nms_union(boxes[:, :4], boxes[:, 4], 0.5)])
        if not picked:
            return Detections.empty()
        boxes = np.concatenate(picked)
        boxes = boxes[_nms_union(boxes[:, :4], boxes[:, 4], 0.7)]
        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        b = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * regw,
                boxes[:, 1] + boxes[:, 6] * regh,
                boxes[:, 2] + boxes[:, 7] * regw,
                boxes[:, 3] + boxes[:, 8] * regh,
                boxes[:, 4],
            ],
            1,
        )
        b = _rerec(b)

        # stage 2: R-Net on all candidates at once
        stage = self._cascade_stage(ii, b, w, h, 24, self._rnet, t1)
        if stage is None:
            return Detections.empty()
        boxes, out = stage
        keep = _nms_union(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _rerec(_bbreg(boxes[keep], out[4][keep]))

        # stage 3: O-Net, landmarks, final NMS ("Min")
        stage = self._cascade_stage(ii, boxes, w, h, 48, self._onet, t2)
        if stage is None:
            return Detections.empty()
        boxes, out = stage
        points = _onet_landmarks(boxes, out[10])
        boxes = _bbreg(boxes, out[4])
        keep = _nms_min(boxes[:, :4], boxes[:, 4], 0.7)
        boxes, points = boxes[keep], points[keep]
        order = np.argsort(-boxes[:, 4], kind="stable")
        boxes, points = boxes[order], points[order]
        return Detections(np.ascontiguousarray(boxes[:, :4], _F32), np.ascontiguousarray(boxes[:, 4], _F32), np.ascontiguousarray(points))

    def _pnet_run(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """P-Net on one pyramid level; a large level runs as horizontal bands.

        P-Net is fully convolutional with stride 2 and a 12-pixel receptive field: output row
        ``i`` sees input rows ``[2i, 2i + 12)``, and a band of input rows ``[2a, 2b + 10)``
        (even height, so the ceil-mode pooling adds no window) yields exactly output rows
        ``[a, b)``; the last band runs to the bottom of the level, as the whole level would.
        The outputs are bit-identical to one invocation on the level (XNNPACK computes each
        output pixel alike; checked on the test photos and clips), while an interpreter for a
        whole 1152x839 level (a 1920x1400 photo) holds ~190 MB of activations and one for a
        16k-pixel band ~6 MB, at the same speed.
        """
        hs, ws = x.shape[1], x.shape[2]
        oh = -(-(hs - 2) // 2) - 4  # output rows of the whole level
        nb = max(8, _PNET_BAND_PIXELS // ws - 5)  # output rows per band
        if oh <= nb:
            return self._pnet.run(x)
        prob = np.empty((1, oh, -(-(ws - 2) // 2) - 4, 2), _F32)
        reg = np.empty(prob.shape[:3] + (4,), _F32)
        a = 0
        while a < oh:
            b = min(a + nb, oh)
            out = self._pnet.run(x[:, 2 * a : (2 * b + 10 if b < oh else hs)])
            prob[:, a:b] = out[2]
            reg[:, a:b] = out[4]
            a = b
        return {2: prob, 4: reg}

    def _cascade_stage(
        self, ii: np.ndarray, b: np.ndarray, w: int, h: int, size: int, net: _Net, thr: float
    ) -> tuple[np.ndarray, dict[int, np.ndarray]] | None:
        """Crop + area-resize every box to ``size``, run ``net`` once over the batch, keep the
        boxes with face probability > ``thr``; returns (boxes with new scores, outputs) or None."""
        y0, x0, hh, ww, valid = _crop_windows(b, w, h)
        if not valid.all():  # facenet-pytorch would skip these crops (and then misalign)
            b, y0, x0, hh, ww = b[valid], y0[valid], x0[valid], hh[valid], ww[valid]
        if b.shape[0] == 0:
            return None
        crops = _area_resize(ii, y0, x0, hh, ww, size, size)
        out = net.run_batch(crops)
        score = out[2][:, 1]
        ok = score > thr
        if not ok.any():
            return None
        boxes = np.concatenate([b[ok, :4], score[ok, None]], 1).astype(_F32)
        return boxes, {k: v[ok] for k, v in out.items()}


# --------------------------------------------------------------------------- video tracking
def _take(det: Detections, idx: np.ndarray) -> Detections:
    return Detections(det.boxes[idx], det.scores[idx], det.landmarks[idx])


def _concat(parts: Sequence[Detections]) -> Detections:
    return Detections(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]), np.concatenate([p.landmarks for p in parts]))


class TrackingDetector:
    """Faces in a video stream, frame after frame: O-Net tracking (:meth:`MTCNN.refine`) of
    the known faces, the full MTCNN cascade only where a face may be new.

    **Tracking.** Every face kept from the previous frame is refined by O-Net on its previous
    box, all faces in one batch (about 0.3 ms of CPU per face, landmarks within about 1 px of
    a full detection). A face is *lost* when its O-Net probability falls below ``min_score``,
    its size changes by more than ``max_scale_change`` in one frame or its centre leaves the
    image; it is then searched again by the full cascade restricted to a region twice its size
    around its last box, with the pyramid started at 0.6x its size (a few tiny P-Net levels).
    A face not found there is *dropped* and the full cascade runs on the frame (at once, or at
    the next check when the last full detection is less than ``detect_every`` frames old: a
    marginal detection that flickers around ``min_score`` does not get one every frame).

    **New faces.** Every ``detect_every``-th frame gets the *new-face check*: a gray thumbnail
    of the frame (cells of :data:`CHECK_CELL` pixels, green channel) is compared with the one
    of the previous check, outside the tracked faces. Nothing changed there (the usual case:
    a static background) costs about 0.05 ms at 480x360; the cells that changed by more than
    :data:`CHECK_DELTA` gray levels (beyond every reference cell within :data:`CHECK_SHIFT`
    cells, so that edges moving a little, such as a talking head's shoulders, are no change)
    are grouped into regions and the full cascade searches
    each region (with a margin) for faces that are not tracked yet; changed regions covering
    more than :data:`CHECK_FULL_SHARE` of the frame (a cut, a camera pan) get the full cascade
    on the whole frame instead. A face entering the picture is thus found at most
    ``detect_every - 1`` frames late, as with a periodic full detection, at a fraction of
    its cost. ``full_every`` bounds the time between two full cascades regardless (a face
    that entered without changing the picture, such as a marginal detection that became
    confident in place). ``full_every=detect_every`` is the periodic schedule: the full
    cascade every ``detect_every`` frames, no check.

    Whenever nothing is tracked (no face, a new clip, a change of frame size) every frame
    gets a full detection, so ``detect_every=1`` is exactly :meth:`MTCNN.detect` on every
    frame. A full detection's output is exactly :meth:`MTCNN.detect`'s.

    Args:
        detector: the :class:`MTCNN` to use (default: a new one with default settings).
        detect_every: look for new faces at least every this many frames (>= 1).
        min_score: faces below this probability are not tracked, and a tracked face whose
            refined probability drops below it is lost (use the confidence threshold under
            which the caller ignores faces).
        max_scale_change: largest plausible change of a face's box side from one frame to
            the next (a factor > 1).
        full_every: run the full cascade on the whole frame at least every this many
            frames (>= ``detect_every``; default ``10 * detect_every``).

    Frames of one stream must be fed in order; call :meth:`reset` before another stream.
    ``counts`` tells how frames and faces were handled: ``full`` detections, ``tracked``
    frames, ``local`` re-detections, ``dropped`` faces (not found locally), ``checks``
    (new-face checks), ``searched`` (changed regions searched by a check), ``new`` (faces
    found by those searches). Not thread-safe: use one instance per stream (they may share
    one :class:`MTCNN`).

    Example:
        >>> tracker = TrackingDetector(MTCNN(), detect_every=10)
        >>> for frame in frames:
        ...     faces = tracker(frame)  # same contract as MTCNN.detect
    """

    def __init__(
        self,
        detector: MTCNN | None = None,
        *,
        detect_every: int = 10,
        min_score: float = 0.9,
        max_scale_change: float = 1.5,
        full_every: int | None = None,
    ) -> None:
        if isinstance(detect_every, (bool, np.bool_)) or not isinstance(detect_every, (int, np.integer)) or detect_every < 1:
            raise InvalidInputError(f"detect_every must be an int >= 1, got {detect_every!r}")
        if not 0.0 <= float(min_score) <= 1.0:
            raise InvalidInputError(f"min_score must be a probability, got {min_score!r}")
        if not float(max_scale_change) > 1.0:
            raise InvalidInputError(f"max_scale_change must be > 1, got {max_scale_change!r}")
        if full_every is None:
            full_every = FULL_EVERY_FACTOR * int(detect_every)
        if isinstance(full_every, (bool, np.bool_)) or not isinstance(full_every, (int, np.integer)) or full_every < detect_every:
            raise InvalidInputError(f"full_every must be an int >= detect_every ({detect_every}), got {full_every!r}")
        self.detector = detector if detector is not None else MTCNN()
        self.detect_every = int(detect_every)
        self.full_every = int(full_every)
        self.min_score = float(min_score)
        self.max_scale_change = float(max_scale_change)
        self.counts: dict[str, int] = {"frames": 0, "full": 0, "tracked": 0, "local": 0, "dropped": 0, "checks": 0, "searched": 0, "new": 0}
        self.reset()

    def reset(self) -> None:
        """Forget the tracked faces: the next frame gets a full detection."""
        self._boxes = np.zeros((0, 4), _F32)
        self._since_full = 0  # frames since the last full detection
        self._since_check = 0  # frames since the last full detection or check
        self._want_full = False  # a dropped face: the full cascade at the next check
        self._shape: tuple[int, ...] | None = None
        self._thumb: np.ndarray | None = None  # thumbnail of the last full detection or check
        self._thumb_boxes = self._boxes  # the faces tracked then

    def __call__(self, image: np.ndarray) -> Detections:
        """Faces in the next frame (same contract as :meth:`MTCNN.detect`: sorted by score)."""
        img = MTCNN._as_image(image)
        self.counts["frames"] += 1
        if self.detect_every == 1 or img.shape != self._shape or len(self._boxes) == 0 or self._since_full + 1 >= self.full_every:
            return self._full(img)
        check = self._since_check + 1 >= self.detect_every
        if check and self._want_full:
            return self._full(img)
        prev = self._boxes
        det = self.detector.refine(img, prev)
        ok = self._plausible(det, prev, img.shape[1], img.shape[0])
        if not ok.all():
            det = _concat([_take(det, np.flatnonzero(ok)), *self._redetect(img, prev[~ok])])
            if len(det) == 0:
                return self._full(img)
            if self._want_full and self._since_full + 1 >= self.detect_every:
                return self._full(img)
        # two tracks that converged on one face: keep the more confident (sorted by score)
        det = _take(det, _nms_union(det.boxes, det.scores, 0.5))
        self._since_full += 1
        self._since_check += 1
        self.counts["tracked"] += 1
        if check:
            found = self._check(img, det.boxes)
            if found is None:  # the picture changed too much: the full cascade instead
                return self._full(img)
            if len(found):
                det = _concat([det, found])
                det = _take(det, np.argsort(-det.scores, kind="stable"))
        self._boxes = det.boxes.copy()
        return det

    detect = __call__

    def _full(self, img: np.ndarray) -> Detections:
        det = self.detector.detect(img)
        self._shape = img.shape
        self._boxes = det.boxes[det.scores >= self.min_score].copy()
        self._since_full = self._since_check = 0
        self._want_full = False
        self._thumb = _thumbnail(img, self._cell()) if self.detect_every > 1 and self.full_every > self.detect_every else None
        self._thumb_boxes = self._boxes
        self.counts["full"] += 1
        return det

    def _cell(self) -> int:
        return max(CHECK_CELL, int(self.detector.min_face_size) // 2)

    def _check(self, img: np.ndarray, boxes: np.ndarray) -> Detections | None:
        """The new-face check (class docstring): the faces found in the changed regions that
        are not among ``boxes`` (the tracked ones), or None when the whole frame must be searched."""
        self.counts["checks"] += 1
        self._since_check = 0
        cell = self._cell()
        thumb = _thumbnail(img, cell)
        ref, ref_boxes = self._thumb, self._thumb_boxes
        self._thumb, self._thumb_boxes = thumb, boxes
        if ref is None or ref.shape != thumb.shape:
            return Detections.empty()
        # changed: beyond every value of the cell's neighbourhood in the reference (an edge that
        # moved by up to CHECK_SHIFT cells, such as a talking head's shoulders, is no change)
        k = np.ones((2 * CHECK_SHIFT + 1, 2 * CHECK_SHIFT + 1), np.uint8)
        lo, hi = cv2.erode(ref, k).astype(np.int16), cv2.dilate(ref, k).astype(np.int16)
        t16 = thumb.astype(np.int16)
        changed = (t16 < lo - CHECK_DELTA) | (t16 > hi + CHECK_DELTA)
        # the tracked faces (where they are and where they were), with a quarter of their size around
        gh, gw = changed.shape
        for b in (*boxes, *ref_boxes):
            m = 0.25 * float(max(b[2] - b[0], b[3] - b[1]))
            x0, y0 = max(0, int((b[0] - m) // cell)), max(0, int((b[1] - m) // cell))
            x1, y1 = min(gw, int(-(-(b[2] + m) // cell))), min(gh, int(-(-(b[3] + m) // cell)))
            changed[y0:y1, x0:x1] = False
        if not changed.any():
            return Detections.empty()
        regions = _regions(changed, cell, img.shape[1], img.shape[0], self.detector.min_face_size)
        if sum((r[2] - r[0]) * (r[3] - r[1]) for r in regions) > CHECK_FULL_SHARE * img.shape[0] * img.shape[1]:
            return None
        found = []
        for roi in regions:
            self.counts["searched"] += 1
            det = self.detector.detect(img, roi=roi)
            conf = det.scores >= self.min_score
            if len(boxes) and conf.any():
                conf &= iou_matrix(det.boxes.astype(np.float64), boxes.astype(np.float64)).max(axis=1) < 0.3
            if conf.any():
                found.append(_take(det, np.flatnonzero(conf)))
        if not found:
            return Detections.empty()
        new = _concat(found)
        new = _take(new, _nms_union(new.boxes, new.scores, 0.5))
        self.counts["new"] += len(new)
        return new

    def _plausible(self, det: Detections, prev: np.ndarray, w: int, h: int) -> np.ndarray:
        side = np.maximum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
        old = np.maximum(prev[:, 2] - prev[:, 0], prev[:, 3] - prev[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = side / old
        cx = (det.boxes[:, 0] + det.boxes[:, 2]) / 2
        cy = (det.boxes[:, 1] + det.boxes[:, 3]) / 2
        return (
            (det.scores >= self.min_score)
            & (ratio <= self.max_scale_change)
            & (ratio >= 1 / self.max_scale_change)
            & (cx >= 0)
            & (cx < w)
            & (cy >= 0)
            & (cy < h)
        )

    def _redetect(self, img: np.ndarray, lost: np.ndarray) -> list[Detections]:
        """Search each lost face near its last box; the faces found (one per lost box at most).
        A face not found is dropped and asks for the full cascade (:meth:`__call__`)."""
        h, w = img.shape[:2]
        found = []
        for b in lost:
            side = float(max(b[2] - b[0], b[3] - b[1]))
            cx, cy = float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2
            roi = (cx - side, cy - side, cx + side, cy + side)
            conf = np.zeros(0, np.int64)
            if side >= 1 and roi[2] > 0 and roi[3] > 0 and roi[0] < w and roi[1] < h:
                self.counts["local"] += 1
                det = self.detector.detect(img, roi=roi, min_face_size=max(0.6 * side, self.detector.min_face_size))
                conf = np.flatnonzero(det.scores >= self.min_score)
            if conf.size == 0:
                self.counts["dropped"] += 1
                self._want_full = True
                continue
            best = conf[int(np.argmax(iou_matrix(b[None].astype(np.float64), det.boxes[conf].astype(np.float64))[0]))]
            found.append(_take(det, np.array([best])))
        return found


#: :class:`TrackingDetector`'s default ``full_every``: this many times ``detect_every``
FULL_EVERY_FACTOR = 10
#: the new-face check's thumbnail cells are this many pixels wide (at least; half the
#: detector's ``min_face_size`` when larger), so a face of the smallest size searched covers a few
CHECK_CELL = 8
#: a thumbnail cell whose gray level changed by more than this since the last check has changed
#: (video compression noise on a cell's mean stays within a few levels; a face entering on
#: any background changes its cells by tens)
CHECK_DELTA = 12
#: a cell has changed only when it differs from every reference cell within this many cells
#: (edges moving a little between two checks are not a new face)
CHECK_SHIFT = 1
#: changed regions covering more than this share of the frame: the full cascade on the whole frame
CHECK_FULL_SHARE = 0.4


def _thumbnail(img: np.ndarray, cell: int) -> np.ndarray:
    """Gray-level thumbnail of ``img``, one value per ``cell`` x ``cell`` pixels: the mean of
    the green channel (luma is mostly green) over a sparse grid of each cell's pixels (uint8)."""
    h, w = img.shape[:2]
    step = max(1, cell // 4)
    return cv2.resize(img[::step, ::step, 1], (max(1, w // cell), max(1, h // cell)), interpolation=cv2.INTER_AREA)


def _regions(changed: np.ndarray, cell: int, w: int, h: int, min_face: float) -> list[tuple[int, int, int, int]]:
    """Pixel regions ``(x1, y1, x2, y2)`` around the connected groups of changed thumbnail
    cells, each with a margin of a cell and half the smallest face searched, overlapping
    ones merged."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(changed.astype(np.uint8), connectivity=8)
    pad = cell + int(math.ceil(min_face / 2))
    boxes = [[max(0, x * cell - pad), max(0, y * cell - pad), min(w, (x + bw) * cell + pad), min(h, (y + bh) * cell + pad)] for x, y, bw, bh, _ in stats[1:n]]
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in boxes]
