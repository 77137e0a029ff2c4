"""Clip-level classification heads: frame features in, clip emotion out (pure NumPy).

A *clip* is a float array ``(T, D)`` of per-frame feature vectors (``T >= 1``; clips of one
batch may differ in length). Every head here is a small scikit-learn-style estimator:

* :class:`StatPoolingHead` -- statistical pooling of the frames (max, mean, std, ... and
  their concatenation) followed by multinomial logistic regression (one softmax layer).
  Per-clip descriptors are just ``T = 1`` clips (see :func:`descriptors_as_clips`).
* :class:`SingleAttentionHead` -- the Frame Attention Network pooling (Meng et al. 2019):
  ``a_i = sigmoid(f_i . q0)``, ``f_v = sum_i a_i f_i / sum_i a_i``, then softmax.
* :class:`SelfAttentionHead` -- the self-attention pooling of Churaev & Savchenko (2023),
  eqs. (3)-(7), then softmax.
* :class:`MeanProbabilityHead` -- the no-training baseline: the clip probability is the mean
  of per-frame probability vectors ``(T, C)``.
* :class:`PrototypeHead` -- nearest class prototypes (centred, L2-normalised means; few-shot).
* :class:`BlendHead` -- a universal and a personal head mixed in log-probability space (what
  :func:`emoadapt.adaptation.adapt_user` installs for a user).

Trainable heads are trained with mini-batch Adam on the (optionally class-weighted) softmax
cross-entropy, with hand-written backpropagation (checked against numerical gradients in the
tests). ``fit`` trains from scratch; ``partial_fit`` continues from the current weights with
an L2 pull ``anchor * ||W - W_start||^2`` toward the weights at the start of the call, which
is how a personal head is fine-tuned from a :meth:`~StatPoolingHead.copy` of the universal
one on a handful of the user's clips. Labels unseen so far extend ``classes_`` with new
output rows that start with zero weights and a bias low enough that the existing
predictions do not change.

Heads are saved with :meth:`save` as an ``.npz`` of plain arrays plus a JSON metadata
string (never pickles) and loaded back with :func:`load_head`, which validates everything
and raises :class:`~emoadapt.errors.ModelIntegrityError` on a damaged file.
"""

from __future__ import annotations

import contextlib
import copy as _copy
import inspect
import json
import logging
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from .errors import InvalidInputError, ModelIntegrityError

__all__ = [
    "POOLINGS",
    "pool",
    "as_clips",
    "descriptors_as_clips",
    "StatPoolingHead",
    "SingleAttentionHead",
    "SelfAttentionHead",
    "MeanProbabilityHead",
    "PrototypeHead",
    "BlendHead",
    "CenteredHead",
    "IdentityExpertHead",
    "EvidenceGateHead",
    "identity_expert_of",
    "fit_softmax_regression",
    "HEAD_TYPES",
    "Head",
    "TrainableHead",
    "TrainParams",
    "load_head",
    "head_to_arrays",
    "head_from_arrays",
]

log = logging.getLogger(__name__)

Clips = np.ndarray | Sequence[np.ndarray]

#: Names accepted by :func:`pool`.
POOLINGS = ("max", "min", "mean", "std")


class Head(Protocol):
    """What every head offers once fitted (scikit-learn classifier conventions).

    All heads of this module satisfy it, and so does any object with these members (e.g.
    a scikit-learn classifier working on clip descriptors). Used for typing; not checked at
    run time.
    """

    classes_: np.ndarray
    n_features_in_: int

    def predict_proba(self, clips: Clips) -> np.ndarray: ...

    def predict(self, clips: Clips) -> np.ndarray: ...


@runtime_checkable
class TrainableHead(Head, Protocol):
    """A :class:`Head` that learns from labelled clips (what personalization starts from)."""

    def fit(self, clips: Clips, y: Any) -> TrainableHead: ...

    def partial_fit(self, clips: Clips, y: Any, classes: Any = None) -> TrainableHead: ...

    def copy(self) -> TrainableHead: ...

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...

    def set_params(self, **params: Any) -> TrainableHead: ...


@dataclass(eq=False)
class TrainParams:
    """The training parameters of every trainable head, with their defaults (written once).

    Each is a keyword-only constructor argument of :class:`StatPoolingHead`,
    :class:`SingleAttentionHead` and :class:`SelfAttentionHead` (which inherit these typed
    attributes), stored as an attribute of the same name and reported by ``get_params``.

    Attributes:
        lr: Adam step.
        epochs: maximum epochs of ``fit``.
        batch_size: clips per Adam step.
        l2: weight decay on the weights (not the biases).
        anchor: pull toward the warm-start weights in ``partial_fit``.
        class_weight: None, "balanced" or a dict label -> weight.
        standardize: standardise the inputs with statistics of the first ``fit``.
        early_stopping: stop when the epoch training loss has not improved by ``tol`` for
            ``n_iter_no_change`` epochs.
        tol: see ``early_stopping``.
        n_iter_no_change: see ``early_stopping``.
        finetune_epochs: epochs of ``partial_fit`` (None: ``epochs``).
        finetune_lr: step of ``partial_fit`` (None: ``lr``).
        dtype: "float32" or "float64".
        seed: random seed (initialisation, batch order).
        verbose: log the loss per epoch.
        n_threads: BLAS threads while training (1 is faster than BLAS threading for these
            mid-sized products on small or busy machines, and reproducible; None leaves the
            BLAS default; needs ``threadpoolctl``, a dependency, else ignored).
    """

    lr: float = 0.01
    epochs: int = 100
    batch_size: int = 64
    l2: float = 1e-4
    anchor: float = 0.01
    class_weight: str | Mapping[Any, float] | None = None
    standardize: bool = True
    early_stopping: bool = True
    tol: float = 1e-4
    n_iter_no_change: int = 10
    finetune_epochs: int | None = None
    finetune_lr: float | None = None
    dtype: str = "float32"
    seed: int = 0
    verbose: bool = False
    n_threads: int | None = 1


_TRAIN_PARAM_NAMES = tuple(f.name for f in fields(TrainParams))

_FORMAT = "emoadapt.head"
_FORMAT_VERSION = 1
_EPS = 1e-12  # guards sums of (non-negative) attention weights


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


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


def _check_file_classes(classes: np.ndarray) -> None:
    if classes.ndim != 1 or len(classes) < 1 or len(np.unique(classes)) != len(classes):
        raise ModelIntegrityError("head file: classes must be a non-empty 1-D array of distinct labels")


def _json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, tuple):
            out[k] = {"__tuple__": list(v)}
        elif isinstance(v, Mapping):
            out[k] = {"__dict__": [[(x.item() if isinstance(x, np.generic) else x), float(w)] for x, w in v.items()]}
        elif isinstance(v, np.ndarray):
            out[k] = {"__tuple__": v.tolist()}
        elif isinstance(v, np.generic):
            out[k] = v.item()
        elif isinstance(v, type):
            out[k] = np.dtype(v).name
        else:
            out[k] = v
    return out


def _unjson_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict) and "__tuple__" in v:
            out[k] = tuple(v["__tuple__"])
        elif isinstance(v, dict) and "__dict__" in v:
            out[k] = {kk: vv for kk, vv in v["__dict__"]}
        else:
            out[k] = v
    return out


_CONTROLLER: Any = None


