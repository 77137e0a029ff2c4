"""What the :class:`~emoadapt.recognizer.Recognizer` returns: :class:`Result` (one clip or
face track), its :class:`Timeline` of :class:`FrameResult` rows, and :class:`Correction`
(a stored correction's id with what happened after it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .analysis import FaceTable, Track
from .errors import InvalidInputError, MissingDependencyError
from .heads import ClipContext

if TYPE_CHECKING:
    from .adaptation import AdaptReport

__all__ = ["Result", "FrameResult", "Timeline", "Correction", "track_result"]


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
    and built item by item when read (its memory: docs/reliability.md)."""

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

    def context(self, identity_model: str | None) -> ClipContext:
        """What a head may read of this clip besides ``features``: the frame probabilities of
        the frames the features pool, and the identity ``embedding`` (of ``identity_model``)."""
        probs = self.frame_probabilities
        if probs is not None and self.feature_rows is not None:
            probs = np.asarray(probs)[self.feature_rows]
        return ClipContext.one(probabilities=probs, embedding=self.embedding, identity_model=identity_model)

    def classified(self, classes: Sequence[Any] | np.ndarray, probabilities: np.ndarray) -> None:
        """Set ``probabilities`` (normalised to sum to 1, in the order of ``classes``) and ``label``."""
        p = np.asarray(probabilities, dtype=np.float64)
        p = p / p.sum()
        labels = [str(c) for c in classes]
        self.probabilities = dict(zip(labels, map(float, p)))
        self.label = labels[int(np.argmax(p))]

    def check_analysed(self, backbone: str, dim: int, identity_model: str, embedding_dim: int) -> None:
        """InvalidInputError unless this result can be learnt from as it is: face features of
        the backbone ``backbone`` (``dim`` features) and an identity embedding of ``identity_model``."""
        if self.features is None or not len(self.features):
            raise InvalidInputError("the Result has no face features (no face was found in its clip): nothing to learn from")
        if self.features.ndim != 2 or self.features.shape[1] != dim:
            raise InvalidInputError(f"the Result's features are not of this Recognizer's backbone ({backbone}, {dim} features)")
        if self.embedding is None or len(self.embedding) != embedding_dim:
            raise InvalidInputError(
                f"the Result carries no {identity_model} identity embedding: use a Result of predict() with users enrolled, "
                "or of analyze(..., identity=True), of this Recognizer"
            )

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
    adapt_report: AdaptReport | None
    """The :class:`~emoadapt.adaptation.AdaptReport` when this correction triggered an
    automatic adaptation that ran, else ``None``."""
    adapt_error: BaseException | None
    """The exception of a failed automatic adaptation (usually an
    :class:`~emoadapt.errors.EmoadaptError`), else ``None``."""
    gallery_grown: bool
    """Whether the face joined the user's identity gallery (a verified correction's usable face
    that matches the gallery well: :mod:`emoadapt.personal`)."""

    def __new__(  # noqa: PYI034
        cls,
        id: int,
        *,
        user: str = "",
        label: str = "",
        adapt_report: AdaptReport | None = None,
        adapt_error: BaseException | None = None,
        gallery_grown: bool = False,
    ) -> Correction:
        self = super().__new__(cls, id)
        self.user, self.label, self.adapt_report, self.adapt_error = user, label, adapt_report, adapt_error
        self.gallery_grown = gallery_grown
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


def track_result(scan: FaceTable, track: Track | None, classes: Sequence[str], dim: int) -> Result:
    """The unclassified :class:`Result` of one face ``track`` of ``scan`` (features, frame
    probabilities, timeline; no label yet), or of no face (``track=None``) for a backbone of
    ``classes`` and ``dim`` features."""
    if track is None or not len(track.rows):
        return Result(
            label=None,
            probabilities={},
            frames=scan.frames,
            faces=0,
            features=np.zeros((0, dim), np.float32),
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
