"""The :class:`Recognizer` facade: wires video input, detection, alignment, backbone and heads.

Data flows one way::

    clip -> video.iter_frames -> detection.MTCNN -> alignment.norm_crop -> features.Backbone
         -> heads (clip pooling + classifier) -> Result

The Recognizer holds the models and does no modelling of its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .alignment import norm_crop
from .errors import InvalidInputError
from .features import Backbone
from .video import Clip, Sampling, iter_frames

__all__ = ["Recognizer", "Result", "FrameResult", "default_home"]

log = logging.getLogger(__name__)


def default_home() -> Path:
    """``$EMOADAPT_HOME``, else ``$XDG_DATA_HOME/emoadapt``, else ``~/.local/share/emoadapt``."""
    env = os.environ.get("EMOADAPT_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "emoadapt"


@dataclass
class FrameResult:
    """One used frame of a clip."""

    index: int
    """Frame index in the source clip."""
    box: tuple[float, float, float, float]
    """Face box (x1, y1, x2, y2) in pixels."""
    score: float
    """Detector confidence."""
    probabilities: dict[str, float]
    """Frame-level class probabilities of the universal backbone."""
    landmarks: np.ndarray | None = field(default=None, repr=False)
    """5 landmarks (5,2) in pixels (eyes, nose, mouth corners)."""

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)


@dataclass
class Result:
    """What :meth:`Recognizer.predict` returns for one clip (or one face track of a clip)."""

    label: str | None
    """Predicted emotion; ``None`` when no face was found in any frame."""
    probabilities: dict[str, float]
    """Clip-level class probabilities (sum to 1); empty when no face was found."""
    frames: int
    """Frames read (after sampling)."""
    faces: int
    """Frames in which a face was found and used."""
    timeline: list[FrameResult] = field(default_factory=list, repr=False)
    """Per used frame: index, face box, frame-level probabilities."""
    user: str | None = None
    """Recognized enrolled user whose personal head was used, else ``None``."""
    tracks: list[Result] = field(default_factory=list, repr=False)
    """One result per face track when several people are in the clip (this result is the main one)."""
    features: np.ndarray | None = field(default=None, repr=False)
    """Per-frame backbone features (faces, D) of the used frames (what the heads pool)."""
    frame_probabilities: np.ndarray | None = field(default=None, repr=False)
    """Per-frame backbone probabilities (faces, C)."""

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable labels with their probabilities."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "label": self.label,
            "probabilities": {k: round(float(v), 6) for k, v in self.probabilities.items()},
            "frames": self.frames,
            "faces": self.faces,
            "user": self.user,
            "timeline": [
                {"index": f.index, "box": [round(float(v), 1) for v in f.box], "score": round(f.score, 4),
                 "probabilities": {k: round(float(v), 5) for k, v in f.probabilities.items()}}
                for f in self.timeline
            ],
        }


class Recognizer:
    """Facial-emotion recognition for video clips, on the models shipped with the package.

    Args:
        home: directory for user data (enrolments, corrections, personal heads). Default
            ``$EMOADAPT_HOME`` or a per-user data directory; created only when first needed.
        backbone: manifest name of the emotion backbone, or a :class:`Backbone` instance.
        min_face_size: smallest face (pixels) the detector looks for.
        min_face_score: detections below this confidence are ignored.
        num_threads: TFLite threads per model (default ``$EMOADAPT_THREADS`` or 1).
        chunk: frames whose faces are batched through the backbone at once (bounds memory).

    A Recognizer may be shared by threads: each model serialises its own invocations.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        backbone: str | Backbone | None = None,
        min_face_size: int = 20,
        min_face_score: float = 0.9,
        num_threads: int | None = None,
        chunk: int = 32,
    ) -> None:
        from .detection import MTCNN

        self.home = Path(home).expanduser() if home is not None else default_home()
        self.backbone = backbone if isinstance(backbone, Backbone) else Backbone(backbone, num_threads=num_threads)
        self.detector = MTCNN(min_face_size=min_face_size, num_threads=num_threads)
        if not 0.0 <= min_face_score <= 1.0:
            raise InvalidInputError("min_face_score must be within [0, 1]")
        self.min_face_score = float(min_face_score)
        self.chunk = max(1, int(chunk))

    @property
    def classes(self) -> list[str]:
        """Labels of the universal model."""
        return list(self.backbone.classes)

    # -- per-frame analysis -----------------------------------------------------------------
    def _pick_face(self, det: Any) -> int | None:
        """Index of the main face: the largest among confident detections (ties: score)."""
        if len(det) == 0:
            return None
        ok = np.flatnonzero(det.scores >= self.min_face_score)
        if ok.size == 0:
            return None
        b = det.boxes[ok]
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        return int(ok[np.lexsort((-det.scores[ok], -area))[0]])

    def iter_faces(self, clip: Clip, *, color: str = "rgb", sampling: Sampling | None = None) -> Iterator[tuple[int, int, Any, np.ndarray]]:
        """Yield ``(frame_count_so_far, frame_index, detection_of_main_face, aligned_crop)``;
        frames without a face yield ``(count, index, None, None)``."""
        size = self.backbone.input_size
        gray = self.backbone.channels == 1
        for n, fr in enumerate(iter_frames(clip, color=color, sampling=sampling), 1):
            det = self.detector.detect(fr.image)
            k = self._pick_face(det)
            if k is None:
                yield n, fr.index, None, None
                continue
            crop = norm_crop(fr.image, det.landmarks[k], size, self.backbone.template, gray=gray)
            yield n, fr.index, (det.boxes[k], float(det.scores[k]), det.landmarks[k]), crop

    def faces_in(self, image: np.ndarray, *, color: str = "rgb") -> list[FrameResult]:
        """Every confident face of one frame with its frame-level probabilities (index 0)."""
        from .video import as_rgb_frame

        img = as_rgb_frame(image, color)
        det = self.detector.detect(img)
        keep = [i for i in range(len(det)) if det.scores[i] >= self.min_face_score]
        if not keep:
            return []
        size, gray = self.backbone.input_size, self.backbone.channels == 1
        crops = np.stack([norm_crop(img, det.landmarks[i], size, self.backbone.template, gray=gray) for i in keep])
        P = self.backbone.predict_proba(crops)
        return [
            FrameResult(index=0, box=tuple(float(v) for v in det.boxes[i]), score=float(det.scores[i]),
                        probabilities=dict(zip(self.backbone.classes, map(float, P[j]))), landmarks=det.landmarks[i])
            for j, i in enumerate(keep)
        ]

    def analyze(self, clip: Clip, *, color: str = "rgb", fps: float | None = None, max_frames: int | None = None, step: int = 1, progress: bool = False) -> Result:
        """Run detection, alignment and the backbone on every sampled frame (no clip head)."""
        sampling = Sampling(fps=fps, max_frames=max_frames, step=step)
        dets: list[tuple[int, Any]] = []
        crops: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        feats: list[np.ndarray] = []
        frames = 0
        bar = _progress(progress, max_frames)
        try:
            for n, index, det, crop in self.iter_faces(clip, color=color, sampling=sampling):
                frames = n
                if bar is not None:
                    bar.update(1)
                if det is None:
                    continue
                dets.append((index, det))
                crops.append(crop)
                if len(crops) >= self.chunk:
                    p, f = self.backbone.infer(np.stack(crops))
                    probs.append(p)
                    feats.append(f)
                    crops = []
        finally:
            if bar is not None:
                bar.close()
        if crops:
            p, f = self.backbone.infer(np.stack(crops))
            probs.append(p)
            feats.append(f)
        classes = self.backbone.classes
        P = np.concatenate(probs) if probs else np.zeros((0, len(classes)), np.float32)
        F = np.concatenate(feats) if feats else np.zeros((0, self.backbone.dim), np.float32)
        timeline = [
            FrameResult(index=i, box=tuple(float(v) for v in d[0]), score=d[1],
                        probabilities=dict(zip(classes, map(float, P[j]))), landmarks=np.asarray(d[2]))
            for j, (i, d) in enumerate(dets)
        ]
        return Result(label=None, probabilities={}, frames=frames, faces=len(dets), timeline=timeline, features=F, frame_probabilities=P)

    def frame_features(self, clip: Clip, **kw: Any) -> np.ndarray:
        """Per-frame backbone features (faces, D) of a clip: what the clip heads consume."""
        res = self.analyze(clip, **kw)
        assert res.features is not None
        return res.features

    # -- prediction -----------------------------------------------------------------------
    def predict(self, clip: Clip, *, color: str = "rgb", fps: float | None = None, max_frames: int | None = None, step: int = 1, progress: bool = False) -> Result:
        """Emotion of the face in ``clip``.

        Args:
            clip: a video/image path, an RGB uint8 array (H,W,3) or (T,H,W,3), or an iterable
                of frames.
            color: ``"rgb"`` (default) or ``"bgr"`` for arrays/iterables in OpenCV order.
            fps: sample about this many frames per second (default: every frame).
            max_frames: stop after this many sampled frames.
            step: keep every ``step``-th frame.
            progress: show a progress bar on stderr.
        """
        res = self.analyze(clip, color=color, fps=fps, max_frames=max_frames, step=step, progress=progress)
        if res.faces == 0:
            log.info("no face found in %d frames", res.frames)
            return res
        assert res.frame_probabilities is not None
        p = res.frame_probabilities.mean(0)
        p = p / p.sum()
        res.probabilities = dict(zip(self.backbone.classes, map(float, p)))
        res.label = self.backbone.classes[int(np.argmax(p))]
        return res


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", leave=False, dynamic_ncols=True)
