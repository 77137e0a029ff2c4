"""Face tracking across the frames of a clip: IoU association, then identity merging.

:func:`track_boxes` links each frame's detections to the open tracks by box overlap (greedy
on IoU, highest first; a track may skip up to ``max_gap`` frames). :func:`merge_tracks` then
joins tracks that never overlap in time and whose mean identity embeddings agree (the same
person leaving and re-entering, or a detection gap longer than ``max_gap``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["iou_matrix", "track_boxes", "merge_tracks"]


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


def track_boxes(frames: Sequence[tuple[int, np.ndarray]], *, iou_threshold: float = 0.3, max_gap: int = 15) -> list[list[tuple[int, int]]]:
    """Link detections into tracks.

    Args:
        frames: per used frame, ``(frame_index, boxes (K,4))``, in increasing frame order.
        iou_threshold: minimum IoU between a track's last box and a new detection.
        max_gap: a track not seen for more than this many frames is closed.

    Returns:
        tracks, each a list of ``(position in frames, detection index)`` in time order,
        sorted by length (longest first).
    """
    open_tracks: list[dict] = []
    done: list[list[tuple[int, int]]] = []
    for pos, (fidx, boxes) in enumerate(frames):
        boxes = np.asarray(boxes).reshape(-1, 4)
        still = []
        for t in open_tracks:
            (done if fidx - t["last"] > max_gap else still).append(t if fidx - t["last"] <= max_gap else t["items"])
        open_tracks = still
        assigned: set[int] = set()
        if open_tracks and len(boxes):
            ious = iou_matrix(np.stack([t["box"] for t in open_tracks]), boxes)
            used_t: set[int] = set()
            for flat in np.argsort(-ious, axis=None):
                ti, di = divmod(int(flat), ious.shape[1])
                if ious[ti, di] < iou_threshold:
                    break
                if ti in used_t or di in assigned:
                    continue
                used_t.add(ti)
                assigned.add(di)
                t = open_tracks[ti]
                t["items"].append((pos, di))
                t["box"], t["last"] = boxes[di], fidx
        for di in range(len(boxes)):
            if di not in assigned:
                open_tracks.append({"items": [(pos, di)], "box": boxes[di], "last": fidx})
    done.extend(t["items"] for t in open_tracks)
    return sorted(done, key=lambda items: (-len(items), items[0]))


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
                if embs[i] is None or embs[j] is None:
                    continue
                pi, pj = {p for p, _ in groups[i]}, {p for p, _ in groups[j]}
                if pi & pj or float(embs[i] @ embs[j]) < threshold:
                    continue
                wi, wj = len(groups[i]), len(groups[j])
                e = embs[i] * wi + embs[j] * wj
                embs[i] = e / (np.linalg.norm(e) + 1e-12)
                groups[i] = sorted(groups[i] + groups[j])
                del groups[j], embs[j]
                merged = True
                break
            if merged:
                break
    return sorted(groups, key=lambda items: (-len(items), items[0]))