@contextlib.contextmanager
def _blas_threads(n: int | None) -> Iterator[None]:
    """Limit BLAS threads to ``n`` inside the block (``None``: leave them alone).

    Uses ``threadpoolctl`` (a runtime dependency) when importable; a no-op otherwise.
    """
    global _CONTROLLER
    if n is None:
        yield
        return
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a dependency; absent only in odd installs
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController()
    if not _CONTROLLER:
        yield
        return
    with _CONTROLLER.limit(limits=int(n), user_api="blas"):
        yield


def _atomic_savez(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **dict(arrays))  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------
# base classes
# ---------------------------------------------------------------------------------------
_H = TypeVar("_H", bound="_Head")


class _Head:
    """Common estimator plumbing: parameters, prediction, persistence."""

    classes_: np.ndarray
    n_features_in_: int

    # -- sklearn-style parameters -------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        own = [p.name for p in sig.parameters.values() if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return own + list(_TRAIN_PARAM_NAMES) if issubclass(cls, _TrainableHead) else own

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

    def predict_proba(self, clips: Clips) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, clips: Clips) -> np.ndarray:
        """Most probable label per clip, shape ``(N,)`` (labels from ``classes_``)."""
        p = self.predict_proba(clips)
        return self.classes_[np.argmax(p, axis=1)]

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
        _atomic_savez(path, self._payload())
        log.debug("saved %s to %s", type(self).__name__, path)
        return Path(path)

    def _payload(self) -> dict[str, np.ndarray]:
        """Everything :meth:`save` writes: ``meta`` (JSON string), ``classes`` and weights."""
        self._check_fitted()
        meta, arrays = self._state()
        classes = self.classes_
        if classes.dtype.kind not in "iuU":
            classes = classes.astype(str)
        return {"meta": self._meta(_json_params(self.get_params()), **meta), "classes": classes, **arrays}

    def _meta(self, params: Mapping[str, Any], **extra: Any) -> np.ndarray:
        """The ``meta`` array of a head file (a JSON string)."""
        meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "type": type(self).__name__, "params": dict(params), **extra}
        return np.array(json.dumps(meta, sort_keys=True))


