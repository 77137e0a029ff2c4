"""Heads that wrap others: what :func:`emoadapt.adaptation.personalize` installs for a user.

* :class:`BlendHead` -- a universal and a personal head mixed in log-probability space;
* :class:`CenteredHead` -- a head that reads features relative to one person;
* :class:`IdentityExpertHead` -- a head with a personal expert on the face's identity embedding;
* :class:`EvidenceGateHead` -- a personal head whose answer may move only toward a corrected label.

Each passes the :class:`~emoadapt.heads.ClipContext` on to the heads it wraps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelIntegrityError
from ._format import check_file_classes, meta_array, prefixed, unjson_params
from .base import EPS, ClipContext, Clips, Head, TrainableHead, _as_context, _as_labels, _Head, _log_softmax, as_clips
from .io import _inner_head
from .training import fit_softmax_regression

__all__ = ["BlendHead", "CenteredHead", "IdentityExpertHead", "EvidenceGateHead", "identity_expert_of"]


def _wrapped(head: _Head, name: str) -> Any:
    """``classes_`` / ``n_features_in_`` of a wrapper: those of the head it wraps (``head``)."""
    if name in ("classes_", "n_features_in_"):
        inner = head.__dict__.get("head")
        if inner is None or not hasattr(inner, "classes_"):
            raise AttributeError(name)
        return getattr(inner, name)
    raise AttributeError(name)


class BlendHead(_Head):
    """A universal head and a personal one, mixed in log-probability space.

    ``log p(c) = (1 - weight) log p_base(c) + weight log p_personal(c)`` (renormalised), over
    the union of both heads' classes; a class one head lacks (a user's own label) gets the
    probability floor ``1e-6`` there. ``weight=0`` is the universal head, ``weight=1`` the
    personal one. :func:`emoadapt.adaptation.adapt_user` builds it and chooses ``weight``
    from the user's corrections. Both heads must read the same clips (per-frame backbone
    features); they are saved inside this head's file as plain arrays.

    Args:
        base: the universal head (fitted).
        personal: the personal head (fitted).
        weight: the personal head's weight, in ``[0, 1]``.
    """

    _FLOOR = 1e-6

    def __init__(self, base: Head | None = None, personal: Head | None = None, weight: float = 1.0) -> None:
        self.base = base
        self.personal = personal
        self.weight = weight

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"weight": self.weight} if not deep else {"base": self.base, "personal": self.personal, "weight": self.weight}

    def __getattr__(self, name: str) -> Any:
        if name == "classes_":
            base, personal = self._check_parts()
            known = base.classes_.tolist()
            extra = [c for c in personal.classes_.tolist() if c not in set(known)]
            return np.asarray(known + extra)
        if name == "n_features_in_":
            return self._check_parts()[0].n_features_in_
        raise AttributeError(name)

    def _check_parts(self) -> tuple[Head, Head]:
        """``(base, personal)``, both fitted, and a valid weight (else InvalidInputError)."""
        base, personal = self.base, self.personal
        if base is None or personal is None or not hasattr(base, "classes_") or not hasattr(personal, "classes_"):
            raise InvalidInputError("BlendHead needs a fitted base head and a fitted personal head")
        if not (isinstance(self.weight, (int, float)) and 0.0 <= float(self.weight) <= 1.0):
            raise InvalidInputError("weight must be a number in [0, 1]")
        return base, personal

    def _check_fitted(self) -> None:
        self._check_parts()

    def fit(self, clips: Clips, y: Any) -> BlendHead:
        """Refit the personal head on ``(clips, y)`` (the universal one stays as it is)."""
        self._trainable_personal().fit(clips, y)
        return self

    def partial_fit(self, clips: Clips, y: Any, classes: Any = None) -> BlendHead:
        """Continue fitting the personal head on ``(clips, y)``."""
        self._trainable_personal().partial_fit(clips, y)
        return self

    def _trainable_personal(self) -> TrainableHead:
        personal = self._check_parts()[1]
        if not isinstance(personal, TrainableHead):
            raise InvalidInputError(f"the personal head ({type(personal).__name__}) cannot be trained further")
        return personal

    def _aligned_log(self, head: Head, clips: Clips, classes: list[Any], context: ClipContext | None) -> np.ndarray:
        p = np.asarray(head.predict_proba(clips, context), dtype=np.float64)
        out = np.full((len(p), len(classes)), math.log(self._FLOOR))
        index = {c: i for i, c in enumerate(classes)}
        cols = [index[c] for c in head.classes_.tolist()]
        out[:, cols] = np.log(np.clip(p, self._FLOOR, None))
        return out

    def predict_proba(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray:
        """The blended probabilities ``(N, C)`` (columns follow ``classes_``; ``context`` goes to both heads)."""
        base, personal = self._check_parts()
        classes = self.classes_.tolist()
        w = float(self.weight)
        z = np.zeros((len(as_clips(clips)), len(classes)))
        if w < 1.0:
            z += (1.0 - w) * self._aligned_log(base, clips, classes, context)
        if w > 0.0:
            z += w * self._aligned_log(personal, clips, classes, context)
        return np.asarray(np.exp(_log_softmax(z)))

    def _payload(self) -> dict[str, np.ndarray]:
        self._check_parts()
        out = {"meta": self._meta({"weight": float(self.weight)}), "classes": self.classes_}
        for part in ("base", "personal"):
            out.update(prefixed(part, getattr(self, part)._payload()))
        return out

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> BlendHead:
        parts = {part: _inner_head(arrays, part, BlendHead, "blends") for part in ("base", "personal")}
        weight = meta.get("params", {}).get("weight")
        if not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
            raise ModelIntegrityError("head file: blend weight must be in [0, 1]")
        if getattr(parts["base"], "n_features_in_", None) != getattr(parts["personal"], "n_features_in_", None):
            raise ModelIntegrityError("head file: the blended heads read different features")
        return cls(parts["base"], parts["personal"], float(weight))


class CenteredHead(_Head):
    """A head that reads features relative to one person: ``x - offset`` for every frame.

    ``offset`` (``(D,)``) is a per-user estimate of what all of a person's frames share
    (their identity, their camera), relative to the universal training data;
    :func:`emoadapt.adaptation.user_offset` estimates it from the user's corrections as the
    mean, over the corrected classes, of the user's class mean minus the universal class
    mean. The wrapped head (often a :class:`BlendHead`) sees the centred features, both when
    it is fitted and when it predicts; the offset is saved with it as a plain array.

    Args:
        head: the wrapped head (fitted); not a :class:`CenteredHead`.
        offset: the vector subtracted from every frame, ``(D,)``.
    """

    def __init__(self, head: Any = None, offset: Any = None) -> None:
        self.head = head
        self.offset = offset

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"offset": self.offset} if not deep else {"head": self.head, "offset": self.offset}

    def __getattr__(self, name: str) -> Any:
        if name in ("classes_", "n_features_in_"):
            self._check_parts()
            return getattr(self.head, name)
        raise AttributeError(name)

    def _check_parts(self) -> None:
        if self.head is None or not hasattr(self.head, "classes_") or isinstance(self.head, CenteredHead):
            raise InvalidInputError("CenteredHead needs a fitted head (not another CenteredHead)")
        off = np.asarray(self.offset, dtype=np.float64) if self.offset is not None else None
        if off is None or off.ndim != 1 or not np.isfinite(off).all():
            raise InvalidInputError("offset must be a finite 1-D vector")
        d = getattr(self.head, "n_features_in_", None)
        if d is not None and len(off) != d:
            raise InvalidInputError(f"offset has {len(off)} values, the head reads {d} features")

    def _check_fitted(self) -> None:
        self._check_parts()

    def centered(self, clips: Clips) -> list[np.ndarray]:
        """``clips`` with the offset subtracted from every frame."""
        self._check_parts()
        off = np.asarray(self.offset, dtype=np.float64)
        cl = as_clips(clips)
        if cl and cl[0].shape[1] != len(off):
            raise InvalidInputError(f"clips have {cl[0].shape[1]} features, the offset has {len(off)}")
        return [c - off for c in cl]

    def fit(self, clips: Clips, y: Any) -> CenteredHead:
        """Refit the wrapped head on the centred ``clips`` (the offset stays)."""
        self.head.fit(self.centered(clips), y)
        return self

    def partial_fit(self, clips: Clips, y: Any, classes: Any = None) -> CenteredHead:
        """Continue fitting the wrapped head on the centred ``clips``."""
        self.head.partial_fit(self.centered(clips), y)
        return self

    def predict_proba(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray:
        """The wrapped head's probabilities of the centred clips ``(N, C)`` (with ``context`` as it is)."""
        return np.asarray(self.head.predict_proba(self.centered(clips), context))

    def _payload(self) -> dict[str, np.ndarray]:
        self._check_parts()
        out = {
            "meta": meta_array(type(self).__name__, {}),
            "classes": np.asarray(self.head._payload()["classes"]),
            "offset": np.asarray(self.offset, dtype=np.float64),
        }
        out.update(prefixed("head", self.head._payload()))
        return out

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> CenteredHead:
        head = _inner_head(arrays, "head", CenteredHead, "centred heads")
        offset = arrays.get("offset")
        if offset is None or offset.ndim != 1 or offset.dtype.kind != "f" or not np.isfinite(offset).all():
            raise ModelIntegrityError("head file: the offset must be a finite 1-D float array")
        d = getattr(head, "n_features_in_", len(offset))
        if d != len(offset):
            raise ModelIntegrityError(f"head file: offset of {len(offset)} values for a head reading {d} features")
        return cls(head, offset.astype(np.float64))


