"""The :class:`Recognizer` facade: it wires video input, the per-frame analysis, the heads and
the personalization policy together, and does no modelling and holds no policy of its own.

Data flows one way::

    clip -> analysis.Analysis.frames (video -> detection -> tracking -> alignment -> features -> identity)
         -> analysis.FaceTable (face tracks)
         -> personal.Personalization.classify (a recognised user's personal head, else the universal head)
         -> results.Result

Every method that looks at frames (predict, analyze, enroll, correct, faces_in, stream)
consumes the same per-frame analysis; :mod:`emoadapt.personal` decides who a face is and which
head answers, :mod:`emoadapt.streaming` cuts a stream into windows, and default models come from
:mod:`emoadapt.zoo`. docs/architecture.md draws the modules and one clip's path through them.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _threads, zoo
from ._checks import count, flag, number
from ._paths import as_path
from .adaptation import (
    DEFAULT_ANCHOR,
    DEFAULT_CENTER,
    DEFAULT_EVIDENCE_GATE,
    DEFAULT_MIX_K,
    DEFAULT_STRATEGY,
    IDENTITY_EXPERT_WEIGHT,
    AdaptOptions,
    AdaptReport,
)
from .analysis import MAX_POOLED_FACES, Analysis
from .detection import MTCNN
from .errors import InvalidInputError, MultipleFacesError
from .export import ExportReport, export_head
from .features import Backbone
from .heads import Head, TrainableHead
from .identity import IDENTITY_MODELS, THRESHOLDS, VERIFY_THRESHOLDS, Embedder, IdentityMatcher, load_embedder
from .personal import Enrollment, Personalization, user_name
from .results import Correction, FrameResult, Result, Timeline
from .scanning import AnalysisSettings, FaceChoice, ScanKeywords, Scanner, ScanOptions
from .store import ForgetReport, Store
from .streaming import MAX_WINDOW_FRAMES, STREAM_CHUNK, StreamSpec, windows
from .video import DEFAULT_SOURCE_FPS, Clip

__all__ = [
    "Recognizer",
    "Result",
    "FrameResult",
    "Timeline",
    "Correction",
    "default_home",
    "DEFAULT_SOURCE_FPS",
    "MAX_WINDOW_FRAMES",
    "STREAM_CHUNK",
]

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)


def default_home() -> Path:
    """``$EMOADAPT_HOME``, else ``$XDG_DATA_HOME/emoadapt``, else ``~/.local/share/emoadapt``."""
    env = os.environ.get("EMOADAPT_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "emoadapt"


class Recognizer:
    """Facial-emotion recognition for video clips, personalised per user (more on each
    argument: docs/api.md "Recognizer arguments").

    Args:
        home: directory for user data (enrolments, corrections, personal heads), created when
            first needed; default :func:`default_home`.
        backbone: manifest name of the emotion backbone, or a :class:`Backbone`.
        universal_head: the head for strangers: a manifest name, a :class:`~emoadapt.heads.Head`,
            ``"mean_probability"`` or ``None`` (the backbone's default).
        personal_head: the trainable head personal heads are fine-tuned from (likewise).
        adapt_every: adapt a user's head after this many new corrections (0: only :meth:`adapt`).
        identity: the identity model, ``"mobilefacenet"`` (default) or ``"dlib_resnet"``; only
            enrolments of this model are compared (the others: :meth:`reenroll_needed`).
        identity_threshold: cosine similarity that recognises a user (default: the model's,
            :data:`emoadapt.identity.THRESHOLDS`); a face said to be a user (a correction
            naming them) is checked at the lower of it and :data:`~emoadapt.identity.VERIFY_THRESHOLDS`.
        identity_frames: at most this many frames of a face track are embedded for identity.
        min_face_size: smallest face (pixels) the detector looks for.
        min_face_score: detections below this confidence are ignored.
        max_faces: at most this many faces per frame are analysed (the largest).
        num_threads: TFLite threads per model (default ``$EMOADAPT_THREADS`` or 1).
        chunk: face crops batched through the backbone at once (bounds memory).
        detect_every: in a video, faces are tracked between full detections and new faces are
            looked for every this many frames (a face entering is found at most
            ``detect_every - 1`` frames late; :class:`~emoadapt.detection.TrackingDetector`);
            ``1``: the full detector on every frame.
        video_tta: also average every face of a video with its mirror image, when the backbone
            recommends it (still images always get the backbone's setting).
        opencv_threads: set OpenCV's process-wide thread pool to this many threads when the
            Recognizer is made; ``None`` (default) leaves it to the host application.

    It wires :attr:`scanner` (:class:`~emoadapt.scanning.Scanner`: reads clips) and :attr:`personal`
    (:class:`~emoadapt.personal.Personalization`: who a face is, which head answers, corrections
    and adaptation). It may be shared by threads; several processes may share one ``home``.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        backbone: str | Backbone | None = None,
        universal_head: str | Head | None = None,
        personal_head: str | Head | None = None,
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
        # every argument is checked before any model is loaded: a bad value is an
        # InvalidInputError, never a raw TypeError/ValueError from deeper down
        self.home = as_path(home, "home", expanduser=True) if home is not None else default_home()
        if backbone is not None and not isinstance(backbone, (str, Backbone)):
            raise InvalidInputError(f"backbone must be a model name, a Backbone or None, got {type(backbone).__name__}")
        settings = AnalysisSettings(min_face_score, max_faces, detect_every, chunk, identity_frames, video_tta)
        adapt_every = count(adapt_every, "adapt_every", low=0)
        if not isinstance(identity, str) or identity not in IDENTITY_MODELS:
            raise InvalidInputError(f"unknown identity model {identity!r} (known: {sorted(IDENTITY_MODELS)})")
        threshold = THRESHOLDS[identity] if identity_threshold is None else number(identity_threshold, "identity_threshold", -1.0, 1.0)
        opencv_threads = None if opencv_threads is None else _threads.check_opencv_threads(opencv_threads)
        num_threads = None if num_threads is None else zoo.check_threads(num_threads)
        self._own_backbone = not isinstance(backbone, Backbone)
        self.backbone = backbone if isinstance(backbone, Backbone) else Backbone(backbone, num_threads=num_threads)
        self.detector = MTCNN(min_face_size=min_face_size, num_threads=num_threads)
        self.scanner = Scanner(self.detector, self.backbone, lambda: self.embedder, settings)
        if opencv_threads is not None:  # only when asked: it is the whole process's setting
            _threads.configure_opencv(opencv_threads)
        self.identity = identity
        self.matcher = IdentityMatcher(threshold, verify_threshold=min(threshold, VERIFY_THRESHOLDS[identity]))
        self.universal: Head = zoo.resolve_head(universal_head, "universal_head", self.backbone)
        self.personal = Personalization(
            self.home, self.backbone, self.universal, identity=identity, matcher=self.matcher, personal_head=personal_head, adapt_every=adapt_every
        )
        self.model_version = self.personal.model_version
        self._num_threads = num_threads
        self._embedder: Embedder | None = None
        self._lock = threading.RLock()

    @property
    def classes(self) -> list[str]:
        """Labels of the universal model."""
        return [str(c) for c in self.universal.classes_]

    @property
    def embedder(self) -> Embedder:
        """The identity embedder (loaded on first use)."""
        with self._lock:
            if self._embedder is None:
                self._embedder = load_embedder(self.identity, num_threads=self._num_threads)
            return self._embedder

    @property
    def store(self) -> Store:
        """The feedback store under ``home`` (opened, and created, on first use)."""
        return self.personal.store

    @property
    def personal_base(self) -> TrainableHead:
        """The trainable universal head personal heads are fine-tuned from (loaded on first use)."""
        return self.personal.personal_base

    @property
    def replay(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Universal training features replayed for uncorrected classes when adapting."""
        return self.personal.replay

    @property
    def adapt_every(self) -> int:
        """A user's head is adapted after this many new corrections (0: only by :meth:`adapt`)."""
        return self.personal.adapt_every

    @adapt_every.setter
    def adapt_every(self, value: int) -> None:
        self.personal.adapt_every = int(value)

    def close(self) -> None:
        """Close the store and give the models' interpreters back (a Backbone passed in by the
        caller is left to its owner); nothing runs after it returns. The Recognizer stays
        usable: the store reopens and the models lease interpreters again when next needed."""
        with self._lock:
            self.personal.close()
            if self._own_backbone:
                self.backbone.close()
            self.detector.close()
            if self._embedder is not None:
                self._embedder.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _analysis(self) -> Analysis:
        """The per-frame analysis of this Recognizer (:meth:`Scanner.analysis`)."""
        return self.scanner.analysis()

    def faces_in(self, image: np.ndarray, *, color: str = "rgb") -> list[FrameResult]:
        """Every confident face of one frame with its frame-level probabilities (index 0)."""
        return self.scanner.faces_in(image, color)

    def analyze(self, clip: Clip, *, identity: bool = False, **scan: Unpack[ScanKeywords]) -> Result:
        """The main face track's ``features`` and ``frame_probabilities`` (no clip head, no user
        routing), with ``identity=True`` its identity ``embedding`` too (what :meth:`predict`
        routes on and :meth:`correct` stores); other arguments as in :meth:`predict`."""
        return self.scanner.main_track(clip, ScanOptions(**scan), identity=flag(identity, "identity"))

    def frame_features(self, clip: Clip, **scan: Unpack[ScanKeywords]) -> np.ndarray:
        """Per-frame backbone features (faces, D) of the main face of a clip: what heads consume
        (arguments as in :meth:`predict`)."""
        res = self.analyze(clip, **scan)
        assert res.features is not None
        return res.features

    def predict(self, clip: Clip, *, timeline: bool = True, **scan: Unpack[ScanKeywords]) -> Result:
        """Emotion of the face(s) in ``clip``: each face track pooled into one prediction, by
        the personal head of the enrolled user its face matches, else the universal head. The
        result is the main track's (the longest; ties: the largest face), all in ``tracks``.

        Args:
            clip: a video/image path, an RGB uint8 array (H,W,3) or (T,H,W,3), or frames.
            **scan: how the clip is read, the keywords of :class:`~emoadapt.scanning.ScanKeywords`
                (``color``, ``fps``, ``max_frames``, ``step``, ``source_fps``, ``progress``), the
                same for every method that reads a clip.
            timeline: keep the per-frame :attr:`Result.timeline`; ``False`` keeps only what the
                heads pool (the same label and probabilities; memory: docs/reliability.md).
        """
        return self._predict(clip, timeline=timeline, **scan)

    def _predict(self, clip: Clip, *, timeline: bool = True, max_features: int | None = MAX_POOLED_FACES, **scan: Unpack[ScanKeywords]) -> Result:
        """:meth:`predict`; ``max_features=None`` keeps every face's features (for what needs them
        frame by frame: annotate's windows, extract's frame tables)."""
        options = ScanOptions(**scan)  # an unknown keyword is a TypeError before any work
        flag(timeline, "timeline")
        gallery = self.personal.gallery_for_prediction()
        table = self.scanner.table(clip, options, identity=bool(gallery), timeline=timeline, max_features=max_features)
        res = self.personal.label_tracks(table, gallery)
        if res.label is None:
            log.info("no face found in %d frames", table.frames)
        return res

    def stream(
        self, source: int | Clip, *, window: float = 2.0, hop: float = 0.5, fps: float | None = None, color: str = "rgb", source_fps: float = DEFAULT_SOURCE_FPS
    ) -> Generator[Result, None, None]:
        """Recognise emotions continuously: every ``hop`` seconds, what :meth:`predict` gives for
        the last ``window`` seconds of ``source`` (with ``start``/``end`` in seconds of the source;
        windows, memory and latency: :mod:`emoadapt.streaming`).

        Args:
            source: a camera index (:func:`emoadapt.video.camera_index`), a video path, or an
                array/iterable of frames (an endless generator is fine).
            window: length of each window, seconds (at most :data:`MAX_WINDOW_FRAMES` sampled frames).
            hop: time between windows, seconds.
            fps: sample about this many frames per second (as in :meth:`predict`).
            color: ``"rgb"`` or ``"bgr"`` for arrays and iterables.
            source_fps: as in :meth:`predict`; also for a camera that reports none.

        The arguments are checked here (InvalidInputError); the source is opened when iteration
        starts and released when the generator is closed.
        """
        spec = StreamSpec.check(source, window=window, hop=hop, fps=fps, color=color, source_fps=source_fps)
        return windows(spec, self.scanner.analysis(), self.personal.label_tracks, self.personal.gallery_for_prediction, self.scanner.settings.chunk)

    def reclassify(self, result: Result, user: str | None = None) -> Result:
        """A copy of ``result`` (of :meth:`predict`, or :meth:`analyze` with ``identity=True``)
        labelled anew by the current heads, without reading the pixels again: for ``user``, else
        for whom its identity embedding matches (strangers: the universal model)."""
        return self.personal.reclassify(result, user)

    def enroll(
        self,
        user: str,
        clips: Clip | Result | Sequence[Clip | Result],
        *,
        face: FaceChoice | None = None,
        allow_shared_face: bool = False,
        **scan: Unpack[ScanKeywords],
    ) -> Enrollment:
        """Register ``user``'s face from a clip, an image or a list of them (sampling as in
        :meth:`predict`): one identity embedding per item; returns how many were added (an
        ``int``; :class:`~emoadapt.personal.Enrollment` also says to which user).

        The name is normalised, and a name that differs from an enrolled user's only by case
        or width is that user. Each item must show one face, or ``face=`` says which (its
        index, 0 the main face, or its box ``(x1, y1, x2, y2)``; the same choice for every
        item): several faces raise :class:`~emoadapt.errors.MultipleFacesError`, which lists
        them. A face too small, blurred or turned to be recognised raises
        :class:`~emoadapt.errors.FaceQualityError`; a face that already matches another
        enrolled user raises :class:`~emoadapt.errors.IdentityConflictError` (its message
        names no one, its ``other_user`` does) unless ``allow_shared_face=True``. Nothing is
        added unless every item may be."""
        user = user_name(user)
        items = list(clips) if isinstance(clips, (list, tuple)) else [clips]
        if not items:
            raise InvalidInputError("nothing to enrol: give a clip, an image or a list of them")
        options = ScanOptions(**scan)
        faces = []
        for i, c in enumerate(items):
            try:
                faces.append(self.scanner.learn(c, options, self.matcher.threshold, self.identity, face=face, one_face=True))
            except MultipleFacesError as e:
                if len(items) == 1:
                    raise
                raise MultipleFacesError(f"item {i + 1} of {len(items)}: {e}", faces=e.faces, item=i) from None
        return self.personal.enroll(user, faces, allow_shared_face=allow_shared_face)

    def known_labels(self, user: str | None = None) -> list[str]:
        """Labels a correction may use without ``new_label=True``: the universal classes, then
        ``user``'s custom labels (synonyms too, see :mod:`emoadapt.labels`)."""
        return self.personal.known_labels(user, self.classes)

    def correct(
        self,
        clip: Clip | Result,
        label: str,
        user: str | None = None,
        *,
        force: bool = False,
        new_label: bool = False,
        face: FaceChoice | None = None,
        **scan: Unpack[ScanKeywords],
    ) -> Correction:
        """Record that the emotion in ``clip`` (or an analysed :class:`Result`) is ``label``
        (sampling as in :meth:`predict`); returns a :class:`Correction`, an ``int`` id.

        ``user=None``: the enrolled user the face matches (else UnknownUserError); a ``user``
        not enrolled yet is enrolled from this clip (as :meth:`enroll` would: one usable face
        that matches no other user, unless ``force=True``); one whose face does not match, or
        who is enrolled only with another identity model, raises IdentityMismatchError unless
        ``force=True``. The face learned is the clip's main face, or ``face=`` (an index or a box,
        as in :meth:`enroll`). A face that passed the identity check may join the user's gallery
        (never a forced one; :attr:`Correction.gallery_grown`, :mod:`emoadapt.personal`). ``label``: a known label (:meth:`known_labels`) or a synonym; another
        raises UnknownLabelError unless ``new_label=True`` makes it a new class. Every
        ``adapt_every`` corrections :meth:`adapt` runs; once stored, nothing raises (a failed
        adaptation is :attr:`Correction.adapt_error`). Only features are stored, never pixels.
        A backbone that cannot adapt raises PersonalizationUnsupportedError before anything is
        stored (:class:`~emoadapt.personal.Personalization` has the policy).
        """
        label, user = self.personal.check_correction(label, user, new_label)
        seen = self.scanner.learn(clip, ScanOptions(**scan), self.matcher.threshold, self.identity, face=face)
        return self.personal.correct(seen.result, seen, label, user, force=force, new_label=new_label, classes=self.classes)

    def adapt(
        self,
        user: str,
        *,
        strategy: str = DEFAULT_STRATEGY,
        use_guard: bool = True,
        anchor: float | None = DEFAULT_ANCHOR,
        mix_k: float = DEFAULT_MIX_K,
        center: bool = DEFAULT_CENTER,
        epochs: int | None = None,
        seed: int = 0,
        expert_weight: float = IDENTITY_EXPERT_WEIGHT,
        evidence_gate: bool = DEFAULT_EVIDENCE_GATE,
    ) -> AdaptReport:
        """Adapt ``user``'s personal head to their corrections now (keywords: those of
        :class:`~emoadapt.adaptation.AdaptOptions`); returns what the guard chose and its
        held-out evidence. A user forgotten meanwhile: UnknownUserError, nothing saved."""
        options = AdaptOptions(strategy, use_guard, anchor, mix_k, center, epochs, seed, expert_weight, evidence_gate)
        return self.personal.adapt(user, options)

    def export(self, user: str | None, directory: str | os.PathLike[str]) -> ExportReport:
        """Write the head :meth:`predict` uses for ``user`` (``None``: strangers, the universal
        head) into ``directory`` as a TFLite model and a JSON manifest, for apps that run the
        shipped backbone with LiteRT (:func:`emoadapt.export.export_head`; docs/mobile.md)."""
        return export_head(self, user, directory)

    def users(self) -> list[str]:
        """Enrolled users."""
        return self.personal.users()

    def reenroll_needed(self) -> dict[str, list[str]]:
        """Users enrolled only with other identity models (with those models): not recognised
        until enrolled again with :meth:`enroll` (embeddings do not convert between models)."""
        return self.personal.reenroll_needed()

    def reenrol_needed(self) -> dict[str, list[str]]:
        """Deprecated spelling of :meth:`reenroll_needed`."""
        warnings.warn("Recognizer.reenrol_needed() is deprecated: use reenroll_needed()", DeprecationWarning, stacklevel=2)
        return self.reenroll_needed()

    def forget(self, user: str) -> ForgetReport:
        """Delete every trace of ``user``: profile, embeddings, corrections and heads (cached heads
        too, here and in other Recognizers). The name goes to the store as given: one that a
        store upgrade gave to another user raises AmbiguousUserError (:meth:`Store.renamed_users`)."""
        return self.personal.forget(user)

    def corrections(self, user: str) -> list[dict[str, Any]]:
        """The user's stored corrections: id, label, time, model version (never pixels)."""
        return self.personal.corrections(user)
