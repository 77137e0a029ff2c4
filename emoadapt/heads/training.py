"""The training engine of the trainable heads: mini-batch Adam on the (optionally
class-weighted) softmax cross-entropy with hand-written backpropagation (checked against
numerical gradients in the tests), standardisation, anchoring and new classes; the training
parameters (:class:`TrainParams`); the softmax regression of the identity expert.

``fit`` trains from scratch; ``partial_fit`` continues from the current weights with an L2
pull ``anchor * ||W - W_start||^2`` toward the weights at the start of the call, which is how
a personal head is fine-tuned from a copy of the universal one on a handful of the user's
clips. Labels unseen so far extend ``classes_`` with new output rows that start with zero
weights and a bias low enough that the existing predictions do not change. The head types
that train (:mod:`emoadapt.heads.pooling`) only define their pooling's forward and backward pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .._threads import blas_threads as _blas_threads  # BLAS threads while training, through the process's controller
from ..errors import InvalidInputError, ModelIntegrityError
from ._format import check_file_classes, unjson_params
from .base import ClipContext, Clips, _as_labels, _Head, _log_softmax, _merge_label_kinds, as_clips

__all__ = ["TrainParams", "fit_softmax_regression"]

log = logging.getLogger(__name__)


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


TRAIN_PARAM_NAMES = tuple(f.name for f in fields(TrainParams))
_TRAIN_PARAM_SET = frozenset(TRAIN_PARAM_NAMES)


def _adam(
    batch_loss: Callable[[dict[str, np.ndarray], np.ndarray], tuple[float, dict[str, np.ndarray]]],
    p: dict[str, np.ndarray],
    n: int,
    hp: TrainParams,
    epochs: int,
    lr: float,
    rng: np.random.Generator,
    name: str,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Mini-batch Adam over ``n`` samples: ``batch_loss(p, idx)`` is the loss and gradient of the
    batch ``idx``; returns the parameters and the per-epoch training loss (early stopping, batch
    size and dtype from ``hp``; ``name`` for the log)."""
    bs = max(1, min(int(hp.batch_size), n))
    b1, b2, eps = 0.9, 0.999, 1e-8
    mom = {k: np.zeros_like(v) for k, v in p.items()}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    t = 0
    best = np.inf
    stall = 0
    curve: list[float] = []
    dt = np.dtype(hp.dtype)
    for ep in range(int(epochs)):
        perm = rng.permutation(n)
        total = 0.0
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            loss, g = batch_loss(p, idx)
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
            raise FloatingPointError(f"{name}: training diverged (loss {ep_loss}); lower lr")
        if hp.verbose:
            log.info("%s epoch %d loss %.5f", name, ep + 1, ep_loss)
        if hp.early_stopping:
            if ep_loss > best - hp.tol:
                stall += 1
                if stall >= hp.n_iter_no_change:
                    log.debug("%s: loss plateau after %d epochs", name, ep + 1)
                    break
            else:
                stall = 0
            best = min(best, ep_loss)
    return p, curve