class _TrainableHead(_Head, TrainParams):
    """Shared training machinery (Adam, masking, standardisation, anchoring, persistence).

    Subclasses define the parameter shapes and the forward/backward pass of the pooling;
    the final softmax layer (``coef_`` ``(C, P)``, ``intercept_`` ``(C,)``) is common.
    """

    #: parameter names (attribute = name + "_"); the first two are always coef, intercept
    _PARAMS: tuple[str, ...] = ("coef", "intercept")
    #: parameters penalised by ``l2`` (weights, not biases)
    _L2_PARAMS: tuple[str, ...] = ("coef",)

    def __init__(self, **train: Any) -> None:
        unknown = sorted(set(train) - set(_TRAIN_PARAM_NAMES))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
        TrainParams.__init__(self, **train)

    # -- to be provided by subclasses ---------------------------------------------------------
    def _in_dim(self, d: int) -> int:
        """Dimension of the vector fed to the softmax layer for ``d`` frame features."""
        return d

    def _param_shapes(self, d: int, c: int) -> dict[str, tuple[int, ...]]:
        return {"coef": (c, self._in_dim(d)), "intercept": (c,)}

    def _init_extra(self, d: int, rng: np.random.Generator, dt: np.dtype) -> dict[str, np.ndarray]:
        return {}

    def _scaler_dim(self, d: int) -> int:
        return d

    def _scaler_stats(self, clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame mean/std over all frames of all clips (streaming, float64)."""
        d = clips[0].shape[1]
        s = np.zeros(d)
        ss = np.zeros(d)
        n = 0
        for c in clips:
            c64 = c.astype(np.float64, copy=False)
            s += c64.sum(axis=0)
            n += len(c)
        mean = s / n
        for c in clips:
            ss += ((c.astype(np.float64, copy=False) - mean) ** 2).sum(axis=0)
        return mean, np.sqrt(ss / n)

    def _fit_scaler(self, clips: list[np.ndarray], d: int, dt: np.dtype) -> None:
        """``mean_`` / ``scale_`` of the per-frame standardisation (identity without
        ``standardize``; constant features keep scale 1)."""
        if self.standardize:
            mean, std = self._scaler_stats(clips)
            self.mean_ = mean.astype(dt)
            self.scale_ = np.where(std > 1e-8 * max(1.0, float(np.abs(mean).max(initial=0.0))), std, 1.0).astype(dt)
        else:
            k = self._scaler_dim(d)
            self.mean_ = np.zeros(k, dtype=dt)
            self.scale_ = np.ones(k, dtype=dt)

    def _prepare(self, clips: list[np.ndarray]) -> Any:
        """Turn validated clips into a design object consumed by :meth:`_batch`."""
        if len({len(c) for c in clips}) == 1:
            return np.stack(clips)
        return clips

    def _batch(self, design: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardised, zero-padded batch ``(B, Tmax, D)`` and its mask ``(B, Tmax)``."""
        dt = np.dtype(self.dtype)
        mean = self.mean_.astype(dt, copy=False)
        scale = self.scale_.astype(dt, copy=False)
        if isinstance(design, np.ndarray):
            x = (design[idx] - mean) / scale
            return x, np.ones(x.shape[:2], dtype=dt)
        items = [design[i] for i in idx]
        tmax = max(len(c) for c in items)
        x = np.zeros((len(items), tmax, items[0].shape[1]), dtype=dt)
        m = np.zeros((len(items), tmax), dtype=dt)
        for j, c in enumerate(items):
            x[j, : len(c)] = (c - mean) / scale
            m[j, : len(c)] = 1.0
        return x, m

    def _pool_forward(self, p: Mapping[str, np.ndarray], x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, Any]:  # pragma: no cover
        raise NotImplementedError

    def _pool_backward(self, p: Mapping[str, np.ndarray], cache: Any, dfv: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    # -- core maths ----------------------------------------------------------------------------
    def _params(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k + "_") for k in self._PARAMS}

    def _set_params_arrays(self, p: Mapping[str, np.ndarray]) -> None:
        for k in self._PARAMS:
            setattr(self, k + "_", p[k])

    def _forward(self, p: Mapping[str, np.ndarray], x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, Any]:
        fv, cache = self._pool_forward(p, x, m)
        return fv @ p["coef"].T + p["intercept"], (fv, cache)

    def _loss_and_grad(
        self,
        p: Mapping[str, np.ndarray],
        x: np.ndarray,
        m: np.ndarray,
        yidx: np.ndarray,
        sample_weight: np.ndarray | None = None,
        start: Mapping[str, np.ndarray] | None = None,
        anchor_mask: Mapping[str, np.ndarray] | None = None,
        need_grad: bool = True,
    ) -> tuple[float, dict[str, np.ndarray] | None]:
        """Objective and its exact gradient for one batch.

        ``L = sum_n w_n CE_n / N + l2 * sum ||W||^2 + anchor * sum mask * ||theta - start||^2``
        (the anchor term only when ``start`` is given). This is the function the gradient
        tests differentiate numerically.
        """
        logits, cache = self._forward(p, x, m)
        n = len(logits)
        logp = _log_softmax(logits)
        w = np.ones(n, dtype=logits.dtype) if sample_weight is None else sample_weight.astype(logits.dtype, copy=False)
        loss = float(-(w * logp[np.arange(n), yidx]).sum() / n)
        for k in self._L2_PARAMS:
            loss += float(self.l2 * np.sum(p[k].astype(np.float64) ** 2))
        if start is not None and self.anchor:
            for k in self._PARAMS:
                diff = p[k] - start[k]
                am = 1.0 if anchor_mask is None else anchor_mask.get(k, 1.0)
                loss += float(self.anchor * np.sum(am * diff.astype(np.float64) ** 2))
        if not need_grad:
            return loss, None
        dlogits = np.exp(logp)
        dlogits[np.arange(n), yidx] -= 1.0
        dlogits *= (w / n)[:, None]
        fv, pcache = cache
        grads = {"coef": dlogits.T @ fv, "intercept": dlogits.sum(axis=0)}
        grads.update(self._pool_backward(p, pcache, dlogits @ p["coef"]))
        for k in self._L2_PARAMS:
            grads[k] = grads[k] + 2.0 * self.l2 * p[k]
        if start is not None and self.anchor:
            for k in self._PARAMS:
                am = 1.0 if anchor_mask is None else anchor_mask.get(k, 1.0)
                grads[k] = grads[k] + 2.0 * self.anchor * am * (p[k] - start[k])
        return loss, grads

    def _sample_weights(self, yidx: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        cw = self.class_weight
        if cw is None:
            return None
        if isinstance(cw, str):
            if cw != "balanced":
                raise InvalidInputError(f"class_weight must be None, 'balanced' or a dict, not {cw!r}")
            uniq, inv, cnt = np.unique(yidx, return_inverse=True, return_counts=True)
            return (len(yidx) / (len(uniq) * cnt))[inv]
        if isinstance(cw, Mapping):
            lookup = {str(k): float(v) for k, v in cw.items()}
            return np.array([lookup.get(str(lab), 1.0) for lab in labels.tolist()])
        raise InvalidInputError(f"class_weight must be None, 'balanced' or a dict, not {type(cw).__name__}")

    def _train(
        self,
        design: Any,
        yidx: np.ndarray,
        sw: np.ndarray | None,
        p: dict[str, np.ndarray],
        epochs: int,
        lr: float,
        rng: np.random.Generator,
        start: Mapping[str, np.ndarray] | None = None,
        anchor_mask: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], list[float]]:
        """Mini-batch Adam; returns the parameters and the per-epoch training loss."""
        n = len(yidx)
        bs = max(1, min(int(self.batch_size), n))
        b1, b2, eps = 0.9, 0.999, 1e-8
        mom = {k: np.zeros_like(v) for k, v in p.items()}
        vel = {k: np.zeros_like(v) for k, v in p.items()}
        t = 0
        best = np.inf
        stall = 0
        curve: list[float] = []
        dt = np.dtype(self.dtype)
        for ep in range(int(epochs)):
            perm = rng.permutation(n)
            total = 0.0
            for s in range(0, n, bs):
                idx = perm[s : s + bs]
                x, m = self._batch(design, idx)
                loss, g = self._loss_and_grad(p, x, m, yidx[idx], None if sw is None else sw[idx], start, anchor_mask)
                assert g is not None
                total += loss * len(idx)
                t += 1
                c1 = 1.0 - b1**t
                c2 = 1.0 - b2**t
                for k in p:
                    gk = g[k].astype(dt, copy=False)
                    mom[k] = b1 * mom[k] + (1 - b1) * gk
                    vel[k] = b2 * vel[k] + (1 - b2) * gk * gk
                    p[k] = (p[k] - lr * (mom[k] / c1) / (np.sqrt(vel[k] / c2) + eps)).astype(dt, copy=False)
            ep_loss = total / n
            curve.append(ep_loss)
            if not np.isfinite(ep_loss):
                raise FloatingPointError(f"{type(self).__name__}: training diverged (loss {ep_loss}); lower lr")
            if self.verbose:
                log.info("%s epoch %d loss %.5f", type(self).__name__, ep + 1, ep_loss)
            if self.early_stopping:
                if ep_loss > best - self.tol:
                    stall += 1
                    if stall >= self.n_iter_no_change:
                        log.debug("%s: loss plateau after %d epochs", type(self).__name__, ep + 1)
                        break
                else:
                    stall = 0
                best = min(best, ep_loss)
        return p, curve

    def _validate_hparams(self) -> None:
        if not (self.lr > 0 or self.lr == 0):
            raise InvalidInputError("lr must be >= 0")
        if int(self.epochs) < 0 or int(self.batch_size) < 1:
            raise InvalidInputError("epochs must be >= 0 and batch_size >= 1")
        if self.l2 < 0 or self.anchor < 0:
            raise InvalidInputError("l2 and anchor must be >= 0")
        if np.dtype(self.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise InvalidInputError("dtype must be float32 or float64")

    def _index_labels(self, y: np.ndarray) -> np.ndarray:
        lut = {v: i for i, v in enumerate(self.classes_.tolist())}
        try:
            return np.array([lut[v] for v in y.tolist()], dtype=np.int64)
        except KeyError as e:  # pragma: no cover - callers extend classes first
            raise InvalidInputError(f"unknown label {e.args[0]!r}") from e

    # -- public API ----------------------------------------------------------------------------
    def fit(self, clips: Clips, y: Any) -> _TrainableHead:
        """Train from scratch on ``clips`` (list of ``(T_i, D)``) with labels ``y``."""
        with _blas_threads(self.n_threads):
            return self._fit_from_scratch(clips, y, None)

    def _fit_from_scratch(self, clips: Clips, y: Any, classes: Any, epochs: int | None = None, lr: float | None = None) -> _TrainableHead:
        self._validate_hparams()
        dt = np.dtype(self.dtype)
        cl = as_clips(clips, dt)
        yy = _as_labels(y, len(cl))
        allc = yy if classes is None else np.concatenate(_merge_label_kinds(_as_labels(classes), yy))
        self.classes_ = np.unique(allc)
        d = cl[0].shape[1]
        self.n_features_in_ = d
        rng = np.random.default_rng(self.seed)
        self._fit_scaler(cl, d, dt)
        c = len(self.classes_)
        p = {"coef": np.zeros((c, self._in_dim(d)), dtype=dt), "intercept": np.zeros(c, dtype=dt)}
        p.update(self._init_extra(d, rng, dt))
        design = self._prepare(cl)
        yidx = self._index_labels(yy)
        p, curve = self._train(design, yidx, self._sample_weights(yidx, yy), p, self.epochs if epochs is None else epochs, self.lr if lr is None else lr, rng)
        self._set_params_arrays(p)
        self.loss_curve_ = curve
        self.n_iter_ = len(curve)
        self.n_updates_ = 0
        return self

    def partial_fit(self, clips: Clips, y: Any, classes: Any = None) -> _TrainableHead:
        """Continue training from the current weights (fine-tuning).

        Adds ``anchor * ||theta - theta_start||^2`` to the loss (``theta_start`` = the weights
        at the start of this call) so that a few samples cannot wreck the head. Runs
        ``finetune_epochs`` epochs (default ``epochs``) at ``finetune_lr`` (default ``lr``).
        Standardisation statistics stay fixed. Labels in ``y`` or ``classes`` that are not in
        ``classes_`` yet are appended to it (in sorted order) with zero weights and a bias
        ``margin`` below the lowest top logit on these clips, so existing predictions do not
        change at the start; these new rows are not anchored. On an unfitted head this is
        :meth:`fit` (with ``classes`` added to the label set).
        """
        with _blas_threads(self.n_threads):
            return self._partial_fit(clips, y, classes)

    def _partial_fit(self, clips: Clips, y: Any, classes: Any) -> _TrainableHead:
        ep = self.epochs if self.finetune_epochs is None else self.finetune_epochs
        lr = self.lr if self.finetune_lr is None else self.finetune_lr
        if not hasattr(self, "classes_"):
            return self._fit_from_scratch(clips, y, classes, ep, lr)
        self._validate_hparams()
        dt = np.dtype(self.dtype)
        cl = as_clips(clips, dt)
        if cl[0].shape[1] != self.n_features_in_:
            raise InvalidInputError(f"clips have {cl[0].shape[1]} features, the head was trained on {self.n_features_in_}")
        yy = _as_labels(y, len(cl))
        _merge_label_kinds(self.classes_, yy)
        allc = yy if classes is None else np.concatenate(_merge_label_kinds(_as_labels(classes), yy))
        known = set(self.classes_.tolist())
        new = [v for v in np.unique(allc).tolist() if v not in known]
        design = self._prepare(cl)
        old_classes = self.classes_
        p = {k: v.astype(dt, copy=True) for k, v in self._params().items()}
        anchor_mask: dict[str, np.ndarray] | None = None
        if new:
            logits = self._logits(design, p)
            low = float(logits.max(axis=1).min()) - self._NEW_CLASS_MARGIN
            c_old, c_new = len(self.classes_), len(new)
            p["coef"] = np.concatenate([p["coef"], np.zeros((c_new, p["coef"].shape[1]), dtype=dt)])
            p["intercept"] = np.concatenate([p["intercept"], np.full(c_new, low, dtype=dt)])
            self.classes_ = np.concatenate([self.classes_, np.asarray(new, dtype=self.classes_.dtype if self.classes_.dtype.kind in "iu" else None)])
            anchor_mask = {
                "coef": np.concatenate([np.ones((c_old, 1)), np.zeros((c_new, 1))]).astype(dt),
                "intercept": np.concatenate([np.ones(c_old), np.zeros(c_new)]).astype(dt),
            }
            log.info("%s: new classes %s added", type(self).__name__, new)
        start = {k: v.copy() for k, v in p.items()}
        yidx = self._index_labels(yy)
        rng = np.random.default_rng([int(self.seed), getattr(self, "n_updates_", 0) + 1])
        try:
            p, curve = self._train(design, yidx, self._sample_weights(yidx, yy), p, ep, lr, rng, start, anchor_mask)
        except BaseException:
            self.classes_ = old_classes  # leave the head as it was
            raise
        self.n_updates_ = getattr(self, "n_updates_", 0) + 1
        self._set_params_arrays(p)
        self.loss_curve_ = curve
        self.n_iter_ = len(curve)
        return self

    _NEW_CLASS_MARGIN = 3.0

    def _logits(self, design: Any, p: Mapping[str, np.ndarray], batch: int = 256) -> np.ndarray:
        n = len(design)
        lengths = np.array([len(design[i]) for i in range(n)]) if isinstance(design, list) else np.zeros(n)
        order = np.argsort(lengths, kind="stable")
        out = np.empty((n, len(p["intercept"])), dtype=np.float64)
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            x, m = self._batch(design, idx)
            out[idx] = self._forward(p, x, m)[0]
        return out

    def decision_function(self, clips: Clips) -> np.ndarray:
        """Class logits ``(N, C)``."""
        self._check_fitted()
        cl = as_clips(clips, np.dtype(self.dtype))
        if cl[0].shape[1] != self.n_features_in_:
            raise InvalidInputError(f"clips have {cl[0].shape[1]} features, the head was trained on {self.n_features_in_}")
        return self._logits(self._prepare(cl), self._params())

    def predict_proba(self, clips: Clips) -> np.ndarray:
        """Class probabilities ``(N, C)`` (columns follow ``classes_``; rows sum to 1)."""
        return np.exp(_log_softmax(self.decision_function(clips)))

    def clip_features(self, clips: Clips) -> np.ndarray:
        """The pooled clip vector ``f_v`` fed to the softmax layer, ``(N, P)``."""
        self._check_fitted()
        cl = as_clips(clips, np.dtype(self.dtype))
        design = self._prepare(cl)
        p = self._params()
        parts = []
        for s in range(0, len(design), 256):
            x, m = self._batch(design, np.arange(s, min(s + 256, len(design))))
            parts.append(self._pool_forward(p, x, m)[0])
        return np.concatenate(parts).astype(np.float64)

    # -- persistence ----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {"mean": self.mean_, "scale": self.scale_}
        for k, v in self._params().items():
            arrays["param_" + k] = v
        meta = {
            "n_features_in": int(self.n_features_in_),
            "n_iter": int(getattr(self, "n_iter_", 0)),
            "n_updates": int(getattr(self, "n_updates_", 0)),
            "param_names": list(self._PARAMS),
        }
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> _TrainableHead:
        head = cls(**_unjson_params(meta["params"]))
        d = meta.get("n_features_in")
        if not isinstance(d, int) or d < 1:
            raise ModelIntegrityError("head file: bad n_features_in")
        classes = arrays["classes"]
        c = len(classes)
        _check_file_classes(classes)
        shapes = head._param_shapes(d, c)
        p = {}
        for k in cls._PARAMS:
            key = "param_" + k
            if key not in arrays:
                raise ModelIntegrityError(f"head file: missing array {key!r}")
            a = arrays[key]
            if a.shape != shapes[k] or a.dtype.kind != "f":
                raise ModelIntegrityError(f"head file: {key} has shape {a.shape} {a.dtype}, expected {shapes[k]} float")
            p[k] = a
        sd = head._scaler_dim(d)
        for k in ("mean", "scale"):
            if k not in arrays:
                raise ModelIntegrityError(f"head file: missing array {k!r}")
            if arrays[k].shape != (sd,) or arrays[k].dtype.kind != "f":
                raise ModelIntegrityError(f"head file: {k} has shape {arrays[k].shape}, expected ({sd},)")
        if np.any(arrays["scale"] <= 0):
            raise ModelIntegrityError("head file: non-positive scale")
        for k, a in [*p.items(), ("mean", arrays["mean"]), ("scale", arrays["scale"])]:
            if not np.isfinite(a).all():
                raise ModelIntegrityError(f"head file: non-finite values in {k}")
        dt = np.dtype(head.dtype)
        head.classes_ = classes
        head.n_features_in_ = d
        head.mean_ = arrays["mean"].astype(dt)
        head.scale_ = arrays["scale"].astype(dt)
        head._set_params_arrays({k: v.astype(dt) for k, v in p.items()})
        head.n_iter_ = int(meta.get("n_iter", 0))
        head.n_updates_ = int(meta.get("n_updates", 0))
        head.loss_curve_ = []
        return head


# ---------------------------------------------------------------------------------------
# concrete heads
# ---------------------------------------------------------------------------------------
class StatPoolingHead(_TrainableHead):
    """Statistical pooling + multinomial logistic regression (one softmax layer).

    Args:
        pooling: statistics from :data:`POOLINGS` concatenated into the clip descriptor,
            e.g. ``("max",)`` or ``("max", "mean", "std")``. With one-frame clips (per-clip
            descriptors) every statistic except ``std`` is the descriptor itself.

    Keyword-only training parameters: the fields of :class:`TrainParams` (defaults there).

    Learned attributes: ``classes_``, ``coef_`` ``(C, k*D)``, ``intercept_`` ``(C,)``,
    ``mean_`` / ``scale_`` (standardisation of the pooled descriptor), ``n_features_in_``,
    ``n_iter_``, ``loss_curve_``.
    """

    def __init__(self, pooling: str | Sequence[str] = ("max",), **train: Any) -> None:
        super().__init__(**train)
        self.pooling = pooling

    def _in_dim(self, d: int) -> int:
        return d * len(_pool_names(self.pooling))

    def _scaler_dim(self, d: int) -> int:
        return self._in_dim(d)

    def _pooled(self, clips: list[np.ndarray]) -> np.ndarray:
        names = _pool_names(self.pooling)
        if len({len(c) for c in clips}) == 1:
            return pool(np.stack(clips), names)
        return np.stack([pool(c, names) for c in clips])

    def _scaler_stats(self, clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        z = self._pooled(clips).astype(np.float64)
        return z.mean(axis=0), z.std(axis=0)

    def _prepare(self, clips: list[np.ndarray]) -> np.ndarray:
        dt = np.dtype(self.dtype)
        z = self._pooled(clips)
        return ((z - self.mean_) / self.scale_).astype(dt, copy=False)

    def _batch(self, design: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = design[idx]
        return x, np.ones((len(x), 1), dtype=x.dtype)

    def _pool_forward(self, p: Mapping[str, np.ndarray], x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, Any]:
        return x, None

    def _pool_backward(self, p: Mapping[str, np.ndarray], cache: Any, dfv: np.ndarray) -> dict[str, np.ndarray]:
        return {}


class SingleAttentionHead(_TrainableHead):
    """Frame Attention Network pooling (Meng et al., 2019) + softmax layer.

    ``a_i = sigmoid(f_i . q0)``, ``f_v = sum_i a_i f_i / sum_i a_i`` over the (standardised)
    frames of a clip, then ``softmax(coef_ f_v + intercept_)``; ``q0`` is learned end to end
    and starts at zero (i.e. mean pooling). Training parameters as in
    :class:`StatPoolingHead`. Learned attributes: ``q0_`` ``(D,)``, ``coef_`` ``(C, D)``,
    ``intercept_``, ``mean_`` / ``scale_`` (per-frame standardisation), ``classes_``, ...
    """

    _PARAMS = ("coef", "intercept", "q0")
    _L2_PARAMS = ("coef", "q0")

    #: RMS error of :meth:`from_frame_classifier`'s least-squares fit (set only there)
    fit_residual_: float

    def _param_shapes(self, d: int, c: int) -> dict[str, tuple[int, ...]]:
        return {"coef": (c, d), "intercept": (c,), "q0": (d,)}

    def _init_extra(self, d: int, rng: np.random.Generator, dt: np.dtype) -> dict[str, np.ndarray]:
        return {"q0": np.zeros(d, dtype=dt)}

    @classmethod
    def from_frame_classifier(cls, features: np.ndarray, probs: np.ndarray, classes: Sequence[Any], **params: Any) -> SingleAttentionHead:
        """A head that *is* the backbone's own softmax layer, applied to the mean frame of a clip.

        A backbone whose probabilities are ``softmax(W f + b)`` of its feature vectors ``f``
        (a linear classifier on the penultimate layer) determines ``W`` and ``b`` up to a
        per-frame constant: ``log p - mean_c(log p) = W' f + b'`` with ``W'``, ``b'`` centred over
        the classes. They are recovered here by least squares from frames of that backbone
        (``features`` ``(N, D)``, ``probs`` ``(N, C)`` in the column order of ``classes``; use
        frames without test-time augmentation, and ``N`` well above ``D``), no training.
        ``q0`` is zero, so the pooling is the mean: on one-frame clips the head reproduces the
        backbone's predictions, and a personal head fine-tuned from it (``copy().partial_fit``)
        starts exactly at the universal model. ``fit_residual_`` is the RMS error of the fit on
        the frame log-probabilities (about 0 for such a backbone; large if its last layer is
        not linear in ``features``). ``params``: constructor parameters (training settings
        used by later fine-tuning).
        """
        f = np.asarray(features, dtype=np.float64)
        pr = np.asarray(probs, dtype=np.float64)
        cl = _as_labels(list(classes))
        if f.ndim != 2 or pr.ndim != 2 or len(f) != len(pr) or pr.shape[1] != len(cl):
            raise InvalidInputError(f"need features (N, D) and probs (N, C={len(cl)}) of the same frames, got {f.shape} and {pr.shape}")
        if len(np.unique(cl)) != len(cl):
            raise InvalidInputError("classes must be distinct")
        if len(f) <= f.shape[1]:
            raise InvalidInputError(f"need more frames than features to fit the classifier ({len(f)} <= {f.shape[1]})")
        if not (np.isfinite(f).all() and np.isfinite(pr).all()) or (pr < 0).any():
            raise InvalidInputError("features and probs must be finite, probs non-negative")
        head = cls(**params)
        dt = np.dtype(head.dtype)
        head._fit_scaler([f], f.shape[1], dt)  # the frames as one clip: per-frame statistics
        logp = np.log(np.clip(pr, 1e-30, None))
        logp -= logp.mean(axis=1, keepdims=True)
        design = np.c_[(f - head.mean_) / head.scale_, np.ones(len(f))]
        sol, *_ = np.linalg.lstsq(design, logp, rcond=None)
        order = np.argsort(cl, kind="stable")  # classes_ is sorted, like fit() makes it
        head.classes_ = cl[order]
        head.n_features_in_ = f.shape[1]
        head._set_params_arrays({"coef": sol[:-1].T[order].astype(dt), "intercept": sol[-1][order].astype(dt), "q0": np.zeros(f.shape[1], dt)})
        head.fit_residual_ = float(np.sqrt(np.mean((design @ sol - logp) ** 2)))
        head.n_iter_, head.n_updates_, head.loss_curve_ = 0, 0, []
        return head

    def _pool_forward(self, p: Mapping[str, np.ndarray], x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, Any]:
        sig = _sigmoid(x @ p["q0"])  # (B, T)
        a = sig * m
        s = a.sum(axis=1) + _EPS
        fv = np.matmul(a[:, None, :], x)[:, 0, :] / s[:, None]
        return fv, (x, m, sig, s, fv)

    def _pool_backward(self, p: Mapping[str, np.ndarray], cache: Any, dfv: np.ndarray) -> dict[str, np.ndarray]:
        x, m, sig, s, fv = cache
        gx = np.matmul(x, dfv[:, :, None])[:, :, 0]  # g . f_t
        da = (gx - (dfv * fv).sum(axis=1)[:, None]) / s[:, None]
        ds = da * sig * (1.0 - sig) * m
        d = x.shape[2]
        return {"q0": ds.reshape(-1) @ x.reshape(-1, d)}


class SelfAttentionHead(_TrainableHead):
    """Self-attention pooling of Churaev & Savchenko (2023), eqs. (3)-(7), + softmax layer.

    For the (standardised) frames ``f_i`` of a clip::

        q_i = f_i W_q,  k_i = v_i = f_i W_k                        (d_k-dimensional)
        alpha_i = q_i . k_i / sqrt(d_k)                             (scalar per frame)
        beta_i = alpha_i v_i / S,   S = guard(sum_j alpha_j)        (vector)
        gamma_i = sigmoid(beta_i . q0)
        f_v = sum_i gamma_i f_i / sum_i gamma_i

    then ``softmax(coef_ f_v + intercept_)``. **Guard**: ``sum_j alpha_j`` may be near
    zero (``alpha`` can be negative), so ``S = A + attn_eps * sign(A)`` with ``A = sum_j
    alpha_j`` and ``sign(0) = +1``: ``|S| >= attn_eps`` always and ``dS/dA = 1`` (the
    gradient, and the tests' numerical check, use exactly this). ``W_q`` and ``W_k`` start
    equal (random, scale ``1/sqrt(D)``) so every ``alpha_i >= 0`` at initialisation, and
    ``q0`` starts at zero (mean pooling).

    Args:
        d_k: attention dimension (default 64).
        attn_eps: the guard above (default 1e-3).

    Keyword-only training parameters as in :class:`StatPoolingHead`.

    Learned attributes: ``W_q_`` / ``W_k_`` ``(D, d_k)``, ``q0_`` ``(d_k,)``, ``coef_``
    ``(C, D)``, ``intercept_``, ``mean_`` / ``scale_``, ``classes_``, ...
    """

    _PARAMS = ("coef", "intercept", "q0", "W_q", "W_k")
    _L2_PARAMS = ("coef", "q0", "W_q", "W_k")

    def __init__(self, d_k: int = 64, *, attn_eps: float = 1e-3, **train: Any) -> None:
        super().__init__(**train)
        self.d_k = d_k
        self.attn_eps = attn_eps

    def _validate_hparams(self) -> None:
        super()._validate_hparams()
        if int(self.d_k) < 1 or not self.attn_eps > 0:
            raise InvalidInputError("d_k must be >= 1 and attn_eps > 0")

    def _param_shapes(self, d: int, c: int) -> dict[str, tuple[int, ...]]:
        k = int(self.d_k)
        return {"coef": (c, d), "intercept": (c,), "q0": (k,), "W_q": (d, k), "W_k": (d, k)}

    def _init_extra(self, d: int, rng: np.random.Generator, dt: np.dtype) -> dict[str, np.ndarray]:
        k = int(self.d_k)
        w = (rng.standard_normal((d, k)) / math.sqrt(d)).astype(dt)
        return {"q0": np.zeros(k, dtype=dt), "W_q": w, "W_k": w.copy()}

    def _pool_forward(self, p: Mapping[str, np.ndarray], x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, Any]:
        b, t, d = x.shape
        k = p["W_q"].shape[1]
        rk = 1.0 / math.sqrt(k)
        xf = x.reshape(-1, d)
        qk = xf @ np.concatenate([p["W_q"], p["W_k"]], axis=1)  # one GEMM for q and k
        q = qk[:, :k].reshape(b, t, k)
        kk = qk[:, k:].reshape(b, t, k)
        alpha = (q * kk).sum(axis=2) * rk * m  # (B, T)
        a_sum = alpha.sum(axis=1)
        den = a_sum + self.attn_eps * np.where(a_sum >= 0, 1.0, -1.0).astype(x.dtype)
        c = kk @ p["q0"]  # v_i . q0, (B, T)
        u = alpha * c / den[:, None]  # beta_i . q0
        sig = _sigmoid(u)
        gam = sig * m
        g_sum = gam.sum(axis=1) + _EPS
        fv = np.matmul(gam[:, None, :], x)[:, 0, :] / g_sum[:, None]
        return fv, (x, m, q, kk, alpha, den, c, u, sig, g_sum, fv)

    def _pool_backward(self, p: Mapping[str, np.ndarray], cache: Any, dfv: np.ndarray) -> dict[str, np.ndarray]:
        x, m, q, kk, alpha, den, c, u, sig, g_sum, fv = cache
        b, t, d = x.shape
        k = q.shape[2]
        rk = 1.0 / math.sqrt(k)
        gx = np.matmul(x, dfv[:, :, None])[:, :, 0]
        dgam = (gx - (dfv * fv).sum(axis=1)[:, None]) / g_sum[:, None]
        du = dgam * sig * (1.0 - sig) * m
        dden = -(du * u).sum(axis=1) / den  # dL/dS ; dS/dA = 1
        dalpha = (du * c / den[:, None] + dden[:, None]) * m
        dc = du * alpha / den[:, None]
        dq0 = dc.reshape(-1) @ kk.reshape(-1, k)
        dq = dalpha[:, :, None] * kk * rk
        dk = dalpha[:, :, None] * q * rk + dc[:, :, None] * p["q0"]
        dw = x.reshape(-1, d).T @ np.concatenate([dq, dk], axis=2).reshape(-1, 2 * k)
        return {"q0": dq0, "W_q": dw[:, :k], "W_k": dw[:, k:]}


class MeanProbabilityHead(_Head):
    """No-training baseline: clip probabilities = mean of per-frame probability vectors.

    Args:
        classes: the class labels, in the order of the frame probability columns (e.g. the
            backbone's classes). Usable without :meth:`fit`.

    Input clips are per-frame probability arrays ``(T, C)``. :meth:`fit` only checks the
    labels and records ``n_features_in_``; :meth:`partial_fit` does nothing (it cannot learn).
    """

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

    def predict_proba(self, clips: Clips) -> np.ndarray:
        """Mean of the frame probabilities of each clip, renormalised to sum to 1."""
        c, cl = self._classes_and_clips(clips)
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
        _check_file_classes(classes)
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
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), _EPS)

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

    def predict_proba(self, clips: Clips) -> np.ndarray:
        """``softmax(temperature * cosine similarity to each prototype)``, ``(N, C)``."""
        self._check_fitted()
        x = self._pooled(clips)
        if x.shape[1] != self.n_features_in_:
            raise InvalidInputError(f"clips have {x.shape[1]} features, the head was fitted on {self.n_features_in_}")
        return np.exp(_log_softmax(float(self.temperature) * self._normalized(x) @ self.prototypes_.T))

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"n_features_in": int(self.n_features_in_)}, {"sums": self.sums_, "counts": self.counts_}

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> PrototypeHead:
        head = cls(**_unjson_params(meta["params"]))
        classes, sums, counts = arrays["classes"], arrays.get("sums"), arrays.get("counts")
        if sums is None or counts is None:
            raise ModelIntegrityError("head file: missing prototype arrays")
        c = len(classes)
        _check_file_classes(classes)
        if sums.ndim != 2 or sums.shape[0] != c or counts.shape != (c,) or sums.dtype.kind != "f" or counts.dtype.kind != "f":
            raise ModelIntegrityError(f"head file: prototype arrays of shapes {sums.shape}, {counts.shape} for {c} classes")
        if not (np.isfinite(sums).all() and np.isfinite(counts).all()) or (counts < 1).any():
            raise ModelIntegrityError("head file: non-finite prototypes or empty classes")
        head.classes_, head.sums_, head.counts_ = classes, sums.astype(np.float64), counts.astype(np.float64)
        head.n_features_in_ = sums.shape[1]
        head._refresh()
        return head


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

    def _aligned_log(self, head: Head, clips: Clips, classes: list[Any]) -> np.ndarray:
        p = np.asarray(head.predict_proba(clips), dtype=np.float64)
        out = np.full((len(p), len(classes)), math.log(self._FLOOR))
        index = {c: i for i, c in enumerate(classes)}
        cols = [index[c] for c in head.classes_.tolist()]
        out[:, cols] = np.log(np.clip(p, self._FLOOR, None))
        return out

    def predict_proba(self, clips: Clips) -> np.ndarray:
        """The blended probabilities ``(N, C)`` (columns follow ``classes_``)."""
        base, personal = self._check_parts()
        classes = self.classes_.tolist()
        w = float(self.weight)
        z = np.zeros((len(as_clips(clips)), len(classes)))
        if w < 1.0:
            z += (1.0 - w) * self._aligned_log(base, clips, classes)
        if w > 0.0:
            z += w * self._aligned_log(personal, clips, classes)
        return np.exp(_log_softmax(z))

    def _payload(self) -> dict[str, np.ndarray]:
        self._check_parts()
        out = {"meta": self._meta({"weight": float(self.weight)}), "classes": self.classes_}
        for part in ("base", "personal"):
            out.update(_prefixed(part, getattr(self, part)._payload()))
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

    def predict_proba(self, clips: Clips) -> np.ndarray:
        """The wrapped head's probabilities of the centred clips ``(N, C)``."""
        return np.asarray(self.head.predict_proba(self.centered(clips)))

    def _payload(self) -> dict[str, np.ndarray]:
        self._check_parts()
        meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "type": type(self).__name__, "params": {}}
        out = {
            "meta": np.array(json.dumps(meta, sort_keys=True)),
            "classes": np.asarray(self.head._payload()["classes"]),
            "offset": np.asarray(self.offset, dtype=np.float64),
        }
        out.update(_prefixed("head", self.head._payload()))
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


