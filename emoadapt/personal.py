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
  user (or a user enrolled only with another identity model) is refused unless forced; a face
  that already matches another enrolled user is never enrolled under a second name unless the
  caller says so (:class:`~emoadapt.errors.IdentityConflictError`), nor one too small, blurred
  or turned to recognise (:class:`~emoadapt.errors.FaceQualityError`);
* **the gallery growing** -- the face of a correction whose identity check passed joins the
  user's gallery when it matches it well (:data:`GROWTH_MARGIN` above the threshold), is
  usable (:data:`~emoadapt.identity.QUALITY_LIMITS`), is not in it already
  (:data:`NEAR_DUPLICATE`), matches no other user and the gallery holds fewer than
  :data:`GALLERY_CAP` faces; never the face of a forced correction;
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
from .errors import (
    EmoadaptError,
    FaceQualityError,
    IdentityConflictError,
    IdentityMismatchError,
    InvalidInputError,
    ModelIntegrityError,
    MultipleFacesError,
    StoreError,
    UnknownUserError,
)
from .features import Backbone
from .heads import Head, TrainableHead, head_from_arrays
from .identity import QUALITY_LIMITS, FaceQuality, IdentityMatcher
from .labels import resolve_label
from .results import Correction, Result, track_result
from .scanning import LearnedFace
from .store import ForgetReport, Store, normalize_label, normalize_user_name

__all__ = ["Enrollment", "GALLERY_CAP", "GROWTH_MARGIN", "NEAR_DUPLICATE", "Personalization", "user_name"]

log = logging.getLogger(__name__)

#: personal heads cached per Personalization (bounded: entries of users forgotten by other processes)
HEAD_CACHE_SIZE = 256

#: a user's gallery grows from verified corrections while it holds fewer than this many
#: embeddings (of the Recognizer's identity model; explicit enrolments are not capped)
GALLERY_CAP = 20
#: a corrected face joins its user's gallery only when its similarity to the gallery (the
#: matcher's score or the nearest of the user's faces) is at least this far above the threshold
GROWTH_MARGIN = 0.03
#: ... and not when the gallery already holds the face: its similarity to the nearest of the
#: user's faces is this or more (the same photo or clip again; 3 % of the pairs of one person's
#: Taiwanese photos, burst shots, are this close)
NEAR_DUPLICATE = 0.97

#: embedding sources in the store: an explicit enrolment, the first face of a user enrolled by a
#: correction, a face added by a verified correction
SOURCE_ENROL, SOURCE_CORRECTION, SOURCE_GROWN = "enrol", "correct", "grown"


