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
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .alignment import norm_crop
from .errors import InvalidInputError
from .video import Clip, Frame, Sampling, iter_frames

__all__ = ["Analysis", "AnalyzedFrame", "AnalyzedFace", "FaceTable", "Track", "IDENTITY_STRIDE", "MAX_POOLED_FACES"]

log = logging.getLogger(__name__)

#: a track's appearance is compared with the face last embedded every this many faces (a track
#: is embedded at its start and again when its appearance drifted, :meth:`Analysis.frames`)
IDENTITY_STRIDE = 5
#: a track's face is embedded for identity again when, since its last embedding, its head
#: rolled by more than this many radians (about 11 degrees) ...
DRIFT_ROLL = 0.2
#: ... or turned or tilted by more than this share of the eye distance (the nose's offset from
#: the eyes' midpoint, across and along the face) ...
DRIFT_POSE = 0.15
#: ... or its size changed by more than this factor ...
DRIFT_SCALE = 1.5
#: ... or its aligned crop's mean gray level moved by more than this (the lighting changed) ...
DRIFT_LIGHT = 20.0
#: ... or its aligned crop's pattern changed (1 - the correlation of 12x12 thumbnails above
#: this): the expression changed, and identity embeddings move with expression, which the
#: personal identity expert reads (:class:`~emoadapt.heads.IdentityExpertHead`)
DRIFT_LOOK = 0.05


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
    quality: Any = field(default=None, repr=False)
    """:class:`~emoadapt.identity.FaceQuality` of the face when it was embedded and
    :meth:`Analysis.frames` was asked for it (``quality=True``: enrolment, corrections)."""


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
        quality: bool = False,
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
            identity: embed faces for identity: a track's first face, and a later one
                whenever the face's pose, size, lighting or expression drifted from the face last
                embedded (checked every :data:`IDENTITY_STRIDE` faces, at most ``identity_frames``
                per track); identity embedding is the costliest per-face step, and frames of one
                look add little to the track's embedding.
            identity_window: count the first face and the ``identity_frames`` cap over the
                last this many source frames instead of the whole run (a stream: a track is
                embedded again when its last embedding leaves the window, so every window
                holds one of each of its tracks).
            quality: measure each embedded face's quality (:func:`~emoadapt.identity.face_quality`:
                size, blur, pose) into :attr:`AnalyzedFace.quality`.
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
        embedded: dict[int, _Embedded] = {}  # track -> its identity embeddings so far
        n = 0
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emoadapt-backbone")
        source: Iterator[Frame] | None = None
        try:
            source = iter_frames(clip, color=color, sampling=sampling or Sampling())
            if isinstance(clip, (str, os.PathLike)):  # a file: decoded ahead in a reader thread
                source = _read_ahead(source)
            for fr in source:
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
                        crop = norm_crop(fr.image, det.landmarks[k], size, template, gray=gray)
                        crops.append(crop)
                        crop_faces.append(face)
                        if identity:
                            self._maybe_embed(fr.image, face, crop, fr.index, embedded, identity_window, quality)
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
            close = getattr(source, "close", None)
            if close is not None:
                close()  # stops a reader thread, releases the file
            worker.shutdown(wait=True, cancel_futures=True)

    def _maybe_embed(
        self, image: np.ndarray, face: AnalyzedFace, crop: np.ndarray, index: int, embedded: dict[int, _Embedded], window: int | None, quality: bool = False
    ) -> None:
        """Embed ``face`` for identity when its track has no embedding yet (within ``window``
        source frames, when given), or when the face's appearance drifted from the one last
        embedded (:func:`_appearance`: head pose, size, lighting, expression; checked every
        :data:`IDENTITY_STRIDE` faces after it); never more than ``identity_frames`` per track
        (within ``window``)."""
        state = embedded.get(face.track)
        if state is None:
            state = embedded[face.track] = _Embedded()
        state.faces += 1
        times = state.times
        if window is not None:
            while times and times[0] <= index - window:
                times.popleft()
        if len(times) >= self.identity_frames:
            return
        if times and (state.faces - state.last) % IDENTITY_STRIDE:  # drift is checked every IDENTITY_STRIDE faces
            return
        look = _appearance(face.landmarks, crop)
        if times and state.look is not None and not _drifted(state.look, look):
            return
        face.identity = self._embedder().embed_faces(image, face.landmarks[None])[0]
        if quality:
            from .identity import face_quality

            face.quality = face_quality(image, face.landmarks)
        times.append(index)
        state.look, state.last = look, state.faces


