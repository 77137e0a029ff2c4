"""Users (names, random uids, metadata, former names) and their enrolment embeddings (the
identity gallery), as methods of :class:`~emoadapt.store.Store`."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import AmbiguousUserError, InvalidInputError, UnknownUserError
from .database import Database
from .names import _MAX_TAG_LENGTH, MAX_NAME_LENGTH, _clean_text, _user_name, legacy_normal_form, user_dir_name, user_name_key
from .records import RenamedUser, UserRecord
from .rows import _as_f32, _asarray, _blob_to_f32, _from_json, _to_json, _where
from .schema import LEGACY_IDENTITY_MODEL

__all__ = ["UserStore"]

_T = TypeVar("_T")


class UserStore(Database):
    """The user and enrolment-embedding methods of :class:`~emoadapt.store.Store`. Every
    method takes a user name in any form :func:`~emoadapt.store.names.normalize_user_name`
    accepts (see :meth:`_name`)."""

    def _user_id(self, conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownUserError(f"unknown user {name!r}")
        return int(row[0])

    def _user_run(self, name: str, fn: Callable[[sqlite3.Connection, int], _T], *, write: bool, what: str) -> _T:
        """:meth:`_run` of ``fn(conn, user row id)`` for the (normalised) user ``name``
        (:class:`UnknownUserError` when there is no such user)."""
        return self._run(lambda conn: fn(conn, self._user_id(conn, name)), write=write, what=what)

    def _user_uid_check(self, conn: sqlite3.Connection, name: str, user_uid: str | None) -> int:
        """The user's row id; :class:`UnknownUserError` when ``user_uid`` is given and the
        user record named ``name`` is not that one (forgotten, maybe created again)."""
        row = conn.execute("SELECT id, uid FROM users WHERE name = ?", (name,)).fetchone()
        if row is None or (user_uid is not None and row[1] != user_uid):
            raise UnknownUserError(
                f"unknown user {name!r}"
                if row is None and user_uid is None
                else f"user {name!r} was forgotten (and maybe created again) since its data was read; nothing was saved"
            )
        return int(row[0])

    def user_uid(self, name: str) -> str:
        """:attr:`UserRecord.uid` of the user: read it *before* the data a head is trained on
        and pass it to :meth:`save_head` (``user_uid=``)."""
        return self.user(name).uid

    def _user_head_dir(self, name: str) -> Path:
        return self.heads_dir / user_dir_name(name)

    # -- users ------------------------------------------------------------------------------
    def add_user(self, name: str, meta: Mapping[str, Any] | None = None) -> bool:
        """Create user ``name`` (idempotent). Returns True if the user was created.

        ``meta`` (JSON-serializable mapping) replaces the stored metadata when given, also
        for an existing user; ``None`` leaves it unchanged.
        """
        name = self._name(name)
        meta_json = None if meta is None else _to_json(meta, "meta")

        key = user_name_key(name)

        def tx(conn: sqlite3.Connection) -> bool:
            # the same user by another case or width (another process may have created it since _name)
            existing = self._lookup(conn, name, key)
            if existing is not None:
                if meta_json is not None:
                    conn.execute("UPDATE users SET meta = ? WHERE name = ?", (meta_json, existing))
                return False
            conn.execute(
                "INSERT INTO users (name, created, meta, uid, name_key) VALUES (?, ?, ?, ?, ?)",
                (name, time.time(), meta_json or "{}", uuid.uuid4().hex, key),
            )
            return True

        return self._run(tx, write=True, what=f"cannot add user {name!r}")

    def listed_name(self, name: str) -> str:
        """The name :meth:`users` lists for the user ``name`` means (another case or width of
        it: ``"Alice"`` -> ``"alice"``), or ``name`` normalised when there is no such user."""
        return self._name(name)

    def users(self) -> list[str]:
        """Names of all users, in creation order."""
        return self._run(lambda c: [r[0] for r in c.execute("SELECT name FROM users ORDER BY id")], write=False, what="cannot list users")

    def has_user(self, name: str) -> bool:
        """Whether ``name`` is a user (invalid names are simply not users; an ambiguous one
        raises :class:`~emoadapt.errors.AmbiguousUserError`, see :meth:`renamed_users`)."""
        try:
            name = self._name(name)
        except AmbiguousUserError:
            raise
        except InvalidInputError:
            return False
        return self._run(lambda c: c.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None, write=False, what="cannot read users")

    def user(self, name: str) -> UserRecord:
        """The user's record (:class:`UnknownUserError` if absent)."""
        name = self._name(name)

        def tx(conn: sqlite3.Connection) -> UserRecord:
            row = conn.execute("SELECT name, created, meta, uid, former_name FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UnknownUserError(f"unknown user {name!r}")
            return UserRecord(row[0], float(row[1]), _from_json(row[2]), str(row[3]), row[4])

        return self._run(tx, write=False, what="cannot read users")

    def renamed_users(self) -> list[RenamedUser]:
        """Users whose stored name the upgrade to schema 7 changed to its normal form, in
        creation order: names stored before names were normalised (a double space, a
        full-width letter, a ligature, a no-break or zero-width space, ...). A user whose
        normal form another user already had is kept apart under a distinct name
        (:attr:`RenamedUser.kept_apart`, e.g. ``"\uff23arol"`` -> ``"Carol (2)"`` beside
        ``"Carol"``): two people are never merged. Until such a user is forgotten, its
        former name raises :class:`~emoadapt.errors.AmbiguousUserError` (it reads as the
        other user's name) rather than reach either user."""
        sql = "SELECT name, former_name FROM users WHERE former_name IS NOT NULL ORDER BY id"
        rows = self._run(lambda c: c.execute(sql).fetchall(), write=False, what="cannot read users")
        return [RenamedUser(str(n), str(f), legacy_normal_form(str(f))) for n, f in rows]

    def _name(self, user: Any) -> str:
        """The stored name of the user ``user`` means: normalised (:func:`normalize_user_name`),
        the name of the user it folds to when only case or width differ (:func:`user_name_key`:
        ``"Alice"`` is the user ``"alice"``; a name of no user is returned normalised), checked against the names
        stored before the upgrade to schema 7: a name that was the stored name of a user
        renamed to something else than what it reads as raises
        :class:`~emoadapt.errors.AmbiguousUserError` (``forget("\uff23arol")`` never forgets
        ``"Carol"`` when ``"\uff23arol"`` was another user). Names in normal form cost no
        former-name lookup (no former name is in normal form)."""
        try:
            name = _user_name(user)
        except InvalidInputError as e:
            now = self._renamed_from(user)
            if now is None:
                raise
            raise InvalidInputError(f"{e}; the user stored under this name before the store was upgraded is now {now!r}") from None
        now = None if user.strip() == name else self._renamed_from(user)
        if now is not None and now != name:
            raise AmbiguousUserError(
                f"{user.strip()!r} reads as {name!r} but was the stored name of the user now listed as {now!r} (renamed when "
                f"the store was upgraded, see Store.renamed_users()): use a listed name, {now!r} for that user ({name!r} is another one)",
                name=user,
                users=[now, name],
            )
        key = user_name_key(name)
        found = self._run(lambda c: self._lookup(c, name, key), write=False, what="cannot read users")
        return name if found is None else found

    @staticmethod
    def _lookup(conn: sqlite3.Connection, name: str, key: str) -> str | None:
        """The stored name of the user ``name`` (normal form) means: the user of exactly that
        name, else the one whose :func:`user_name_key` is ``key`` (``"Alice"`` -> ``"alice"``);
        ``None`` when there is none."""
        row = conn.execute("SELECT name FROM users WHERE name = ? OR name_key = ? ORDER BY name = ? DESC LIMIT 1", (name, key, name)).fetchone()
        return None if row is None else str(row[0])

    def _renamed_from(self, user: Any) -> str | None:
        """Name now of the user whose name before the upgrade was ``user`` (stripped, as the
        old store stored names), ``None`` when none was."""
        if not isinstance(user, str) or not 0 < len(user) <= 8 * MAX_NAME_LENGTH:
            return None
        try:
            raw = user.strip()
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return None
        row = self._run(lambda c: c.execute("SELECT name FROM users WHERE former_name = ?", (raw,)).fetchone(), write=False, what="cannot read users")
        return None if row is None else str(row[0])

    # -- enrolment embeddings ---------------------------------------------------------------
    def add_embeddings(self, user: str, embeddings: Any, source: str = "enrol", model: str = LEGACY_IDENTITY_MODEL, *, cap: int | None = None) -> int:
        """Append enrolment embeddings ``(N, D)`` (or one ``(D,)``) made by identity ``model``
        to the user's gallery.

        Stored as float32; all embeddings of a user made by one model must share D. Returns N,
        or with ``cap`` as many as fit under ``cap`` embeddings of ``model`` for the user
        (counted in the same transaction: concurrent writers never pass it).
        """
        name = self._name(user)
        a = _asarray(embeddings, "embeddings")
        emb = _as_f32(a[None, :] if a.ndim == 1 else a, 2, "embeddings")
        source = _clean_text(source, "source", _MAX_TAG_LENGTH)
        model = _clean_text(model, "model", _MAX_TAG_LENGTH)
        n, d = emb.shape

        def tx(conn: sqlite3.Connection, uid: int) -> int:
            dims = {r[0] for r in conn.execute("SELECT DISTINCT dim FROM embeddings WHERE user_id = ? AND model = ?", (uid, model))}
            if dims and dims != {d}:
                raise InvalidInputError(f"{model} embeddings of user {name!r} have dimension {sorted(dims)}, got {d}")
            rows = emb
            if cap is not None:
                have = int(conn.execute("SELECT COUNT(*) FROM embeddings WHERE user_id = ? AND model = ?", (uid, model)).fetchone()[0])
                rows = emb[: max(0, cap - have)]
            now = time.time()
            conn.executemany(
                "INSERT INTO embeddings (user_id, dim, vector, source, created, model) VALUES (?, ?, ?, ?, ?, ?)",
                ((uid, d, row.tobytes(), source, now, model) for row in rows),
            )
            return len(rows)

        return self._user_run(name, tx, write=True, what=f"cannot store embeddings of {name!r}")

    def embeddings(self, user: str | None = None, *, source: str | None = None, model: str | None = None) -> dict[str, np.ndarray]:
        """Gallery: ``{user: float32 (N, D)}`` for ``user`` or for every user that has
        embeddings (optionally only those tagged ``source`` and / or made by identity
        ``model``; without ``model`` a user with embeddings of several models gets them all,
        so the dimensions must agree). Users without such embeddings are absent."""
        name = None if user is None else self._name(user)
        src = None if source is None else _clean_text(source, "source", _MAX_TAG_LENGTH)
        mdl = None if model is None else _clean_text(model, "model", _MAX_TAG_LENGTH)

        def tx(conn: sqlite3.Connection) -> dict[str, np.ndarray]:
            where, args = _where(
                None if name is None else ("e.user_id = ?", (self._user_id(conn, name),)),
                None if src is None else ("e.source = ?", (src,)),
                None if mdl is None else ("e.model = ?", (mdl,)),
            )
            sql = "SELECT u.name, e.dim, e.vector FROM embeddings e JOIN users u ON u.id = e.user_id" + where
            rows: dict[str, list[np.ndarray]] = {}
            for uname, dim, blob in conn.execute(sql + " ORDER BY e.user_id, e.id", args):
                rows.setdefault(uname, []).append(_blob_to_f32(blob, (int(dim),), "embedding"))
            try:
                return {k: np.stack(v) for k, v in rows.items()}
            except ValueError as e:
                raise InvalidInputError("embeddings of several identity models differ in dimension: pass model=") from e

        return self._run(tx, write=False, what="cannot read embeddings")

    def embedding_models(self) -> dict[str, list[str]]:
        """``{user: [identity model, ...]}``: which models each user has enrolment embeddings of."""

        def tx(conn: sqlite3.Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            sql = "SELECT DISTINCT u.name, e.model FROM embeddings e JOIN users u ON u.id = e.user_id ORDER BY u.name, e.model"
            for uname, mdl in conn.execute(sql):
                out.setdefault(uname, []).append(mdl)
            return out

        return self._run(tx, write=False, what="cannot read embedding models")
