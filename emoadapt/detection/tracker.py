"""Faces in a video stream: :class:`TrackingDetector`, the detection schedule.

Between full MTCNN cascades every known face is tracked by O-Net on its previous box
(:meth:`~emoadapt.detection.MTCNN.refine`); a lost face is searched near its last box; every
``detect_every`` frames a cheap new-face check compares a gray thumbnail of the frame with the
last one (:func:`_thumbnail`) and searches only the regions that changed (:func:`_regions`).
The class docstring says when the full cascade runs. The constants below tune the check; they
are read when used (patch them here, e.g. ``FULL_EVERY_FACTOR = 1`` for the periodic schedule).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import InvalidInputError
from ..tracking import iou_matrix
from .boxes import nms_union
from .detections import Detections, concat, take
from .mtcnn import MTCNN

__all__ = ["TrackingDetector"]

_F32 = np.float32

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
            det = concat([take(det, np.flatnonzero(ok)), *self._redetect(img, prev[~ok])])
            if len(det) == 0:
                return self._full(img)
            if self._want_full and self._since_full + 1 >= self.detect_every:
                return self._full(img)
        # two tracks that converged on one face: keep the more confident (sorted by score)
        det = take(det, nms_union(det.boxes, det.scores, 0.5))
        self._since_full += 1
        self._since_check += 1
        self.counts["tracked"] += 1
        if check:
            found = self._check(img, det.boxes)
            if found is None:  # the picture changed too much: the full cascade instead
                return self._full(img)
            if len(found):
                det = concat([det, found])
                det = take(det, np.argsort(-det.scores, kind="stable"))
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
                found.append(take(det, np.flatnonzero(conf)))
        if not found:
            return Detections.empty()
        new = concat(found)
        new = take(new, nms_union(new.boxes, new.scores, 0.5))
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
            found.append(take(det, np.array([best])))
        return found


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