@dataclass
class _Embedded:
    """The identity embeddings of one track during :meth:`Analysis.frames`."""

    times: deque[int] = field(default_factory=deque)
    """Source indices of its embeddings (within the window)."""
    faces: int = 0
    """Its faces so far."""
    last: int = 0
    """Its face count at the last embedding."""
    look: np.ndarray | None = None
    """:func:`_appearance` of the face last embedded."""


def _appearance(landmarks: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """What moves a face's identity embedding, from its 5 landmarks and aligned crop: head
    roll, yaw and pitch, log size, mean gray level, then the crop's pattern (a 12x12 thumbnail,
    zero-mean, unit norm)."""
    lm = np.asarray(landmarks, np.float64)
    eyes = (lm[0] + lm[1]) / 2
    ev = lm[1] - lm[0]
    d = float(np.hypot(ev[0], ev[1])) or 1.0
    u = ev / d
    nose = lm[2] - eyes
    small = cv2.resize(crop, (12, 12), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    mean = float(small.mean())
    small -= mean
    small /= float(np.linalg.norm(small)) or 1.0
    pose = [np.arctan2(ev[1], ev[0]), (nose @ u) / d, (nose[1] * u[0] - nose[0] * u[1]) / d, np.log(d), mean]
    return np.concatenate([pose, small])


def _drifted(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether appearance ``b`` drifted from ``a`` (:data:`DRIFT_ROLL` ... :data:`DRIFT_LOOK`)."""
    roll = abs((b[0] - a[0] + np.pi) % (2 * np.pi) - np.pi)
    return bool(
        roll > DRIFT_ROLL
        or abs(b[1] - a[1]) > DRIFT_POSE
        or abs(b[2] - a[2]) > DRIFT_POSE
        or abs(b[3] - a[3]) > np.log(DRIFT_SCALE)
        or abs(b[4] - a[4]) > DRIFT_LIGHT
        or 1.0 - float(a[5:] @ b[5:]) > DRIFT_LOOK
    )


#: frames a file's reader thread decodes ahead of the analysis (bounds its memory)
READ_AHEAD = 2


def _read_ahead(frames: Iterator[Frame], depth: int = READ_AHEAD) -> Generator[Frame, None, None]:
    """``frames``, decoded in a reader thread up to ``depth`` frames ahead: decoding (OpenCV
    releases the GIL) overlaps detection and alignment, which wait for it otherwise. Only for
    sources the library opens itself (files), never a caller's iterable. An error of the
    source is raised here, as it was raised there; closing this generator stops the thread and
    closes the source (in the thread that reads it)."""
    q: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for fr in frames:
                if not put((0, fr)):
                    break
            else:
                put((1, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer as it is
            put((2, e))
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=read, name="emoadapt-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == 1:
                return
            if kind == 2:
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put, then wait for the source to be closed
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


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


#: at most this many faces' backbone features are kept for the clip heads of one analysis (a
#: clip, or a stream's window): beyond it, only those of an evenly spaced subset of the frames
#: (every 2nd, then every 4th, ... sampled frame, plus the first face of each track), which the
#: heads then pool. Memory thus stays bounded whatever the input's length (docs/reliability.md).
MAX_POOLED_FACES = 4096


@dataclass(frozen=True, eq=False)
class Track:
    """One face track of a :class:`FaceTable` (online tracks of one identity, merged)."""

    rows: np.ndarray
    """The table rows of its faces, in frame order (every face, or with ``timeline=False`` the
    faces whose features were kept)."""
    ids: tuple[int, ...]
    """The online track ids (:class:`~emoadapt.tracking.OnlineTracker`) it joins."""
    faces: int
    """Its faces, all of them (also those whose rows were not kept)."""


class FaceTable:
    """The faces of a run of analysed frames (a clip, or a stream's window), ready for the heads.

    Stored compactly, as arrays: per face its frame index, track, box, score, landmarks and
    backbone probabilities (about 100 bytes), and its backbone features for at most
    ``max_features`` faces (:data:`MAX_POOLED_FACES`): when more come, the features of every
    other frame are dropped (the first face of each track always stays), and so on, so that
    the heads pool an evenly spaced subset of a long input's frames. With ``timeline=False``
    the other per-face values are kept only for the faces whose features are kept, so memory
    is independent of the input's length (it grows only with the number of face tracks).

    Args:
        frames: the analysed frames, in order (more can be added with :meth:`add`).
        source: the clip's path, if any; fps: the rate frame times count at (see
            :attr:`emoadapt.Result.fps`).
        timeline: keep every face's values (the per-frame timeline), not only those pooled.
        max_features: the bound above (``None``: keep every face's features).
    """

    def __init__(
        self,
        frames: Iterable[AnalyzedFrame] = (),
        *,
        source: str | None = None,
        fps: float | None = None,
        timeline: bool = True,
        max_features: int | None = MAX_POOLED_FACES,
    ) -> None:
        if max_features is not None and max_features < 64:
            raise InvalidInputError(f"max_features must be None or at least 64, got {max_features}")
        self.source, self.fps, self.timeline, self.max_features = source, fps, timeline, max_features
        self.frames = 0
        self.stride = 1  # features are kept for the frames number 0, stride, 2*stride, ... (0-based)
        self._n = 0  # rows
        self._cols: dict[str, np.ndarray] = {}
        self._feat: np.ndarray | None = None
        self._nf = 0  # feature rows
        self._on_grid = 0  # feature rows of frames on the stride grid (what max_features bounds)
        self._stats: dict[int, list[float]] = {}  # track -> [faces, sum of the box areas] (first appearance order)
        self._emb: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # track -> (frame index, face number, embedding)
        self._seen = 0  # faces added
        for fr in frames:
            self.add(fr)

    @property
    def faces(self) -> int:
        """Faces added (every face, whether or not its row was kept)."""
        return self._seen

    @property
    def index(self) -> np.ndarray:
        """Frame index (in the source) of each row."""
        return self._col("index")

    def _col(self, name: str) -> np.ndarray:
        return self._cols[name][: self._n] if self._cols else np.zeros(0, np.int64)

    def add(self, frame: AnalyzedFrame) -> None:
        """Add one analysed frame (its faces must have their backbone outputs)."""
        num = self.frames
        self.frames += 1
        on_grid = num % self.stride == 0
        for f in frame.faces:
            st = self._stats.get(f.track)
            first = st is None
            if st is None:
                st = self._stats[f.track] = [0, 0.0]
            b = f.box
            st[0] += 1
            st[1] += float((b[2] - b[0]) * (b[3] - b[1]))
            if f.identity is not None:
                self._emb.setdefault(f.track, []).append((frame.index, self._seen, f.identity))
            self._seen += 1
            keep = on_grid or first
            if not keep and not self.timeline:
                continue
            r = self._new_row(f)
            c = self._cols
            c["index"][r], c["num"][r], c["track"][r], c["first"][r] = frame.index, num, f.track, first
            c["box"][r], c["score"][r], c["landmarks"][r], c["prob"][r] = f.box, f.score, f.landmarks, f.probabilities
            c["frow"][r] = self._new_feature(f.features) if keep else -1
            self._on_grid += keep and on_grid
        if self.max_features is not None and self._on_grid > self.max_features:
            self._thin()

    def _new_row(self, face: AnalyzedFace) -> int:
        if not self._cols:
            p = np.asarray(face.probabilities)
            lm = np.asarray(face.landmarks)
            cap = 64
            self._cols = {
                "index": np.zeros(cap, np.int64),
                "num": np.zeros(cap, np.int64),
                "track": np.zeros(cap, np.int64),
                "first": np.zeros(cap, bool),
                "box": np.zeros((cap, 4), np.asarray(face.box).dtype),
                "score": np.zeros(cap, np.float64),
                "landmarks": np.zeros((cap, *lm.shape), lm.dtype),
                "prob": np.zeros((cap, *p.shape), p.dtype),
                "frow": np.zeros(cap, np.int64),
            }
        elif self._n == len(self._cols["index"]):
            self._cols = {k: _grown(v, 2 * len(v)) for k, v in self._cols.items()}
        self._n += 1
        return self._n - 1

    def _new_feature(self, x: Any) -> int:
        x = np.asarray(x)
        if self._feat is None:
            self._feat = np.zeros((64, *x.shape), x.dtype)
        elif self._nf == len(self._feat):
            self._feat = _grown(self._feat, 2 * len(self._feat))
        self._feat[self._nf] = x
        self._nf += 1
        return self._nf - 1

    def _thin(self) -> None:
        """Double the stride until at most ``max_features`` feature rows are on its grid."""
        assert self.max_features is not None and self._feat is not None
        c, n = self._cols, self._n
        while self._on_grid > self.max_features and self.stride < self.frames:
            self.stride *= 2
            frow = c["frow"][:n]
            grid = c["num"][:n] % self.stride == 0
            keep = (frow >= 0) & (grid | c["first"][:n])
            rows = np.flatnonzero(keep)
            self._feat[: len(rows)] = self._feat[frow[rows]]  # feature rows are in row order
            frow[frow >= 0] = -1
            frow[rows] = np.arange(len(rows))
            self._nf = len(rows)
            self._on_grid = int(np.count_nonzero(keep & grid))
            if not self.timeline:  # rows exist only for kept features
                for v in c.values():
                    v[: len(rows)] = v[:n][keep]
                n = self._n = len(rows)

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """Backbone probabilities (n, C) of the faces of ``rows``."""
        return self._col("prob")[rows]

    def features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Backbone features of the faces of ``rows`` that have them kept, ``(m, D)``, and the
        positions in ``rows`` of those faces (``None`` when every face of ``rows`` has them)."""
        frow = self._col("frow")[rows]
        have = frow >= 0
        assert self._feat is not None or not len(rows)
        feat = self._feat if self._feat is not None else np.zeros((0, 0), np.float32)
        if have.all():
            return feat[frow], None
        return feat[frow[have]], np.flatnonzero(have)

    def column(self, name: str, rows: np.ndarray) -> np.ndarray:
        """One per-face column (``index``, ``box``, ``score``, ``landmarks``) of ``rows``."""
        return self._col(name)[rows]

    def track_embedding(self, track: Track) -> np.ndarray | None:
        """The identity embedding of ``track`` (:func:`~emoadapt.identity.clip_embedding` of
        its faces that were embedded, in frame order), ``None`` when none was."""
        from .identity import clip_embedding

        e = sorted((item for t in track.ids for item in self._emb.get(t, ())), key=lambda item: item[:2])
        return clip_embedding(np.stack([item[2] for item in e])) if e else None

    def tracks(self, merge_threshold: float | None = None) -> list[Track]:
        """The face tracks, longest first (ties: the largest face); short spurious tracks
        dropped; with ``merge_threshold``, tracks of the same identity that never overlap in
        time merged (:func:`~emoadapt.tracking.merge_tracks`; with ``timeline=False`` the
        overlap is checked on the kept faces only)."""
        from .tracking import merge_tracks

        if not self._stats:
            return []
        trk, index = self._col("track"), self._col("index")
        order = np.argsort(trk, kind="stable")
        cuts = np.flatnonzero(np.diff(trk[order])) + 1
        rows_of = {int(trk[part[0]]): part for part in np.split(order, cuts) if len(part)}
        ids = list(self._stats)  # first appearance order
        groups: list[tuple[int, ...]] = [(t,) for t in ids]
        if merge_threshold is not None and len(ids) > 1:
            single = [Track(rows_of[t], (t,), int(self._stats[t][0])) for t in ids]
            merged = merge_tracks([[(int(index[j]), int(j)) for j in tr.rows] for tr in single], [self.track_embedding(tr) for tr in single], merge_threshold)
            groups = [tuple(dict.fromkeys(int(trk[j]) for _, j in g)) for g in merged]
        faces = [int(sum(self._stats[t][0] for t in g)) for g in groups]
        longest = max(faces)
        keep = [(g, n) for g, n in zip(groups, faces) if n >= min(3, longest)]
        keep.sort(key=lambda gn: (-gn[1], -sum(self._stats[t][1] for t in gn[0]) / gn[1]))
        return [Track(np.sort(np.concatenate([rows_of[t] for t in g])), g, n) for g, n in keep]


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out
