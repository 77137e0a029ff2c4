"""Box arithmetic of the MTCNN cascade, as facenet-pytorch and torchvision compute it.

The two NMS flavours (:func:`nms_union`: torchvision's CPU kernel, stages 1-3;
:func:`nms_min`: facenet-pytorch's ``nms_numpy(..., 'Min')``, the final stage), box
regression (:func:`bbreg`), squaring (:func:`rerec`), the clipped crop windows
(:func:`crop_windows`, facenet-pytorch's ``pad``) and O-Net's landmark decoding
(:func:`onet_landmarks`). Boxes are float32 rows ``x1, y1, x2, y2[, score, ...]``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nms_union", "nms_min", "rerec", "bbreg", "crop_windows", "onet_landmarks"]

_F32 = np.float32


def onet_landmarks(boxes: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """O-Net's 5 landmarks ``(N, 10)`` (x's then y's, relative to the input boxes) decoded to
    image coordinates ``(N, 5, 2)`` float32, as facenet-pytorch does."""
    wi = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    hi = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    return np.stack([wi * pts[:, :5] + boxes[:, 0:1] - 1, hi * pts[:, 5:] + boxes[:, 1:2] - 1], 2).astype(_F32)


def nms_union(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
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


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
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


def rerec(b: np.ndarray) -> np.ndarray:
    """Square the boxes around their centres (side = the longer side), in place."""
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply R-/O-Net box regression (offsets times the +1 box size), in place."""
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] = b[:, 0] + reg[:, 0] * w
    b[:, 1] = b[:, 1] + reg[:, 1] * h
    b[:, 2] = b[:, 2] + reg[:, 2] * w
    b[:, 3] = b[:, 3] + reg[:, 3] * h
    return b


def crop_windows(b: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """facenet-pytorch ``pad``: truncated, clipped windows ``(y0, x0, hh, ww)`` and a validity mask."""
    t = np.trunc(b[:, :4]).astype(np.int64)
    x = np.maximum(t[:, 0], 1)
    y = np.maximum(t[:, 1], 1)
    ex = np.minimum(t[:, 2], w)
    ey = np.minimum(t[:, 3], h)
    valid = (ey > y - 1) & (ex > x - 1)
    return y - 1, x - 1, ey - (y - 1), ex - (x - 1), valid