class IdentityExpertHead(_Head):
    """A head on backbone features, with a personal *expert* on the face's identity embedding.

    Within one person an identity embedding (ArcFace-style, L2-normalised) still moves with
    the expression: with the identity held fixed, what is left is how this face looks when it
    is happy, sad, and so on. The expert is a softmax regression on the embeddings of the
    user's corrected clips (``scale`` times the unit embedding, L2 penalty ``1 / C``, as
    scikit-learn's ``LogisticRegression(C=C)``), fitted by :meth:`fit_expert`; the embeddings
    are those the :class:`~emoadapt.recognizer.Recognizer` computes anyway to route a face
    to its user, so the expert costs nothing at prediction time.

    ``predict_proba(clips, context)``, with the clips' embeddings in the
    :class:`~emoadapt.heads.ClipContext`: ``log p(c) = (1 - weight) log p_head(c) + weight log
    q(c)`` (renormalised), where ``q`` is the expert's probability for the classes it knows
    and, for the classes it does not know, its highest probability: it has no opinion about
    an expression the user never corrected, so it can reorder the classes it knows but never
    push an unknown one down. Without an embedding (none in the context, a clip's ``None`` or
    non-finite one, or embeddings of another ``identity_model``) the wrapped head's
    probabilities are returned unchanged.

    Args:
        head: the wrapped head (fitted), e.g. a :class:`CenteredHead` or :class:`BlendHead`.
        weight: the expert's weight in ``[0, 1]``.
        C: inverse L2 strength of the expert's regression.
        scale: the unit embeddings are multiplied by this before the regression.
        identity_model: name of the identity model whose embeddings the expert reads (the
            recogniser uses the expert only with embeddings of that model).

    Learned attributes: ``coef_`` ``(E, K)``, ``intercept_`` ``(K,)``, ``expert_classes_``
    ``(K,)`` (a subset of ``classes_``), ``n_embedding_in_`` (``E``).
    """

    def __init__(self, head: Any = None, weight: float = 0.5, C: float = 1.0, scale: float = 10.0, identity_model: str = "") -> None:
        self.head, self.weight, self.C, self.scale, self.identity_model = head, weight, C, scale, identity_model

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = {"weight": self.weight, "C": self.C, "scale": self.scale, "identity_model": self.identity_model}
        return {"head": self.head, **params} if deep else params

    def __getattr__(self, name: str) -> Any:
        return _wrapped(self, name)

    def _check_params(self) -> None:
        if self.head is None or not hasattr(self.head, "classes_") or isinstance(self.head, IdentityExpertHead):
            raise InvalidInputError("IdentityExpertHead needs a fitted head (not another IdentityExpertHead)")
        for k, lo in (("weight", 0.0), ("C", 0.0), ("scale", 0.0)):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or (k != "weight" and v == 0):
                raise InvalidInputError(f"{k} must be a {'number in [0, 1]' if k == 'weight' else 'positive number'}, got {v!r}")
        if float(self.weight) > 1.0:
            raise InvalidInputError(f"weight must be a number in [0, 1], got {self.weight!r}")
        if not isinstance(self.identity_model, str):
            raise InvalidInputError("identity_model must be a string")

    def _check_fitted(self) -> None:
        self._check_params()
        if not hasattr(self, "coef_"):
            raise InvalidInputError("this IdentityExpertHead has no expert yet; call fit_expert() first")

    def _design(self, embeddings: Any) -> np.ndarray:
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim != 2 or e.shape[0] == 0:
            raise InvalidInputError(f"embeddings must be a non-empty 2-D array (N, E), got shape {e.shape}")
        if hasattr(self, "n_embedding_in_") and e.shape[1] != self.n_embedding_in_:
            raise InvalidInputError(f"embeddings have {e.shape[1]} values, the expert reads {self.n_embedding_in_}")
        return np.asarray(float(self.scale) * e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), EPS))

    def fit(self, clips: Clips, y: Any) -> IdentityExpertHead:
        """Refit the wrapped head on ``(clips, y)`` (the expert stays as it is; see
        :meth:`fit_expert`)."""
        self._check_params()
        self.head.fit(clips, y)
        return self

    def partial_fit(self, clips: Clips, y: Any, classes: Any = None) -> IdentityExpertHead:
        """Continue fitting the wrapped head on ``(clips, y)``."""
        self._check_params()
        self.head.partial_fit(clips, y)
        return self

    def fit_expert(self, embeddings: Any, y: Any) -> IdentityExpertHead:
        """Fit the expert on the identity embeddings ``(N, E)`` of the user's clips and their
        labels (each one of the wrapped head's classes; at least two different ones)."""
        self._check_params()
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim != 2 or not np.isfinite(e).all():
            raise InvalidInputError("embeddings must be a finite 2-D array (N, E)")
        self.__dict__.pop("n_embedding_in_", None)
        x = self._design(e)
        yy = _as_labels(y, len(x))
        known = self.classes_.tolist()
        if (self.classes_.dtype.kind in "iu") != (yy.dtype.kind in "iu"):
            raise InvalidInputError("labels and the head's classes are of different kinds (int vs str)")
        unknown = sorted({str(v) for v in yy.tolist()} - {str(c) for c in known})
        if unknown:
            raise InvalidInputError(f"labels {unknown} are not classes of the wrapped head")
        expert = [c for c in known if c in set(yy.tolist())]
        if len(expert) < 2:
            raise InvalidInputError("the expert needs clips of at least two different labels")
        index = {c: i for i, c in enumerate(expert)}
        coef, intercept = fit_softmax_regression(x, np.array([index[v] for v in yy.tolist()]), len(expert), C=float(self.C))
        self.coef_, self.intercept_ = coef, intercept
        self.expert_classes_ = np.asarray(expert, dtype=self.classes_.dtype)
        self.n_embedding_in_ = e.shape[1]
        return self

    def expert_proba(self, embeddings: Any) -> np.ndarray:
        """The expert's probabilities ``(N, K)`` (columns follow ``expert_classes_``)."""
        self._check_fitted()
        return np.asarray(np.exp(_log_softmax(self._design(embeddings) @ self.coef_ + self.intercept_)))

    def predict_proba(self, clips: Clips, context: ClipContext | np.ndarray | None = None) -> np.ndarray:
        """Probabilities ``(N, C)`` of ``clips`` (columns follow ``classes_``), with the expert
        mixed in where the context gives a clip a finite embedding of this ``identity_model``
        (an ``(N, E)`` array for ``context`` is read as the embeddings)."""
        self._check_fitted()
        ctx = _as_context(context)
        p = np.asarray(self.head.predict_proba(clips, ctx), dtype=np.float64)
        e = None if ctx is None or float(self.weight) == 0.0 else ctx.embedding_rows(len(p), self.n_embedding_in_, self.identity_model)
        if e is None:
            return p
        rows = np.isfinite(e).all(axis=1)
        if not rows.any():
            return p
        q = self.expert_proba(e[rows])
        classes = self.classes_.tolist()
        aligned = np.repeat(q.max(axis=1, keepdims=True), len(classes), axis=1)
        aligned[:, [classes.index(c) for c in self.expert_classes_.tolist()]] = q
        w = float(self.weight)
        z = (1.0 - w) * np.log(np.clip(p[rows], BlendHead._FLOOR, None)) + w * np.log(np.clip(aligned, BlendHead._FLOOR, None))
        out: np.ndarray = p.copy()
        out[rows] = np.exp(_log_softmax(z))
        return out

    def _payload(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        params = {"weight": float(self.weight), "C": float(self.C), "scale": float(self.scale), "identity_model": self.identity_model}
        inner = self.head._payload()
        out = {
            "meta": self._meta(params),
            "classes": np.asarray(inner["classes"]),
            "coef": np.asarray(self.coef_, np.float64),
            "intercept": np.asarray(self.intercept_, np.float64),
            "expert_classes": self.expert_classes_ if self.expert_classes_.dtype.kind in "iuU" else self.expert_classes_.astype(str),
        }
        out.update(prefixed("head", inner))
        return out

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> IdentityExpertHead:
        inner = _inner_head(arrays, "head", IdentityExpertHead, "identity experts")
        head = cls(inner, **unjson_params(meta["params"]))
        try:
            head._check_params()
        except InvalidInputError as e:
            raise ModelIntegrityError(f"head file: {e}") from e
        coef, intercept, expert = arrays.get("coef"), arrays.get("intercept"), arrays.get("expert_classes")
        if coef is None or intercept is None or expert is None:
            raise ModelIntegrityError("head file: missing identity expert arrays")
        check_file_classes(expert)
        k = len(expert)
        if coef.ndim != 2 or coef.shape[1] != k or intercept.shape != (k,) or coef.dtype.kind != "f" or intercept.dtype.kind != "f" or k < 2:
            raise ModelIntegrityError(f"head file: identity expert arrays of shapes {coef.shape}, {intercept.shape} for {k} classes")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ModelIntegrityError("head file: non-finite identity expert weights")
        if not set(expert.tolist()) <= set(inner.classes_.tolist()):
            raise ModelIntegrityError("head file: the identity expert has classes the wrapped head lacks")
        head.coef_, head.intercept_ = coef.astype(np.float64), intercept.astype(np.float64)
        head.expert_classes_ = expert.astype(inner.classes_.dtype) if inner.classes_.dtype.kind in "iuU" else expert
        head.n_embedding_in_ = coef.shape[0]
        return head


class EvidenceGateHead(_Head):
    """A personal head whose answer may move only toward an expression the user gave evidence for.

    ``head`` is the user's installed head (a :class:`BlendHead`, :class:`CenteredHead` or
    :class:`IdentityExpertHead`), ``base`` the head that answers strangers (the universal head;
    it reads the clip's uncentred features or, through the context, its frame probabilities) and ``evidence_classes_`` the labels of the user's corrections.
    For each clip, when ``head``'s most probable class is one of those labels, ``head``'s
    probabilities are returned; otherwise ``base``'s (aligned to ``classes_``): a personal model
    fitted on a few expressions of one person has learnt nothing about the others, so its
    opinion that a face shows an expression the user never corrected is not evidence, and the
    universal model decides. One correction can then change the answer for faces like the
    corrected one, never relabel the person's other expressions as a third, uncorrected one.

    It also *remembers* the corrected clips (their mean feature vector, unit length, and label):
    a clip whose mean feature lies within cosine ``recall`` of a remembered one (the same clip
    again, or a near copy of it) gets that correction's label, so the clip a user corrected is
    answered as they said, without moving faces that are merely alike.

    Args:
        head: the installed personal head (fitted).
        base: the universal head (fitted), on the same features as ``head``'s input.
        evidence: the labels the user corrected (each a class of ``head``).
        memory: ``(M, D)`` mean features of the corrected clips (optional).
        memory_labels: their ``M`` labels (classes of ``head``).
        recall: cosine similarity from which a clip counts as a remembered one.
    """

    def __init__(self, head: Any = None, base: Any = None, evidence: Any = (), memory: Any = None, memory_labels: Any = (), recall: float = 0.97) -> None:
        self.head, self.base, self.evidence, self.recall = head, base, evidence, recall
        self.memory, self.memory_labels = memory, memory_labels

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = {"evidence": list(np.asarray(self.evidence).tolist()), "recall": self.recall}
        return {"head": self.head, "base": self.base, "memory": self.memory, "memory_labels": self.memory_labels, **params} if deep else params

    def _memory(self) -> tuple[np.ndarray, list[Any]]:
        labels = list(np.asarray(self.memory_labels).tolist())
        if self.memory is None or not labels:
            return np.zeros((0, 0)), []
        m = np.asarray(self.memory, dtype=np.float64)
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), EPS), labels

    def __getattr__(self, name: str) -> Any:
        if name == "evidence_classes_":
            return np.asarray(self.__dict__.get("evidence", ()), dtype=self.classes_.dtype)
        return _wrapped(self, name)

    def _check_parts(self) -> None:
        if self.head is None or not hasattr(self.head, "classes_") or isinstance(self.head, EvidenceGateHead):
            raise InvalidInputError("EvidenceGateHead needs a fitted head (not another EvidenceGateHead)")
        if self.base is None or not hasattr(self.base, "classes_") or isinstance(self.base, EvidenceGateHead):
            raise InvalidInputError("EvidenceGateHead needs a fitted universal base head")
        ev = np.asarray(self.evidence)
        if ev.ndim != 1 or not set(ev.tolist()) <= set(self.head.classes_.tolist()):
            raise InvalidInputError("evidence must be a list of the head's classes")
        if isinstance(self.recall, bool) or not isinstance(self.recall, (int, float)) or not -1.0 <= float(self.recall) <= 1.0:
            raise InvalidInputError(f"recall must be a cosine similarity in [-1, 1], got {self.recall!r}")
        labels = list(np.asarray(self.memory_labels).tolist())
        if labels:
            m = np.asarray(self.memory, dtype=np.float64) if self.memory is not None else np.zeros((0, 0))
            if m.ndim != 2 or len(m) != len(labels) or not np.isfinite(m).all() or not set(labels) <= set(self.head.classes_.tolist()):
                raise InvalidInputError("memory must be (M, D) finite features with M labels of the head's classes")

    def _check_fitted(self) -> None:
        self._check_parts()

    @property
    def expert(self) -> IdentityExpertHead | None:
        """The identity expert inside, if any (it reads the face's identity embedding)."""
        return self.head if isinstance(self.head, IdentityExpertHead) else None

    def fit(self, clips: Clips, y: Any) -> EvidenceGateHead:
        """Refit the wrapped head on ``(clips, y)``; their labels become the evidence."""
        self._check_parts()
        self.head.fit(clips, y)
        self.evidence = sorted({*np.asarray(self.evidence).tolist(), *_as_labels(y).tolist()}, key=str)
        return self

    def partial_fit(self, clips: Clips, y: Any, classes: Any = None) -> EvidenceGateHead:
        """Continue fitting the wrapped head on ``(clips, y)``; their labels join the evidence."""
        self._check_parts()
        self.head.partial_fit(clips, y)
        self.evidence = sorted({*np.asarray(self.evidence).tolist(), *_as_labels(y).tolist()}, key=str)
        return self

    def predict_proba(self, clips: Clips, context: ClipContext | np.ndarray | None = None) -> np.ndarray:
        """Probabilities ``(N, C)`` (columns follow ``classes_``); ``context`` goes to the heads
        inside (an ``(N, E)`` array is read as the clips' embeddings)."""
        self._check_parts()
        ctx = _as_context(context)
        q = np.asarray(self.head.predict_proba(clips, ctx), dtype=np.float64)
        classes = self.classes_.tolist()
        allowed = np.isin(np.asarray(classes, dtype=object), np.asarray(np.asarray(self.evidence).tolist(), dtype=object))
        fall = ~allowed[np.argmax(q, axis=1)]
        if fall.any():
            rows = np.flatnonzero(fall)
            cl = as_clips(clips)
            if getattr(self.base, "reads_probabilities", False) and (ctx is None or ctx.probabilities is None):
                raise InvalidInputError(
                    "this personal head answers, where its evidence stops, with the universal head on the clips' frame "
                    "probabilities: pass them in the context (ClipContext(probabilities=[...]))"
                )
            p = np.asarray(self.base.predict_proba([cl[i] for i in rows], None if ctx is None else ctx.take(rows)), dtype=np.float64)
            out = np.full((len(p), len(classes)), BlendHead._FLOOR)
            index = {c: i for i, c in enumerate(classes)}
            out[:, [index[c] for c in self.base.classes_.tolist()]] = np.clip(p, BlendHead._FLOOR, None)
            q[fall] = out / out.sum(axis=1, keepdims=True)
        mem, labels = self._memory()
        if labels:
            x = np.stack([c.mean(axis=0) for c in as_clips(clips)])
            if x.shape[1] != mem.shape[1]:
                raise InvalidInputError(f"clips have {x.shape[1]} features, the remembered ones {mem.shape[1]}")
            sim = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)) @ mem.T
            near = sim.max(axis=1) >= float(self.recall)
            for r in np.flatnonzero(near):
                onehot = np.zeros(len(classes))
                onehot[classes.index(labels[int(np.argmax(sim[r]))])] = 1.0
                q[r] = 0.5 * q[r] + 0.5 * onehot
        return q

    def _payload(self) -> dict[str, np.ndarray]:
        self._check_parts()
        inner = self.head._payload()
        ev = np.asarray(np.asarray(self.evidence).tolist())
        mem, labels = self._memory()
        ml = np.asarray(labels)
        out = {
            "meta": self._meta({"recall": float(self.recall)}),
            "classes": np.asarray(inner["classes"]),
            "evidence": ev if ev.dtype.kind in "iuU" else ev.astype(str),
            "memory": mem.astype(np.float32) if labels else np.zeros((0, 0), np.float32),
            "memory_labels": ml if ml.dtype.kind in "iuU" else ml.astype(str),
        }
        out.update(prefixed("head", inner))
        out.update(prefixed("base", self.base._payload()))
        return out

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> EvidenceGateHead:
        head = _inner_head(arrays, "head", EvidenceGateHead, "evidence gates")
        base = _inner_head(arrays, "base", EvidenceGateHead, "evidence gates")
        ev = arrays.get("evidence")
        if ev is None or ev.ndim != 1:
            raise ModelIntegrityError("head file: missing or malformed evidence classes")
        if len(ev):
            check_file_classes(ev)
        if not set(ev.tolist()) <= set(head.classes_.tolist()):
            raise ModelIntegrityError("head file: evidence classes the wrapped head lacks")
        d_head, d_base = getattr(head, "n_features_in_", None), getattr(base, "n_features_in_", None)
        if not getattr(base, "reads_probabilities", False) and d_head is not None and d_base is not None and d_head != d_base:
            raise ModelIntegrityError("head file: the gate's heads read different features")
        mem, ml = arrays.get("memory"), arrays.get("memory_labels")
        if mem is None or ml is None or mem.ndim != 2 or ml.ndim != 1 or (len(ml) and (len(mem) != len(ml) or mem.dtype.kind != "f")):
            raise ModelIntegrityError("head file: malformed remembered corrections")
        if ml.dtype.kind not in "iuU" or not set(ml.tolist()) <= set(head.classes_.tolist()):
            raise ModelIntegrityError("head file: remembered corrections with labels the wrapped head lacks")
        gate = cls(head, base, ev.tolist(), mem.astype(np.float64) if len(ml) else None, ml.tolist(), **unjson_params(meta["params"]))
        try:
            gate._check_parts()
        except InvalidInputError as e:
            raise ModelIntegrityError(f"head file: {e}") from e
        return gate


def identity_expert_of(head: Any) -> IdentityExpertHead | None:
    """The identity expert a head reads embeddings with (itself, or inside an
    :class:`EvidenceGateHead`), else ``None``."""
    if isinstance(head, IdentityExpertHead):
        return head
    if isinstance(head, EvidenceGateHead):
        return head.expert
    return None
