"""Inputs shared by ``benchmarks/pipeline_speed.py`` and the peer's ``benchmarks/peer_fer.py``
(OpenCV and numpy only: it runs in both environments)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

#: the 720p stream's source clips (of the six CREMA-D clips, sorted by name): HAP, then ANG
STREAM720_CLIPS = (3, 0)


def stream720(clips: Sequence[str | Path]) -> list[np.ndarray]:
    """A 1280x720 stream made in memory from real frames, BGR (as OpenCV decodes): each frame
    of ``clips`` upscaled 2x (bicubic) to 960x720 and padded to 1280x720 with its mirror
    image (RAVDESS's frame size; no re-encoding, so no codec enters the comparison)."""
    out = []
    for clip in clips:
        cap = cv2.VideoCapture(str(clip))
        try:
            while True:
                ok, f = cap.read()
                if not ok:
                    break
                big = cv2.resize(f, (960, 720), interpolation=cv2.INTER_CUBIC)
                out.append(cv2.copyMakeBorder(big, 0, 0, 160, 160, cv2.BORDER_REFLECT_101))
        finally:
            cap.release()
    if not out:
        raise SystemExit(f"no frames in {list(map(str, clips))}")
    return out
