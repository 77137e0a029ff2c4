"""Reading clips for a :class:`~emoadapt.recognizer.Recognizer`: its models and analysis
settings, turned into a clip's :class:`~emoadapt.analysis.FaceTable`, its main face track,
or the faces of one image (every reader runs :meth:`~emoadapt.analysis.Analysis.frames`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypedDict

import numpy as np
from tqdm.auto import tqdm

from ._checks import count, number
from ._paths import as_path
from .analysis import MAX_POOLED_FACES, Analysis, AnalyzedFrame, FaceTable, Track
from .detection import MTCNN
from .errors import InvalidInputError, MultipleFacesError
from .features import Backbone
from .identity import Embedder, FaceQuality
from .results import FrameResult, Result, track_result
from .video import DEFAULT_SOURCE_FPS, Clip, Sampling, as_rgb_frame, source_rate

__all__ = ["AnalysisSettings", "FaceChoice", "LearnedFace", "ScanKeywords", "ScanOptions", "Scanner", "clip_fps"]

#: which face of a clip to learn from: its index among the faces seen (0: the main one) or its
#: box ``(x1, y1, x2, y2)`` in pixels (the face whose box overlaps it most)
FaceChoice = int | Sequence[float]


class ScanKeywords(TypedDict, total=False):
    """How a clip is read: the keywords of every :class:`~emoadapt.recognizer.Recognizer`
    method that reads one (``predict``, ``analyze``, ``frame_features``, ``enroll``,
    ``correct``), typed for the callers' type checker; an unknown one is a TypeError.

    Attributes:
        color: ``"rgb"`` (default) or ``"bgr"`` for arrays/iterables in OpenCV order.
        fps: sample about this many frames per second (default: every frame).
        max_frames: stop after this many sampled frames.
        step: keep every ``step``-th frame.
        source_fps: the frame rate of arrays and iterables, and of a video file whose container
            gives none (:data:`~emoadapt.video.DEFAULT_SOURCE_FPS`): what ``fps`` and frame times count at.
        progress: show a progress bar on stderr.
    """

    color: str
    fps: float | None
    max_frames: int | None
    step: int
    source_fps: float
    progress: bool


@dataclass(frozen=True)
class ScanOptions:
    """:class:`ScanKeywords` with their defaults (``ScanOptions(**keywords)``)."""

    color: str = "rgb"
    fps: float | None = None
    max_frames: int | None = None
    step: int = 1
    source_fps: float = DEFAULT_SOURCE_FPS
    progress: bool = False

    def sampling(self) -> Sampling:
        """The frames to read (InvalidInputError for bad values)."""
        return Sampling(fps=self.fps, max_frames=self.max_frames, step=self.step, source_fps=self.source_fps)

    def given(self) -> list[str]:
        """The options given another value than their default."""
        return [f.name for f in fields(self) if getattr(self, f.name) != f.default]


def clip_fps(clip: Clip, sampling: Sampling) -> float | None:
    """The rate frame times count at: a video file's container rate (``sampling.source_fps``
    when it gives none), ``None`` for a still image, ``sampling.source_fps`` for arrays and iterables."""
    if not isinstance(clip, (str, os.PathLike)):
        return sampling.source_fps
    return source_rate(clip, sampling)


@dataclass(frozen=True)
class AnalysisSettings:
    """How faces are found and read: the :class:`~emoadapt.recognizer.Recognizer` arguments of
    these names, checked when made (InvalidInputError)."""

    min_face_score: float = 0.95
    max_faces: int = 8
    detect_every: int = 10
    chunk: int = 32
    identity_frames: int = 8
    video_tta: bool = False

    def __post_init__(self) -> None:
        checked = {
            "min_face_score": number(self.min_face_score, "min_face_score", 0.0, 1.0),
            "max_faces": count(self.max_faces, "max_faces"),
            "detect_every": count(self.detect_every, "detect_every"),
            "chunk": count(self.chunk, "chunk", 4096),
            "identity_frames": count(self.identity_frames, "identity_frames"),
            "video_tta": bool(self.video_tta),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def _collect_quality(frames: Iterator[AnalyzedFrame], into: dict[int, list[FaceQuality]]) -> Iterator[AnalyzedFrame]:
    for frame in frames:
        for f in frame.faces:
            if f.quality is not None:
                into.setdefault(f.track, []).append(f.quality)
        yield frame


@dataclass
class LearnedFace:
    """The face of a clip that enrolment or a correction learns from (:meth:`Scanner.learn`)."""

    result: Result
    """Its face track's unclassified result (features, frame probabilities, timeline)."""
    embedding: np.ndarray
    """Its identity embedding."""
    quality: FaceQuality | None
    """The quality of the faces that were embedded (the median of each measure); ``None`` when
    not measured (an analysed :class:`Result` was given: its pixels are gone)."""
    faces: list[dict[str, Any]]
    """Every face track of the clip: ``index`` (what ``face=`` takes), ``box`` (x1, y1, x2, y2;
    the median of its frames), ``size`` (pixels, the box's shorter side), ``frames``."""
    index: int = 0
    """Which of ``faces`` it is."""
    chosen: bool = False
    """Whether the caller chose it (``face=``) rather than it being the main face."""


