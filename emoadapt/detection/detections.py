"""What a face detector returns: :class:`Detections` (boxes, scores, 5 landmarks per face)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Detections", "take", "concat"]

_F32 = np.float32


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


def take(det: Detections, idx: np.ndarray) -> Detections:
    """The detections at ``idx`` (indices or a mask), in that order."""
    return Detections(det.boxes[idx], det.scores[idx], det.landmarks[idx])


def concat(parts: Sequence[Detections]) -> Detections:
    """The detections of ``parts`` one after the other (at least one part)."""
    return Detections(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]), np.concatenate([p.landmarks for p in parts]))
