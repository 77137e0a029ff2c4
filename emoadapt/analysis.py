"""The one analysis path: frames in, per-frame face tracks with their model outputs out.

Every way of looking at a clip (:meth:`Recognizer.predict`, :meth:`~Recognizer.analyze`,
:meth:`~Recognizer.enroll`, :meth:`~Recognizer.correct`, :meth:`~Recognizer.faces_in`,
:meth:`~Recognizer.stream` and :mod:`emoadapt.annotate`, which builds on predict) consumes
:meth:`Analysis.frames`::

    decode (video.iter_frames) -> detect / track (detection.TrackingDetector, tracking.OnlineTracker)
        -> align (alignment.norm_crop) -> backbone (worker thread) -> identity embedding

yielding one :class:`AnalyzedFrame` per sampled frame, in order, each with its faces (track id,
box, score, landmarks, backbone probabilities and features, identity embedding when one was
taken). :class:`FaceTable` then groups a run of analysed frames into face tracks (merging,
ranking, dropping spurious ones) for the clip heads. The same frames give the same outputs
whichever consumer asks, so a clip gets the same label from predict, annotate and stream.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .alignment import norm_crop
from .video import Clip, Sampling, iter_frames

__all__ = ["Analysis", "AnalyzedFrame", "AnalyzedFace", "FaceTable", "IDENTITY_STRIDE"]

log = logging.getLogger(__name__)

#: embed every this many-th face of a track for identity (up to ``identity_frames`` per track)
IDENTITY_STRIDE = 5


@dataclass
class AnalyzedFace:
    """One face of one analysed frame."""

    track: int
    """Online track id (:class:`~emoadapt.tracking.OnlineTracker`; unique within one run)."""
    box: np.ndarray
    """Face box (x1, y1, x2, y2) in pixels."""
    score: float
    """Detector confidence."""
    landmarks: np.ndarray = field(repr=False)
    """5 landmarks (5,2) in pixels."""
    probabilities: np.ndarray | None = field(default=None, repr=False)
    """Backbone class probabilities (C,) (set before the frame is yielded)."""
    features: np.ndarray | None = field(default=None, repr=False)
    """Backbone features (D,) (set before the frame is yielded)."""
    identity: np.ndarray | None = field(default=None, repr=False)
    """Identity embedding when this face was sampled for identity, else ``None``."""


@dataclass
class AnalyzedFrame:
    """One sampled frame with its analysed faces (largest first)."""

    index: int
    """Frame index in the source (before sampling)."""
    number: int
    """1-based count of sampled frames up to this one."""
    faces: list[AnalyzedFace]
    """The confident faces kept (at most ``max_faces``), largest first."""
    image: np.ndarray | None = field(default=None, repr=False)
    """The RGB frame, only when asked for (``images=True``)."""


class Analysis:
    """Runs the analysis stages over a clip, frame by frame (see the module docstring).

    Args:
        detector: the :class:`~emoadapt.detection.MTCNN` (tracked between full detections by
            a :class:`~emoadapt.detection.TrackingDetector` per run).
        backbone: the :class:`~emoadapt.features.Backbone`.
        embedder: a callable returning the identity embedder (called only when a face is
            embedded, so the model loads only when needed).
        min_face_score: detections below this confidence are ignored.
        max_faces: at most this many faces per frame (the largest).
        detect_every: full detection at least every this many frames.
        chunk: face crops batched through the backbone at once.
        identity_frames: at most this many faces of a track are embedded for identity (within
            any ``identity_window`` when one is given to :meth:`frames`).
        video_tta: mirror-image TTA on video frames when the backbone recommends it.
    """

    def __init__(
        self,
        detector: Any,
        backbone: Any,
        *,
        embedder: Callable[[], Any],
        min_face_score: float = 0.95,
        max_faces: int = 8,
        detect_every: int = 10,
        chunk: int = 32,
        identity_frames: int = 8,
        video_tta: bool = False,
    ) -> None:
        self.detector, self.backbone, self._embedder = detector, backbone, embedder
        self.min_face_score, self.max_faces, self.detect_every = min_face_score, max_faces, detect_every
        self.chunk, self.identity_frames, self.video_tta = chunk, identity_frames, video_tta

    def select(self, det: Any) -> np.ndarray:
        """Indices of confident detections, largest first (at most ``max_faces``)."""
        if len(det) == 0:
            return np.zeros(0, dtype=np.int64)
        ok = np.flatnonzero(det.scores >= self.min_face_score)
        if ok.size == 0:
            return ok
        b = det.boxes[ok]
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        return ok[np.lexsort((-det.scores[ok], -area))][: self.max_faces]

    def tta_for(self, frames: int) -> bool | None:
        """The backbone's ``tta`` argument for the faces of an input of ``frames`` frames: a still
        image gets the backbone's own setting (None), a video's frames only with ``video_tta``."""
        return None if frames == 1 else self.video_tta and self.backbone.tta

    def frames(
        self,
        clip: Clip | Iterable[Any],
        *,
        color: str = "rgb",
        sampling: Sampling | None = None,
        identity: bool = False,
        identity_window: int | None = None,
        images: bool = False,
        chunk: int | None = None,
        flush: Callable[[int], bool] | None = None,
        progress: Any = None,
    ) -> Generator[AnalyzedFrame, None, None]:
        """Yield every sampled frame of ``clip`` analysed, in order.

        The backbone runs on chunks of ``chunk`` crops (default: the instance's) in a worker
        thread while this thread decodes, detects and aligns the next frames (TFLite and
        OpenCV release the GIL); a frame is yielded as soon as its faces' outputs are in, so
        frames come out a few behind the reading (at most about a chunk of faces), in order.

        Args:
            clip: a path, an array or an iterable of frames (as :func:`~emoadapt.video.iter_frames`).
            color: ``"rgb"`` or ``"bgr"`` for arrays and iterables.
            sampling: which frames (default: all).
            identity: embed faces for identity (every :data:`IDENTITY_STRIDE`-th face of a
                track, at most ``identity_frames`` per track).
            identity_window: count the ``identity_frames`` cap over the last this many source
                frames instead of the whole run (a stream: every window gets embeddings).
            images: keep each frame's RGB image on the yielded frame.
            chunk: backbone batch size for this run.
            flush: called with each frame's source index after it is read; when it returns
                True, the crops so far are run at once and every frame up to this one is
                yielded before the next is read (a stream's window boundary).
            progress: an object with ``update(n)`` (a progress bar), or None.
        """
        from .detection import TrackingDetector
        from .tracking import OnlineTracker

        size, gray, template = self.backbone.input_size, self.backbone.channels == 1, self.backbone.template
        chunk = chunk or self.chunk
        tracker = OnlineTracker()
        detect = TrackingDetector(self.detector, detect_every=self.detect_every, min_score=self.min_face_score)
        crops: list[np.ndarray] = []
        crop_faces: list[AnalyzedFace] = []
        waiting: deque[AnalyzedFrame] = deque()
        jobs: deque[tuple[Future[tuple[np.ndarray, np.ndarray]], list[AnalyzedFace]]] = deque()
        embedded: dict[int, deque[int]] = {}  # track -> source indices of its identity embeddings
        n = 0
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emoadapt-backbone")
        try:
            for fr in iter_frames(clip, color=color, sampling=sampling or Sampling()):
                n += 1
                if progress is not None:
                    progress.update(1)
                det = detect(fr.image)
                keep = self.select(det)
                frame = AnalyzedFrame(fr.index, n, [], fr.image if images else None)
                if keep.size:
                    tids = tracker.update(n, det.boxes[keep])  # gaps counted in sampled frames
                    for k, tid in zip(keep, tids):
                        face = AnalyzedFace(tid, det.boxes[k].copy(), float(det.scores[k]), det.landmarks[k].copy())
                        frame.faces.append(face)
                        crops.append(norm_crop(fr.image, det.landmarks[k], size, template, gray=gray))
                        crop_faces.append(face)
                        if identity:
                            self._maybe_embed(fr.image, face, fr.index, tracker.length(tid), embedded, identity_window)
                    if identity:  # closed tracks never come back: forget them
                        for tid in set(embedded) - set(tracker.open):
                            del embedded[tid]
                waiting.append(frame)
                boundary = flush is not None and flush(fr.index)
                if crops and n > 1 and (len(crops) >= chunk or boundary):  # a video (a still image's crops wait)
                    jobs.append((worker.submit(self.backbone.infer, np.stack(crops), tta=self.tta_for(n)), crop_faces))
                    crops, crop_faces = [], []
                yield from _ready(waiting, jobs, block=boundary)
            if crops:
                _assign(crop_faces, self.backbone.infer(np.stack(crops), tta=self.tta_for(n)))
            yield from _ready(waiting, jobs, block=True)
        finally:
            worker.shutdown(wait=True, cancel_futures=True)

    def _maybe_embed(self, image: np.ndarray, face: AnalyzedFace, index: int, seen: int, embedded: dict[int, deque[int]], window: int | None) -> None:
        """Embed ``face`` when it is its track's ``IDENTITY_STRIDE``-th and the track is under its cap."""
        times = embedded.setdefault(face.track, deque())
        if window is not None:
            while times and times[0] <= index - window:
                times.popleft()
        if len(times) < self.identity_frames and (seen - 1) % IDENTITY_STRIDE == 0:
            face.identity = self._embedder().embed_faces(image, face.landmarks[None])[0]
            times.append(index)


def _assign(faces: list[AnalyzedFace], outputs: tuple[np.ndarray, np.ndarray]) -> None:
    p, f = outputs
    for i, face in enumerate(faces):
        face.probabilities, face.features = p[i], f[i]


def _ready(
    waiting: deque[AnalyzedFrame], jobs: deque[tuple[Future[tuple[np.ndarray, np.ndarray]], list[AnalyzedFace]]], *, block: bool
) -> Iterator[AnalyzedFrame]:
    """Collect finished backbone jobs (all of them when ``block``), then pop the leading frames
    whose faces all have their outputs."""
    while jobs and (block or jobs[0][0].done()):
        job, faces = jobs.popleft()
        _assign(faces, job.result())
    while waiting and all(f.probabilities is not None for f in waiting[0].faces):
        yield waiting.popleft()


class FaceTable:
    """The faces of a run of analysed frames (a clip, or a stream's window), ready for the heads.

    Args:
        frames: the analysed frames, in order.
        source: the clip's path, if any; fps: the rate frame times count at (see
            :attr:`emoadapt.Result.fps`).
    """

    def __init__(self, frames: Iterable[AnalyzedFrame], *, source: str | None = None, fps: float | None = None) -> None:
        self.source, self.fps = source, fps
        self.frames = 0
        self.index: list[int] = []
        self.faces: list[AnalyzedFace] = []
        for fr in frames:
            self.frames += 1
            for f in fr.faces:
                self.index.append(fr.index)
                self.faces.append(f)

    def outputs(self, idx: list[int], classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Backbone probabilities (n, C) and features (n, D) of the faces ``idx``."""
        if not idx:
            return np.zeros((0, classes), np.float32), np.zeros((0, dim), np.float32)
        P = np.stack([self.faces[j].probabilities for j in idx])  # type: ignore[misc]
        F = np.stack([self.faces[j].features for j in idx])  # type: ignore[misc]
        return P, F

    def track_embedding(self, idx: list[int]) -> np.ndarray | None:
        """The identity embedding of the faces ``idx`` (:func:`~emoadapt.identity.clip_embedding`
        of those that were embedded), ``None`` when none was."""
        from .identity import clip_embedding

        e = [self.faces[j].identity for j in idx if self.faces[j].identity is not None]
        return clip_embedding(np.stack(e)) if e else None  # type: ignore[arg-type]

    def tracks(self, merge_threshold: float | None = None) -> list[list[int]]:
        """Face positions per track, longest first (ties: the largest face); short spurious
        tracks dropped; with ``merge_threshold``, tracks of the same identity that never
        overlap in time merged (:func:`~emoadapt.tracking.merge_tracks`)."""
        from .tracking import merge_tracks

        by_track: dict[int, list[int]] = {}
        for j, f in enumerate(self.faces):
            by_track.setdefault(f.track, []).append(j)
        groups = [[(self.index[j], j) for j in v] for v in by_track.values()]
        if merge_threshold is not None and len(groups) > 1:
            groups = merge_tracks(groups, [self.track_embedding([j for _, j in g]) for g in groups], merge_threshold)
        if not groups:
            return []
        longest = max(len(g) for g in groups)
        keep = [g for g in groups if len(g) >= min(3, longest)]

        def size(g: list[tuple[int, int]]) -> float:
            b = np.stack([self.faces[j].box for _, j in g])
            return float(np.mean((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))

        keep.sort(key=lambda g: (-len(g), -size(g)))
        return [[j for _, j in sorted(g)] for g in keep]
