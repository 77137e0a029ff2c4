"""The :class:`Recognizer` facade: wires video input, detection, alignment, backbone and heads.

Data flows one way::

    clip -> analysis.Analysis.frames (video.iter_frames -> detection.TrackingDetector
            -> tracking.OnlineTracker -> alignment.norm_crop -> features.Backbone -> identity)
         -> analysis.FaceTable (face tracks) -> heads (clip pooling + classifier) -> Result

Every method that looks at frames (predict, analyze, enroll, correct, faces_in, stream)
consumes the same per-frame analysis; default models are looked up in :mod:`emoadapt.zoo`.
The Recognizer holds the models and does no modelling of its own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import MAX_POOLED_FACES, Analysis, AnalyzedFace, AnalyzedFrame, FaceTable, Track
from .errors import (
    EmoadaptError,
    InvalidInputError,
    MissingDependencyError,
    ModelIntegrityError,
    StoreError,
    UnknownUserError,
)
from .features import Backbone
from .heads import ClipContext
from .video import DEFAULT_SOURCE_FPS, Clip, Sampling

__all__ = ["Recognizer", "Result", "FrameResult", "Timeline", "Correction", "default_home", "DEFAULT_SOURCE_FPS", "MAX_WINDOW_FRAMES"]

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


class Timeline(Sequence[FrameResult]):
    """:attr:`Result.timeline`: a read-only sequence of :class:`FrameResult`, stored as arrays
    (about 100 bytes a face, not a few KB of objects) and built item by item when read."""

    __slots__ = ("_classes", "_index", "_box", "_score", "_landmarks", "_probabilities")

    def __init__(self, classes: Sequence[str], index: np.ndarray, box: np.ndarray, score: np.ndarray, landmarks: np.ndarray, probabilities: np.ndarray) -> None:
        self._classes = tuple(classes)
        self._index, self._box, self._score, self._landmarks, self._probabilities = index, box, score, landmarks, probabilities

    def __len__(self) -> int:
        return len(self._index)

    def _item(self, i: int) -> FrameResult:
        x1, y1, x2, y2 = (float(v) for v in self._box[i])
        return FrameResult(
            index=int(self._index[i]),
            box=(x1, y1, x2, y2),
            score=float(self._score[i]),
            probabilities=dict(zip(self._classes, map(float, self._probabilities[i]))),
            landmarks=self._landmarks[i],
        )

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        j = int(i)
        if not -n <= j < n:
            raise IndexError("timeline index out of range")
        return self._item(j % n)

    def __iter__(self) -> Iterator[FrameResult]:
        return (self._item(j) for j in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Timeline({len(self)} frames)"


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
    timeline: Sequence[FrameResult] = field(default_factory=list, repr=False)
    """Per used frame: index, face box, frame-level probabilities (a :class:`Timeline`; empty
    with ``predict(..., timeline=False)``)."""
    user: str | None = None
    """Recognized enrolled user whose personal head was used, else ``None``."""
    tracks: list[Result] = field(default_factory=list, repr=False)
    """One result per face track when several people are in the clip (this result is the main one)."""
    features: np.ndarray | None = field(default=None, repr=False)
    """Per-frame backbone features (n, D) of the used frames (what the heads pool): every used
    frame's, except in an input of more than :data:`~emoadapt.analysis.MAX_POOLED_FACES` faces,
    whose heads pool an evenly spaced subset (``feature_rows`` says which)."""
    frame_probabilities: np.ndarray | None = field(default=None, repr=False)
    """Per-frame backbone probabilities (faces, C), one row per ``timeline`` entry (with
    ``timeline=False``: per row of ``features``)."""
    embedding: np.ndarray | None = field(default=None, repr=False)
    """Identity embedding of the face track (``(E,)``, of the Recognizer's ``identity``
    model): what routes it to a user, and what a user's personal identity expert reads.
    ``None`` when no face was embedded (``analyze`` without ``identity=True``)."""
    source: str | None = None
    """The clip's path when it was given as a path, else ``None``."""
    fps: float | None = None
    """Frame rate of the source that frame times are counted at: the container's for a video
    file, ``source_fps`` for arrays and iterables; ``None`` for a still image."""
    start: float | None = None
    """:meth:`Recognizer.stream` only: the window's start, seconds of the source (else ``None``)."""
    end: float | None = None
    """:meth:`Recognizer.stream` only: the window's end, seconds of the source (else ``None``)."""
    feature_rows: np.ndarray | None = field(default=None, repr=False)
    """The positions in ``timeline`` / ``frame_probabilities`` of the rows of ``features``
    when these are a subset (a long input, see ``features``); ``None`` when they match one to one."""

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable labels with their probabilities."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def rows(self, kind: str = "frames") -> list[dict[str, Any]]:
        """The result as table rows (dicts with the same keys, in column order).

        ``kind="frames"``: one row per analysed face per frame, over every face track: ``clip``,
        ``frame`` (index in the source), ``time`` (seconds: ``frame / fps``; ``0`` for a still
        image), ``track`` (0 = the main track), ``user`` (recognised user of the track, else
        empty), the face box ``x1, y1, x2, y2`` (pixels), the detector ``score``, then one column
        per class with the frame-level probability of the universal backbone. Boxes are rounded
        to 0.01 px, scores and probabilities to 6 decimals.

        ``kind="clips"``: one row per face track: ``clip``, ``track``, ``user``, ``label``,
        ``frames`` (frames read), ``faces`` (frames of this track), ``start`` and ``end`` (seconds
        of the track's first and last face), then one column per class with the track's
        clip-level probability (from the user's personal head when the user was recognised).
        A clip with no face gives one row with an empty label and no probabilities.
        """
        if kind not in ("frames", "clips"):
            raise InvalidInputError(f"kind must be 'frames' or 'clips', got {kind!r}")
        tracks = self.tracks or [self]
        clip = self.source or ""
        rows: list[dict[str, Any]] = []
        if kind == "frames":
            classes = list(tracks[0].timeline[0].probabilities) if tracks[0].timeline else []
            for t, r in enumerate(tracks):
                for f in r.timeline:
                    row: dict[str, Any] = {"clip": clip, "frame": f.index, "time": self._time(f.index), "track": t, "user": r.user or ""}
                    row.update(zip(("x1", "y1", "x2", "y2"), (round(float(v), 2) for v in f.box)))
                    row["score"] = round(float(f.score), 6)
                    row.update((c, round(float(f.probabilities[c]), 6)) for c in classes)
                    rows.append(row)
            return rows
        classes = list(tracks[0].probabilities)
        for t, r in enumerate(tracks):
            idx = [f.index for f in r.timeline]
            row = {
                "clip": clip,
                "track": t,
                "user": r.user or "",
                "label": r.label or "",
                "frames": r.frames,
                "faces": r.faces,
                "start": self._time(min(idx)) if idx else None,
                "end": self._time(max(idx)) if idx else None,
            }
            row.update((c, round(float(r.probabilities[c]), 6)) for c in classes)
            rows.append(row)
        return rows

    def _time(self, index: int) -> float:
        return round(index / self.fps, 6) if self.fps else 0.0

    def to_frame(self, kind: str = "frames") -> Any:
        """The result as a :class:`pandas.DataFrame` (pandas is an optional dependency, the
        ``pandas`` extra: ``pip install -e ".[pandas]"``; without it
        :class:`~emoadapt.errors.MissingDependencyError`); rows and columns as in :meth:`rows`. The
        ``"frames"`` table has the shape of py-feat's ``Fex``: one row per face per frame, box and
        emotion columns. Cells hold the values as they are: ``DataFrame.to_csv`` does not escape
        text a spreadsheet would run as a formula (``emoadapt predict --format csv`` does).
        """
        try:
            import pandas as pd
        except ImportError as e:
            raise MissingDependencyError.for_extra("Result.to_frame", "pandas") from e
        rows = self.rows(kind)
        if rows:
            return pd.DataFrame(rows)
        cols = (
            ["clip", "frame", "time", "track", "user", "x1", "y1", "x2", "y2", "score"]
            if kind == "frames"
            else ["clip", "track", "user", "label", "frames", "faces", "start", "end"]
        )
        return pd.DataFrame(columns=cols)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (``start`` and ``end`` first for a stream's window)."""
        window = {} if self.start is None else {"start": self.start, "end": self.end}
        return {
            **window,
            "label": self.label,
            "probabilities": {k: round(float(v), 6) for k, v in self.probabilities.items()},
            "frames": self.frames,
            "faces": self.faces,
            "user": self.user,
            "timeline": [
                {
                    "index": f.index,
                    "box": [round(float(v), 1) for v in f.box],
                    "score": round(f.score, 4),
                    "probabilities": {k: round(float(v), 5) for k, v in f.probabilities.items()},
                }
                for f in self.timeline
            ],
        }


class Correction(int):
    """What :meth:`Recognizer.correct` returns: the id of the stored correction -- an ``int``,
    so ``cid = rec.correct(...)`` works as before -- with what happened after it was committed.

    A correction is reported only once it is committed, and a problem of the automatic
    adaptation that may follow it (heads directory not writable, disk full, the user
    forgotten meanwhile by another process, ...) never raises: it is logged and kept in
    :attr:`adapt_error`, and :meth:`Recognizer.adapt` can be called again later. A caller
    that retried on an exception would store the correction twice.
    """

    user: str
    """The user it was filed under (normalised, see :func:`emoadapt.store.normalize_user_name`)."""
    label: str
    """The label stored (a canonical class for synonyms, see :mod:`emoadapt.labels`)."""
    adapt_report: Any
    """The :class:`~emoadapt.adaptation.AdaptReport` when this correction triggered an
    automatic adaptation that ran, else ``None``."""
    adapt_error: BaseException | None
    """The exception of a failed automatic adaptation (usually an
    :class:`~emoadapt.errors.EmoadaptError`), else ``None``."""

    def __new__(  # noqa: PYI034
        cls, id: int, *, user: str = "", label: str = "", adapt_report: Any = None, adapt_error: BaseException | None = None
    ) -> Correction:
        self = super().__new__(cls, id)
        self.user, self.label, self.adapt_report, self.adapt_error = user, label, adapt_report, adapt_error
        return self

    @property
    def id(self) -> int:
        """The correction's id as a plain ``int``."""
        return int(self)

    @property
    def adapt_failed(self) -> bool:
        """True when an automatic adaptation was due and failed (see :attr:`adapt_error`)."""
        return self.adapt_error is not None

    def __str__(self) -> str:  # prints, formats and logs as the plain id
        return int.__repr__(self)

    def __repr__(self) -> str:
        extra = f", adapt_error={self.adapt_error!r}" if self.adapt_error is not None else ""
        return f"Correction({int(self)}, user={self.user!r}, label={self.label!r}{extra})"


class Recognizer:
    """Facial-emotion recognition for video clips, personalised per user.

    Args:
        home: directory for user data (enrolments, corrections, personal heads). Default
            ``$EMOADAPT_HOME`` or a per-user data directory; created only when first needed.
        backbone: manifest name of the emotion backbone, or a :class:`Backbone` instance.
        universal_head: the head used for strangers: a manifest name, a head object,
            ``"mean_probability"`` (mean of the backbone's frame probabilities) or ``None``
            for the manifest default.
        personal_head: the trainable head personal heads are fine-tuned from (manifest name,
            head object or ``None`` for the manifest default).
        adapt_every: fine-tune a user's head automatically after this many new corrections
            (0 disables; :meth:`adapt` always works).
        identity: the identity model that recognises enrolled users:
            ``"mobilefacenet"`` (default: ArcFace-trained MobileFaceNet, 192-D) or
            ``"dlib_resnet"`` (dlib's ResNet descriptor, 128-D); see docs/personalization.md "Identity routing".
            Enrolments are stored with the name of the model that made them and only those of
            this model are compared: a user enrolled with another model only is not recognised
            (logged) and must be re-enrolled (:meth:`reenrol_needed`).
        identity_threshold: cosine similarity needed to recognise an enrolled user
            (default: the model's measured threshold, :data:`emoadapt.identity.THRESHOLDS`).
        identity_frames: at most this many frames of a face track are embedded for identity.
        min_face_size: smallest face (pixels) the detector looks for.
        min_face_score: detections below this confidence are ignored (0.95: every real face in
            the test photos and clips scores >= 0.99, while the false positives seen on them,
            on background clutter, score 0.91-0.92).
        max_faces: at most this many faces per frame are analysed (the largest).
        num_threads: TFLite threads per model (default ``$EMOADAPT_THREADS`` or 1).
        chunk: face crops batched through the backbone at once (bounds memory).
        detect_every: in a video, run the full face detector at least every this many
            frames and track the faces in between (O-Net on each face's previous box, see
            :class:`~emoadapt.detection.TrackingDetector`): about 5x faster end to end, with
            landmarks within about 1 px of per-frame detection. A lost face triggers a new
            detection at once; a face entering the picture is found at most
            ``detect_every - 1`` frames late. ``1`` detects on every frame.
        video_tta: also average every face of a *video* with its mirror image, when the
            backbone recommends it (``Backbone.tta``). Off by default: it doubles the cost of
            the emotion network per frame, and a face track's frames are pooled anyway.
            Still images (:meth:`faces_in`, one-frame clips) always get the backbone's setting.
        opencv_threads: when given, OpenCV's process-wide thread pool is set to this many
            threads when the Recognizer is made (:func:`emoadapt._threads.configure_opencv`);
            ``None`` (the default) leaves OpenCV's setting alone: the host application owns it.
            1 suits the library's OpenCV work, many small operations (colour conversion,
            resizing, warping one face) for which OpenCV's thread pool costs more CPU than it
            saves (the command line asks for it; speed: docs/benchmarks.md "Speed").

    A Recognizer may be shared by threads: each model serialises its own invocations and the
    store serialises its connection; several processes may share one ``home``.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        backbone: str | Backbone | None = None,
        universal_head: str | Any | None = None,
        personal_head: str | Any | None = None,
        adapt_every: int = 5,
        identity: str = "mobilefacenet",
        identity_threshold: float | None = None,
        identity_frames: int = 8,
        min_face_size: int = 20,
        min_face_score: float = 0.95,
        max_faces: int = 8,
        num_threads: int | None = None,
        chunk: int = 32,
        detect_every: int = 10,
        video_tta: bool = False,
        opencv_threads: int | None = None,
    ) -> None:
        from . import _threads, zoo
        from ._paths import as_path
        from .detection import MTCNN
        from .identity import IDENTITY_MODELS, THRESHOLDS, IdentityMatcher

        # every argument is checked before any model is loaded: a bad value is an
        # InvalidInputError, never a raw TypeError/ValueError from deeper down
        self.home = as_path(home, "home", expanduser=True) if home is not None else default_home()
        if backbone is not None and not isinstance(backbone, (str, Backbone)):
            raise InvalidInputError(f"backbone must be a model name, a Backbone or None, got {type(backbone).__name__}")
        self.min_face_score = _number(min_face_score, "min_face_score", 0.0, 1.0)
        if isinstance(adapt_every, bool) or not isinstance(adapt_every, (int, np.integer)) or adapt_every < 0:
            raise InvalidInputError(f"adapt_every must be an int >= 0, got {adapt_every!r}")
        if not isinstance(identity, str) or identity not in IDENTITY_MODELS:
            raise InvalidInputError(f"unknown identity model {identity!r} (known: {sorted(IDENTITY_MODELS)})")
        threshold = THRESHOLDS[identity] if identity_threshold is None else _number(identity_threshold, "identity_threshold", -1.0, 1.0)
        self.max_faces = _count(max_faces, "max_faces")
        self.chunk = _count(chunk, "chunk", 4096)
        self.identity_frames = _count(identity_frames, "identity_frames")
        self.detect_every = _count(detect_every, "detect_every")
        opencv_threads = None if opencv_threads is None else _threads.check_opencv_threads(opencv_threads)
        num_threads = None if num_threads is None else zoo.check_threads(num_threads)
        self._own_backbone = not isinstance(backbone, Backbone)
        self.backbone = backbone if isinstance(backbone, Backbone) else Backbone(backbone, num_threads=num_threads)
        self.detector = MTCNN(min_face_size=min_face_size, num_threads=num_threads)
        self.video_tta = bool(video_tta)
        if opencv_threads is not None:  # only when asked: it is the whole process's setting
            _threads.configure_opencv(opencv_threads)
        self.adapt_every = int(adapt_every)
        self.identity = identity
        self.matcher = IdentityMatcher(threshold)
        self.universal = zoo.resolve_head(universal_head, "universal_head", self.backbone)
        self._personal_spec = personal_head
        self._personal_base: Any = None
        self.model_version = f"{self.backbone.name}@{self.backbone.entry['sha256'][:12]}"
        self._num_threads = num_threads
        self._embedder: Any = None
        self._stale_logged: tuple[str, ...] = ()
        self._store: Any = None
        # personal heads by user uid: (uid, active version, sha256) -> head (None: universal).
        # Keyed by the user record's random uid, never by name: a user forgotten (here or in
        # another process) and created again under the same name has a new uid
        self._heads: dict[str, tuple[tuple[str, int, str], Any]] = {}
        self._store_warned = False
        self._replay: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.RLock()

    # -- lazily created parts -----------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Labels of the universal model."""
        return [str(c) for c in self.universal.classes_]

    @property
    def personal_base(self) -> Any:
        """The trainable universal head personal heads are fine-tuned from (loaded on first use)."""
        with self._lock:
            if self._personal_base is None:
                from . import zoo

                self._personal_base = zoo.resolve_head(self._personal_spec, "personal_head", self.backbone, trainable=True)
            return self._personal_base

    @property
    def embedder(self) -> Any:
        """The identity embedder (loaded on first use)."""
        with self._lock:
            if self._embedder is None:
                from .identity import load_embedder

                self._embedder = load_embedder(self.identity, num_threads=self._num_threads)
            return self._embedder

    @property
    def store(self) -> Any:
        """The feedback store under ``home`` (opened, and created, on first use)."""
        with self._lock:
            if self._store is None:
                from .store import Store

                self._store = Store(self.home)
            return self._store

    def _store_file_exists(self) -> bool:
        """Whether the home holds a store (StoreError when the home cannot be looked into)."""
        from .errors import StoreError

        try:
            os.stat(self.home / "store.sqlite3")
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise StoreError(f"cannot look into the home {self.home}: {e.strerror or e}") from e
        return True

    def _gallery(self) -> dict[str, np.ndarray]:
        """Enrolment embeddings of this identity model per user; empty (and nothing created)
        when no store exists yet. Users enrolled only with another model are left out, and
        logged (once per set of such users): their embeddings live in another space."""
        if self._store is None and not self._store_file_exists():
            if self.home.exists() and not self.home.is_dir():
                raise StoreError(f"the home {self.home} is not a directory")
            return {}
        gallery = self.store.embeddings(model=self.identity)
        stale = tuple(sorted(set(self.store.embedding_models()) - set(gallery)))
        if stale and stale != self._stale_logged:
            self._stale_logged = stale
            log.warning(
                "%d user(s) enrolled only with another identity model cannot be recognised by %s: %s; re-enrol needed "
                "(Recognizer.enroll) or use Recognizer(identity=...) of their model",
                len(stale),
                self.identity,
                ", ".join(stale),
            )
        return gallery

    def reenrol_needed(self) -> dict[str, list[str]]:
        """Users whose enrolment embeddings were all made by another identity model than this
        Recognizer's, with those models: they are not recognised until re-enrolled with
        :meth:`enroll` (embeddings cannot be converted between models, and no pixels are
        stored to recompute them)."""
        if self._store is None and not self._store_file_exists():
            return {}
        return {u: m for u, m in self.store.embedding_models().items() if self.identity not in m}

    def _store_unavailable(self, e: StoreError) -> None:
        """A store problem met while predicting: logged once (until the store works again);
        prediction goes on with the universal model."""
        if not self._store_warned:
            self._store_warned = True
            log.warning(
                "the feedback store under %s is unavailable (%s); predicting with the universal model, "
                "personal heads and user recognition are off until it works again",
                self.home,
                e,
            )

    def _gallery_or_none(self) -> dict[str, np.ndarray]:
        """:meth:`_gallery` for prediction: a store that cannot be opened or read (read-only,
        damaged, newer, deleted) gives an empty gallery, i.e. everyone is a stranger."""
        try:
            gallery = self._gallery()
        except StoreError as e:
            self._store_unavailable(e)
            return {}
        self._store_warned = False
        return gallery

    @staticmethod
    def _user_name(user: Any) -> str:
        from .store import normalize_user_name

        return normalize_user_name(user)

    def close(self) -> None:
        """Close the store and give the models' interpreters back to the process-wide pool
        (:class:`emoadapt.zoo.Lease`; a Backbone passed in by the caller is left to its
        owner). Deterministic: no worker thread outlives a call, so nothing runs after
        ``close`` returns. The Recognizer stays usable: the store reopens and the models lease
        interpreters again when next needed."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._own_backbone:
                self.backbone.close()
            self.detector.close()
            if self._embedder is not None:
                self._embedder.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- per-frame analysis -----------------------------------------------------------------
    def _analysis(self) -> Analysis:
        """The analysis path with this Recognizer's models and settings."""
        return Analysis(
            self.detector,
            self.backbone,
            embedder=lambda: self.embedder,
            min_face_score=self.min_face_score,
            max_faces=self.max_faces,
            detect_every=self.detect_every,
            chunk=self.chunk,
            identity_frames=self.identity_frames,
            video_tta=self.video_tta,
        )

    def faces_in(self, image: np.ndarray, *, color: str = "rgb") -> list[FrameResult]:
        """Every confident face of one frame with its frame-level probabilities (index 0)."""
        from .video import as_rgb_frame

        frame = next(self._analysis().frames(as_rgb_frame(image, color)))
        return [self._frame_result(0, f, f.probabilities) for f in frame.faces]

    def _frame_result(self, index: int, face: AnalyzedFace, probabilities: Any) -> FrameResult:
        x1, y1, x2, y2 = (float(v) for v in face.box)
        return FrameResult(
            index=index,
            box=(x1, y1, x2, y2),
            score=face.score,
            probabilities=dict(zip(self.backbone.classes, map(float, probabilities))),
            landmarks=face.landmarks,
        )

    def _scan(
        self,
        clip: Clip,
        *,
        color: str,
        sampling: Sampling,
        identity: bool,
        progress: bool,
        timeline: bool = True,
        max_features: int | None = MAX_POOLED_FACES,
    ) -> FaceTable:
        """Every sampled frame of ``clip`` analysed (:meth:`Analysis.frames`), as a :class:`FaceTable`
        (``timeline`` and ``max_features`` as there)."""
        if isinstance(clip, (str, os.PathLike)):
            from ._paths import as_path

            clip = as_path(clip, "clip")  # InvalidInputError for unusable path-likes, before any use
        source = os.fspath(clip) if isinstance(clip, os.PathLike) else None
        fps = _clip_fps(clip, sampling)
        bar = _progress(progress, sampling.max_frames)
        try:
            frames = self._analysis().frames(clip, color=color, sampling=sampling, identity=identity, progress=bar)
            return FaceTable(frames, source=source, fps=fps, timeline=timeline, max_features=max_features)
        finally:
            if bar is not None:
                bar.close()

    def _faces(self, det: Any) -> np.ndarray:
        """Indices of the detections analysed (:meth:`Analysis.select`; used by benchmarks/pipeline_speed.py)."""
        return self._analysis().select(det)

    def _tta_for(self, frames: int) -> bool | None:
        """The backbone's ``tta`` argument for an input of ``frames`` frames (:meth:`Analysis.tta_for`)."""
        return self._analysis().tta_for(frames)

    def analyze(
        self,
        clip: Clip,
        *,
        color: str = "rgb",
        fps: float | None = None,
        max_frames: int | None = None,
        step: int = 1,
        source_fps: float = DEFAULT_SOURCE_FPS,
        progress: bool = False,
        identity: bool = False,
    ) -> Result:
        """Run detection, alignment and the backbone on every sampled frame of the main face
        track (no clip head, no user routing): ``features`` and ``frame_probabilities`` filled,
        and with ``identity=True`` the track's identity ``embedding`` too (what
        :meth:`predict` routes on and :meth:`correct` stores). Other arguments as in
        :meth:`predict`."""
        if not isinstance(identity, bool):
            raise InvalidInputError(f"identity must be a bool, got {type(identity).__name__}")
        sampling = Sampling(fps=fps, max_frames=max_frames, step=step, source_fps=source_fps)
        scan = self._scan(clip, color=color, sampling=sampling, identity=identity, progress=progress)
        tracks = scan.tracks()
        res = self._track_result(scan, tracks[0] if tracks else [])
        if identity and tracks:
            res.embedding = scan.track_embedding(tracks[0])
        return res

    def frame_features(self, clip: Clip, **kw: Any) -> np.ndarray:
        """Per-frame backbone features (faces, D) of the main face of a clip: what heads consume
        (keyword arguments: those of :meth:`analyze`)."""
        _check_kw(kw, _SCAN_KW, "frame_features")
        res = self.analyze(clip, **kw)
        assert res.features is not None
        return res.features

    def _track_result(self, scan: FaceTable, track: Track | list[int]) -> Result:
        classes = self.backbone.classes
        if not isinstance(track, Track) or not len(track.rows):
            return Result(
                label=None,
                probabilities={},
                frames=scan.frames,
                faces=0,
                features=np.zeros((0, self.backbone.dim), np.float32),
                frame_probabilities=np.zeros((0, len(classes)), np.float32),
                source=scan.source,
                fps=scan.fps,
            )
        rows = track.rows
        P = scan.probabilities(rows)
        F, feature_rows = scan.features(rows)
        timeline: Sequence[FrameResult] = []
        if scan.timeline:
            col = scan.column
            timeline = Timeline(classes, col("index", rows), col("box", rows), col("score", rows), col("landmarks", rows), P)
        return Result(
            label=None,
            probabilities={},
            frames=scan.frames,
            faces=track.faces,
            timeline=timeline,
            features=F,
            frame_probabilities=P,
            source=scan.source,
            fps=scan.fps,
            feature_rows=feature_rows,
        )

    def _results(self, scan: FaceTable, gallery: dict[str, np.ndarray]) -> Result:
        """The classified result of every face track of ``scan`` (identity decided on each
        track's embeddings against ``gallery``): the main track's, with all in ``tracks``."""
        tracks = scan.tracks(self.matcher.threshold if gallery else None)
        if not tracks:
            return Result(label=None, probabilities={}, frames=scan.frames, faces=0, source=scan.source, fps=scan.fps)
        results = []
        for idx in tracks:
            r = self._track_result(scan, idx)
            emb = scan.track_embedding(idx)
            if emb is not None:
                r.user, _ = self.matcher.identify(emb, gallery)
                r.embedding = emb
            self._classify(r, r.user)
            results.append(r)
        main = results[0]
        main.tracks = results
        return main

    # -- heads ----------------------------------------------------------------------------------
    def _build_personal_head(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        """A usable head from a stored head's arrays, else an exception (the store then falls
        back to the previous version, then to None: the universal head)."""
        from .heads import head_from_arrays

        head = head_from_arrays(arrays)
        if getattr(head, "n_features_in_", None) != self.backbone.dim:
            raise ModelIntegrityError(f"trained on another backbone ({getattr(head, 'n_features_in_', None)} features, not {self.backbone.dim})")
        return head

    def _personal_head(self, user: str) -> Any | None:
        """The user's personal head, ``None`` for the universal one. Unusable versions fall back
        to older ones, then to None (logged once per active version, see :meth:`Store.active_head`)."""
        key = self.store.active_head_key(user)
        if key is None:
            return None
        with self._lock:
            cached = self._heads.get(key[0])
            if cached is not None and cached[0] == key:
                return cached[1]
        loaded = self.store.active_head(user, build=self._build_personal_head)
        if loaded is not None and loaded.user_uid != key[0]:
            return None  # forgotten and created again between the two reads: not this face's user
        head = None if loaded is None else loaded.head
        with self._lock:
            if len(self._heads) >= 256:  # bounded: entries of users forgotten by other processes
                self._heads.pop(next(iter(self._heads)))
            self._heads[key[0]] = (key, head)
        return head

    def _classify(self, res: Result, user: str | None) -> None:
        assert res.features is not None and res.frame_probabilities is not None
        P = res.frame_probabilities if res.feature_rows is None else np.asarray(res.frame_probabilities)[res.feature_rows]  # the frames the features pool
        context = ClipContext.one(probabilities=P, embedding=res.embedding, identity_model=self.identity)
        head, p = None, None
        if user is not None:
            try:
                head = self._personal_head(user)
            except UnknownUserError:  # forgotten since the gallery was read
                head = None
            except StoreError as e:
                self._store_unavailable(e)
        if head is not None:
            try:
                p = np.asarray(head.predict_proba([res.features], context), dtype=np.float64)[0]
                if not (np.isfinite(p).all() and p.sum() > 0):
                    raise ModelIntegrityError("non-finite or zero probabilities")
            except Exception as e:
                log.warning("personal head of a user failed to predict (%s: %s); using the universal head", type(e).__name__, e)
                head, p = None, None
        if head is None:
            head = self.universal
            p = np.asarray(head.predict_proba([res.features], context))[0].astype(np.float64)
        assert p is not None
        p = p / p.sum()
        labels = [str(c) for c in head.classes_]
        res.probabilities = dict(zip(labels, map(float, p)))
        res.label = labels[int(np.argmax(p))]

    # -- prediction -----------------------------------------------------------------------
    def predict(
        self,
        clip: Clip,
        *,
        color: str = "rgb",
        fps: float | None = None,
        max_frames: int | None = None,
        step: int = 1,
        source_fps: float = DEFAULT_SOURCE_FPS,
        progress: bool = False,
        timeline: bool = True,
    ) -> Result:
        """Emotion of the face(s) in ``clip``.

        Faces are tracked across frames; each track is pooled into one prediction and, when
        its face matches an enrolled user, classified by that user's personal head. The
        returned result is the main track's (the longest; ties: the largest face) with all
        tracks in ``tracks``.

        Args:
            clip: a video/image path, an RGB uint8 array (H,W,3) or (T,H,W,3), or an iterable
                of frames.
            color: ``"rgb"`` (default) or ``"bgr"`` for arrays/iterables in OpenCV order.
            fps: sample about this many frames per second (default: every frame).
            max_frames: stop after this many sampled frames.
            step: keep every ``step``-th frame.
            source_fps: the frame rate of an array or iterable of frames, which carry none
                (default 30, :data:`DEFAULT_SOURCE_FPS`): ``fps`` sampling and the frame times
                of :meth:`Result.rows` count at this rate. A video file's own rate (from its
                container) is used instead; this rate only when the container gives none.
            progress: show a progress bar on stderr.
            timeline: keep the per-frame :attr:`Result.timeline` (about 100 bytes a face).
                ``False`` keeps only what the heads pool, so memory does not grow with the
                input's length (at most :data:`~emoadapt.analysis.MAX_POOLED_FACES` faces'
                features either way): the result has the same label and probabilities, an
                empty timeline, and ``frame_probabilities`` of the pooled frames.

        Memory: the heads pool the features of at most
        :data:`~emoadapt.analysis.MAX_POOLED_FACES` faces; a longer input's are an evenly spaced
        subset of its frames (``Result.feature_rows``), see docs/reliability.md.
        """
        return self._predict(clip, color=color, fps=fps, max_frames=max_frames, step=step, source_fps=source_fps, progress=progress, timeline=timeline)

    def _predict(
        self,
        clip: Clip,
        *,
        color: str = "rgb",
        fps: float | None = None,
        max_frames: int | None = None,
        step: int = 1,
        source_fps: float = DEFAULT_SOURCE_FPS,
        progress: bool = False,
        timeline: bool = True,
        max_features: int | None = MAX_POOLED_FACES,
    ) -> Result:
        """:meth:`predict`; ``max_features=None`` keeps every face's features (for what needs them
        frame by frame: annotate's windows, extract's frame tables)."""
        if not isinstance(timeline, bool):
            raise InvalidInputError(f"timeline must be a bool, got {type(timeline).__name__}")
        gallery = self._gallery_or_none()
        sampling = Sampling(fps=fps, max_frames=max_frames, step=step, source_fps=source_fps)
        scan = self._scan(clip, color=color, sampling=sampling, identity=bool(gallery), progress=progress, timeline=timeline, max_features=max_features)
        res = self._results(scan, gallery)
        if res.label is None:
            log.info("no face found in %d frames", scan.frames)
        return res

    def stream(
        self, source: int | Clip, *, window: float = 2.0, hop: float = 0.5, fps: float | None = None, color: str = "rgb", source_fps: float = DEFAULT_SOURCE_FPS
    ) -> Generator[Result, None, None]:
        """Recognise emotions continuously: one :class:`Result` every ``hop`` seconds, over the
        last ``window`` seconds of ``source``.

        Each yielded result is what :meth:`predict` would return for the frames of the window
        (same face tracks, identity rule, personal heads of recognised users, universal head
        otherwise): the main face track's result, with every track of the window in
        ``tracks`` (empty label when no face is in the window), and ``start``/``end``, the
        window's bounds in seconds of the source (frame index / source rate). Every frame is
        read, detected, aligned and run through the backbone once (:meth:`Analysis.frames`);
        a ring buffer keeps the per-frame outputs (boxes, probabilities, features -- never
        images) of the last ``window`` seconds only, so memory stays constant over an endless
        source, and each window re-runs only the clip heads on them. A window covering a whole
        clip gives exactly :meth:`predict`'s label and probabilities (up to float rounding).

        Windows end after the frames ``hop``, ``2*hop``, ... seconds into the source, and once
        more at its end when frames came after the last one (a clip shorter than ``window``
        thus ends with a window over all of it). Identity embeddings are sampled per track as
        in :meth:`predict`, with the ``identity_frames`` cap counted per window, so a long
        track keeps being identified; the enrolled users are read when the stream starts.

        Latency: a window's result is yielded right after its last frame is read, tracked,
        aligned and its last few face crops (at most :data:`STREAM_CHUNK`) are run through the
        backbone, plus the clip heads: a median of about 15 ms on a 640x480 frame with one face
        and users enrolled (docs/live.md, ``benchmarks/stream.py``). A frame waits up
        to ``hop`` more for its window to end. Frames read meanwhile wait in the
        source (a camera drops what it cannot buffer).

        Args:
            source: a camera index (``int`` in ``[0, MAX_CAMERA_INDEX]``, see
                :func:`emoadapt.video.camera_index`: ``cv2.VideoCapture(index)``, frame rate as
                the driver reports it, else ``source_fps``), a video path, or an array/iterable
                of frames (as :meth:`predict`; an endless generator is fine).
            window: length of each window, seconds (> 0). A window holds at most
                :data:`MAX_WINDOW_FRAMES` sampled frames (``window`` times the source's frame
                rate, or ``fps`` when smaller): a longer one is refused (sample with ``fps``
                for long windows).
            hop: time between windows, seconds (> 0).
            fps: sample about this many frames per second (default: every frame).
            color: ``"rgb"`` or ``"bgr"`` for arrays and iterables.
            source_fps: the frame rate of arrays and iterables (and of a camera or a video
                file that reports none).

        The arguments are checked when ``stream`` is called (InvalidInputError), before anything
        reaches OpenCV; a camera is opened, and a file or iterable read, when iteration starts
        (the window's length in frames of a camera's own rate is checked then). Stop early by closing the
        generator (or leaving the ``for`` loop): the camera or file is released.
        """
        from .video import as_path, camera_index

        window = _number(window, "window", 1e-3, 1e9)
        hop = _number(hop, "hop", 1e-3, 1e9)
        if color not in ("rgb", "bgr"):
            raise InvalidInputError(f"color must be 'rgb' or 'bgr', got {color!r}")
        sampling = Sampling(fps=fps, source_fps=source_fps)
        if isinstance(source, (int, np.integer)) and not isinstance(source, (bool, np.bool_)):
            return self._windows(camera_index(source), None, None, color, sampling, window, hop)
        clip: Any = as_path(source, "source") if isinstance(source, (str, os.PathLike)) else source
        rate = _clip_fps(clip, sampling) or sampling.source_fps
        _check_window(window, rate, sampling.fps)
        return self._windows(clip, os.fspath(clip) if isinstance(clip, os.PathLike) else None, rate, color, sampling, window, hop)

    def _windows(
        self, clip: Any, name: str | None, rate: float | None, color: str, sampling: Sampling, window: float, hop: float
    ) -> Generator[Result, None, None]:
        """:meth:`stream`'s generator (``clip`` an int: a camera, opened here; ``rate`` then its own)."""
        from collections import deque

        from .video import camera_frames

        camera = None
        if isinstance(clip, int):
            cam_rate, clip = camera_frames(clip)
            camera, rate, color = clip, cam_rate or sampling.source_fps, "rgb"
            try:
                _check_window(window, rate, sampling.fps)
            except InvalidInputError:
                camera.close()  # releases the camera
                raise
        assert rate is not None
        sampling = Sampling(fps=sampling.fps, source_fps=rate)
        span, step = max(1, round(window * rate)), max(1, round(hop * rate))  # in source frames
        gallery = self._gallery_or_none()
        buffer: deque[AnalyzedFrame] = deque()
        next_end = step  # the next window ends after the frame of index next_end - 1

        def result(end: int) -> Result:
            res = self._results(FaceTable(buffer, source=name, fps=rate), gallery)
            for r in res.tracks or [res]:
                r.start, r.end = round(max(0, end - span) / rate, 6), round(end / rate, 6)
            return res

        frames_in = self._analysis().frames(
            clip,
            color=color,
            sampling=sampling,
            identity=bool(gallery),
            identity_window=span,
            chunk=min(self.chunk, STREAM_CHUNK),
            flush=lambda i: i + 1 >= next_end,
        )
        pending = False  # frames read since the last window
        try:
            for fr in frames_in:
                buffer.append(fr)
                while buffer[0].index <= fr.index - span:
                    buffer.popleft()
                pending = True
                if fr.index + 1 >= next_end:
                    next_end = (fr.index + 1) // step * step + step
                    pending = False
                    yield result(fr.index + 1)
            if pending:
                yield result(buffer[-1].index + 1)
        finally:
            frames_in.close()
            if camera is not None:
                camera.close()

    # -- personalisation --------------------------------------------------------------------
    def _identify_clip(self, clip: Clip | Result, kw: dict[str, Any]) -> tuple[Result, np.ndarray]:
        _check_kw(kw, _SCAN_KW, "enroll/correct")
        if isinstance(clip, Result):
            return self._analysed(clip, kw), np.asarray(clip.embedding, np.float32)
        sampling = Sampling(fps=kw.get("fps"), max_frames=kw.get("max_frames"), step=kw.get("step", 1), source_fps=kw.get("source_fps", DEFAULT_SOURCE_FPS))
        scan = self._scan(clip, color=kw.get("color", "rgb"), sampling=sampling, identity=True, progress=kw.get("progress", False))
        tracks = scan.tracks(self.matcher.threshold)
        if not tracks:
            raise InvalidInputError(f"no face found in the clip ({scan.frames} frames): nothing to learn from")
        emb = scan.track_embedding(tracks[0])
        assert emb is not None
        return self._track_result(scan, tracks[0]), emb

    def _analysed(self, res: Result, kw: dict[str, Any]) -> Result:
        """An already analysed clip (a :class:`Result` of :meth:`predict` or
        ``analyze(identity=True)``) used as it is: its features and identity embedding."""
        if kw:
            raise InvalidInputError(f"a Result is already analysed: sampling arguments ({', '.join(sorted(kw))}) do not apply to it")
        if res.features is None or not len(res.features):
            raise InvalidInputError("the Result has no face features (no face was found in its clip): nothing to learn from")
        if res.features.ndim != 2 or res.features.shape[1] != self.backbone.dim:
            raise InvalidInputError(f"the Result's features are not of this Recognizer's backbone ({self.backbone.name}, {self.backbone.dim} features)")
        if res.embedding is None or len(res.embedding) != self.embedder.dim:
            raise InvalidInputError(
                f"the Result carries no {self.identity} identity embedding: use a Result of predict() with users enrolled, "
                "or of analyze(..., identity=True), of this Recognizer"
            )
        return res

    def reclassify(self, result: Result, user: str | None = None) -> Result:
        """The emotion of an already analysed clip again, by the current heads: a copy of
        ``result`` (of :meth:`predict`, or of :meth:`analyze` with ``identity=True``) with
        ``label``, ``probabilities`` and ``user`` decided anew, without looking at the pixels
        again. ``user=None`` routes by the result's identity embedding (strangers get the
        universal model); a ``user`` name uses that user's personal head. For an app that
        shows an answer, takes a correction and wants the clips it already showed
        relabelled after :meth:`adapt`."""
        import copy

        if not isinstance(result, Result):
            raise InvalidInputError(f"reclassify needs a Result of predict() or analyze(), got {type(result).__name__}")
        if result.features is None or result.frame_probabilities is None or not len(result.features):
            raise InvalidInputError("the Result has no face features (no face was found in its clip)")
        out = copy.copy(result)
        out.tracks = []
        if user is not None:
            out.user = self._user_name(user)
            if not self.store.has_user(out.user):
                raise UnknownUserError(f"unknown user {out.user!r}")
        elif out.embedding is not None:
            out.user, _ = self.matcher.identify(np.asarray(out.embedding), self._gallery_or_none())
        else:
            out.user = None
        self._classify(out, out.user)
        return out

    def enroll(self, user: str, clips: Clip | list[Clip], **kw: Any) -> int:
        """Register ``user``'s face from a clip, an image, or a list of clips/images.

        Each clip or image adds one embedding (its main face) to the user's gallery; returns
        the number added. Keyword arguments: ``color``, ``fps``, ``max_frames``, ``step``,
        ``source_fps`` (as in :meth:`predict`). ``user`` is normalised first
        (:func:`emoadapt.store.normalize_user_name`).
        """
        user = self._user_name(user)
        items = clips if isinstance(clips, (list, tuple)) else [clips]
        if not items:
            raise InvalidInputError("nothing to enrol: give a clip, an image or a list of them")
        embs = [self._identify_clip(c, dict(kw))[1] for c in items]
        self.store.add_user(user)
        return int(self.store.add_embeddings(user, np.stack(embs), source="enrol", model=self.identity))

    def known_labels(self, user: str | None = None) -> list[str]:
        """Labels a correction may use without ``new_label=True``: the universal classes, then
        the custom labels of ``user``'s earlier corrections (synonyms of the universal classes
        are accepted too, see :mod:`emoadapt.labels`)."""
        known = list(self.classes)
        if user is not None:
            user = self._user_name(user)
            if (self._store is not None or (self.home / "store.sqlite3").exists()) and self.store.has_user(user):
                known += [lab for lab in self.store.label_counts(user) if lab not in known]
        return known

    def correct(self, clip: Clip | Result, label: str, user: str | None = None, *, force: bool = False, new_label: bool = False, **kw: Any) -> Correction:
        """Record that the emotion in ``clip`` is ``label`` (a correction); returns its id, a
        :class:`Correction` (an ``int``).

        ``user=None``: the user is recognised from the face (UnknownUserError when nobody
        enrolled matches). ``user`` is normalised before any lookup
        (:func:`emoadapt.store.normalize_user_name`: ``" alice"`` is ``"alice"``). A ``user``
        who is not enrolled yet is enrolled from this clip. A ``user`` whose enrolled face
        does not match the clip's face raises IdentityMismatchError unless ``force=True``; so
        does a ``user`` enrolled only with another identity model (re-enrol needed;
        ``force=True`` enrols them from this clip with this Recognizer's model).

        ``label`` must be a known label -- a universal class or one of the user's custom
        labels, in any case -- or a synonym of a universal class (``"scared"`` -> ``"fear"``);
        anything else raises :class:`~emoadapt.errors.UnknownLabelError` (listing the known
        labels) unless ``new_label=True``, which adds it as a new class of the user's personal
        head (see :mod:`emoadapt.labels`).

        After every ``adapt_every`` new corrections the user's head is fine-tuned
        (:meth:`adapt`). Once the correction is committed this method does not raise: a
        failed automatic adaptation is logged and reported on the result
        (:attr:`Correction.adapt_error`). Only features are stored, never pixels. A backbone
        that cannot adapt (manifest ``"adapts": false``) raises
        :class:`~emoadapt.errors.PersonalizationUnsupportedError` before anything is stored.
        """
        from . import zoo
        from .errors import IdentityMismatchError
        from .labels import resolve_label
        from .store import normalize_label

        zoo.require_adaptable(self.backbone.name)  # before anything is stored
        label = normalize_label(label)
        if user is not None:
            user = self._user_name(user)
        if not isinstance(new_label, bool):
            raise InvalidInputError(f"new_label must be a bool, got {type(new_label).__name__}")
        res, emb = self._identify_clip(clip, dict(kw))
        gallery = self._gallery()
        if user is None:
            user, score = self.matcher.identify(emb, gallery)
            if user is None:
                raise UnknownUserError(f"the face in the clip matches no enrolled user (best similarity {score:.3f}); pass user= to enrol it")
        label = resolve_label(label, self.known_labels(user), new_label=new_label)
        theirs = gallery.get(user)
        if theirs is None:
            other = self.reenrol_needed().get(user)
            if other and not force:
                raise IdentityMismatchError(
                    f"{user!r} is enrolled only with the {', '.join(other)} identity model, whose embeddings this Recognizer "
                    f"({self.identity}) cannot compare: re-enrol needed (Recognizer.enroll({user!r}, ...)), or pass force=True "
                    "to enrol them from this clip"
                )
            self.store.add_user(user)
            # another process may have enrolled the name meanwhile: never add a face to theirs
            theirs = self.store.embeddings(user, model=self.identity).get(user)
            if theirs is None:
                self.store.add_embeddings(user, emb[None], source="correct", model=self.identity)
                log.info("enrolled %s from a corrected clip (%s)", user, self.identity)
        if theirs is not None:
            ok, score = self.matcher.verify(emb, theirs)
            if not ok and not force:
                raise IdentityMismatchError(
                    f"the face in the clip does not match {user!r} (similarity {score:.3f} < {self.matcher.threshold:.3f}); pass force=True to record it anyway"
                )
        assert res.features is not None
        cid = int(
            self.store.add_correction(user, label, res.features, res.features.mean(axis=0), self.model_version, embedding=emb, embedding_model=self.identity)
        )
        # committed: from here on nothing raises (a retrying caller would store it twice)
        report, error = None, None
        try:
            # every adapt_every-th pending correction (not every one after the k-th: a rejected
            # candidate leaves its corrections pending, and must not make each later call re-adapt)
            pending = self.store.count_since_last_head(user)
            if self.adapt_every and pending and pending % self.adapt_every == 0:
                report = self.adapt(user)
        except Exception as e:  # reported on the result, see the docstring
            error = e
            log.warning(
                "correction %d of %r is stored, but the automatic adaptation failed (%s: %s); call adapt(%r) later",
                cid,
                user,
                type(e).__name__,
                e,
                user,
                exc_info=not isinstance(e, EmoadaptError),
            )
        return Correction(cid, user=user, label=label, adapt_report=report, adapt_error=error)

    def adapt(self, user: str, **kw: Any) -> Any:
        """Adapt ``user``'s personal head to their corrections now; returns an
        :class:`~emoadapt.adaptation.AdaptReport` (what the guard chose -- universal, mix or
        personal head -- and its held-out evidence). Keyword arguments (``strategy``,
        ``anchor``, ``use_guard``, ...) go to :func:`emoadapt.adaptation.adapt_user`.
        The head is saved only for the user record its corrections were read from: if the
        user is forgotten meanwhile (and perhaps enrolled again), UnknownUserError and
        nothing is saved. A backbone that cannot adapt raises
        :class:`~emoadapt.errors.PersonalizationUnsupportedError`."""
        from . import zoo
        from .adaptation import adapt_user

        zoo.require_adaptable(self.backbone.name)
        _check_kw(kw, _adapt_kw(), "adapt")
        user = self._user_name(user)
        if not self.store.has_user(user):
            raise UnknownUserError(f"unknown user {user!r}")
        kw.setdefault("replay", self.replay)
        kw.setdefault("identity_model", self.identity)
        return adapt_user(self.store, self.personal_base, user, model_version=self.model_version, **kw)

    @property
    def replay(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Universal training features replayed for uncorrected classes when adapting."""
        from . import zoo
        from .adaptation import load_replay

        with self._lock:
            if self._replay is None:
                name = zoo.replay_set_for(self.backbone.name, self.backbone.dim)
                if name is None:
                    self._replay = (np.zeros((0, self.backbone.dim), np.float32), np.zeros(0, str))
                else:
                    self._replay = load_replay(name)
            return self._replay if len(self._replay[0]) else None

    def users(self) -> list[str]:
        """Enrolled users."""
        if self._store is None and not self._store_file_exists():
            return []
        return list(self.store.users())

    def forget(self, user: str) -> Any:
        """Delete every trace of ``user``: profile, embeddings, corrections and heads. Heads
        cached by this or any other Recognizer are never used again (they are keyed by the
        user record's uid, which a user enrolled again under the name does not get). The
        store gets the name as given: one that a store upgrade gave to another user raises
        :class:`~emoadapt.errors.AmbiguousUserError` (see :meth:`emoadapt.store.Store.renamed_users`)."""
        self._user_name(user)  # an invalid name fails before the store opens
        try:
            uid = self.store.user_uid(user)
        except UnknownUserError:
            uid = None
        with self._lock:
            self._heads.pop(uid or "", None)
        return self.store.forget(user)

    def corrections(self, user: str) -> list[dict[str, Any]]:
        """The user's stored corrections: id, label, time, model version (never pixels)."""
        user = self._user_name(user)
        if not self.store.has_user(user):
            raise UnknownUserError(f"unknown user {user!r}")
        return [{"id": r.id, "label": r.label, "time": r.created, "model_version": r.model_version, "frames": r.n_frames} for r in self.store.corrections(user)]


#: keyword arguments of the methods that scan a clip (enroll, correct, frame_features)
#: face crops per backbone batch in :meth:`Recognizer.stream` (small: a window's result waits for its last batch)
STREAM_CHUNK = 4

_SCAN_KW = frozenset({"color", "fps", "max_frames", "step", "progress", "source_fps"})


def _check_kw(kw: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    """InvalidInputError for keyword arguments ``where`` does not take (before any work)."""
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise InvalidInputError(f"{where}: unexpected keyword argument(s) {unknown}; accepted: {sorted(allowed)}")


def _adapt_kw() -> frozenset[str]:
    """Keyword arguments :meth:`Recognizer.adapt` passes on to :func:`emoadapt.adaptation.adapt_user`."""
    import inspect

    from .adaptation import adapt_user

    params = inspect.signature(adapt_user).parameters
    return frozenset(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n != "model_version")


#: the most sampled frames a :meth:`Recognizer.stream` window may hold (its ring buffer's bound:
#: 136 s at 30 fps; longer windows sample fewer frames with ``fps``)
MAX_WINDOW_FRAMES = MAX_POOLED_FACES


def _check_window(window: float, rate: float, fps: float | None) -> None:
    """InvalidInputError when a ``window`` of seconds holds more than MAX_WINDOW_FRAMES sampled frames."""
    per_s = min(rate, fps) if fps is not None else rate
    if window * per_s > MAX_WINDOW_FRAMES:
        raise InvalidInputError(
            f"window={window:g} s at {per_s:g} frames a second would hold {window * per_s:.0f} frames: a window holds at most "
            f"{MAX_WINDOW_FRAMES} ({MAX_WINDOW_FRAMES / per_s:g} s at this rate); shorten it, or sample fewer frames a second with fps="
        )


def _number(value: Any, what: str, low: float, high: float) -> float:
    """A real number in ``[low, high]`` (bools and NaN refused) or InvalidInputError."""
    import math
    import numbers

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise InvalidInputError(f"{what} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _count(value: Any, what: str, high: int = 1 << 20, *, low: int = 1) -> int:
    """An int in ``[low, high]`` (bools refused) or InvalidInputError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not low <= int(value) <= high:
        raise InvalidInputError(f"{what} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def _clip_fps(clip: Clip, sampling: Sampling) -> float | None:
    """The rate frame times count at: a video file's container rate (``sampling.source_fps``
    when it gives none), ``None`` for a still image, ``sampling.source_fps`` for arrays and iterables."""
    if not isinstance(clip, (str, os.PathLike)):
        return sampling.source_fps
    from .video import source_rate

    return source_rate(clip, sampling)


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", leave=False, dynamic_ncols=True)
