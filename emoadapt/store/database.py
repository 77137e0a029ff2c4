"""The SQLite database of a home: opening (WAL, ``synchronous=FULL``, ``secure_delete``),
one transaction per call with retries while another process holds the lock, the check that
the file is still the one opened, migrations, and the mapping of every sqlite3 / OS error to
:class:`~emoadapt.errors.StoreError`. :class:`Database` is the base of
:class:`~emoadapt.store.Store`; it knows nothing of users, corrections or heads."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InvalidInputError, StoreError
from . import schema
from .files import _FILE_MODE, _mkdir_private

__all__ = ["DB_NAME", "HEADS_DIR", "Database"]

log = logging.getLogger(__package__)

DB_NAME = "store.sqlite3"
HEADS_DIR = "heads"
_T = TypeVar("_T")
_D = TypeVar("_D", bound="Database")
#: connections inherited across fork (see Database._connection): kept referenced so that
#: garbage collection in the child never closes the parent's connection
_ABANDONED: list[Any] = []


def _is_busy(e: sqlite3.Error) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class Database:
    """The database file of a home and its transactions (see the module docstring).

    Args:
        home: the home directory; the database is ``home/store.sqlite3``, personal heads live
            in ``home/heads/``.
        create: create the home directory and the database when missing.
        timeout: seconds to wait for the database lock held by another process or thread.
        max_db_bytes: optional cap on the database size (``PRAGMA max_page_count``).
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        *,
        create: bool = True,
        timeout: float = 30.0,
        max_db_bytes: int | None = None,
    ) -> None:
        if not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise InvalidInputError("timeout must be a non-negative number of seconds")
        if max_db_bytes is not None and (not isinstance(max_db_bytes, int) or max_db_bytes <= 0):
            raise InvalidInputError("max_db_bytes must be a positive int or None")
        try:
            self.home = Path(os.fspath(home)).expanduser().absolute()
        except TypeError:
            raise InvalidInputError(f"home must be a path, got {type(home).__name__}") from None
        self.db_path = self.home / DB_NAME
        self.heads_dir = self.home / HEADS_DIR
        self.timeout = float(timeout)
        self.max_db_bytes = max_db_bytes
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._db_identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the opened file
        self._prepare_home(create)
        self._conn = self._open_connection()
        try:
            self._migrate()
        except BaseException:
            self._close_conn()
            raise

    # -- opening ----------------------------------------------------------------------------
    def _os_error(self, e: OSError, what: str) -> StoreError:
        hints = {
            errno.ENOSPC: "disk full",
            errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted",
            errno.ENOTDIR: "a path component is not a directory",
            errno.ENOENT: "no such file or directory",
        }
        hint = hints.get(e.errno or -1, e.strerror or type(e).__name__)
        where = e.filename or self.home
        return StoreError(f"{what}: {hint} ({where}) [{type(e).__name__}: {e}]")

    def _prepare_home(self, create: bool) -> None:
        try:
            if self.home.exists() and not self.home.is_dir():
                raise StoreError(f"cannot open the store: home {self.home} exists and is not a directory")
            if not self.db_path.exists():
                if not create:
                    raise StoreError(f"no store at {self.db_path} (create=False)")
                if not self.home.is_dir():
                    self.home.parent.mkdir(parents=True, exist_ok=True)
                    _mkdir_private(self.home)
                # create the database file ourselves: 0o600 whatever the umask (SQLite gives
                # the -wal and -shm files the database file's mode)
                fd = os.open(self.db_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), _FILE_MODE)
                try:
                    os.fchmod(fd, _FILE_MODE)
                finally:
                    os.close(fd)
            elif self.db_path.is_dir():
                raise StoreError(f"cannot open the store: {self.db_path} is a directory")
            st = os.stat(self.home)
            if st.st_mode & 0o077:
                log.debug("home %s is accessible by group/others (mode %o)", self.home, stat.S_IMODE(st.st_mode))
        except OSError as e:
            raise self._os_error(e, "cannot create the store") from None

    def _sqlite_error(self, e: sqlite3.Error, what: str) -> StoreError:
        msg = str(e)
        low = msg.lower()
        if "not a database" in low or "malformed" in low or "corrupt" in low:
            hint = "the database file is corrupt or not an emoadapt store"
        elif "full" in low:
            hint = "disk full or the store's size limit (max_db_bytes) reached"
        elif "readonly" in low or "read-only" in low:
            hint = "the store is read-only (file or directory permissions, read-only file system)"
        elif "unable to open" in low:
            hint = "cannot open the database file (missing directory or no permission)"
        elif _is_busy(e):
            hint = f"the database stayed locked by another process for more than {self.timeout:g} s"
        elif "disk i/o" in low:
            hint = "I/O error (disk failing, full, or permissions changed)"
        else:
            hint = "database error"
        return StoreError(f"{what}: {hint} ({self.db_path}) [sqlite3.{type(e).__name__}: {msg}]")

    def _retrying(self, op: Callable[[], _T], what: str) -> _T:
        """Run ``op``, retrying with jittered exponential backoff while the database is locked."""
        deadline = time.monotonic() + max(self.timeout, 0.05)
        delay = 0.002
        while True:
            try:
                return op()
            except sqlite3.OperationalError as e:
                if _is_busy(e) and time.monotonic() < deadline:
                    time.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2.0, 0.25)
                    continue
                raise self._sqlite_error(e, what) from None
            except sqlite3.Error as e:
                raise self._sqlite_error(e, what) from None

    def _open_connection(self) -> sqlite3.Connection:
        what = "cannot open the store"
        try:
            conn = sqlite3.connect(
                str(self.db_path),
                timeout=self.timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
            )
        except sqlite3.Error as e:
            raise self._sqlite_error(e, what) from None
        try:

            def setup() -> None:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                conn.execute("PRAGMA secure_delete = ON")
                conn.execute("PRAGMA foreign_keys = ON")
                self._check_not_newer(conn)  # before anything writes to the file
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal_mode={mode}); is the store read-only?")
                conn.execute("PRAGMA synchronous = FULL")
                if self.max_db_bytes is not None:
                    page = conn.execute("PRAGMA page_size").fetchone()[0]
                    conn.execute(f"PRAGMA max_page_count = {max(1, self.max_db_bytes // page)}")

            self._retrying(setup, what)
            identity = self._file_identity(what)
            if self._db_identity is not None and identity != self._db_identity:
                raise self._replaced_error(what)
            self._db_identity = identity
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            raise
        return conn

    def _file_identity(self, what: str) -> tuple[int, int]:
        """(st_dev, st_ino) of the database file now at ``db_path``."""
        try:
            st = os.stat(self.db_path)
        except FileNotFoundError:
            raise self._replaced_error(what) from None
        except OSError as e:
            raise self._os_error(e, what) from None
        return st.st_dev, st.st_ino

    def _replaced_error(self, what: str) -> StoreError:
        return StoreError(
            f"{what}: the database file {self.db_path} was deleted, moved or replaced while this store "
            "had it open; nothing was written (close and open the store again to use what is there now)"
        )

    def _check_identity(self, what: str) -> None:
        """Refuse to use the open connection when the database at ``db_path`` is no longer the
        file it opened (the home deleted, moved or replaced under a live store): writes would
        go to an unlinked file that no one reads again, reads would return stale data."""
        if self._db_identity is not None and self._file_identity(what) != self._db_identity:
            raise self._replaced_error(what)

    def _check_not_newer(self, conn: sqlite3.Connection) -> int:
        v = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if v > len(schema.MIGRATIONS):
            raise StoreError(
                f"the store {self.db_path} has schema version {v}, newer than this emoadapt "
                f"understands ({len(schema.MIGRATIONS)}); upgrade emoadapt (the database was left untouched)"
            )
        return v

    def _migrate(self) -> None:
        migrations = schema.MIGRATIONS  # read at each open (tests replace it)
        target = len(migrations)
        current = self._check_not_newer

        if self._run(current, write=False, what="cannot read the store schema") == target:
            return

        def upgrade(conn: sqlite3.Connection) -> int:
            v = current(conn)  # re-read under the write lock: another process may have migrated
            for m in migrations[v:]:
                if m.version != v + 1:
                    raise StoreError(f"migration list is inconsistent at version {m.version}")
                for sql in m.statements:
                    conn.execute(sql)
                if m.apply is not None:
                    m.apply(conn, self.heads_dir)
                conn.execute(f"PRAGMA user_version = {int(m.version)}")
                v = m.version
            return v

        before = self._run(current, write=False, what="cannot read the store schema")
        self._run(upgrade, write=True, what=f"cannot migrate the store from schema version {before} to {target}")
        log.info("store %s migrated from schema version %d to %d", self.db_path, before, target)

    # -- connection and transactions --------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the store {self.db_path} is closed")
        if os.getpid() != self._pid:
            # forked child: never touch the parent's connection (SQLite forbids carrying one
            # across fork); keep it referenced so that garbage collection cannot close it here
            _ABANDONED.append(self._conn)
            self._pid = os.getpid()
            self._lock = threading.RLock()
            self._conn = self._open_connection()
        assert self._conn is not None
        return self._conn

    def _run(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool, what: str) -> _T:
        """Run ``fn(conn)`` in one transaction (``BEGIN IMMEDIATE`` when ``write``).

        The whole transaction is retried while the database is locked; any other error rolls
        it back. sqlite3/OS errors become :class:`StoreError`; emoadapt errors pass through.
        """
        with self._lock:
            conn = self._connection()
            self._check_identity(what)

            def once() -> _T:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    out = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                return out

            try:
                return self._retrying(once, what)
            except OSError as e:
                raise self._os_error(e, what) from None

    # -- lifecycle --------------------------------------------------------------------------
    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and os.getpid() == self._pid:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        """Close the database connection (idempotent). Further calls raise :class:`StoreError`."""
        with self._lock:
            self._closed = True
            self._close_conn()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.home)!r}{', closed' if self._closed else ''})"

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the open database."""
        return self._run(lambda c: int(c.execute("PRAGMA user_version").fetchone()[0]), write=False, what="cannot read the schema version")

    def _scrub(self, what: str) -> bool:
        """Checkpoint + VACUUM + checkpoint(TRUNCATE); True if the WAL was fully truncated."""
        with self._lock:
            conn = self._connection()
            self._check_identity(what)

            def checkpoint() -> bool:
                busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                return int(busy) == 0

            self._retrying(checkpoint, what)
            self._retrying(lambda: conn.execute("VACUUM"), what)
            ok = self._retrying(checkpoint, what)
        if not ok:
            log.warning("forget: another process kept the WAL busy; its old pages will be overwritten by later checkpoints")
        return ok
