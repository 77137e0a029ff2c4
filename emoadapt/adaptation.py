"""Personal adaptation: fine-tune a user's head from the universal one on their corrections.

Policy (:func:`adapt_user`):

1. The user's corrections are read from the :class:`~emoadapt.store.Store`. Every fifth
   correction (by the order they were made: the 5th, 10th, ...) is *held out* for
   validation once the user has at least ``min_held_out * 5`` of them.
2. A candidate head is a copy of the universal head fine-tuned (``partial_fit``: warm start,
   L2 pull toward the universal weights, new labels added as new outputs) on the other
   corrections, mixed with a small *replay* of universal training features for the classes
   the user has not corrected (so that corrections of some emotions do not erase the others;
   ``models/replay_<backbone>.npz``, built by ``scripts/build_replay_set.py``).
3. The candidate is compared on the held-out corrections with the head in use now (the
   active personal head, else the universal head). If it is worse, the current head stays
   (*rollback*: nothing is saved).
4. Otherwise the head is refitted the same way on all corrections and saved atomically as a
   new version (the previous one is kept as a fallback).

With fewer corrections than that there is nothing to validate on: the head trained on all of
them is saved directly (the pull toward the universal weights is what protects it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .heads import _TrainableHead, head_from_arrays, head_to_arrays
from .store import Store

__all__ = ["AdaptReport", "adapt_user", "fine_tune", "load_personal_head", "load_replay", "DEFAULT_ANCHOR"]

log = logging.getLogger(__name__)

HELD_OUT_EVERY = 5


@dataclass
class AdaptReport:
    """What :meth:`Recognizer.adapt` did."""

    user: str
    accepted: bool
    """A new head was saved and is now active."""
    version: int | None
    """Active personal head version after adaptation (None: the universal head is used)."""
    n_corrections: int
    n_train: int
    n_held_out: int
    held_out_accuracy_before: float | None = None
    """Accuracy of the previously active head (or the universal one) on held-out corrections."""
    held_out_accuracy_after: float | None = None
    """Accuracy of the candidate head on held-out corrections."""
    classes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Strength of the L2 pull toward the universal weights while fine-tuning personal heads.
#: Chosen with ``scripts/eval_personalization.py`` (CK+ leave-one-sequence-out, CREMA-D halves).
DEFAULT_ANCHOR = 0.1


def load_replay(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D), labels (N,))`` of a shipped replay set (sha256-verified, no pickles)."""
    from . import zoo
    from .errors import ModelIntegrityError

    path = zoo.model_path(name)
    try:
        with np.load(path, allow_pickle=False) as z:
            feats, labels = z["features"].astype(np.float32), z["labels"].astype(str)
    except (OSError, ValueError, KeyError) as e:
        raise ModelIntegrityError(f"replay set {name} unreadable: {e}") from e
    if feats.ndim != 2 or len(feats) != len(labels) or not np.isfinite(feats).all():
        raise ModelIntegrityError(f"replay set {name} is malformed")
    return feats, labels


def fine_tune(
    universal: _TrainableHead,
    clips: list[np.ndarray],
    labels: list[str],
    *,
    replay: tuple[np.ndarray, np.ndarray] | None = None,
    anchor: float | None = DEFAULT_ANCHOR,
    epochs: int | None = None,
    seed: int = 0,
) -> _TrainableHead:
    """A copy of ``universal`` fine-tuned on ``(clips, labels)`` (new labels become new classes).

    ``replay`` (features, labels): universal training samples; those of classes absent from
    ``labels`` are added to the fine-tuning data as one-frame clips.
    """
    clips, labels = list(clips), [str(v) for v in labels]
    if replay is not None:
        seen = set(labels)
        feats, rlabels = replay
        for f, lab in zip(feats, rlabels):
            if str(lab) not in seen:
                clips.append(np.asarray(f, np.float32)[None])
                labels.append(str(lab))
    head = universal.copy()
    params: dict[str, Any] = {"seed": seed}
    if anchor is not None:
        params["anchor"] = anchor
    if epochs is not None:
        params["epochs"] = epochs
    head.set_params(**{k: v for k, v in params.items() if k in head.get_params()})
    return head.partial_fit(clips, np.asarray(labels, dtype=object).astype(str))


