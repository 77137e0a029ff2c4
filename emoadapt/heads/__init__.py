"""Clip-level classification heads: frame features in, clip emotion out (pure NumPy).

A *clip* is a float array ``(T, D)`` of per-frame feature vectors (``T >= 1``; clips of one
batch may differ in length). Every head here is a small scikit-learn-style estimator with one
protocol (:class:`Head`): ``predict_proba(clips, context=None)``, where the
:class:`ClipContext` carries what a head may read besides the features (the backbone's frame
probabilities, the face's identity embedding), so that no caller needs to know which head reads what.

* :class:`StatPoolingHead` -- statistical pooling of the frames (max, mean, std, ... and
  their concatenation) followed by multinomial logistic regression (one softmax layer).
  Per-clip descriptors are just ``T = 1`` clips (see :func:`descriptors_as_clips`).
* :class:`SingleAttentionHead` -- the Frame Attention Network pooling (Meng et al. 2019):
  ``a_i = sigmoid(f_i . q0)``, ``f_v = sum_i a_i f_i / sum_i a_i``, then softmax.
* :class:`SelfAttentionHead` -- the self-attention pooling of Churaev & Savchenko (2023),
  eqs. (3)-(7), then softmax.
* :class:`MeanProbabilityHead` -- the no-training baseline: the clip probability is the mean
  of the frame probabilities ``(T, C)`` (read from the context).
* :class:`PrototypeHead` -- nearest class prototypes (centred, L2-normalised means; few-shot).
* :class:`BlendHead`, :class:`CenteredHead`, :class:`IdentityExpertHead`,
  :class:`EvidenceGateHead` -- heads wrapping others, what
  :func:`emoadapt.adaptation.adapt_user` installs for a user.

The package's modules: :mod:`~emoadapt.heads.base` (the protocol, the context, clip
validation and pooling), :mod:`~emoadapt.heads.training` (the training engine: Adam and
backpropagation, :class:`TrainParams`), :mod:`~emoadapt.heads.pooling` (the trainable head
types), :mod:`~emoadapt.heads.simple`, :mod:`~emoadapt.heads.wrappers` and
:mod:`~emoadapt.heads.io` (saving and loading: plain arrays and JSON, never pickles;
:func:`load_head` raises :class:`~emoadapt.errors.ModelIntegrityError` on a damaged file).
Every public name is importable from ``emoadapt.heads``.
"""

from __future__ import annotations

from .base import POOLINGS, ClipContext, Clips, Head, TrainableHead, as_clips, descriptors_as_clips, pool
from .io import HEAD_TYPES, head_from_arrays, head_to_arrays, load_head
from .pooling import SelfAttentionHead, SingleAttentionHead, StatPoolingHead
from .simple import MeanProbabilityHead, PrototypeHead
from .training import TrainParams, fit_softmax_regression
from .wrappers import BlendHead, CenteredHead, EvidenceGateHead, IdentityExpertHead, identity_expert_of

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
    "ClipContext",
    "Clips",
    "load_head",
    "head_to_arrays",
    "head_from_arrays",
]

HEAD_TYPES.update(
    (cls.__name__, cls)
    for cls in (
        StatPoolingHead,
        SingleAttentionHead,
        SelfAttentionHead,
        MeanProbabilityHead,
        PrototypeHead,
        BlendHead,
        CenteredHead,
        IdentityExpertHead,
        EvidenceGateHead,
    )
)
