"""The MTCNN detector: :class:`MTCNN`, the P-Net/R-Net/O-Net cascade on one image.

:meth:`MTCNN.detect` checks its arguments, takes the instance's lock, downscales an image of
more than :data:`MAX_DETECT_PIXELS` and runs the cascade (:meth:`MTCNN._detect`): the P-Net
image pyramid (levels by :class:`~emoadapt.detection.resize.PyramidLevel`, large ones in
bands), then R-Net and O-Net on area-resized crops of all candidates (:meth:`MTCNN._cascade_stage`),
with the NMS and box arithmetic of :mod:`~emoadapt.detection.boxes`. :meth:`MTCNN.refine` is
O-Net alone on given boxes, the tracking step of :class:`~emoadapt.detection.TrackingDetector`.
The algorithm, step for step, is in the package docstring (:mod:`emoadapt.detection`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from .. import zoo
from ..errors import InvalidInputError
from .boxes import bbreg, crop_windows, nms_min, nms_union, onet_landmarks, rerec
from .detections import Detections
from .nets import BudgetLRU, TFLiteNet
from .resize import PyramidLevel, area_resize, integral

__all__ = ["MTCNN"]

log = logging.getLogger(__package__)

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

        def nets() -> tuple[TFLiteNet, TFLiteNet, TFLiteNet]:
            # budgets in input elements: P-Net see _PIXEL_BUDGET; R-/O-Net all batch sizes <= 64
            return (
                TFLiteNet("mtcnn_pnet", content["mtcnn_pnet"][0], threads, cache_budget=3 * _PIXEL_BUDGET),
                TFLiteNet("mtcnn_rnet", content["mtcnn_rnet"][0], threads, cache_budget=128 * 24 * 24 * 3),
                TFLiteNet("mtcnn_onet", content["mtcnn_onet"][0], threads, cache_budget=128 * 48 * 48 * 3),
            )

        # the three networks (with their per-shape interpreters) are leased from the
        # process-wide pool and given back, not destroyed, by close() or collection
        self._nets = zoo.Lease(("mtcnn", tuple(d for _, d in content.values()), threads), nets)
        self._nets.get()
        self._lock = threading.Lock()
        self._levels = BudgetLRU(3 * _PIXEL_BUDGET)
        self._ii: np.ndarray | None = None

    @property
    def _pnet(self) -> TFLiteNet:
        return self._nets.get()[0]

    @property
    def _rnet(self) -> TFLiteNet:
        return self._nets.get()[1]

    @property
    def _onet(self) -> TFLiteNet:
        return self._nets.get()[2]

    def close(self) -> None:
        """Give the networks back to the process-wide pool (leased again when next used)."""
        with self._lock:
            self._nets.release()

    def _level(self, h: int, w: int, hs: int, ws: int, dtype: np.dtype) -> PyramidLevel:
        key = (h, w, hs, ws, np.dtype(dtype).num)
        lvl = self._levels.get(key)
        if lvl is None:
            lvl = self._levels.put(key, PyramidLevel(h, w, hs, ws, dtype), hs * (w + 1) * 3)
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
        y0, x0, hh, ww, valid = crop_windows(b, w, h)
        scores = np.zeros(n, _F32)
        points = np.repeat(((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None, :], 5, axis=1).astype(_F32)
        out_boxes = boxes.copy()
        if valid.any():
            v = np.flatnonzero(valid)
            bv = b[v]
            # integral image of just the region the windows cover (not the whole frame)
            ys, xs = int(y0[v].min()), int(x0[v].min())
            ye, xe = int((y0[v] + hh[v]).max()), int((x0[v] + ww[v]).max())
            ii = integral(np.ascontiguousarray(img[ys:ye, xs:xe]))
            crops = area_resize(ii, y0[v] - ys, x0[v] - xs, hh[v], ww[v], 48, 48)
            out = self._onet.run_batch(crops)
            points[v] = onet_landmarks(bv, out[10])
            out_boxes[v] = bbreg(bv, out[4])[:, :4]
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
        ii = self._ii = integral(img, self._ii)
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
            picked.append(boxes[nms_union(boxes[:, :4], boxes[:, 4], 0.5)])
        if not picked:
            return Detections.empty()
        boxes = np.concatenate(picked)
        boxes = boxes[nms_union(boxes[:, :4], boxes[:, 4], 0.7)]
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
        b = rerec(b)

        # stage 2: R-Net on all candidates at once
        stage = self._cascade_stage(ii, b, w, h, 24, self._rnet, t1)
        if stage is None:
            return Detections.empty()
        boxes, out = stage
        keep = nms_union(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = rerec(bbreg(boxes[keep], out[4][keep]))

        # stage 3: O-Net, landmarks, final NMS ("Min")
        stage = self._cascade_stage(ii, boxes, w, h, 48, self._onet, t2)
        if stage is None:
            return Detections.empty()
        boxes, out = stage
        points = onet_landmarks(boxes, out[10])
        boxes = bbreg(boxes, out[4])
        keep = nms_min(boxes[:, :4], boxes[:, 4], 0.7)
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
        self, ii: np.ndarray, b: np.ndarray, w: int, h: int, size: int, net: TFLiteNet, thr: float
    ) -> tuple[np.ndarray, dict[int, np.ndarray]] | None:
        """Crop + area-resize every box to ``size``, run ``net`` once over the batch, keep the
        boxes with face probability > ``thr``; returns (boxes with new scores, outputs) or None."""
        y0, x0, hh, ww, valid = crop_windows(b, w, h)
        if not valid.all():  # facenet-pytorch would skip these crops (and then misalign)
            b, y0, x0, hh, ww = b[valid], y0[valid], x0[valid], hh[valid], ww[valid]
        if b.shape[0] == 0:
            return None
        crops = area_resize(ii, y0, x0, hh, ww, size, size)
        out = net.run_batch(crops)
        score = out[2][:, 1]
        ok = score > thr
        if not ok.any():
            return None
        boxes = np.concatenate([b[ok, :4], score[ok, None]], 1).astype(_F32)
        return boxes, {k: v[ok] for k, v in out.items()}
