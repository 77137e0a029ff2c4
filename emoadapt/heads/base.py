"""What every head shares: the :class:`Head` protocol, the :class:`ClipContext` a head may
read besides the features, clip validation and pooling, and the :class:`_Head` plumbing
(parameters, prediction, saving)."""

from __future__ import annotations

import copy as _copy
import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..errors import InvalidInputError
from ._format import atomic_savez, json_params, meta_array

__all__ = ["POOLINGS", "Clips", "ClipContext", "Head", "TrainableHead", "pool", "as_clips", "descriptors_as_clips"]

log = logging.getLogger(__name__)

Clips = np.ndarray | Sequence[np.ndarray]

#: Names accepted by :func:`pool`.
POOLINGS = ("max", "min", "mean", "std")

EPS = 1e-12  # guards sums of (non-negative) weights and norms


@dataclass(frozen=True)
class ClipContext:
    """What a head may read of a batch of clips besides their per-frame features.

    Every head takes it the same way, ``predict_proba(clips, context=None)``, and reads what
    it needs: :class:`~emoadapt.heads.MeanProbabilityHead` the frame probabilities,
    :class:`~emoadapt.heads.IdentityExpertHead` the identity embeddings; the other heads
    ignore it, and wrappers pass it on to the heads they wrap. The
    :class:`~emoadapt.recognizer.Recognizer` gives every head the context of the clip it
    classifies.

    Attributes:
        probabilities: per clip, the backbone's frame probabilities ``(T_i, C)`` of the same
            frames as its features; ``None``: not given.
        embeddings: per clip, the identity embedding ``(E,)`` of its face, or ``None`` where
            it has none (an ``(N, E)`` array is fine too; non-finite rows count as none).
        identity_model: the identity model that made the embeddings (an expert of another
            model ignores them); ``None``: not said.
    """

    probabilities: Sequence[np.ndarray] | None = None
    embeddings: Sequence[np.ndarray | None] | np.ndarray | None = None
    identity_model: str | None = None

    @classmethod
    def one(cls, *, probabilities: np.ndarray | None = None, embedding: np.ndarray | None = None, identity_model: str | None = None) -> ClipContext:
        """The context of one clip."""
        return cls(None if probabilities is None else [probabilities], None if embedding is None else [embedding], identity_model)

    def take(self, rows: Sequence[int] | np.ndarray) -> ClipContext:
        """The context of the clips at ``rows`` (indices) of the batch."""
        idx = [int(i) for i in rows]
        probs = None if self.probabilities is None else [self.probabilities[i] for i in idx]
        embs = None if self.embeddings is None else [self.embeddings[i] for i in idx]
        return ClipContext(probs, embs, self.identity_model)

    def embedding_rows(self, n: int, dim: int, identity_model: str) -> np.ndarray | None:
        """The embeddings as an ``(n, dim)`` float array with NaN rows where a clip has none;
        ``None`` when there are none, or they are of another identity model than ``identity_model``.
        InvalidInputError when they are not one per clip or not of ``dim`` values."""
        if self.embeddings is None or (self.identity_model is not None and self.identity_model != identity_model):
            return None
        rows = list(self.embeddings)
        if len(rows) != n:
            raise InvalidInputError(f"got {len(rows)} embeddings for {n} clips")
        out = np.full((n, dim), np.nan)
        for i, e in enumerate(rows):
            if e is None:
                continue
            a = np.asarray(e, dtype=np.float64)
            if a.shape != (dim,):
                raise InvalidInputError(f"embeddings have {a.shape[-1] if a.ndim else 0} values, the expert reads {dim}")
            out[i] = a
        return out


def _as_context(context: ClipContext | np.ndarray | None) -> ClipContext | None:
    """``context``; an ``(N, E)`` array (what the identity heads took before :class:`ClipContext`)
    is read as the clips' embeddings."""
    if context is None or isinstance(context, ClipContext):
        return context
    e = np.asarray(context, dtype=np.float64)
    if e.ndim != 2:
        raise InvalidInputError(f"embeddings must be a 2-D array (N, E), got shape {e.shape}")
    return ClipContext(embeddings=e)


