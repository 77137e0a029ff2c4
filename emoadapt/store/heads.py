"""Personal heads: versioned files written crash-safely, one active version per user, the
fallback to an older intact version, rollback and retention, as methods of
:class:`~emoadapt.store.Store` (the files themselves: :mod:`emoadapt.store.files`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmoadaptError, InvalidInputError, ModelIntegrityError, UnknownUserError
from . import files
from .files import _FILE_MODE, _TMP_PREFIX, _heads_to_drop, _mkdir_private, _unlink_all, debris, head_payload, read_head
from .records import HeadRecord, LoadedHead
from .rows import _from_json, _ids, _in_chunks, _to_json
from .users import UserStore

__all__ = ["HeadStore"]

log = logging.getLogger(__package__)


class HeadStore(UserStore):
    """The personal-head methods of :class:`~emoadapt.store.Store` (``keep_heads``: versions
    kept per user, the active one included; ``None`` keeps all)."""

    keep_heads: int | None = 3

    def save_head(
        self,
        user: str,
        arrays: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        *,
        trained_on: Iterable[int] | None = None,
        user_uid: str | None = None,
    ) -> int:
        """Save a new personal head for ``user``, make it active and return its version.

        ``arrays`` (name -> numeric/bool/str array) and ``meta`` (JSON) go into
        ``heads/<user-hash>/v<version>.npz``; ``metrics`` (JSON) into the database. The file
        is complete and fsynced before the row that activates it is committed, so a crash
        never leaves a partial head active. The previous active head becomes ``standby``;
        versions beyond ``keep_heads`` and retired ones are deleted.

        ``trained_on``: ids of the corrections the head was trained on, marked as consumed
        by this version (ids of other users or deleted rows are ignored). ``None`` marks all
        of the user's unconsumed corrections -- pass the ids from
        :meth:`correction_data` when other processes may add corrections meanwhile.

        ``user_uid``: the :meth:`user_uid` read *before* the training data. When the user was
        forgotten meanwhile (and perhaps created again under the same name by another process
        or thread), the user record is no longer that one and nothing is saved
        (:class:`UnknownUserError`): a head trained on a forgotten user's data never lands
        under a new user of the same name. Without it, the head is saved for whichever user
        record has the name when the write transaction runs.
        """
        name = self._name(user)
        blob = head_payload(arrays, meta)
        metrics_json = _to_json(metrics, "metrics")
        trained = None if trained_on is None else _ids(trained_on, "trained_on")
        if user_uid is not None and not isinstance(user_uid, str):
            raise InvalidInputError(f"user_uid must be a str, got {type(user_uid).__name__}")
        digest = hashlib.sha256(blob).hexdigest()
        udir = self._user_head_dir(name)
        what = f"cannot save a head of {name!r}"

        # fail early (before writing anything) for an unknown user
        self._run(lambda c: self._user_uid_check(c, name, user_uid), write=False, what=what)
        current = self._write_temp_head(udir, blob, name, user_uid, what)  # temp name, then v<N>.npz
        to_delete: list[Path] = []

        def tx(conn: sqlite3.Connection) -> int:
            nonlocal current
            uid = self._user_uid_check(conn, name, user_uid)
            version = int(conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM heads WHERE user_id = ?", (uid,)).fetchone()[0])
            final = udir / f"v{version}.npz"
            # we hold the write lock: no other writer can be between its rename and its
            # commit, so any v<N>.npz without a row is debris and may be replaced
            current = files.install_head_file(current, final)
            conn.execute("UPDATE heads SET status = 'standby' WHERE user_id = ? AND status = 'active'", (uid,))
            n_trained = self._mark_consumed(conn, uid, version, trained)
            conn.execute(
                "INSERT INTO heads (user_id, version, file, sha256, size, created, metrics, n_trained, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active')",
                (uid, version, final.name, digest, len(blob), time.time(), metrics_json, n_trained),
            )
            to_delete[:] = self._apply_retention(conn, uid, udir)
            return version

        try:
            try:
                version = self._run(tx, write=True, what=what)
            except BaseException:
                # the rename may already have happened; the file then is unreferenced debris
                # that the next save_head replaces or removes (deleting it here, outside the
                # write lock, could delete another writer's freshly renamed file)
                if current.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        current.unlink()
                raise
        except UnknownUserError:
            with contextlib.suppress(OSError):
                udir.rmdir()  # only if empty: the user was forgotten meanwhile
            raise
        _unlink_all(to_delete)
        log.info("saved head v%d of a user (%d bytes, sha256 %s)", version, len(blob), digest[:12])
        return version

    def _write_temp_head(self, udir: Path, blob: bytes, name: str, user_uid: str | None, what: str) -> Path:
        """Step 1 of :meth:`save_head`: ``blob`` written and fsynced to a private temp file in
        ``udir`` (created if needed); the temp file is removed again on failure."""
        try:
            _mkdir_private(self.heads_dir)
            _mkdir_private(udir)
            fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".npz", dir=udir)
        except OSError as e:
            raise self._head_file_error(e, name, user_uid, what) from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), _FILE_MODE)
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            err = self._head_file_error(e, name, user_uid, what)
            if isinstance(err, UnknownUserError):
                with contextlib.suppress(OSError):
                    udir.rmdir()
            raise err from None
        return tmp

    @staticmethod
    def _mark_consumed(conn: sqlite3.Connection, uid: int, version: int, trained: Sequence[int] | None) -> int:
        """Step 2 of :meth:`save_head`: corrections ``trained`` (``None``: all unconsumed ones)
        marked as consumed by head ``version``; returns how many."""
        if trained is None:
            sql = "UPDATE corrections SET consumed_by_head = ? WHERE user_id = ? AND consumed_by_head IS NULL"
            return int(conn.execute(sql, (version, uid)).rowcount)
        sql = "UPDATE corrections SET consumed_by_head = ? WHERE user_id = ? AND id IN ({ids})"
        return sum(int(cur.rowcount) for cur in _in_chunks(conn, sql, (version, uid), trained))

    def _apply_retention(self, conn: sqlite3.Connection, uid: int, udir: Path) -> list[Path]:
        """Step 3 of :meth:`save_head`: the rows of head versions :func:`_heads_to_drop`
        deleted; returns the files to delete after the commit (theirs and debris)."""
        rows = conn.execute("SELECT id, file, status FROM heads WHERE user_id = ? AND status != 'active' ORDER BY version DESC", (uid,))
        drop = _heads_to_drop(rows.fetchall(), self.keep_heads)
        conn.executemany("DELETE FROM heads WHERE id = ?", [(hid,) for hid, _ in drop])
        referenced = {r[0] for r in conn.execute("SELECT file FROM heads WHERE user_id = ?", (uid,))}
        return [udir / f for _, f in drop] + debris(udir, referenced)

    def _head_file_error(self, e: OSError, name: str, user_uid: str | None, what: str) -> EmoadaptError:
        """The error for a failed head file operation: UnknownUserError when the user was
        forgotten meanwhile (a concurrent forget removes the user's directory under a save),
        else StoreError."""
        try:  # under the write lock: a forget removes the directory before its commit
            self._run(lambda c: self._user_uid_check(c, name, user_uid), write=True, what=what)
        except UnknownUserError as gone:
            return gone
        return self._os_error(e, what)

    def _load_verified(self, name: str, rec: HeadRecord) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """:func:`~emoadapt.store.files.read_head` of the user's head ``rec`` (ModelIntegrityError
        on any problem)."""
        return read_head(self._user_head_dir(name), rec)

    def _head_rows(self, conn: sqlite3.Connection, uid: int, where: str = "", args: Sequence[Any] = ()) -> list[HeadRecord]:
        rows = conn.execute(
            "SELECT version, file, sha256, size, created, metrics, n_trained, status FROM heads WHERE user_id = ?" + where + " ORDER BY version",
            (uid, *args),
        ).fetchall()
        return [HeadRecord(int(r[0]), r[1], r[2], int(r[3]), float(r[4]), _from_json(r[5]), int(r[6]), r[7]) for r in rows]

    def head_versions(self, user: str) -> list[HeadRecord]:
        """All stored head versions of the user, oldest first."""
        name = self._name(user)
        return self._user_run(name, self._head_rows, write=False, what="cannot read heads")

    def load_head(self, user: str, version: int) -> LoadedHead:
        """Load head ``version`` of the user, verified (:class:`ModelIntegrityError` if the
        file is missing or damaged, :class:`InvalidInputError` if there is no such version)."""
        name = self._name(user)
        version = _ids([version], "version")[0]
        recs = self._user_run(name, lambda c, uid: self._head_rows(c, uid, " AND version = ?", (version,)), write=False, what="cannot read heads")
        if not recs:
            raise InvalidInputError(f"user {name!r} has no head version {version}")
        arrays, meta = self._load_verified(name, recs[0])
        return LoadedHead(arrays, meta, recs[0].version, recs[0].sha256, recs[0].metrics)

    def active_head_key(self, user: str) -> tuple[str, int, str] | None:
        """``(user uid, version, sha256)`` of the user's active head, ``None`` when there is
        none; reads no file. A cache keyed by it can never serve a head of a forgotten user
        to a user created again under the same name (the uid differs), nor an old version."""
        name = self._name(user)

        def tx(conn: sqlite3.Connection) -> tuple[str, int, str] | None:
            row = conn.execute(
                "SELECT u.uid, h.version, h.sha256 FROM users u LEFT JOIN heads h ON h.user_id = u.id AND h.status = 'active' WHERE u.name = ?",
                (name,),
            ).fetchone()
            if row is None:
                raise UnknownUserError(f"unknown user {name!r}")
            return None if row[1] is None else (str(row[0]), int(row[1]), str(row[2]))

        return self._run(tx, write=False, what="cannot read heads")

    def active_head(self, user: str, *, strict: bool = False, build: Callable[[dict[str, np.ndarray], dict[str, Any]], Any] | None = None) -> LoadedHead | None:
        """The user's active head, verified against its sha256; ``None`` if there is none.

        If the active file is missing, damaged, malformed, or ``build(arrays, meta)`` raises
        for it (a head format this version cannot use, weights of the wrong shape, ...), a
        warning is logged and the newest usable standby version is returned instead
        (``fell_back=True``); ``None`` if none is usable (the caller then uses its
        universal head). ``build``'s result is :attr:`LoadedHead.head`. With ``strict=True``
        an unusable active head raises :class:`~emoadapt.errors.ModelIntegrityError` instead.
        """
        name = self._name(user)

        def tx(conn: sqlite3.Connection) -> tuple[str, list[HeadRecord]]:
            row = conn.execute("SELECT id, uid FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UnknownUserError(f"unknown user {name!r}")
            return str(row[1]), self._head_rows(conn, int(row[0]), " AND status IN ('active', 'standby')")

        user_uid, recs = self._run(tx, write=False, what="cannot read heads")
        active = [r for r in recs if r.status == "active"]
        if not active:
            return None
        candidates = [active[0], *sorted((r for r in recs if r.status == "standby"), key=lambda r: -r.version)]
        for i, rec in enumerate(candidates):
            try:
                arrays, meta = self._load_verified(name, rec)
                head = None if build is None else build(arrays, meta)
            except Exception as e:
                if strict:
                    if isinstance(e, ModelIntegrityError):
                        raise
                    raise ModelIntegrityError(f"head v{rec.version} is unusable: {type(e).__name__}: {e}") from None
                log.warning(
                    "personal head v%d unusable%s: %s: %s",
                    rec.version,
                    ", falling back to an older version" if i + 1 < len(candidates) else "",
                    type(e).__name__,
                    e,
                )
                continue
            if i:
                log.warning("using personal head v%d instead of the unusable v%d", rec.version, active[0].version)
            return LoadedHead(
                arrays, meta, rec.version, rec.sha256, rec.metrics, fell_back=i > 0, user_uid=user_uid, active_version=active[0].version, head=head
            )
        log.warning("no usable personal head left for this user; use the universal head")
        return None

    def rollback_head(self, user: str) -> int | None:
        """Retire the active head and activate the newest intact standby version.

        Returns the version now active, or ``None`` when no older intact version exists (the
        user then has no active personal head). Corrections stay marked as consumed by the
        retired version.
        """
        name = self._name(user)

        def tx(conn: sqlite3.Connection, uid: int) -> int | None:
            recs = self._head_rows(conn, uid, " AND status IN ('active', 'standby')")
            active = [r for r in recs if r.status == "active"]
            if active:
                conn.execute("UPDATE heads SET status = 'retired' WHERE user_id = ? AND status = 'active'", (uid,))
            for rec in sorted((r for r in recs if r.status == "standby"), key=lambda r: -r.version):
                try:
                    self._load_verified(name, rec)
                except ModelIntegrityError as e:
                    log.warning("rollback skips a damaged head: %s", e)
                    conn.execute("UPDATE heads SET status = 'retired' WHERE user_id = ? AND version = ?", (uid, rec.version))
                    continue
                conn.execute("UPDATE heads SET status = 'active' WHERE user_id = ? AND version = ?", (uid, rec.version))
                return rec.version
            return None

        return self._user_run(name, tx, write=True, what=f"cannot roll back the head of {name!r}")
