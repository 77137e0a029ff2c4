"""The :class:`Store`: users, corrections and personal heads of one home, over one SQLite
database (its parts: :mod:`~emoadapt.store.database`, :mod:`~emoadapt.store.users`,
:mod:`~emoadapt.store.corrections`, :mod:`~emoadapt.store.heads`); forgetting a user and
checking a store."""

from __future__ import annotations

import logging
import os
import sqlite3

from ..errors import InvalidInputError, ModelIntegrityError, UnknownUserError
from .corrections import CorrectionStore
from .files import remove_tree
from .heads import HeadStore
from .records import ForgetReport, HeadRecord

__all__ = ["Store"]

log = logging.getLogger(__package__)


class Store(CorrectionStore, HeadStore):
    """The feedback store of one home directory (see the module docstring).

    Args:
        home: the Recognizer's home directory; the database is ``home/store.sqlite3`` and
            personal heads live in ``home/heads/``.
        create: create the home directory and the database when missing (default). With
            ``create=False`` a missing store raises :class:`StoreError`.
        timeout: seconds to wait for the database lock held by another process or thread
            before a write fails with :class:`StoreError`.
        keep_heads: head versions kept per user, the active one included (older standby and
            all retired versions are deleted when a new head is saved); ``None`` keeps all.
        max_db_bytes: optional cap on the database size (``PRAGMA max_page_count``); a write
            that would grow it past the cap raises :class:`StoreError` like a full disk.

    A Store can be shared by threads (one lock serialises its connection) and used after
    ``fork`` (the child transparently opens its own connection). Use it as a context
    manager or call :meth:`close`.
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        *,
        create: bool = True,
        timeout: float = 30.0,
        keep_heads: int | None = 3,
        max_db_bytes: int | None = None,
    ) -> None:
        if keep_heads is not None and (not isinstance(keep_heads, int) or keep_heads < 1):
            raise InvalidInputError("keep_heads must be a positive int or None")
        self.keep_heads = keep_heads
        super().__init__(home, create=create, timeout=timeout, max_db_bytes=max_db_bytes)

    # -- forgetting -------------------------------------------------------------------------
    # -- forgetting -------------------------------------------------------------------------
    def forget(self, user: str, *, missing_ok: bool = False) -> ForgetReport:
        """Delete everything about ``user``: rows of all tables, head files and directory,
        then scrub the database files (``VACUUM`` and ``wal_checkpoint(TRUNCATE)``, with
        ``secure_delete`` on) so that no trace of the user remains in them.

        :class:`UnknownUserError` for an unknown user unless ``missing_ok`` (a leftover head
        directory is removed either way).
        """
        name = self._name(user)
        udir = self._user_head_dir(name)
        what = f"cannot forget {name!r}"

        def tx(conn: sqlite3.Connection) -> tuple[bool, int, int, int, int]:
            row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
            counts = [0, 0, 0]
            if row is not None:
                uid = int(row[0])
                for i, table in enumerate(("embeddings", "corrections", "heads")):
                    counts[i] = conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (uid,)).rowcount
                conn.execute("DELETE FROM users WHERE id = ?", (uid,))
            # remove files before COMMIT while holding the write lock: no other process can
            # rename a head into the directory meanwhile, and a failed commit errs on the
            # side of deletion (the user can call forget again)
            files = remove_tree(udir)
            return row is not None, counts[0], counts[1], counts[2], files

        existed, n_emb, n_corr, n_heads, n_files = self._run(tx, write=True, what=what)
        scrubbed = self._scrub(what)
        if not existed and not missing_ok:
            raise UnknownUserError(f"unknown user {name!r}")
        log.info("forgot a user: %d embeddings, %d corrections, %d heads, %d files", n_emb, n_corr, n_heads, n_files)
        return ForgetReport(existed, n_emb, n_corr, n_heads, n_files, scrubbed)

    # -- maintenance ------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Problems found by SQLite's ``integrity_check`` and ``foreign_key_check`` and by
        verifying every head file against its sha256; an empty list means healthy."""
        problems: list[str] = []

        def tx(conn: sqlite3.Connection) -> tuple[list[str], list[tuple[str, list[HeadRecord]]]]:
            res = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            out = [] if res == ["ok"] else [f"integrity_check: {r}" for r in res]
            out += [f"foreign_key_check: {tuple(r)}" for r in conn.execute("PRAGMA foreign_key_check")]
            heads = [(n, self._head_rows(conn, uid)) for uid, n in conn.execute("SELECT id, name FROM users ORDER BY id").fetchall()]
            return out, heads

        db_problems, heads = self._run(tx, write=False, what="cannot check the store")
        problems += db_problems
        for name, recs in heads:
            for rec in recs:
                try:
                    self._load_verified(name, rec)
                except ModelIntegrityError as e:
                    problems.append(str(e))
            if sum(r.status == "active" for r in recs) > 1:
                problems.append(f"user {name!r} has more than one active head")
        return problems