class Head(Protocol):
    """What every head offers once fitted (scikit-learn classifier conventions, plus the
    :class:`ClipContext` of the clips).

    All heads of :mod:`emoadapt.heads` satisfy it, and so does any object with these members.
    Used for typing; not checked at run time.
    """

    classes_: np.ndarray
    n_features_in_: int

    def predict_proba(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray: ...

    def predict(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray: ...


@runtime_checkable
class TrainableHead(Head, Protocol):
    """A :class:`Head` that learns from labelled clips (what personalization starts from)."""

    def fit(self, clips: Clips, y: Any) -> TrainableHead: ...

    def partial_fit(self, clips: Clips, y: Any, classes: Any = None) -> TrainableHead: ...

    def copy(self) -> TrainableHead: ...

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...

    def set_params(self, **params: Any) -> TrainableHead: ...


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return np.asarray(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))


def _pool_names(how: str | Sequence[str]) -> tuple[str, ...]:
    names = (how,) if isinstance(how, str) else tuple(how)
    if not names:
        raise InvalidInputError("pooling needs at least one statistic")
    for h in names:
        if h not in POOLINGS:
            raise InvalidInputError(f"unknown pooling {h!r}; choose from {POOLINGS}")
    return names


def pool(frames: np.ndarray, how: str | Sequence[str] = "max", mask: np.ndarray | None = None) -> np.ndarray:
    """Statistical pooling of frame features over time.

    Args:
        frames: one clip ``(T, D)`` or a padded batch ``(N, T, D)``.
        how: a statistic from :data:`POOLINGS` (``"max"``, ``"min"``, ``"mean"``, ``"std"``)
            or a sequence of them, concatenated in that order.
        mask: for a batch, ``(N, T)`` with 1 for real frames and 0 for padding (default: all
            frames are real). Every clip needs at least one real frame.

    Returns:
        ``(k * D,)`` for one clip or ``(N, k * D)`` for a batch, ``k = len(how)``. ``std`` is
        the population standard deviation (0 for a one-frame clip).
    """
    names = _pool_names(how)
    x = np.asarray(frames)
    if x.dtype.kind not in "fiu":
        raise InvalidInputError(f"frames must be numeric, got dtype {x.dtype}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] < 1:
        raise InvalidInputError(f"frames must be (T, D) or (N, T, D) with T >= 1, got shape {np.shape(frames)}")
    if mask is None:
        m = None
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != x.shape[:2]:
            raise InvalidInputError(f"mask shape {m.shape} does not match frames {x.shape[:2]}")
        if not m.any(axis=1).all():
            raise InvalidInputError("every clip needs at least one unmasked frame")
        if m.all():
            m = None
    out = []
    if m is None:
        for h in names:
            if h == "max":
                out.append(x.max(axis=1))
            elif h == "min":
                out.append(x.min(axis=1))
            elif h == "mean":
                out.append(x.mean(axis=1))
            else:
                out.append(x.std(axis=1))
    else:
        w = m[:, :, None].astype(x.dtype)
        cnt = w.sum(axis=1)
        mean = (x * w).sum(axis=1) / cnt
        for h in names:
            if h == "max":
                out.append(np.where(m[:, :, None], x, -np.inf).max(axis=1))
            elif h == "min":
                out.append(np.where(m[:, :, None], x, np.inf).min(axis=1))
            elif h == "mean":
                out.append(mean)
            else:
                out.append(np.sqrt(np.maximum((((x - mean[:, None, :]) ** 2) * w).sum(axis=1) / cnt, 0.0)))
    res = np.concatenate(out, axis=1)
    return res[0] if single else res


def as_clips(clips: Clips, dtype: Any = np.float64) -> list[np.ndarray]:
    """Validate clips and return them as a list of C-contiguous ``(T_i, D)`` arrays.

    Accepts a list/tuple of ``(T_i, D)`` arrays (1-D ``(D,)`` items are taken as one-frame
    clips), a single clip ``(T, D)`` array, or a batch ``(N, T, D)`` array. Per-clip
    descriptors ``(N, D)`` must be passed as ``(N, 1, D)`` (see :func:`descriptors_as_clips`)
    or as a list of ``(D,)`` vectors, since a 2-D array means one clip.

    Raises:
        InvalidInputError: empty input, wrong rank, inconsistent ``D``, non-finite values.
    """
    dt = np.dtype(dtype)
    if isinstance(clips, np.ndarray):
        if clips.ndim == 2:
            items: list[Any] = [clips]
        elif clips.ndim == 3:
            items = list(clips)
        else:
            raise InvalidInputError(f"a clip array must be (T, D) or (N, T, D), got shape {clips.shape}")
    elif isinstance(clips, (list, tuple)):
        items = list(clips)
    else:
        raise InvalidInputError(f"clips must be a list of (T, D) arrays or an array, not {type(clips).__name__}")
    if not items:
        raise InvalidInputError("no clips given")
    out = []
    d = None
    for i, c in enumerate(items):
        try:
            a = np.asarray(c)
        except Exception as e:  # ragged nested lists etc.
            raise InvalidInputError(f"clip {i} is not an array: {e}") from e
        if a.dtype.kind not in "fiub":
            raise InvalidInputError(f"clip {i} must be numeric, got dtype {a.dtype}")
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise InvalidInputError(f"clip {i} must be (T, D) with T >= 1 and D >= 1, got shape {a.shape}")
        if d is None:
            d = a.shape[1]
        elif a.shape[1] != d:
            raise InvalidInputError(f"clip {i} has {a.shape[1]} features, expected {d}")
        a = np.ascontiguousarray(a, dtype=dt)
        if not np.isfinite(a).all():
            raise InvalidInputError(f"clip {i} contains NaN or infinite values")
        out.append(a)
    return out


def descriptors_as_clips(x: np.ndarray) -> np.ndarray:
    """Per-clip descriptors ``(N, D)`` as a batch of one-frame clips ``(N, 1, D)``."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise InvalidInputError(f"descriptors must be (N, D), got shape {a.shape}")
    return a[:, None, :]


def _as_labels(y: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise InvalidInputError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "O":
        vals = arr.tolist()
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            arr = np.asarray(vals, dtype=np.int64)
        else:
            arr = np.asarray([str(v) for v in vals])
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InvalidInputError("float labels must be whole numbers")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "S":
        arr = arr.astype(str)
    if n is not None and len(arr) != n:
        raise InvalidInputError(f"got {len(arr)} labels for {n} clips")
    if len(arr) == 0:
        raise InvalidInputError("no labels given")
    return arr


def _merge_label_kinds(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if (a.dtype.kind in "iu") != (b.dtype.kind in "iu"):
        raise InvalidInputError(f"labels mix integers and strings ({a.dtype} vs {b.dtype})")
    return a, b


# ---------------------------------------------------------------------------------------
# the base class
# ---------------------------------------------------------------------------------------
_H = TypeVar("_H", bound="_Head")


class _Head:
    """Common estimator plumbing: parameters, prediction, persistence."""

    classes_: np.ndarray
    n_features_in_: int
    #: parameters besides those of ``__init__``'s signature (the training parameters of trainable heads)
    _EXTRA_PARAMS: tuple[str, ...] = ()

    # -- sklearn-style parameters -------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        own = [p.name for p in sig.parameters.values() if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return own + list(cls._EXTRA_PARAMS)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn convention)."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self: _H, **params: Any) -> _H:
        """Set constructor parameters; returns ``self``."""
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise InvalidInputError(f"invalid parameter {k!r} for {type(self).__name__}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def copy(self: _H) -> _H:
        """A deep copy (weights included), e.g. to warm-start a personal head."""
        return _copy.deepcopy(self)

    def clone(self: _H) -> _H:
        """A new, unfitted head with the same parameters (``sklearn.base.clone``)."""
        params = {k: v.clone() if isinstance(v, _Head) else _copy.deepcopy(v) for k, v in self.get_params().items()}
        return type(self)(**params)

    # -- prediction ---------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise InvalidInputError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    def predict_proba(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray:
        """Most probable label per clip, shape ``(N,)`` (labels from ``classes_``; ``context`` as in :meth:`predict_proba`)."""
        p = self.predict_proba(clips, context)
        return np.asarray(self.classes_[np.argmax(p, axis=1)])

    def score(self, clips: Clips, y: Any) -> float:
        """Mean accuracy of :meth:`predict` on ``(clips, y)``."""
        yy = _as_labels(y)
        pred = self.predict(clips)
        if len(pred) != len(yy):
            raise InvalidInputError(f"got {len(yy)} labels for {len(pred)} clips")
        if (pred.dtype.kind in "iu") != (yy.dtype.kind in "iu"):  # int classes vs str labels
            pred, yy = pred.astype(str), yy.astype(str)
        return float(np.mean(pred == yy))

    # -- persistence ----------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> _Head:  # pragma: no cover
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the head to ``path`` (an ``.npz`` of plain arrays + JSON metadata), atomically.

        Returns the path written. Load it back with :func:`load_head`.
        """
        atomic_savez(path, self._payload())
        log.debug("saved %s to %s", type(self).__name__, path)
        return Path(path)

    def _payload(self) -> dict[str, np.ndarray]:
        """Everything :meth:`save` writes: ``meta`` (JSON string), ``classes`` and weights."""
        self._check_fitted()
        meta, arrays = self._state()
        classes = self.classes_
        if classes.dtype.kind not in "iuU":
            classes = classes.astype(str)
        return {"meta": self._meta(json_params(self.get_params()), **meta), "classes": classes, **arrays}

    def _meta(self, params: Mapping[str, Any], **extra: Any) -> np.ndarray:
        """The ``meta`` array of a head file (a JSON string)."""
        return meta_array(type(self).__name__, params, **extra)