class _TrainableHead(_Head):
    """Shared training machinery (Adam, masking, standardisation, anchoring, persistence).

    Subclasses define the parameter shapes and the forward/backward pass of the pooling;
    the final softmax layer (``coef_`` ``(C, P)``, ``intercept_`` ``(C,)``) is common.
    """

    #: parameter names (attribute = name + "_"); the first two are always coef, intercept
    _PARAMS: tuple[str, ...] = ("coef", "intercept")
    #: parameters penalised by ``l2`` (weights, not biases)
    _L2_PARAMS: tuple[str, ...] = ("coef",)

    _EXTRA_PARAMS = TRAIN_PARAM_NAMES

    train_params: TrainParams
    """The training parameters (each also reads and sets as an attribute of its name: ``head.lr``)."""

    def __init__(self, **train: Any) -> None:
        unknown = sorted(set(train) - _TRAIN_PARAM_SET)
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
        self.train_params = TrainParams(**train)

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("train_params")
        if name in _TRAIN_PARAM_SET and params is not None:
            return getattr(params, name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _TRAIN_PARAM_SET:
            setattr(self.train_params, name, value)
        else:
            object.__setattr__(self, name, value)

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
        if self.train_params.standardize:
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
        dt = np.dtype(self.train_params.dtype)
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
        """:func:`_objective` of this head for one batch (what the gradient tests differentiate numerically)."""
        return _objective(self, p, x, m, yidx, sample_weight, start, anchor_mask, need_grad)

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
        """Mini-batch Adam (:func:`_adam`) on :meth:`_loss_and_grad`; returns the parameters and the per-epoch training loss."""

        def batch_loss(params: dict[str, np.ndarray], idx: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
            x, m = self._batch(design, idx)
            loss, g = self._loss_and_grad(params, x, m, yidx[idx], None if sw is None else sw[idx], start, anchor_mask)
            assert g is not None
            return loss, g

        return _adam(batch_loss, p, len(yidx), self.train_params, epochs, lr, rng, type(self).__name__)

    def _validate_hparams(self) -> None:
        if not (self.train_params.lr > 0 or self.train_params.lr == 0):
            raise InvalidInputError("lr must be >= 0")
        if int(self.train_params.epochs) < 0 or int(self.train_params.batch_size) < 1:
            raise InvalidInputError("epochs must be >= 0 and batch_size >= 1")
        if self.train_params.l2 < 0 or self.train_params.anchor < 0:
            raise InvalidInputError("l2 and anchor must be >= 0")
        if np.dtype(self.train_params.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
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
        with _blas_threads(self.train_params.n_threads):
            return self._fit_from_scratch(clips, y, None)

    def _fit_from_scratch(self, clips: Clips, y: Any, classes: Any, epochs: int | None = None, lr: float | None = None) -> _TrainableHead:
        self._validate_hparams()
        dt = np.dtype(self.train_params.dtype)
        cl = as_clips(clips, dt)
        yy = _as_labels(y, len(cl))
        allc = yy if classes is None else np.concatenate(_merge_label_kinds(_as_labels(classes), yy))
        self.classes_ = np.unique(allc)
        d = cl[0].shape[1]
        self.n_features_in_ = d
        rng = np.random.default_rng(self.train_params.seed)
        self._fit_scaler(cl, d, dt)
        c = len(self.classes_)
        p = {"coef": np.zeros((c, self._in_dim(d)), dtype=dt), "intercept": np.zeros(c, dtype=dt)}
        p.update(self._init_extra(d, rng, dt))
        design = self._prepare(cl)
        yidx = self._index_labels(yy)
        p, curve = self._train(
            design,
            yidx,
            _class_weights(self.train_params.class_weight, yidx, yy),
            p,
            self.train_params.epochs if epochs is None else epochs,
            self.train_params.lr if lr is None else lr,
            rng,
        )
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
        with _blas_threads(self.train_params.n_threads):
            return self._partial_fit(clips, y, classes)

    def _partial_fit(self, clips: Clips, y: Any, classes: Any) -> _TrainableHead:
        ep = self.train_params.epochs if self.train_params.finetune_epochs is None else self.train_params.finetune_epochs
        lr = self.train_params.lr if self.train_params.finetune_lr is None else self.train_params.finetune_lr
        if not hasattr(self, "classes_"):
            return self._fit_from_scratch(clips, y, classes, ep, lr)
        self._validate_hparams()
        dt = np.dtype(self.train_params.dtype)
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
        rng = np.random.default_rng([int(self.train_params.seed), getattr(self, "n_updates_", 0) + 1])
        try:
            p, curve = self._train(design, yidx, _class_weights(self.train_params.class_weight, yidx, yy), p, ep, lr, rng, start, anchor_mask)
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
        cl = as_clips(clips, np.dtype(self.train_params.dtype))
        if cl[0].shape[1] != self.n_features_in_:
            raise InvalidInputError(f"clips have {cl[0].shape[1]} features, the head was trained on {self.n_features_in_}")
        return self._logits(self._prepare(cl), self._params())

    def predict_proba(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray:
        """Class probabilities ``(N, C)`` (columns follow ``classes_``; rows sum to 1); the features are all it reads (``context`` is not used)."""
        return np.asarray(np.exp(_log_softmax(self.decision_function(clips))))

    def clip_features(self, clips: Clips) -> np.ndarray:
        """The pooled clip vector ``f_v`` fed to the softmax layer, ``(N, P)``."""
        self._check_fitted()
        cl = as_clips(clips, np.dtype(self.train_params.dtype))
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
        head = cls(**unjson_params(meta["params"]))
        d = meta.get("n_features_in")
        if not isinstance(d, int) or d < 1:
            raise ModelIntegrityError("head file: bad n_features_in")
        classes = arrays["classes"]
        c = len(classes)
        check_file_classes(classes)
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
        dt = np.dtype(head.train_params.dtype)
        head.classes_ = classes
        head.n_features_in_ = d
        head.mean_ = arrays["mean"].astype(dt)
        head.scale_ = arrays["scale"].astype(dt)
        head._set_params_arrays({k: v.astype(dt) for k, v in p.items()})
        head.n_iter_ = int(meta.get("n_iter", 0))
        head.n_updates_ = int(meta.get("n_updates", 0))
        head.loss_curve_ = []
        return head


def _objective(
    model: _TrainableHead,
    p: Mapping[str, np.ndarray],
    x: np.ndarray,
    m: np.ndarray,
    yidx: np.ndarray,
    sample_weight: np.ndarray | None,
    start: Mapping[str, np.ndarray] | None,
    anchor_mask: Mapping[str, np.ndarray] | None,
    need_grad: bool,
) -> tuple[float, dict[str, np.ndarray] | None]:
    """Objective and its exact gradient for one batch.

    ``L = sum_n w_n CE_n / N + l2 * sum ||W||^2 + anchor * sum mask * ||theta - start||^2``
    (the anchor term only when ``start`` is given). This is the function the gradient
    tests differentiate numerically.
    """
    logits, cache = model._forward(p, x, m)
    n = len(logits)
    logp = _log_softmax(logits)
    w = np.ones(n, dtype=logits.dtype) if sample_weight is None else sample_weight.astype(logits.dtype, copy=False)
    loss = float(-(w * logp[np.arange(n), yidx]).sum() / n)
    for k in model._L2_PARAMS:
        loss += float(model.train_params.l2 * np.sum(p[k].astype(np.float64) ** 2))
    if start is not None and model.train_params.anchor:
        for k in model._PARAMS:
            diff = p[k] - start[k]
            am = 1.0 if anchor_mask is None else anchor_mask.get(k, 1.0)
            loss += float(model.train_params.anchor * np.sum(am * diff.astype(np.float64) ** 2))
    if not need_grad:
        return loss, None
    dlogits = np.exp(logp)
    dlogits[np.arange(n), yidx] -= 1.0
    dlogits *= (w / n)[:, None]
    fv, pcache = cache
    grads = {"coef": dlogits.T @ fv, "intercept": dlogits.sum(axis=0)}
    grads.update(model._pool_backward(p, pcache, dlogits @ p["coef"]))
    for k in model._L2_PARAMS:
        grads[k] = grads[k] + 2.0 * model.train_params.l2 * p[k]
    if start is not None and model.train_params.anchor:
        for k in model._PARAMS:
            am = 1.0 if anchor_mask is None else anchor_mask.get(k, 1.0)
            grads[k] = grads[k] + 2.0 * model.train_params.anchor * am * (p[k] - start[k])
    return loss, grads


def _class_weights(cw: str | Mapping[Any, float] | None, yidx: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """Per-sample weights of ``class_weight`` ``cw`` for class indices ``yidx`` of ``labels`` (``None``: all 1)."""
    if cw is None:
        return None
    if isinstance(cw, str):
        if cw != "balanced":
            raise InvalidInputError(f"class_weight must be None, 'balanced' or a dict, not {cw!r}")
        uniq, inv, cnt = np.unique(yidx, return_inverse=True, return_counts=True)
        return np.asarray((len(yidx) / (len(uniq) * cnt))[inv])
    if isinstance(cw, Mapping):
        lookup = {str(k): float(v) for k, v in cw.items()}
        return np.array([lookup.get(str(lab), 1.0) for lab in labels.tolist()])
    raise InvalidInputError(f"class_weight must be None, 'balanced' or a dict, not {type(cw).__name__}")


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