def _prefixed(prefix: str, payload: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A wrapped head's arrays inside its wrapper's file: ``<prefix>__<name>``."""
    return {f"{prefix}__{k}": v for k, v in payload.items()}


def _inner_head(arrays: Mapping[str, np.ndarray], prefix: str, wrapper: type, what: str) -> _Head:
    """The head saved under ``prefix`` (:func:`_prefixed`) in a wrapper's file; a head of the
    wrapper's own type there is refused (no nesting)."""
    head = _from_payload({k[len(prefix) + 2 :]: v for k, v in arrays.items() if k.startswith(prefix + "__")}, prefix)
    if isinstance(head, wrapper):
        raise ModelIntegrityError(f"head file: nested {what} are not allowed")
    return head


def fit_softmax_regression(
    x: np.ndarray, yidx: np.ndarray, n_classes: int, *, C: float = 1.0, max_iter: int = 3000, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """``(coef (D, K), intercept (K,))`` minimising ``C * sum(cross-entropy) + ||coef||^2 / 2``
    (scikit-learn's multinomial ``LogisticRegression(C=C)``; the intercept is not penalised),
    by accelerated gradient descent from zero: deterministic, numpy only."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    y = np.zeros((n, n_classes))
    y[np.arange(n), yidx] = 1.0
    xa = np.hstack([x, np.ones((n, 1))])
    # Lipschitz constant of the gradient: the softmax Hessian is bounded by 1/2
    lip = 0.5 * C * float(np.linalg.norm(xa, 2)) ** 2 + 1.0
    step = 1.0 / lip
    reg = np.ones((d + 1, 1))
    reg[-1] = 0.0
    w = np.zeros((d + 1, n_classes))
    v, t = w.copy(), 1.0
    for _ in range(max_iter):
        p = np.exp(_log_softmax(xa @ v))
        g = C * xa.T @ (p - y) + reg * v
        w_next = v - step * g
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        v = w_next + ((t - 1.0) / t_next) * (w_next - w)
        done = float(np.abs(w_next - w).max()) < tol
        w, t = w_next, t_next
        if done:
            break
    return w[:-1], w[-1]


class IdentityExpertHead(_Head):
    """A head on backbone features, with a personal *expert* on the face's identity embedding.

    Within one person an identity embedding (ArcFace-style, L2-normalised) still moves with
    the expression: with the identity held fixed, what is left is how this face looks when it
    is happy, sad, and so on. The expert is a softmax regression on the embeddings of the
    user's corrected clips (``scale`` times the unit embedding, L2 penalty ``1 / C``, as
    scikit-learn's ``LogisticRegression(C=C)``), fitted by :meth:`fit_expert`; the embeddings
    are those the :class:`~emoadapt.recognizer.Recognizer` computes anyway to route a face
    to its user, so the expert costs nothing at prediction time.

    ``predict_proba(clips, embeddings)``: ``log p(c) = (1 - weight) log p_head(c) + weight log
    q(c)`` (renormalised), where ``q`` is the expert's probability for the classes it knows
    and, for the classes it does not know, its highest probability: it has no opinion about
    an expression the user never corrected, so it can reorder the classes it knows but never
    push an unknown one down. Without an embedding (``embeddings=None``, or a row that is not
    finite) the wrapped head's probabilities are returned unchanged.

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
        self.head = head
        self.weight = weight
        self.C = C
        self.scale = scale
        self.identity_model = identity_model

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = {"weight": self.weight, "C": self.C, "scale": self.scale, "identity_model": self.identity_model}
        return {"head": self.head, **params} if deep else params

    def __getattr__(self, name: str) -> Any:
        if name in ("classes_", "n_features_in_"):
            head = self.__dict__.get("head")
            if head is None or not hasattr(head, "classes_"):
                raise AttributeError(name)
            return getattr(head, name)
        raise AttributeError(name)

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
        return float(self.scale) * e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), _EPS)

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
        return np.exp(_log_softmax(self._design(embeddings) @ self.coef_ + self.intercept_))

    def predict_proba(self, clips: Clips, embeddings: Any = None) -> np.ndarray:
        """Probabilities ``(N, C)`` of ``clips`` (columns follow ``classes_``), with the expert
        mixed in where a row of ``embeddings`` ``(N, E)`` is given and finite."""
        self._check_fitted()
        p = np.asarray(self.head.predict_proba(clips), dtype=np.float64)
        if embeddings is None or float(self.weight) == 0.0:
            return p
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim != 2 or len(e) != len(p):
            raise InvalidInputError(f"got {len(e) if e.ndim else 0} embeddings for {len(p)} clips")
        rows = np.isfinite(e).all(axis=1)
        if not rows.any():
            return p
        q = self.expert_proba(e[rows])
        classes = self.classes_.tolist()
        aligned = np.repeat(q.max(axis=1, keepdims=True), len(classes), axis=1)
        aligned[:, [classes.index(c) for c in self.expert_classes_.tolist()]] = q
        w = float(self.weight)
        z = (1.0 - w) * np.log(np.clip(p[rows], BlendHead._FLOOR, None)) + w * np.log(np.clip(aligned, BlendHead._FLOOR, None))
        out = p.copy()
        out[rows] = np.exp(_log_softmax(z))
        return out

    def predict(self, clips: Clips, embeddings: Any = None) -> np.ndarray:
        """Most probable label per clip (see :meth:`predict_proba`)."""
        return self.classes_[np.argmax(self.predict_proba(clips, embeddings), axis=1)]

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
        out.update(_prefixed("head", inner))
        return out

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> IdentityExpertHead:
        inner = _inner_head(arrays, "head", IdentityExpertHead, "identity experts")
        head = cls(inner, **_unjson_params(meta["params"]))
        try:
            head._check_params()
        except InvalidInputError as e:
            raise ModelIntegrityError(f"head file: {e}") from e
        coef, intercept, expert = arrays.get("coef"), arrays.get("intercept"), arrays.get("expert_classes")
        if coef is None or intercept is None or expert is None:
            raise ModelIntegrityError("head file: missing identity expert arrays")
        _check_file_classes(expert)
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
    :class:`IdentityExpertHead`), ``base`` the universal head it was adapted from (reading the
    same, uncentred, features) and ``evidence_classes_`` the labels of the user's corrections.
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
        self.head = head
        self.base = base
        self.evidence = evidence
        self.memory = memory
        self.memory_labels = memory_labels
        self.recall = recall

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = {"evidence": list(np.asarray(self.evidence).tolist()), "recall": self.recall}
        return {"head": self.head, "base": self.base, "memory": self.memory, "memory_labels": self.memory_labels, **params} if deep else params

    def _memory(self) -> tuple[np.ndarray, list[Any]]:
        labels = list(np.asarray(self.memory_labels).tolist())
        if self.memory is None or not labels:
            return np.zeros((0, 0)), []
        m = np.asarray(self.memory, dtype=np.float64)
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), _EPS), labels

    def __getattr__(self, name: str) -> Any:
        if name in ("classes_", "n_features_in_"):
            head = self.__dict__.get("head")
            if head is None or not hasattr(head, "classes_"):
                raise AttributeError(name)
            return getattr(head, name)
        if name == "evidence_classes_":
            return np.asarray(self.__dict__.get("evidence", ()), dtype=self.classes_.dtype)
        raise AttributeError(name)

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

    def predict_proba(self, clips: Clips, embeddings: Any = None) -> np.ndarray:
        """Probabilities ``(N, C)`` (columns follow ``classes_``); ``embeddings`` ``(N, E)``
        go to the identity expert inside, if any."""
        self._check_parts()
        q = np.asarray(self.head.predict_proba(clips, embeddings) if self.expert is not None else self.head.predict_proba(clips), dtype=np.float64)
        classes = self.classes_.tolist()
        allowed = np.isin(np.asarray(classes, dtype=object), np.asarray(np.asarray(self.evidence).tolist(), dtype=object))
        fall = ~allowed[np.argmax(q, axis=1)]
        if fall.any():
            p = np.asarray(self.base.predict_proba([c for c, f in zip(as_clips(clips), fall) if f]), dtype=np.float64)
            out = np.full((len(p), len(classes)), BlendHead._FLOOR)
            index = {c: i for i, c in enumerate(classes)}
            out[:, [index[c] for c in self.base.classes_.tolist()]] = np.clip(p, BlendHead._FLOOR, None)
            q[fall] = out / out.sum(axis=1, keepdims=True)
        mem, labels = self._memory()
        if labels:
            x = np.stack([c.mean(axis=0) for c in as_clips(clips)])
            if x.shape[1] != mem.shape[1]:
                raise InvalidInputError(f"clips have {x.shape[1]} features, the remembered ones {mem.shape[1]}")
            sim = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)) @ mem.T
            near = sim.max(axis=1) >= float(self.recall)
            for r in np.flatnonzero(near):
                onehot = np.zeros(len(classes))
                onehot[classes.index(labels[int(np.argmax(sim[r]))])] = 1.0
                q[r] = 0.5 * q[r] + 0.5 * onehot
        return q

    def predict(self, clips: Clips, embeddings: Any = None) -> np.ndarray:
        """Most probable label per clip (see :meth:`predict_proba`)."""
        return self.classes_[np.argmax(self.predict_proba(clips, embeddings), axis=1)]

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
        out.update(_prefixed("head", inner))
        out.update(_prefixed("base", self.base._payload()))
        return out

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> EvidenceGateHead:
        head = _inner_head(arrays, "head", EvidenceGateHead, "evidence gates")
        base = _inner_head(arrays, "base", EvidenceGateHead, "evidence gates")
        ev = arrays.get("evidence")
        if ev is None or ev.ndim != 1:
            raise ModelIntegrityError("head file: missing or malformed evidence classes")
        if len(ev):
            _check_file_classes(ev)
        if not set(ev.tolist()) <= set(head.classes_.tolist()):
            raise ModelIntegrityError("head file: evidence classes the wrapped head lacks")
        if getattr(head, "n_features_in_", None) != getattr(base, "n_features_in_", None):
            raise ModelIntegrityError("head file: the gate's heads read different features")
        mem, ml = arrays.get("memory"), arrays.get("memory_labels")
        if mem is None or ml is None or mem.ndim != 2 or ml.ndim != 1 or (len(ml) and (len(mem) != len(ml) or mem.dtype.kind != "f")):
            raise ModelIntegrityError("head file: malformed remembered corrections")
        if ml.dtype.kind not in "iuU" or not set(ml.tolist()) <= set(head.classes_.tolist()):
            raise ModelIntegrityError("head file: remembered corrections with labels the wrapped head lacks")
        gate = cls(head, base, ev.tolist(), mem.astype(np.float64) if len(ml) else None, ml.tolist(), **_unjson_params(meta["params"]))
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


