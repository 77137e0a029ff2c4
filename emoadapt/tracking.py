"""Face tracking across the frames of a clip: IoU association, then identity merging.

:class:`OnlineTracker` links each frame's detections to the open tracks by box overlap (greedy
on IoU, highest first; a track may skip up to ``max_gap`` frames), one frame at a time. :func:`merge_tracks` then
joins tracks that never overlap in time and whose mean identity embeddings agree (the same
person leaving and re-entering, or a detection gap longer than ``max_gap``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["iou_matrix", "OnlineTracker", "merge_tracks"]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (N,4) and ``b`` (M,4) in x1,y1,x2,y2 form."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class OnlineTracker:
    """Frame-by-frame IoU association of face boxes into tracks, online (one frame at a time).

    Each frame's detections are linked to the open tracks greedily on IoU, highest first; a
    detection that overlaps no open track by ``iou_threshold`` starts a new track (ids count
    up from 0 and are never reused). A track not seen for more than ``max_gap`` frames is
    closed and forgotten, so memory is bounded by the number of faces in view, however long
    the stream.

    Args:
        iou_threshold: minimum IoU between a track's last box and a new detection.
        max_gap: a track not seen for more than this many frames is closed.

    Example:
        >>> tracker = OnlineTracker()
        >>> tracker.update(1, np.array([[0, 0, 10, 10]]))
        [0]
        >>> tracker.update(2, np.array([[1, 1, 11, 11], [50, 50, 60, 60]]))
        [0, 1]
    """

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 15) -> None:
        self.iou_threshold, self.max_gap = iou_threshold, max_gap
        self._open: dict[int, tuple[np.ndarray, int, int]] = {}  # id -> (last box, last frame, length)
        self._next = 0

    @property
    def open(self) -> list[int]:
        """Ids of the tracks still open."""
        return list(self._open)

    def length(self, tid: int) -> int:
        """Detections linked so far to the open track ``tid``."""
        return self._open[tid][2]

    def update(self, index: int, boxes: np.ndarray) -> list[int]:
        """Track id of each box (N,4) of frame ``index`` (frame numbers must increase)."""
        self._open = {t: v for t, v in self._open.items() if index - v[1] <= self.max_gap}
        boxes = np.asarray(boxes).reshape(-1, 4)
        out = [-1] * len(boxes)
        if self._open and len(boxes):
            tids = list(self._open)
            ious = iou_matrix(np.stack([self._open[t][0] for t in tids]), boxes)
            used: set[int] = set()
            for flat in np.argsort(-ious, axis=None):
                ti, di = divmod(int(flat), ious.shape[1])
                if ious[ti, di] < self.iou_threshold:
                    break
                if tids[ti] in used or out[di] != -1:
                    continue
                used.add(tids[ti])
                out[di] = tids[ti]
        for di, b in enumerate(boxes):
            if out[di] == -1:
                out[di] = self._next
                self._next += 1
            seen = self._open[out[di]][2] if out[di] in self._open else 0
            self._open[out[di]] = (np.asarray(b), index, seen + 1)
        return out


def merge_tracks(tracks: list[list[tuple[int, int]]], embeddings: Sequence[np.ndarray | None], threshold: float) -> list[list[tuple[int, int]]]:
    """Join tracks that do not overlap in time and whose L2-normalised mean identity
    embeddings have cosine similarity >= ``threshold`` (``None``: no embedding, never merged)."""
    groups = [list(t) for t in tracks]
    embs = [None if e is None else np.asarray(e, np.float64) / (np.linalg.norm(e) + 1e-12) for e in embeddings]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                ei, ej = embs[i], embs[j]
                if ei is None or ej is None:
                    continue
                pi, pj = {p for p, _ in groups[i]}, {p for p, _ in groups[j]}
                if pi & pj or float(ei @ ej) < threshold:
                    continue
                wi, wj = len(groups[i]), len(groups[j])
                e = ei * wi + ej * wj
                embs[i] = e / (np.linalg.norm(e) + 1e-12)
                groups[i] = sorted(groups[i] + groups[j])
                del groups[j], embs[j]
                merged = True
                break
            if merged:
                break
    return sorted(groups, key=lambda items: (-len(items), items[0]))