def _median_quality(qs: list[FaceQuality]) -> FaceQuality | None:
    if not qs:
        return None
    cols = np.array([[q.eye_distance, q.sharpness, q.yaw, q.pitch, q.roll] for q in qs], np.float64)
    return FaceQuality(*(float(v) for v in np.median(cols, axis=0)))


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass(frozen=True)
class Scanner:
    """One Recognizer's models and analysis settings, and what reading a clip gives."""

    detector: MTCNN
    backbone: Backbone
    embedder: Callable[[], Embedder]
    """The identity embedder, loaded when first needed."""
    settings: AnalysisSettings

    def analysis(self) -> Analysis:
        """The per-frame analysis with these models and settings."""
        return Analysis(self.detector, self.backbone, embedder=self.embedder, **asdict(self.settings))  # the settings' names are Analysis's

    def table(
        self,
        clip: Clip,
        options: ScanOptions,
        *,
        identity: bool,
        timeline: bool = True,
        max_features: int | None = MAX_POOLED_FACES,
        quality: dict[int, list[FaceQuality]] | None = None,
    ) -> FaceTable:
        """Every sampled frame of ``clip`` analysed, as a :class:`FaceTable` (``identity``:
        embed the faces; ``timeline`` and ``max_features`` as there; ``quality``: a dict that
        receives the :class:`~emoadapt.identity.FaceQuality` of each embedded face, by online track id)."""
        sampling = options.sampling()
        if isinstance(clip, (str, os.PathLike)):
            clip = as_path(clip, "clip")  # InvalidInputError for unusable path-likes, before any use
        source = os.fspath(clip) if isinstance(clip, os.PathLike) else None
        bar = tqdm(total=sampling.max_frames, unit="frame", leave=False, dynamic_ncols=True) if options.progress else None
        try:
            frames: Iterator[AnalyzedFrame] = self.analysis().frames(
                clip, color=options.color, sampling=sampling, identity=identity, progress=bar, quality=quality is not None
            )
            if quality is not None:
                frames = _collect_quality(frames, quality)
            return FaceTable(frames, source=source, fps=clip_fps(clip, sampling), timeline=timeline, max_features=max_features)
        finally:
            if bar is not None:
                bar.close()

    def main_track(self, clip: Clip, options: ScanOptions, *, identity: bool) -> Result:
        """The unclassified result of ``clip``'s main face track (no face: empty), with its
        identity ``embedding`` when ``identity``."""
        table = self.table(clip, options, identity=identity)
        tracks = table.tracks()
        res = track_result(table, tracks[0] if tracks else None, self.backbone.classes, self.backbone.dim)
        if identity and tracks:
            res.embedding = table.track_embedding(tracks[0])
        return res

    def face_to_learn(self, clip: Clip | Result, options: ScanOptions, threshold: float, identity_model: str) -> tuple[Result, np.ndarray]:
        """The main face track of ``clip`` (tracks of one identity by ``threshold`` merged) and
        its identity embedding; InvalidInputError when there is no face to learn from. A
        :class:`Result` (of ``analyze(identity=True)`` or ``predict``) is used as it is: its
        features and its embedding of ``identity_model`` (no ``options`` then)."""
        if isinstance(clip, Result):
            if options.given():
                raise InvalidInputError(f"a Result is already analysed: sampling arguments ({', '.join(options.given())}) do not apply to it")
            clip.check_analysed(self.backbone.name, self.backbone.dim, identity_model, self.embedder().dim)
            return clip, np.asarray(clip.embedding, np.float32)
        table = self.table(clip, options, identity=True)
        tracks = table.tracks(threshold)
        if not tracks:
            raise InvalidInputError(f"no face found in the clip ({table.frames} frames): nothing to learn from")
        emb = table.track_embedding(tracks[0])
        assert emb is not None
        return track_result(table, tracks[0], self.backbone.classes, self.backbone.dim), emb

    def learn(
        self, clip: Clip | Result, options: ScanOptions, threshold: float, identity_model: str, *, face: FaceChoice | None = None, one_face: bool = False
    ) -> LearnedFace:
        """The face of ``clip`` to enrol or learn a correction from, its identity embedding and
        the quality of its embedded faces (tracks of one identity by ``threshold`` merged).

        ``face``: which face (an index into :attr:`LearnedFace.faces`, or a box); ``None``: the
        main face, or with ``one_face`` the only one (:class:`MultipleFacesError`, listing
        them, when there are several). InvalidInputError when there is no face to learn from.
        A :class:`Result` is used as it is (:meth:`face_to_learn`; no quality, no choice)."""
        if isinstance(clip, Result):
            if face is not None:
                raise InvalidInputError("a Result is one face already: face= does not apply to it")
            res, emb = self.face_to_learn(clip, options, threshold, identity_model)
            return LearnedFace(res, emb, None, [])
        qualities: dict[int, list[FaceQuality]] = {}
        table = self.table(clip, options, identity=True, quality=qualities)
        tracks = table.tracks(threshold)
        if not tracks:
            raise InvalidInputError(f"no face found in the clip ({table.frames} frames): nothing to learn from")
        faces = [self._face_seen(table, i, t) for i, t in enumerate(tracks)]
        k = self._choose(faces, face, one_face)
        track = tracks[k]
        embedding = table.track_embedding(track)
        assert embedding is not None
        quality = _median_quality([q for t in track.ids for q in qualities.get(t, [])])
        return LearnedFace(track_result(table, track, self.backbone.classes, self.backbone.dim), embedding, quality, faces, k, chosen=face is not None)

    @staticmethod
    def _face_seen(table: FaceTable, index: int, track: Track) -> dict[str, Any]:
        box = np.median(table.column("box", track.rows).astype(np.float64), axis=0)
        return {
            "index": index,
            "box": tuple(round(float(v), 1) for v in box),
            "size": int(round(min(box[2] - box[0], box[3] - box[1]))),
            "frames": int(track.faces),
        }

    @staticmethod
    def _choose(faces: list[dict[str, Any]], face: FaceChoice | None, one_face: bool) -> int:
        """Index of the chosen face (see :meth:`learn`)."""
        listing = "; ".join(f"face {f['index']}: box {tuple(round(float(v)) for v in f['box'])}, {f['size']} px" for f in faces)
        if face is None:
            if one_face and len(faces) > 1:
                raise MultipleFacesError(
                    f"{len(faces)} faces in the clip ({listing}): say which one to enrol (face= its index or box; CLI: --face)", faces=faces
                )
            return 0
        if isinstance(face, (bool, np.bool_)) or not isinstance(face, (int, np.integer, Sequence, np.ndarray)) or isinstance(face, str):
            raise InvalidInputError(f"face must be an index or a box (x1, y1, x2, y2), got {face!r}")
        if isinstance(face, (int, np.integer)):
            if not 0 <= int(face) < len(faces):
                raise InvalidInputError(f"face {int(face)} is not among the {len(faces)} face(s) in the clip ({listing})")
            return int(face)
        try:
            want = np.asarray(face, dtype=np.float64).reshape(4)
        except (TypeError, ValueError):
            raise InvalidInputError(f"face must be an index or a box (x1, y1, x2, y2), got {face!r}") from None
        if not np.isfinite(want).all() or want[2] <= want[0] or want[3] <= want[1]:
            raise InvalidInputError(f"face box must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {tuple(float(v) for v in want)}")
        overlaps = [_box_iou(want, np.asarray(f["box"], np.float64)) for f in faces]
        best = int(np.argmax(overlaps))
        if overlaps[best] < 0.3:
            raise InvalidInputError(f"no face in the clip overlaps the box {tuple(float(v) for v in want)} ({listing})")
        return best

    def faces_in(self, image: np.ndarray, color: str) -> list[FrameResult]:
        """Every confident face of one frame with its frame-level probabilities (index 0)."""
        frame = next(self.analysis().frames(as_rgb_frame(image, color)))
        classes = self.backbone.classes
        out = []
        for f in frame.faces:
            x1, y1, x2, y2 = (float(v) for v in f.box)
            out.append(FrameResult(0, (x1, y1, x2, y2), f.score, dict(zip(classes, map(float, np.asarray(f.probabilities)))), f.landmarks))
        return out