HEAD_TYPES: dict[str, type[_Head]] = {
    "StatPoolingHead": StatPoolingHead,
    "SingleAttentionHead": SingleAttentionHead,
    "SelfAttentionHead": SelfAttentionHead,
    "MeanProbabilityHead": MeanProbabilityHead,
    "PrototypeHead": PrototypeHead,
    "BlendHead": BlendHead,
    "CenteredHead": CenteredHead,
    "IdentityExpertHead": IdentityExpertHead,
    "EvidenceGateHead": EvidenceGateHead,
}


def load_head(path: str | os.PathLike[str]) -> _Head:
    """Load a head written by ``save`` (plain arrays only; ``allow_pickle=False``).

    Raises:
        ModelIntegrityError: missing/unreadable/garbage file, unknown head type, missing
            arrays, shape mismatches or non-finite weights.
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as e:
        raise ModelIntegrityError(f"head file not found: {p}") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise ModelIntegrityError(f"head file unreadable or corrupt: {p}: {e}") from e
    return _from_payload(arrays, str(p))


def _from_payload(arrays: Mapping[str, np.ndarray], p: str = "head") -> _Head:
    arrays = dict(arrays)
    if "meta" not in arrays or "classes" not in arrays:
        raise ModelIntegrityError(f"head file {p} lacks the 'meta' or 'classes' array")
    try:
        meta = json.loads(str(arrays["meta"][()] if arrays["meta"].ndim == 0 else arrays["meta"].reshape(-1)[0]))
    except (ValueError, IndexError, TypeError) as e:
        raise ModelIntegrityError(f"head file {p}: metadata is not valid JSON") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ModelIntegrityError(f"{p} is not an emoadapt head file")
    if meta.get("version") != _FORMAT_VERSION:
        raise ModelIntegrityError(f"{p}: unsupported head file version {meta.get('version')!r}")
    cls = HEAD_TYPES.get(str(meta.get("type")))
    if cls is None:
        raise ModelIntegrityError(f"{p}: unknown head type {meta.get('type')!r}")
    if not isinstance(meta.get("params", {}), dict):
        raise ModelIntegrityError(f"{p}: malformed parameters")
    try:
        return cls._from_state(meta, arrays)
    except ModelIntegrityError:
        raise
    except (TypeError, ValueError, KeyError, InvalidInputError) as e:
        raise ModelIntegrityError(f"{p}: invalid head file: {e}") from e


def head_to_arrays(head: Head) -> dict[str, np.ndarray]:
    """The plain arrays :meth:`save` writes (``meta`` JSON string, ``classes``, weights), for
    stores that keep heads in their own files (e.g. :class:`emoadapt.store.Store`)."""
    if not isinstance(head, _Head):
        raise InvalidInputError(f"not an emoadapt head: {type(head).__name__}")
    return head._payload()


def head_from_arrays(arrays: Mapping[str, np.ndarray]) -> _Head:
    """Rebuild a head from :func:`head_to_arrays` output (validated like :func:`load_head`)."""
    return _from_payload(arrays)