def _accuracy(head: Any, clips: list[np.ndarray], labels: list[str]) -> float:
    pred = np.asarray(head.predict(clips)).astype(str)
    return float(np.mean(pred == np.asarray(labels, dtype=str)))


def load_personal_head(store: Store, user: str) -> Any | None:
    """The user's active personal head, or None (falls back to older versions when one is
    damaged or cannot be rebuilt, e.g. a future head format)."""
    loaded = store.active_head(user, build=lambda arrays, _meta: head_from_arrays(arrays))
    return None if loaded is None else loaded.head


def adapt_user(
    store: Store,
    universal: _TrainableHead,
    user: str,
    *,
    model_version: str | None = None,
    replay: tuple[np.ndarray, np.ndarray] | None = None,
    anchor: float | None = DEFAULT_ANCHOR,
    epochs: int | None = None,
    min_held_out: int = 2,
    seed: int = 0,
) -> AdaptReport:
    """Fine-tune ``user``'s personal head on their stored corrections (see module docs).

    Only corrections recorded with ``model_version`` (the backbone that produced their
    features) are used when it is given: features of another backbone live in another space.
    """
    t0 = time.perf_counter()
    user_uid = store.user_uid(user)  # before the data: save_head refuses if the record changed
    if model_version is None:
        feats, labels, ids = store.correction_data(user)
    else:
        keep = [r.id for r in store.corrections(user) if r.model_version == model_version]
        feats, labels, ids = store.correction_data(user, ids=keep) if keep else ([], [], [])
    labels = [str(lab) for lab in labels]
    n = len(ids)
    if n == 0:
        return AdaptReport(user, False, _active_version(store, user), 0, 0, 0, reason="no corrections", seconds=time.perf_counter() - t0)
    order = np.argsort(ids)
    feats = [feats[i] for i in order]
    labels = [labels[i] for i in order]
    ids = [ids[i] for i in order]
    held = np.zeros(n, bool)
    if n >= min_held_out * HELD_OUT_EVERY:
        held[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY] = True
    tr = np.flatnonzero(~held)
    ho = np.flatnonzero(held)
    report = AdaptReport(user, False, _active_version(store, user), n, len(tr), len(ho))
    if len(ho):
        current = load_personal_head(store, user) or universal
        cand = fine_tune(universal, [feats[i] for i in tr], [labels[i] for i in tr], replay=replay, anchor=anchor, epochs=epochs, seed=seed)
        ho_clips, ho_labels = [feats[i] for i in ho], [labels[i] for i in ho]
        report.held_out_accuracy_before = _accuracy(current, ho_clips, ho_labels)
        report.held_out_accuracy_after = _accuracy(cand, ho_clips, ho_labels)
        if report.held_out_accuracy_after < report.held_out_accuracy_before:
            report.reason = "candidate worse on held-out corrections: kept the current head"
            report.seconds = time.perf_counter() - t0
            log.info("adapt %s: rolled back (%.3f < %.3f)", user, report.held_out_accuracy_after, report.held_out_accuracy_before)
            return report
    head = fine_tune(universal, feats, labels, replay=replay, anchor=anchor, epochs=epochs, seed=seed)
    metrics = {k: v for k, v in (("held_out_accuracy_before", report.held_out_accuracy_before), ("held_out_accuracy_after", report.held_out_accuracy_after)) if v is not None}
    metrics.update(n_corrections=n, n_train=len(tr), n_held_out=len(ho))
    version = store.save_head(user, head_to_arrays(head), meta={"type": type(head).__name__}, metrics=metrics, trained_on=ids, user_uid=user_uid)
    report.accepted, report.version = True, version
    report.classes = [str(c) for c in head.classes_]
    report.reason = "validated on held-out corrections" if len(ho) else "too few corrections to hold out: regularized toward the universal head"
    report.seconds = time.perf_counter() - t0
    log.info("adapt %s: head v%d on %d corrections (%.2fs)", user, version, n, report.seconds)
    return report


def _active_version(store: Store, user: str) -> int | None:
    for h in store.head_versions(user):
        if getattr(h, "status", None) == "active":
            return int(h.version)
    return None
