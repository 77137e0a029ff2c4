"""The database schema: :data:`MIGRATIONS`, applied in order (``PRAGMA user_version``) in one
transaction when an older database is opened; migration 7 in Python (names stored before
they were normalised get their normal form, never merging two people)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..errors import InvalidInputError
from .files import _fsync_dir, remove_tree
from .names import MAX_LABEL_LENGTH, _distinct_name, _name_hash, legacy_normal_form, user_name_key

__all__ = ["LEGACY_IDENTITY_MODEL", "Migration", "MIGRATIONS", "SCHEMA_VERSION"]

log = logging.getLogger(__package__)

#: identity model of enrolment embeddings stored before they were tagged (schema < 3)
LEGACY_IDENTITY_MODEL = "dlib_resnet"


class Migration(NamedTuple):
    """One schema step: running ``statements`` on a database at ``version - 1`` gives ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]
    apply: Callable[[sqlite3.Connection, Path], None] | None = None
    """A step in Python run after ``statements`` in the same transaction, given the
    connection and the heads directory; it may move head directories (it must then be
    idempotent: a transaction that does not commit is run again on the next open)."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "users, enrolment embeddings, corrections",
        (
            """CREATE TABLE users (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created REAL NOT NULL,
                meta TEXT NOT NULL DEFAULT '{}'
            )""",
            """CREATE TABLE embeddings (
                id INTEGER PRIMARY KEY,
                user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                dim INTEGER NOT NULL CHECK (dim > 0),
                vector BLOB NOT NULL,
                source TEXT NOT NULL,
                created REAL NOT NULL
            )""",
            "CREATE INDEX embeddings_user ON embeddings(user_id, id)",
            """CREATE TABLE corrections (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                label TEXT NOT NULL,
                created REAL NOT NULL,
                model_version TEXT NOT NULL,
                n_frames INTEGER NOT NULL CHECK (n_frames > 0),
                dim INTEGER NOT NULL CHECK (dim > 0),
                features BLOB NOT NULL,
                descriptor BLOB
            )""",
            "CREATE INDEX corrections_user ON corrections(user_id, id)",
        ),
    ),
    Migration(
        2,
        "validation split, head consumption, personal heads",
        (
            "ALTER TABLE corrections ADD COLUMN held_out INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE corrections ADD COLUMN consumed_by_head INTEGER",
            """CREATE TABLE heads (
                id INTEGER PRIMARY KEY,
                user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                version INTEGER NOT NULL CHECK (version > 0),
                file TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                size INTEGER NOT NULL,
                created REAL NOT NULL,
                metrics TEXT NOT NULL DEFAULT '{}',
                n_trained INTEGER NOT NULL DEFAULT 0,
                status TEXT NOT NULL CHECK (status IN ('active', 'standby', 'retired')),
                UNIQUE (user_id, version)
            )""",
            "CREATE UNIQUE INDEX heads_one_active ON heads(user_id) WHERE status = 'active'",
        ),
    ),
    Migration(
        3,
        "a random id per user record, never reused (keys caches and checks that a head is saved for the user record its data was read from)",
        (
            "ALTER TABLE users ADD COLUMN uid TEXT",
            "UPDATE users SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL",
            "CREATE UNIQUE INDEX users_uid ON users(uid)",
        ),
    ),
    Migration(
        4,
        "identity model of each enrolment embedding (older rows: dlib_resnet)",
        (f"ALTER TABLE embeddings ADD COLUMN model TEXT NOT NULL DEFAULT '{LEGACY_IDENTITY_MODEL}'",),
    ),
    Migration(
        5,
        "drop corrections.held_out: the library never set it; which corrections are held out is "
        "decided when a head is trained (the guard of emoadapt.adaptation), not stored",
        ("ALTER TABLE corrections DROP COLUMN held_out",),  # SQLite >= 3.35
    ),
    Migration(
        6,
        "identity embedding of each correction's face and its model (older rows: none), read by "
        "the personal identity expert (emoadapt.heads.IdentityExpertHead)",
        (
            "ALTER TABLE corrections ADD COLUMN embedding BLOB",
            "ALTER TABLE corrections ADD COLUMN embedding_model TEXT",
        ),
    ),
    Migration(
        7,
        "user names in their normal form (normalize_user_name): names stored before schema 3 are "
        "renamed, a name whose normal form another user has is kept apart under a distinct name, "
        "the stored name is kept in users.former_name (Store.renamed_users); head directories move "
        "with the names; labels in their normal form",
        ("ALTER TABLE users ADD COLUMN former_name TEXT",),
        lambda conn, heads_dir: _upgrade_stored_names(conn, heads_dir),
    ),
    Migration(
        8,
        "names that differ only by case or width are one user: users.name_key (user_name_key), unique; "
        "users stored before under two such names keep both names (the older one gets the key), never merged",
        (),
        lambda conn, heads_dir: _add_name_keys(conn),
    ),
)


#: Schema version this code writes (``PRAGMA user_version`` of an up-to-date store).
SCHEMA_VERSION = len(MIGRATIONS)


def _upgrade_stored_names(conn: sqlite3.Connection, heads_dir: Path) -> None:
    """Migration 7: every user name in normal form, never two people merged.

    Users whose stored name is normal keep it. The others, in creation order, get the
    normal form of their name (:func:`legacy_normal_form`) when no user has it, else -- a
    collision, e.g. ``"\uff23arol"`` beside ``"Carol"`` -- a distinct name (``"Carol
    (2)"``; ``"user <row id>"`` when there is no normal form); the stored name goes to
    ``users.former_name``. Each renamed user's head directory moves to the hash of the new
    name inside the transaction (a rerun after a commit that failed finds it moved; the
    new names are normal, so no directory of a user that keeps its name is touched).
    Correction labels get their normal form where they have one (labels are not people:
    lookalike labels merge)."""
    rows = [(int(i), str(n)) for i, n in conn.execute("SELECT id, name FROM users ORDER BY id")]
    normal = {uid: legacy_normal_form(name) for uid, name in rows}
    taken = {name for _, name in rows}
    renamed: list[tuple[int, str, str]] = []
    for uid, name in rows:
        if normal[uid] != name:
            new = _distinct_name(normal[uid] or f"user {uid}", taken)
            taken.add(new)
            renamed.append((uid, name, new))
    moved = 0
    for uid, old, new in renamed:
        conn.execute("UPDATE users SET name = ?, former_name = ? WHERE id = ?", (new, old, uid))
        src, dst = heads_dir / _name_hash(old), heads_dir / _name_hash(new)
        if os.path.lexists(src):
            if os.path.lexists(dst):  # no user has the new name: debris of a forgotten one
                remove_tree(dst)
            os.rename(src, dst)
            moved += 1
    if moved:
        _fsync_dir(heads_dir)
    n_labels = 0
    for (label,) in conn.execute("SELECT DISTINCT label FROM corrections").fetchall():
        new_label = legacy_normal_form(str(label), MAX_LABEL_LENGTH)
        if new_label is not None and new_label != label:
            n_labels += conn.execute("UPDATE corrections SET label = ? WHERE label = ?", (new_label, label)).rowcount
    if renamed or n_labels:
        # no names in the log (the store never logs them): Store.renamed_users() lists them
        log.warning(
            "store upgrade: %d user name(s) stored before names were normalised now have their normal form, %d of them a "
            "distinct name because another user has that form (or it has none): see Store.renamed_users() or `emoadapt "
            "users`; %d correction label(s) normalised",
            len(renamed),
            sum(new != normal[uid] for uid, _, new in renamed),
            n_labels,
        )


def _add_name_keys(conn: sqlite3.Connection) -> None:
    """Migration 8: every user's :func:`user_name_key`, unique. Users are taken in creation
    order; one whose key an older user already has (``"Alice"`` beside ``"alice"``, both
    stored before this version) keeps no key: it stays reachable by its exact name, and a
    name that only folds to it reaches the older user. Two people are never merged."""
    if "name_key" not in {str(r[1]) for r in conn.execute("PRAGMA table_info(users)")}:
        conn.execute("ALTER TABLE users ADD COLUMN name_key TEXT")
    conn.execute("UPDATE users SET name_key = NULL")  # idempotent: a store rewound from a later version is keyed again
    taken: set[str] = set()
    apart = 0
    for uid, name in conn.execute("SELECT id, name FROM users ORDER BY id").fetchall():
        try:
            key: str | None = user_name_key(str(name))
        except InvalidInputError:  # a name migration 7 left unusable is reachable by its exact form only
            key = None
        if key is not None and key in taken:
            key, apart = None, apart + 1
        if key is not None:
            taken.add(key)
            conn.execute("UPDATE users SET name_key = ? WHERE id = ?", (key, int(uid)))
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS users_name_key ON users(name_key)")
    if apart:
        log.warning(
            "store upgrade: %d user(s) have a name that differs from an older user's only by case or width; both stay "
            "apart (never merged) and reachable by their exact names, other spellings reach the older user",
            apart,
        )
