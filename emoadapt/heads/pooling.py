"""The trainable head types: statistical pooling, single attention (Frame Attention Network)
and self-attention (Churaev & Savchenko 2023), each a pooling of the frames followed by one
softmax layer, trained by :mod:`emoadapt.heads.training`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .base import EPS, _as_labels, _pool_names, _sigmoid, pool
from .training import _TrainableHead

__all__ = ["StatPoolingHead", "SingleAttentionHead", "SelfAttentionHead"]


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
        dt = np.dtype(self.train_params.dtype)
        z = self._pooled(clips)
        return np.asarray(((z - self.mean_) / self.scale_).astype(dt, copy=False))

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
        dt = np.dtype(head.train_params.dtype)
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
        s = a.sum(axis=1) + EPS
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
        g_sum = gam.sum(axis=1) + EPS
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
