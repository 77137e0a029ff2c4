"""Heads that need no training: the mean of the backbone's frame probabilities (the
no-training baseline) and nearest class prototypes (few-shot)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelIntegrityError
from ._format import check_file_classes, unjson_params
from .base import EPS, ClipContext, Clips, _as_labels, _Head, _log_softmax, _merge_label_kinds, as_clips

__all__ = ["MeanProbabilityHead", "PrototypeHead"]


class MeanProbabilityHead(_Head):
    """No-training baseline: clip probabilities = mean of per-frame probability vectors.

    Args:
        classes: the class labels, in the order of the frame probability columns (e.g. the
            backbone's classes). Usable without :meth:`fit`.

    It reads per-frame probability arrays ``(T, C)``: those of the :class:`ClipContext` when it
    has them (the clips are then the frames' features, which it does not read), else the clips
    themselves. :meth:`fit` only checks the labels and records ``n_features_in_``;
    :meth:`partial_fit` does nothing (it cannot learn).
    """

    #: it reads frame probabilities, not features (``n_features_in_`` counts classes)
    reads_probabilities = True

    def __init__(self, classes: Sequence[Any] = ()) -> None:
        self.classes = classes

    def _classes(self) -> np.ndarray:
        c = _as_labels(list(self.classes)) if len(self.classes) else None
        if c is None or len(np.unique(c)) != len(c):
            raise InvalidInputError("MeanProbabilityHead needs a non-empty list of distinct classes")
        return c

    def _classes_and_clips(self, clips: Clips) -> tuple[np.ndarray, list[np.ndarray]]:
        c = self._classes()
        cl = as_clips(clips)
        if cl[0].shape[1] != len(c):
            raise InvalidInputError(f"frame probabilities have {cl[0].shape[1]} columns for {len(c)} classes")
        return c, cl

    def __getattr__(self, name: str) -> Any:
        # classes_ / n_features_in_ are available without fit() since nothing is learned
        if name == "classes_":
            return self._classes()
        if name == "n_features_in_":
            return len(self._classes())
        raise AttributeError(name)

    def fit(self, clips: Clips, y: Any) -> MeanProbabilityHead:
        """Validate ``clips``/``y`` against ``classes``; nothing is trained."""
        c, cl = self._classes_and_clips(clips)
        yy = _as_labels(y, len(cl))
        unknown = set(yy.astype(str).tolist()) - set(c.astype(str).tolist())
        if unknown:
            raise InvalidInputError(f"labels not in classes: {sorted(unknown)}")
        return self

    def partial_fit(self, clips: Clips, y: Any, classes: Any = None) -> MeanProbabilityHead:
        """Same as :meth:`fit` (this head cannot learn)."""
        return self.fit(clips, y)

    def predict_proba(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray:
        """Mean of the frame probabilities of each clip (``context.probabilities`` when given,
        else ``clips``), renormalised to sum to 1."""
        c, cl = self._classes_and_clips(clips if context is None or context.probabilities is None else list(context.probabilities))
        p = np.stack([f.mean(axis=0) for f in cl])
        if (p < 0).any():
            raise InvalidInputError("frame probabilities must be non-negative")
        s = p.sum(axis=1, keepdims=True)
        return np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / len(c))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"classes": list(self.classes)}

    def _payload(self) -> dict[str, np.ndarray]:
        return {"meta": self._meta({}, n_features_in=len(self._classes())), "classes": self._classes()}

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> MeanProbabilityHead:
        classes = arrays["classes"]
        check_file_classes(classes)
        return cls(classes=classes.tolist())


class PrototypeHead(_Head):
    """Nearest class prototypes by cosine similarity (a few-shot classifier, no training).

    Each clip is mean-pooled over its frames; a class prototype is the mean of that class's
    clips after centring and L2-normalisation (SimpleShot, Wang et al. 2019). The centre is
    the mean of the class means (so that what all of a person's clips share, e.g. their
    identity, does not dominate the similarity) when ``center=True``, else zero.
    ``predict_proba`` is ``softmax(temperature * cos(x - centre, prototype))``.

    Works on any per-frame vectors: backbone features, frame probabilities, or both
    concatenated. Any labels (strings or integers, e.g. a user's own ``"calm"``).
    ``partial_fit`` adds clips to the running class means (new labels become new classes).

    Args:
        temperature: scale of the cosine similarities before the softmax.
        center: centre the vectors on the mean of the class means before normalising.
    """

    def __init__(self, temperature: float = 10.0, center: bool = True) -> None:
        self.temperature = temperature
        self.center = center

    @staticmethod
    def _pooled(clips: Clips) -> np.ndarray:
        return np.stack([c.mean(axis=0) for c in as_clips(clips)])

    def _normalized(self, x: np.ndarray) -> np.ndarray:
        z = x - self.center_
        return np.asarray(z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), EPS))

    def _refresh(self) -> None:
        means = self.sums_ / self.counts_[:, None]
        self.center_ = means.mean(axis=0) if self.center and len(means) > 1 else np.zeros(means.shape[1])
        self.prototypes_ = self._normalized(means)

    def fit(self, clips: Clips, y: Any) -> PrototypeHead:
        """Class prototypes of ``(clips, y)`` (forgets earlier data)."""
        for k in ("classes_", "sums_", "counts_"):
            self.__dict__.pop(k, None)
        return self.partial_fit(clips, y)

    def partial_fit(self, clips: Clips, y: Any, classes: Any = None) -> PrototypeHead:
        """Add ``(clips, y)`` to the class means (``classes`` is accepted for API symmetry)."""
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidInputError("temperature must be a positive number")
        x = self._pooled(clips)
        yy = _as_labels(y, len(x))
        if not hasattr(self, "classes_"):
            self.classes_ = np.unique(yy)
            self.sums_ = np.zeros((len(self.classes_), x.shape[1]))
            self.counts_ = np.zeros(len(self.classes_))
            self.n_features_in_ = x.shape[1]
        elif x.shape[1] != self.n_features_in_:
            raise InvalidInputError(f"clips have {x.shape[1]} features, the head was fitted on {self.n_features_in_}")
        _merge_label_kinds(self.classes_, yy)
        new = [v for v in np.unique(yy).tolist() if v not in set(self.classes_.tolist())]
        if new:
            self.classes_ = np.concatenate([self.classes_, np.asarray(new, dtype=self.classes_.dtype if self.classes_.dtype.kind in "iu" else None)])
            self.sums_ = np.concatenate([self.sums_, np.zeros((len(new), x.shape[1]))])
            self.counts_ = np.concatenate([self.counts_, np.zeros(len(new))])
        index = {v: i for i, v in enumerate(self.classes_.tolist())}
        for xi, yi in zip(x, yy.tolist()):
            self.sums_[index[yi]] += xi
            self.counts_[index[yi]] += 1
        self._refresh()
        return self

    def predict_proba(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray:
        """``softmax(temperature * cosine similarity to each prototype)``, ``(N, C)`` (``context`` is not used)."""
        self._check_fitted()
        x = self._pooled(clips)
        if x.shape[1] != self.n_features_in_:
            raise InvalidInputError(f"clips have {x.shape[1]} features, the head was fitted on {self.n_features_in_}")
        return np.asarray(np.exp(_log_softmax(float(self.temperature) * self._normalized(x) @ self.prototypes_.T)))

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"n_features_in": int(self.n_features_in_)}, {"sums": self.sums_, "counts": self.counts_}

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> PrototypeHead:
        head = cls(**unjson_params(meta["params"]))
        classes, sums, counts = arrays["classes"], arrays.get("sums"), arrays.get("counts")
        if sums is None or counts is None:
            raise ModelIntegrityError("head file: missing prototype arrays")
        c = len(classes)
        check_file_classes(classes)
        if sums.ndim != 2 or sums.shape[0] != c or counts.shape != (c,) or sums.dtype.kind != "f" or counts.dtype.kind != "f":
            raise ModelIntegrityError(f"head file: prototype arrays of shapes {sums.shape}, {counts.shape} for {c} classes")
        if not (np.isfinite(sums).all() and np.isfinite(counts).all()) or (counts < 1).any():
            raise ModelIntegrityError("head file: non-finite prototypes or empty classes")
        head.classes_, head.sums_, head.counts_ = classes, sums.astype(np.float64), counts.astype(np.float64)
        head.n_features_in_ = sums.shape[1]
        head._refresh()
        return head
