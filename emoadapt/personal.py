"""The personalization policy: who a face is, which head answers for them, and how
corrections become personal heads (what :class:`~emoadapt.recognizer.Recognizer` delegates to).

:class:`Personalization` holds one Recognizer's feedback store and decides:

* **head choice** -- a recognised user's personal head answers for their face, any other face
  gets the universal head; personal heads are cached by the user record's random uid (never by
  name: a user forgotten, here or in another process, and created again under the same name
  has a new uid), and one that fails to predict falls back to the universal head (logged);
* **the store-unavailable fallback** -- while predicting, a store that cannot be opened or read
  (read-only, damaged, newer, deleted) makes everyone a stranger, logged once until it works;
* **enrolment** and **the identity check of a correction** -- a user named with a correction is
  enrolled from its face when they are not enrolled yet; a face that does not match the named
  user (or a user enrolled only with another identity model) is refused unless forced;
* **adaptation** -- every ``adapt_every`` new corrections, and on request, the user's head is
  fitted, checked and installed (:func:`emoadapt.adaptation.adapt_user`);
* **forgetting** a user and every trace of them.

Only features and identity embeddings are stored, never pixels.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import zoo
from .adaptation import AdaptOptions, AdaptReport, adapt_user, load_replay
from .analysis import FaceTable
from .errors import EmoadaptError, IdentityMismatchError, InvalidInputError, ModelIntegrityError, StoreError, UnknownUserError
from .features import Backbone
from .heads import Head, TrainableHead, head_from_arrays
from .identity import IdentityMatcher
from .labels import resolve_label
from .results import Correction, Result, track_result
from .store import ForgetReport, Store, normalize_label, normalize_user_name

__all__ = ["Personalization", "user_name"]

log = logging.getLogger(__name__)

#: personal heads cached per Personalization (bounded: entries of users forgotten by other processes)
HEAD_CACHE_SIZE = 256


def user_name(user: Any) -> str:
    """``user`` normalised (:func:`emoadapt.store.normalize_user_name`; InvalidInputError when it is no name)."""
    return normalize_user_name(user)


class Personalization:
    """The personalization policy of one Recognizer (see the module docs).

    Args:
        home: the directory of the feedback store (created only when first needed).
        backbone: the emotion backbone whose features the heads read.
        universal: the head for strangers.
        identity: the identity model's name (its embeddings are stored and compared).
        matcher: tells users apart by their identity embeddings.
        personal_head: the trainable head personal heads are fine-tuned from (manifest name,
            head object, or ``None`` for the backbone's default), loaded when first needed.
        adapt_every: adapt a user's head after this many new corrections (0: never automatically).
    """

    def __init__(
        self,
        home: Path,
        backbone: Backbone,
        universal: Head,
        *,
        identity: str,
        matcher: IdentityMatcher,
        personal_head: str | Head | None,
        adapt_every: int,
    ) -> None:
        self.home, self.backbone, self.universal = home, backbone, universal
        self.identity, self.matcher, self.adapt_every = identity, matcher, adapt_every
        self.model_version = f"{backbone.name}@{backbone.entry['sha256'][:12]}"
        """The backbone's name and hash: corrections are stored with it, and only those of this
        version are adapted on (features of another backbone live in another space)."""
        self._personal_spec = personal_head
        self._personal_base: TrainableHead | None = None
        self._store: Store | None = None
        self._replay: tuple[np.ndarray, np.ndarray] | None = None
        # personal heads by user uid: (uid, active version, sha256) -> head (None: universal)
        self._heads: dict[str, tuple[tuple[str, int, str], Head | None]] = {}
        self._stale_logged: tuple[str, ...] = ()
        self._store_warned = False
        self._lock = threading.RLock()

    # -- lazily created parts -----------------------------------------------------------------
    @property
    def store(self) -> Store:
        """The feedback store under ``home`` (opened, and created, on first use)."""
        with self._lock:
            if self._store is None:
                self._store = Store(self.home)
            return self._store

    @property
    def personal_base(self) -> TrainableHead:
        """The trainable universal head personal heads are fine-tuned from (loaded on first use)."""
        with self._lock:
            if self._personal_base is None:
                self._personal_base = cast(TrainableHead, zoo.resolve_head(self._personal_spec, "personal_head", self.backbone, trainable=True))
            return self._personal_base

    @property
    def replay(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Universal training features replayed for uncorrected classes when adapting."""
        with self._lock:
            if self._replay is None:
                name = zoo.replay_set_for(self.backbone.name, self.backbone.dim)
                if name is None:
                    self._replay = (np.zeros((0, self.backbone.dim), np.float32), np.zeros(0, str))
                else:
                    self._replay = load_replay(name)
            return self._replay if len(self._replay[0]) else None

    def has_store(self) -> bool:
        """Whether a store is open or exists under ``home`` (StoreError when the home cannot be looked into)."""
        if self._store is not None:
            return True
        try:
            os.stat(self.home / "store.sqlite3")
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise StoreError(f"cannot look into the home {self.home}: {e.strerror or e}") from e
        return True

    def close(self) -> None:
        """Close the store (it reopens when next needed)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- who a face is ------------------------------------------------------------------------
    def gallery(self) -> dict[str, np.ndarray]:
        """Enrolment embeddings of this identity model per user; empty (and nothing created)
        when no store exists yet. Users enrolled only with another model are left out, and
        logged (once per set of such users): their embeddings live in another space."""
        if not self.has_store():
            if self.home.exists() and not self.home.is_dir():
                raise StoreError(f"the home {self.home} is not a directory")
            return {}
        gallery = self.store.embeddings(model=self.identity)
        stale = tuple(sorted(set(self.store.embedding_models()) - set(gallery)))
        if stale and stale != self._stale_logged:
            self._stale_logged = stale
            log.warning(
                "%d user(s) enrolled only with another identity model cannot be recognised by %s: %s; re-enrol needed "
                "(Recognizer.enroll) or use Recognizer(identity=...) of their model",
                len(stale),
                self.identity,
                ", ".join(stale),
            )
        return gallery

    def gallery_for_prediction(self) -> dict[str, np.ndarray]:
        """:meth:`gallery`, where a store that cannot be opened or read gives an empty gallery:
        everyone is a stranger (logged once, until the store works again)."""
        try:
            gallery = self.gallery()
        except StoreError as e:
            self._store_unavailable(e)
            return {}
        self._store_warned = False
        return gallery

    def _store_unavailable(self, e: StoreError) -> None:
        if not self._store_warned:
            self._store_warned = True
            log.warning(
                "the feedback store under %s is unavailable (%s); predicting with the universal model, "
                "personal heads and user recognition are off until it works again",
                self.home,
                e,
            )

    def reenroll_needed(self) -> dict[str, list[str]]:
        """Users whose enrolment embeddings were all made by another identity model, with those models."""
        if not self.has_store():
            return {}
        return {u: m for u, m in self.store.embedding_models().items() if self.identity not in m}

    def users(self) -> list[str]:
        """Enrolled users (none, and no store created, when there is no store yet)."""
        return list(self.store.users()) if self.has_store() else []

    # -- which head answers -------------------------------------------------------------------
    def _build_personal_head(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Head:
        """A usable head from a stored head's arrays, else an exception (the store then falls
        back to the previous version, then to None: the universal head)."""
        head = head_from_arrays(arrays)
        if getattr(head, "n_features_in_", None) != self.backbone.dim:
            raise ModelIntegrityError(f"trained on another backbone ({getattr(head, 'n_features_in_', None)} features, not {self.backbone.dim})")
        return head

    def head_for(self, user: str) -> Head | None:
        """The user's personal head, ``None`` for the universal one. Unusable versions fall back
        to older ones, then to None (logged once per active version, see :meth:`Store.active_head`)."""
        key = self.store.active_head_key(user)
        if key is None:
            return None
        with self._lock:
            cached = self._heads.get(key[0])
            if cached is not None and cached[0] == key:
                return cached[1]
        loaded = self.store.active_head(user, build=self._build_personal_head)
        if loaded is not None and loaded.user_uid != key[0]:
            return None  # forgotten and created again between the two reads: not this face's user
        head = None if loaded is None else cast(Head, loaded.head)
        with self._lock:
            if len(self._heads) >= HEAD_CACHE_SIZE:
                self._heads.pop(next(iter(self._heads)))
            self._heads[key[0]] = (key, head)
        return head

    def classify(self, res: Result, user: str | None) -> None:
        """Set ``res``'s label and probabilities by the head that answers for ``user``: their
        personal head, else (a stranger, a user without one, a store that is unavailable, a
        personal head that fails) the universal head. Every head gets the clip's context."""
        assert res.features is not None and res.frame_probabilities is not None
        context = res.context(self.identity)
        head: Head | None = None
        if user is not None:
            try:
                head = self.head_for(user)
            except UnknownUserError:  # forgotten since the gallery was read
                head = None
            except StoreError as e:
                self._store_unavailable(e)
        if head is not None:
            try:
                p = np.asarray(head.predict_proba([res.features], context), dtype=np.float64)[0]
                if not (np.isfinite(p).all() and p.sum() > 0):
                    raise ModelIntegrityError("non-finite or zero probabilities")
                res.classified(head.classes_, p)
                return
            except Exception as e:
                log.warning("personal head of a user failed to predict (%s: %s); using the universal head", type(e).__name__, e)
        p = np.asarray(self.universal.predict_proba([res.features], context))[0].astype(np.float64)
        res.classified(self.universal.classes_, p)

    def label_tracks(self, table: FaceTable, gallery: dict[str, np.ndarray]) -> Result:
        """The classified result of every face track of ``table``, each track's user decided on
        its identity embedding against ``gallery``: the main track's, with all in ``tracks``."""
        tracks = table.tracks(self.matcher.threshold if gallery else None)
        if not tracks:
            return Result(label=None, probabilities={}, frames=table.frames, faces=0, source=table.source, fps=table.fps)
        results = []
        for track in tracks:
            r = track_result(table, track, self.backbone.classes, self.backbone.dim)
            emb = table.track_embedding(track)
            if emb is not None:
                r.user, _ = self.matcher.identify(emb, gallery)
                r.embedding = emb
            self.classify(r, r.user)
            results.append(r)
        results[0].tracks = results
        return results[0]

    def reclassify(self, result: Result, user: str | None) -> Result:
        """A copy of an analysed ``result`` labelled anew by the current heads: for ``user``
        (their personal head), else for whom its identity embedding matches (see
        :meth:`emoadapt.recognizer.Recognizer.reclassify`)."""
        if not isinstance(result, Result):
            raise InvalidInputError(f"reclassify needs a Result of predict() or analyze(), got {type(result).__name__}")
        if result.features is None or result.frame_probabilities is None or not len(result.features):
            raise InvalidInputError("the Result has no face features (no face was found in its clip)")
        out = replace(result, tracks=[])
        if user is not None:
            out.user = user_name(user)
            if not self.store.has_user(out.user):
                raise UnknownUserError(f"unknown user {out.user!r}")
        elif out.embedding is not None:
            out.user, _ = self.matcher.identify(np.asarray(out.embedding), self.gallery_for_prediction())
        else:
            out.user = None
        self.classify(out, out.user)
        return out

    # -- corrections --------------------------------------------------------------------------
    def known_labels(self, user: str | None, classes: Sequence[str]) -> list[str]:
        """``classes``, then the custom labels of ``user``'s earlier corrections."""
        known = list(classes)
        if user is not None:
            user = user_name(user)
            if self.has_store() and self.store.has_user(user):
                known += [lab for lab in self.store.label_counts(user) if lab not in known]
        return known

    def check_correction(self, label: str, user: str | None, new_label: bool) -> tuple[str, str | None]:
        """``(label, user)`` normalised, before a correction's clip is read: InvalidInputError
        for a bad label, name or ``new_label``; PersonalizationUnsupportedError for a backbone
        that cannot adapt."""
        zoo.require_adaptable(self.backbone.name)  # before anything is stored
        label = normalize_label(label)
        if user is not None:
            user = user_name(user)
        if not isinstance(new_label, bool):
            raise InvalidInputError(f"new_label must be a bool, got {type(new_label).__name__}")
        return label, user

    def enroll(self, user: str, embeddings: np.ndarray) -> int:
        """Add identity ``embeddings`` ``(N, E)`` of this model to ``user``'s gallery (enrolling them); returns how many."""
        self.store.add_user(user)
        return int(self.store.add_embeddings(user, embeddings, source="enrol", model=self.identity))

    def correct(self, res: Result, embedding: np.ndarray, label: str, user: str | None, *, force: bool, new_label: bool, classes: Sequence[str]) -> Correction:
        """Store the correction ``label`` of an analysed clip (``res``'s features, ``embedding``
        of its face) for ``user`` (``None``: the enrolled user the face matches), after
        :meth:`check_correction`; see :meth:`emoadapt.recognizer.Recognizer.correct`."""
        gallery = self.gallery()
        if user is None:
            user, score = self.matcher.identify(embedding, gallery)
            if user is None:
                raise UnknownUserError(f"the face in the clip matches no enrolled user (best similarity {score:.3f}); pass user= to enrol it")
        label = resolve_label(label, self.known_labels(user, classes), new_label=new_label)
        theirs = gallery.get(user)
        if theirs is None:
            other = self.reenroll_needed().get(user)
            if other and not force:
                raise IdentityMismatchError(
                    f"{user!r} is enrolled only with the {', '.join(other)} identity model, whose embeddings this Recognizer "
                    f"({self.identity}) cannot compare: re-enrol needed (Recognizer.enroll({user!r}, ...)), or pass force=True "
                    "to enrol them from this clip"
                )
            self.store.add_user(user)
            # another process may have enrolled the name meanwhile: never add a face to theirs
            theirs = self.store.embeddings(user, model=self.identity).get(user)
            if theirs is None:
                self.store.add_embeddings(user, embedding[None], source="correct", model=self.identity)
                log.info("enrolled %s from a corrected clip (%s)", user, self.identity)
        if theirs is not None:
            ok, score = self.matcher.verify(embedding, theirs)
            if not ok and not force:
                raise IdentityMismatchError(
                    f"the face in the clip does not match {user!r} (similarity {score:.3f} < {self.matcher.threshold:.3f}); pass force=True to record it anyway"
                )
        assert res.features is not None
        cid = int(
            self.store.add_correction(
                user, label, res.features, res.features.mean(axis=0), self.model_version, embedding=embedding, embedding_model=self.identity
            )
        )
        return self._after_correction(cid, user, label)

    def _after_correction(self, cid: int, user: str, label: str) -> Correction:
        """The committed correction ``cid``, after the automatic adaptation it may trigger: from
        here on nothing raises (a retrying caller would store it twice)."""
        report, error = None, None
        try:
            # every adapt_every-th pending correction (not every one after the k-th: a rejected
            # candidate leaves its corrections pending, and must not make each later call re-adapt)
            pending = self.store.count_since_last_head(user)
            if self.adapt_every and pending and pending % self.adapt_every == 0:
                report = self.adapt(user)
        except Exception as e:  # reported on the result
            error = e
            log.warning(
                "correction %d of %r is stored, but the automatic adaptation failed (%s: %s); call adapt(%r) later",
                cid,
                user,
                type(e).__name__,
                e,
                user,
                exc_info=not isinstance(e, EmoadaptError),
            )
        return Correction(cid, user=user, label=label, adapt_report=report, adapt_error=error)

    def adapt(self, user: str, options: AdaptOptions | None = None) -> AdaptReport:
        """Adapt ``user``'s personal head to their corrections now (:func:`emoadapt.adaptation.adapt_user`,
        with this backbone's replay set and this identity model's embeddings)."""
        zoo.require_adaptable(self.backbone.name)
        user = user_name(user)
        if not self.store.has_user(user):
            raise UnknownUserError(f"unknown user {user!r}")
        return adapt_user(
            self.store,
            self.personal_base,
            user,
            model_version=self.model_version,
            replay=self.replay,
            identity_model=self.identity,
            options=options,
            fallback=self.universal,
        )

    def corrections(self, user: str) -> list[dict[str, Any]]:
        """The user's stored corrections: id, label, time, model version, frames (never pixels)."""
        user = user_name(user)
        if not self.store.has_user(user):
            raise UnknownUserError(f"unknown user {user!r}")
        return [{"id": r.id, "label": r.label, "time": r.created, "model_version": r.model_version, "frames": r.n_frames} for r in self.store.corrections(user)]

    def forget(self, user: str) -> ForgetReport:
        """Delete every trace of ``user``, and their cached heads (see :meth:`emoadapt.recognizer.Recognizer.forget`)."""
        user_name(user)  # an invalid name fails before the store opens
        try:
            uid: str | None = self.store.user_uid(user)
        except UnknownUserError:
            uid = None
        with self._lock:
            self._heads.pop(uid or "", None)
        return self.store.forget(user)