class Enrollment(int):
    """What :meth:`Recognizer.enroll` returns: how many face embeddings were added -- an
    ``int``, as before -- and to whom."""

    user: str
    """The user's name as listed: the existing user a name differing only by case or width
    means (``enroll("Alice", ...)`` while ``alice`` exists adds to ``alice``)."""
    faces: list[list[dict[str, Any]]]
    """Per item, every face seen in it (:attr:`emoadapt.scanning.LearnedFace.faces`); empty for a :class:`Result`."""
    chosen: list[int]
    """Per item, which of its faces was enrolled."""

    def __new__(cls, added: int, *, user: str = "", faces: list[list[dict[str, Any]]] | None = None, chosen: list[int] | None = None) -> Enrollment:  # noqa: PYI034
        self = super().__new__(cls, added)
        self.user, self.faces, self.chosen = user, list(faces or []), list(chosen or [])
        return self

    def __str__(self) -> str:
        return int.__repr__(self)


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

    def _check_quality(self, quality: FaceQuality | None, what: str) -> None:
        """FaceQualityError when ``quality`` fails :data:`~emoadapt.identity.QUALITY_LIMITS`."""
        problems = [] if quality is None else quality.problems(QUALITY_LIMITS)
        if problems:
            assert quality is not None
            raise FaceQualityError(
                f"{what}: the face is {'; '.join(problems)}: it cannot be recognised reliably; use a photo or clip where the face "
                "is larger, sharper and facing the camera",
                problems=problems,
                quality=quality.to_dict(),
            )

    def _check_conflict(self, user: str, embedding: np.ndarray, gallery: dict[str, np.ndarray], override: str) -> None:
        """IdentityConflictError when ``embedding`` matches an enrolled user other than ``user``
        (the message names no one; the error's ``other_user`` does)."""
        others = {u: g for u, g in gallery.items() if u != user}
        other, score = self.matcher.identify(embedding, others)
        if other is not None:
            raise IdentityConflictError(
                f"the face already matches another enrolled user (similarity {self.matcher.describe(score)}): one face is "
                f"routed to one user, so it is not enrolled as {user!r}; {override}",
                user=user,
                other_user=other,
                similarity=score,
                threshold=self.matcher.threshold,
            )

    def enroll(self, user: str, faces: Sequence[LearnedFace], *, allow_shared_face: bool = False) -> Enrollment:
        """Add the identity embedding of each of ``faces`` (of this model) to ``user``'s gallery,
        enrolling them; nothing is added unless every face may be (see
        :meth:`emoadapt.recognizer.Recognizer.enroll`)."""
        if not isinstance(allow_shared_face, bool):
            raise InvalidInputError(f"allow_shared_face must be a bool, got {type(allow_shared_face).__name__}")
        user = self.store.listed_name(user_name(user))
        gallery = self.gallery()
        for i, face in enumerate(faces):
            what = f"item {i + 1} of {len(faces)}" if len(faces) > 1 else "the enrolment"
            self._check_quality(face.quality, what)
            if not allow_shared_face:
                self._check_conflict(user, face.embedding, gallery, "pass allow_shared_face=True if it really is both")
        self.store.add_user(user)
        added = int(self.store.add_embeddings(user, np.stack([f.embedding for f in faces]), source=SOURCE_ENROL, model=self.identity))
        log.info("enrolled %d face(s) (%s)", added, self.identity)
        return Enrollment(added, user=user, faces=[f.faces for f in faces], chosen=[f.index for f in faces])

    def correct(self, res: Result, face: LearnedFace, label: str, user: str | None, *, force: bool, new_label: bool, classes: Sequence[str]) -> Correction:
        """Store the correction ``label`` of an analysed clip (``res``'s features, the embedding
        of its ``face``) for ``user`` (``None``: the enrolled user the face matches), after
        :meth:`check_correction`; a verified face may grow the user's gallery
        (:meth:`_grow`); see :meth:`emoadapt.recognizer.Recognizer.correct`."""
        embedding = face.embedding
        gallery = self.gallery()
        if user is None:
            user, score = self.matcher.identify(embedding, gallery)
            if user is None:
                raise UnknownUserError(
                    f"the face in the clip matches no enrolled user (best similarity {self.matcher.describe(score)}); pass user= to enrol it"
                )
        else:
            user = self.store.listed_name(user)
        label = resolve_label(label, self.known_labels(user, classes), new_label=new_label)
        theirs = gallery.get(user)
        verified: float | None = None  # the similarity of a face that passed the identity check
        if theirs is None:
            other = self.reenroll_needed().get(user)
            if other and not force:
                raise IdentityMismatchError(
                    f"{user!r} is enrolled only with the {', '.join(other)} identity model, whose embeddings this Recognizer "
                    f"({self.identity}) cannot compare: re-enrol needed (Recognizer.enroll({user!r}, ...)), or pass force=True "
                    "to enrol them from this clip"
                )
            if not force:
                if len(face.faces) > 1 and not face.chosen:
                    raise MultipleFacesError(
                        f"{len(face.faces)} faces in the clip: {user!r} is not enrolled yet, and a correction enrols them from the main "
                        "face only in a clip of one face; say which face (face= its index or box), enrol them first with "
                        "enroll(), or pass force=True",
                        faces=face.faces,
                    )
                self._check_quality(face.quality, f"enrolling {user!r} from the corrected clip")
                self._check_conflict(user, embedding, gallery, "pass force=True to record it anyway")
            self.store.add_user(user)
            # another process may have enrolled the name meanwhile: never add a face to theirs
            theirs = self.store.embeddings(user, model=self.identity).get(user)
            if theirs is None:
                self.store.add_embeddings(user, embedding[None], source=SOURCE_CORRECTION, model=self.identity)
                log.info("enrolled a user from a corrected clip (%s)", self.identity)
        if theirs is not None:
            ok, score = self.matcher.verify(embedding, theirs)
            if not ok and not force:
                raise IdentityMismatchError(
                    f"the face in the clip does not match {user!r} (similarity {self.matcher.describe(score, verify=True)}); pass force=True to record it anyway"
                )
            verified = score if ok else None
        assert res.features is not None
        cid = int(
            self.store.add_correction(
                user, label, res.features, res.features.mean(axis=0), self.model_version, embedding=embedding, embedding_model=self.identity
            )
        )
        grown = False
        if verified is not None and not force:
            try:
                grown = self._grow(user, face, verified, gallery)
            except EmoadaptError as e:  # the correction is stored: growing is a bonus
                log.warning("correction %d is stored, but its face could not be added to the gallery (%s: %s)", cid, type(e).__name__, e)
        return self._after_correction(cid, user, label, grown=grown)

    def _grow(self, user: str, face: LearnedFace, score: float, gallery: dict[str, np.ndarray]) -> bool:
        """Add the face of a verified correction (similarity ``score`` to ``user``'s gallery) to
        the gallery when it is usable, matches the gallery well, matches no other user and the
        gallery has room (:data:`GALLERY_CAP`); whether it was added (why not: logged)."""
        theirs = gallery[user]
        need = self.matcher.threshold + GROWTH_MARGIN
        nearest = self.matcher.nearest(face.embedding, theirs)
        why = None
        if face.quality is None:
            why = "no face quality measured (an analysed Result was corrected)"
        elif not face.quality.usable(QUALITY_LIMITS):
            why = "face " + "; ".join(face.quality.problems(QUALITY_LIMITS))
        elif max(score, nearest) < need:
            why = f"not close enough to the gallery (similarity {self.matcher.describe(score)}, nearest face {nearest:.4f}; {need:.4f} needed)"
        elif nearest >= NEAR_DUPLICATE:
            why = f"the gallery holds this face already (similarity {nearest:.4f} to one of its faces)"
        elif len(theirs) >= GALLERY_CAP:
            why = f"the gallery is full ({len(theirs)} faces, at most {GALLERY_CAP} grown)"
        elif self.matcher.identify(face.embedding, {u: g for u, g in gallery.items() if u != user})[0] is not None:
            why = "it also matches another enrolled user"
        if why is None and not self.store.add_embeddings(user, face.embedding[None], source=SOURCE_GROWN, model=self.identity, cap=GALLERY_CAP):
            why = f"the gallery is full (at most {GALLERY_CAP} faces)"
        if why is not None:
            log.info("a corrected face was not added to its user's gallery: %s", why)
            return False
        log.info("a corrected face joined its user's gallery (%s; similarity %.4f)", self.identity, score)
        return True

    def _after_correction(self, cid: int, user: str, label: str, *, grown: bool = False) -> Correction:
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
        return Correction(cid, user=user, label=label, adapt_report=report, adapt_error=error, gallery_grown=grown)

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
