"""Feedback store: users, enrolment embeddings, corrections and personal heads (SQLite).

Everything a :class:`~emoadapt.Recognizer` learns about its users lives under its home
directory::

    home/                      0o700 (when created here)
        store.sqlite3          0o600   SQLite database in WAL mode (+ -wal / -shm, same mode)
        heads/                 0o700
            <user-hash>/       0o700   sha256 of the user name: raw names never reach a path
                v1.npz         0o600   personal head, version 1 (plain arrays, no pickles)
                v2.npz ...

What is stored -- never pixels:

* **users**: a unique name (see :func:`normalize_user_name`: NFKC, spaces collapsed, no
  control or invisible characters, at most 128 characters), a random ``uid`` that a user
  created again under a forgotten name never shares, the creation time and JSON metadata,
  and the name it was stored under before the upgrade to normal names when that differed
  (``former_name``, schema version 7, see below);
* **embeddings**: enrolment face descriptors (float32 vectors, e.g. the 192-D MobileFaceNet
  or 128-D dlib ones) with a source tag and the name of the identity model that made them
  (rows written before schema version 4 are ``dlib_resnet``, the only model then), the
  gallery of the identity matcher;
* **corrections**: one row per ``recognizer.correct(clip, label)``: the label (see
  :func:`normalize_label`; case is kept), the per-frame backbone
  features ``(T, D)`` and optionally a clip descriptor ``(D',)`` as float32 blobs, the
  version of the model that produced them, optionally the face's identity embedding and its
  model (schema version 6; :meth:`Store.correction_embeddings`, read by the personal
  identity expert) and
  ``consumed_by_head``: the head version that was trained on the row (``None`` until then);
* **heads**: personal classifier heads, one ``.npz`` file per version with its sha256,
  metrics (JSON) and a status: ``active`` (at most one per user, enforced by a unique
  index), ``standby`` (older complete versions, the fallback) or ``retired`` (rolled back).

Guarantees:

* **Durability.** Every write is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) with
  ``PRAGMA synchronous=FULL``: an id returned by :meth:`Store.add_correction` is on disk.
* **Crash safety of heads.** :meth:`Store.save_head` writes the file to a temporary name in
  the same directory, fsyncs it, then -- inside the write transaction -- renames it to
  ``v<version>.npz``, fsyncs the directory and only then inserts the row and makes it
  active. A crash at any moment leaves either the old head active or the new, complete one;
  temporary files are never referenced by a row. :meth:`Store.active_head` verifies the
  sha256 and falls back to the newest intact older version if the active file is damaged.
* **Concurrency.** Several processes (and threads: one Store may be shared, a lock
  serialises its connection) can use one home at the same time: waits of up to ``timeout``
  seconds for the database lock (``busy_timeout``), then retries with backoff.
* **The file it opened.** Before every transaction the store checks that ``store.sqlite3``
  is still the file it opened (``st_dev``, ``st_ino``): a home deleted, moved or replaced
  under an open store, or a database restored from a copy, raises :class:`StoreError`
  instead of reading stale data or writing to an unlinked file no one reads again.
* **User records.** Every user row has a random ``uid``; a user forgotten and created again
  under the same name gets a new one. :meth:`Store.save_head` (``user_uid=``) refuses to
  save a head for another record than the one its training data was read from, and caches
  keyed by :meth:`Store.active_head_key` never serve a forgotten user's head.
* **Forgetting.** :meth:`Store.forget` deletes a user's rows and head files, then
  ``VACUUM`` + ``wal_checkpoint(TRUNCATE)`` with ``PRAGMA secure_delete=ON`` so that no
  byte of the user's name, embeddings or features remains in the database files (blocks the
  file system itself has released are outside the store's reach).
* **Errors.** Everything is reported as :class:`~emoadapt.errors.StoreError` (cannot open,
  read-only, disk full, corrupt or newer database), :class:`~emoadapt.errors.UnknownUserError`
  or :class:`~emoadapt.errors.InvalidInputError`; no raw ``sqlite3`` exception escapes.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` are applied in
order, in one transaction, when an older database is opened. A database written by a
newer emoadapt raises :class:`StoreError` and is left untouched.

**Upgrades keep every user reachable.** Stores written before names were normalised
(schema 2, also when later opened by schemas 3-6) may hold names that are not in normal
form -- a double space, a full-width letter, a ligature, a no-break or zero-width space.
Migration 7 gives every user its normal name (:func:`legacy_normal_form`), moves its head
directory with it, and never merges two people: a user whose normal form another user has
(``"\uff23arol"`` beside ``"Carol"``) is kept apart as ``"Carol (2)"``, one with no
valid form becomes ``"user <row id>"``; a warning is logged (without names) and
:meth:`Store.renamed_users` lists them. Every user is then reachable, listable and
forgettable by the name :meth:`Store.users` shows; a former name that now reads as another
user's raises :class:`~emoadapt.errors.AmbiguousUserError` instead of reaching (or
forgetting) that other user.

Example::

    with Store(home) as st:
        st.add_user("alice")
        cid = st.add_correction("alice", "surprise", feats, descriptor, "fer-mini-xception@1")
        feats, labels, ids = st.correction_data("alice")
        v = st.save_head("alice", {"coef": W, "intercept": b}, meta={"type": "StatPoolingHead"},
                         metrics={"val_acc": 0.8}, trained_on=ids)
        arrays, meta = st.active_head("alice")
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
import unicodedata
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from .errors import (
    AmbiguousUserError,
    EmoadaptError,
    InvalidInputError,
    ModelIntegrityError,
    StoreError,
    UnknownUserError,
)

__all__ = [
    "Store",
    "Migration",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DB_NAME",
    "HEADS_DIR",
    "MAX_LABEL_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_HEAD_BYTES",
    "UserRecord",
    "RenamedUser",
    "CorrectionRecord",
    "CorrectionData",
    "DescriptorData",
    "HeadRecord",
    "LoadedHead",
    "ForgetReport",
    "user_dir_name",
    "normalize_label",
    "normalize_user_name",
    "legacy_normal_form",
]

log = logging.getLogger(__name__)

DB_NAME = "store.sqlite3"
HEADS_DIR = "heads"
MAX_LABEL_LENGTH = 64
MAX_NAME_LENGTH = 128
_MAX_TAG_LENGTH = 128

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_F32 = np.dtype("<f4")
_META_KEY = "__meta__"
_HEAD_FILE_RE = re.compile(r"^v([0-9]+)\.npz$")
_TMP_PREFIX = ".tmp-head-"
_TMP_MAX_AGE_S = 3600.0  # temp files older than this are debris of a crashed writer
_ARRAY_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
#: Largest head file read, and largest total its arrays may declare (bounds the memory a
#: damaged or hostile head file can take; personal heads are well under 1 MB).
MAX_HEAD_BYTES = 64 * 1024 * 1024
_IN_CHUNK = 500  # ids per "IN (...)" (SQLite's variable limit is >= 999)

_T = TypeVar("_T")

#: identity model of enrolment embeddings stored before they were tagged (schema < 3)
LEGACY_IDENTITY_MODEL = "dlib_resnet"


# ---------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------
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
)

#: Schema version this code writes (``PRAGMA user_version`` of an up-to-date store).
SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserRecord:
    """A user row."""

    name: str
    created: float
    """Unix time."""
    meta: dict[str, Any]
    uid: str = ""
    """Random id of this user record (32 hex digits): a user forgotten and created again
    under the same name gets a new one."""
    former_name: str | None = None
    """The name the user was stored under before the store was upgraded to normal names
    (schema 7), when it differed; ``None`` otherwise (see :meth:`Store.renamed_users`)."""


@dataclass(frozen=True)
class RenamedUser:
    """A user the upgrade to schema 7 renamed (see :meth:`Store.renamed_users`)."""

    name: str
    """The name now: what :meth:`Store.users` lists and every method takes."""
    former_name: str
    """The name as stored before (not in normal form: spaces, compatibility or invisible
    characters)."""
    normal_form: str | None
    """:func:`legacy_normal_form` of ``former_name``; ``None`` when nothing of it is a valid
    name (only invisible characters, too long)."""

    @property
    def kept_apart(self) -> bool:
        """True when the user did not get the normal form of its former name: another user
        had it (two people are never merged) or there is none."""
        return self.name != self.normal_form


@dataclass(frozen=True)
class CorrectionRecord:
    """A correction row without its arrays (see :meth:`Store.correction_data`)."""

    id: int
    user: str
    label: str
    created: float
    """Unix time."""
    model_version: str
    n_frames: int
    dim: int
    """Per-frame feature dimension D."""
    descriptor_dim: int | None
    """Length of the clip descriptor, ``None`` when none was stored."""
    consumed_by_head: int | None
    """Version of the head trained on this correction, ``None`` while unused."""


class CorrectionData(NamedTuple):
    """Training data of a user: ``features, labels, ids = store.correction_data(user)``."""

    features: list[np.ndarray]
    """One float32 ``(T, D)`` array per correction."""
    labels: list[str]
    ids: list[int]


class DescriptorData(NamedTuple):
    """Clip descriptors of the corrections that have one."""

    descriptors: list[np.ndarray]
    """One float32 ``(D',)`` array per correction."""
    labels: list[str]
    ids: list[int]


@dataclass(frozen=True)
class HeadRecord:
    """A head row (file name relative to the user's head directory)."""

    version: int
    file: str
    sha256: str
    size: int
    created: float
    metrics: dict[str, Any]
    n_trained: int
    """Corrections marked as consumed by this version when it was saved."""
    status: str
    """``"active"``, ``"standby"`` or ``"retired"``."""


@dataclass(frozen=True)
class LoadedHead:
    """A verified head. Unpacks as ``arrays, meta = store.active_head(user)``."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    version: int
    sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    fell_back: bool = False
    """True when the active version was damaged and this is an older intact one."""
    user_uid: str = ""
    """:attr:`UserRecord.uid` of the user record the head belongs to."""
    active_version: int | None = None
    """The version marked active (differs from ``version`` when ``fell_back``)."""
    head: Any = None
    """What ``build(arrays, meta)`` returned, when :meth:`Store.active_head` got a ``build``."""

    def __iter__(self) -> Iterator[Any]:
        yield self.arrays
        yield self.meta


@dataclass(frozen=True)
class ForgetReport:
    """What :meth:`Store.forget` removed."""

    user_existed: bool
    embeddings: int
    corrections: int
    heads: int
    files_removed: int
    scrubbed: bool
    """True when the WAL was checkpointed and truncated after ``VACUUM``, i.e. no old page
    image with the user's data is left in ``store.sqlite3-wal``."""


# ---------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------
def _clean_text(value: Any, what: str, max_len: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__}")
    s = value.strip()
    if not s and not allow_empty:
        raise InvalidInputError(f"{what} must not be empty")
    if len(s) > max_len:
        raise InvalidInputError(f"{what} is longer than {max_len} characters ({len(s)})")
    if _CONTROL_RE.search(s):
        raise InvalidInputError(f"{what} contains control characters")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise InvalidInputError(f"{what} is not valid unicode: {e}") from None
    return s


# characters that display as nothing but are not of a format/control category
_INVISIBLE = frozenset(
    [0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0, *range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]
)
_REFUSED_CATEGORIES = {
    "Cc": "control",
    "Cf": "zero-width or bidi-control (format)",
    "Cs": "surrogate",
    "Co": "private-use",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}


def _display_text(value: Any, what: str, max_len: int) -> str:
    """A name as it displays: NFKC-folded (compatibility forms such as full-width letters,
    ligatures and no-break / ideographic spaces become their plain equivalents), every run
    of spaces one space, stripped; refused when empty, too long, or holding a character
    that displays as nothing or reorders text (control, format such as zero-width and bidi
    controls, surrogate, private-use, line/paragraph separators, fillers and variation
    selectors), so that two strings that display the same are equal or an error."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__}")
    if len(value) > 8 * max_len:  # before normalising: NFKC of a huge string is slow
        raise InvalidInputError(f"{what} is longer than {max_len} characters ({len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise InvalidInputError(f"{what} is not valid unicode: {e}") from None
    s = unicodedata.normalize("NFKC", value).strip()  # outer whitespace (a trailing newline) goes
    for ch in s:
        cat = unicodedata.category(ch)
        if cat in _REFUSED_CATEGORIES:
            raise InvalidInputError(f"{what} contains a {_REFUSED_CATEGORIES[cat]} character (U+{ord(ch):04X})")
        if ord(ch) in _INVISIBLE:
            raise InvalidInputError(f"{what} contains an invisible character (U+{ord(ch):04X})")
    s = " ".join(s.split())  # str.split(): every run of Unicode spaces (Zs) -> one space
    if not s:
        raise InvalidInputError(f"{what} must not be empty")
    if len(s) > max_len:
        raise InvalidInputError(f"{what} is longer than {max_len} characters ({len(s)})")
    return s


def normalize_label(label: Any) -> str:
    """A validated label as it displays (see :func:`normalize_user_name`): NFKC, whitespace
    runs collapsed and stripped, non-empty, at most 64 characters, no control or invisible
    characters. Case is kept (``"Surprise"`` and ``"surprise"`` are different labels here;
    :meth:`emoadapt.Recognizer.correct` maps case and synonyms onto the known labels, see
    :mod:`emoadapt.labels`)."""
    return _display_text(label, "label", MAX_LABEL_LENGTH)


def normalize_user_name(name: Any) -> str:
    """The canonical form of a user name, applied by the Store, the Recognizer and the CLI
    before any lookup: Unicode NFKC (full-width forms, ligatures, no-break and ideographic
    spaces fold to their plain equivalents), every whitespace run one space, stripped.
    Names holding control, zero-width, bidi-control or other invisible characters are
    refused (:class:`~emoadapt.errors.InvalidInputError`), as are empty names and names
    longer than 128 characters. Two names that display the same are therefore the same
    user or an error; case is kept (``"Alice"`` and ``"alice"`` are two users)."""
    return _display_text(name, "user name", MAX_NAME_LENGTH)


_user_name = normalize_user_name


def user_dir_name(name: str) -> str:
    """Name of the user's head directory: hex sha256 of the (validated) user name, so that
    no user-controlled string ever becomes part of a path."""
    return _name_hash(_user_name(name))


def _name_hash(stored: str) -> str:
    """:func:`user_dir_name` of a name as stored (before schema 7: maybe not normalised)."""
    return hashlib.sha256(b"emoadapt-user\x00" + stored.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------
# migration 7: names stored before they were normalised
# ---------------------------------------------------------------------------------------
def _drop_invisible(s: str) -> str:
    """``s`` without the characters :func:`normalize_user_name` refuses (they display as
    nothing or only reorder text); line and paragraph separators become spaces."""
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if cat in ("Zl", "Zp"):
            out.append(" ")
        elif cat not in _REFUSED_CATEGORIES and ord(ch) not in _INVISIBLE:
            out.append(ch)
    return "".join(out)


def legacy_normal_form(stored: str, max_len: int = MAX_NAME_LENGTH) -> str | None:
    """Today's form of a user name (or a label, ``max_len=MAX_LABEL_LENGTH``) stored before
    names were normalised (schema < 3): what it displays as -- invisible and bidi-control
    characters dropped, then NFKC and spaces as :func:`normalize_user_name` -- cut to
    ``max_len`` characters; ``None`` when nothing valid is left. A name in normal form is
    returned unchanged."""
    s = _drop_invisible(unicodedata.normalize("NFKC", _drop_invisible(stored)))
    s = " ".join(s.split())[:max_len].rstrip()
    try:
        return _display_text(s, "name", max_len) if s else None
    except InvalidInputError:  # a cut that NFKC reads otherwise
        return None


def _distinct_name(base: str, taken: set[str]) -> str:
    """``base`` when free, else ``"base (2)"``, ``"base (3)"``, ... (a name in normal form;
    ``base`` is cut to make room for the suffix)."""
    if base not in taken:
        return base
    k = 2
    while True:
        suffix = f" ({k})"
        cand = legacy_normal_form(base[: MAX_NAME_LENGTH - len(suffix)].rstrip() + suffix)
        if cand is not None and cand not in taken:
            return cand
        k += 1


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
                Store._remove_tree(dst)
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


def _asarray(x: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise InvalidInputError(f"{what} is not an array: {e}") from None


def _as_f32(x: Any, ndim: int, what: str) -> np.ndarray:
    """``x`` as a C-contiguous little-endian float32 array of ``ndim`` dims, all finite."""
    a = _asarray(x, what)
    if a.dtype.kind not in "fiu":
        raise InvalidInputError(f"{what} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise InvalidInputError(f"{what} must have {ndim} dimension(s), got shape {a.shape}")
    if a.size == 0 or min(a.shape) < 1:
        raise InvalidInputError(f"{what} is empty (shape {a.shape})")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(a, dtype=_F32)
    if not np.isfinite(out).all():
        raise InvalidInputError(f"{what} contains NaN or infinite values (after conversion to float32)")
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _to_json(obj: Any, what: str) -> str:
    if obj is None:
        obj = {}
    if not isinstance(obj, Mapping):
        raise InvalidInputError(f"{what} must be a mapping, got {type(obj).__name__}")
    try:
        return json.dumps(dict(obj), sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{what} is not JSON serializable: {e}") from None


def _from_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        out = json.loads(text)
    except ValueError as e:
        raise StoreError(f"corrupt JSON in the store: {e}") from None
    return out if isinstance(out, dict) else {}


def _blob_to_f32(blob: bytes, shape: tuple[int, ...], what: str) -> np.ndarray:
    n = math.prod(shape)
    if blob is None or len(blob) != n * _F32.itemsize:
        raise StoreError(f"corrupt {what} in the store: {0 if blob is None else len(blob)} bytes for shape {shape}")
    return np.frombuffer(blob, dtype=_F32).reshape(shape).astype(np.float32, copy=True)


def _ids(ids: Iterable[Any], what: str = "ids") -> list[int]:
    if isinstance(ids, (str, bytes)):
        raise InvalidInputError(f"{what} must be integers")
    try:
        it = iter(ids)
    except TypeError:
        raise InvalidInputError(f"{what} must be an iterable of integers, got {type(ids).__name__}") from None
    out: list[int] = []
    for i in it:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise InvalidInputError(f"{what} must be integers, got {type(i).__name__}")
        if not -(2**63) <= int(i) < 2**63:
            raise InvalidInputError(f"{what}: {int(i)} is out of the 64-bit range")
        out.append(int(i))
    return out


def _chunks(seq: Sequence[int], n: int = _IN_CHUNK) -> Iterator[Sequence[int]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _where(*conds: tuple[str, Sequence[Any]] | None) -> tuple[str, list[Any]]:
    """``(" WHERE a AND b", args)`` from ``(condition, args)`` pairs (``None`` ones skipped;
    ``("", [])`` when none is left)."""
    used = [c for c in conds if c is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(c for c, _ in used), [a for _, args in used for a in args]


def _in_chunks(conn: sqlite3.Connection, sql: str, args: Sequence[Any], ids: Sequence[int]) -> Iterator[sqlite3.Cursor]:
    """Run ``sql`` once per chunk of ``ids`` (``{ids}`` in ``sql`` becomes the chunk's ``?, ?,
    ...``; its values follow ``args``), keeping under SQLite's variable limit."""
    for chunk in _chunks(ids):
        yield conn.execute(sql.replace("{ids}", ",".join("?" * len(chunk))), [*args, *chunk])


def _heads_to_drop(rows: Iterable[tuple[int, str, str]], keep_heads: int | None) -> list[tuple[int, str]]:
    """The retention policy: ``(id, file)`` of the non-active head versions to delete, from
    ``(id, file, status)`` rows newest first: every retired version, and standby versions
    beyond the ``keep_heads - 1`` newest (the active one counts; ``None`` keeps them all)."""
    keep_standby = None if keep_heads is None else keep_heads - 1
    drop: list[tuple[int, str]] = []
    n_standby = 0
    for hid, fname, status in rows:
        if status == "standby" and (keep_standby is None or n_standby < keep_standby):
            n_standby += 1
            continue
        drop.append((int(hid), fname))
    return drop


def _unlink_all(paths: Iterable[Path]) -> None:
    """Delete files (missing ones are fine; other failures are logged, not raised)."""
    for p in dict.fromkeys(paths):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not delete old head file %s: %s", p, e)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir_private(path: Path) -> bool:
    """Create ``path`` with mode 0o700 whatever the umask; True if it was created."""
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(path)) from None
        return False
    os.chmod(path, _DIR_MODE)
    return True


def _is_busy(e: sqlite3.Error) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


# ---------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------
class Store:
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
        self.keep_heads = keep_heads
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
        if v > len(MIGRATIONS):
            raise StoreError(
                f"the store {self.db_path} has schema version {v}, newer than this emoadapt "
                f"understands ({len(MIGRATIONS)}); upgrade emoadapt (the database was left untouched)"
            )
        return v

    def _migrate(self) -> None:
        migrations = MIGRATIONS
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

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.home)!r}{', closed' if self._closed else ''})"

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the open database."""
        return self._run(lambda c: int(c.execute("PRAGMA user_version").fetchone()[0]), write=False, what="cannot read the schema version")

    # -- users ------------------------------------------------------------------------------
    def add_user(self, name: str, meta: Mapping[str, Any] | None = None) -> bool:
        """Create user ``name`` (idempotent). Returns True if the user was created.

        ``meta`` (JSON-serializable mapping) replaces the stored metadata when given, also
        for an existing user; ``None`` leaves it unchanged.
        """
        name = self._name(name)
        meta_json = None if meta is None else _to_json(meta, "meta")

        def tx(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO users (name, created, meta, uid) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
                (name, time.time(), meta_json or "{}", uuid.uuid4().hex),
            )
            created = cur.rowcount == 1
            if not created and meta_json is not None:
                conn.execute("UPDATE users SET meta = ? WHERE name = ?", (meta_json, name))
            return created

        return self._run(tx, write=True, what=f"cannot add user {name!r}")

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
        """``user`` normalised (:func:`normalize_user_name`), checked against the names
        stored before the upgrade to schema 7: a name that was the stored name of a user
        renamed to something else than what it reads as raises
        :class:`~emoadapt.errors.AmbiguousUserError` (``forget("\uff23arol")`` never forgets
        ``"Carol"`` when ``"\uff23arol"`` was another user). Names in normal form cost no
        lookup (no former name is in normal form)."""
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
        return name

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
    def add_embeddings(self, user: str, embeddings: Any, source: str = "enrol", model: str = LEGACY_IDENTITY_MODEL) -> int:
        """Append enrolment embeddings ``(N, D)`` (or one ``(D,)``) made by identity ``model``
        to the user's gallery.

        Stored as float32; all embeddings of a user made by one model must share D. Returns N.
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
            now = time.time()
            conn.executemany(
                "INSERT INTO embeddings (user_id, dim, vector, source, created, model) VALUES (?, ?, ?, ?, ?, ?)",
                ((uid, d, row.tobytes(), source, now, model) for row in emb),
            )
            return n

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

    # -- corrections ------------------------------------------------------------------------
    def add_correction(
        self,
        user: str,
        label: str,
        frame_features: Any,
        descriptor: Any = None,
        model_version: str = "",
        *,
        embedding: Any = None,
        embedding_model: str | None = None,
    ) -> int:
        """Store one correction and return its id once it is committed (durable).

        Args:
            user: an existing user (:class:`UnknownUserError` otherwise).
            label: the correct label (see :func:`normalize_label`).
            frame_features: per-frame backbone features ``(T, D)``, stored as float32.
            descriptor: optional clip descriptor ``(D',)``, stored as float32.
            model_version: version of the model that computed the features.
            embedding: optional identity embedding ``(E,)`` of the clip's face, stored as
                float32 (read by :meth:`correction_embeddings`); needs ``embedding_model``.
            embedding_model: the identity model that computed ``embedding``.
        """
        name = self._name(user)
        label = normalize_label(label)
        feats = _as_f32(frame_features, 2, "frame_features")
        desc = None if descriptor is None else _as_f32(descriptor, 1, "descriptor")
        model_version = _clean_text(model_version, "model_version", _MAX_TAG_LENGTH, allow_empty=True)
        if (embedding is None) != (embedding_model is None):
            raise InvalidInputError("embedding and embedding_model go together: give both or neither")
        eblob = None if embedding is None else _as_f32(embedding, 1, "embedding").tobytes()
        emodel = None if embedding_model is None else _clean_text(embedding_model, "embedding_model", _MAX_TAG_LENGTH)
        t, d = feats.shape
        fblob = feats.tobytes()
        dblob = None if desc is None else desc.tobytes()

        def tx(conn: sqlite3.Connection, uid: int) -> int:
            cur = conn.execute(
                "INSERT INTO corrections (user_id, label, created, model_version, n_frames, dim, features, descriptor, embedding, embedding_model)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, label, time.time(), model_version, t, d, fblob, dblob, eblob, emodel),
            )
            return int(cur.lastrowid or 0)

        return self._user_run(name, tx, write=True, what=f"cannot store a correction of {name!r}")

    _CORR_COLS = "c.id, u.name, c.label, c.created, c.model_version, c.n_frames, c.dim, length(c.descriptor), c.consumed_by_head"

    def _select_corrections(
        self, name: str, cols: str, ids: Sequence[int] | None, unconsumed: bool, *conds: tuple[str, Sequence[Any]]
    ) -> list[tuple[Any, ...]]:
        """Rows ``cols`` of the user's corrections (``c``, joined with ``u`` = users) by id."""

        def tx(conn: sqlite3.Connection, uid: int) -> list[tuple[Any, ...]]:
            where, args = _where(
                ("c.user_id = ?", (uid,)), ("c.consumed_by_head IS NULL", ()) if unconsumed else None, *conds, None if ids is None else ("c.id IN ({ids})", ())
            )
            sql = f"SELECT {cols} FROM corrections c JOIN users u ON u.id = c.user_id{where} ORDER BY c.id"
            if ids is None:
                return conn.execute(sql, args).fetchall()
            return sorted((r for cur in _in_chunks(conn, sql, args, ids) for r in cur), key=lambda r: r[0])

        return self._user_run(name, tx, write=False, what="cannot read corrections")

    def corrections(self, user: str, *, unconsumed: bool = False, ids: Sequence[int] | None = None) -> list[CorrectionRecord]:
        """The user's corrections without arrays, oldest first.

        ``unconsumed`` keeps those no head was trained on, ``ids`` restricts to the given ids.
        """
        name = self._name(user)
        rows = self._select_corrections(name, self._CORR_COLS, None if ids is None else _ids(ids), unconsumed)
        return [
            CorrectionRecord(
                id=int(r[0]),
                user=r[1],
                label=r[2],
                created=float(r[3]),
                model_version=r[4],
                n_frames=int(r[5]),
                dim=int(r[6]),
                descriptor_dim=None if r[7] is None else int(r[7]) // _F32.itemsize,
                consumed_by_head=None if r[8] is None else int(r[8]),
            )
            for r in rows
        ]

    def correction_data(self, user: str, *, unconsumed: bool = False, ids: Sequence[int] | None = None) -> CorrectionData:
        """``features, labels, ids`` of the user's corrections (filters as in :meth:`corrections`).

        ``features`` are float32 ``(T, D)`` arrays, bit-identical to what was stored.
        """
        idl = None if ids is None else _ids(ids)
        rows = self._select_corrections(self._name(user), "c.id, c.label, c.n_frames, c.dim, c.features", idl, unconsumed)
        feats = [_blob_to_f32(r[4], (int(r[2]), int(r[3])), f"features of correction {r[0]}") for r in rows]
        return CorrectionData(feats, [r[1] for r in rows], [int(r[0]) for r in rows])

    def correction_embeddings(self, user: str, model: str, *, ids: Sequence[int] | None = None) -> dict[int, np.ndarray]:
        """``{correction id: identity embedding (E,) float32}`` of the user's corrections whose
        face was embedded by the identity model ``model`` (``ids`` restricts to those ids)."""
        idl = None if ids is None else _ids(ids)
        model = _clean_text(model, "model", _MAX_TAG_LENGTH)
        rows = self._select_corrections(self._name(user), "c.id, c.embedding", idl, False, ("c.embedding IS NOT NULL AND c.embedding_model = ?", (model,)))
        return {int(r[0]): _blob_to_f32(r[1], (len(r[1]) // _F32.itemsize,), f"embedding of correction {r[0]}") for r in rows}

    def descriptor_data(self, user: str, *, unconsumed: bool = False, ids: Sequence[int] | None = None) -> DescriptorData:
        """``descriptors, labels, ids`` of the user's corrections that have a clip descriptor."""
        idl = None if ids is None else _ids(ids)
        rows = self._select_corrections(self._name(user), "c.id, c.label, c.descriptor", idl, unconsumed, ("c.descriptor IS NOT NULL", ()))
        descs = [_blob_to_f32(r[2], (len(r[2]) // _F32.itemsize,), f"descriptor of correction {r[0]}") for r in rows]
        return DescriptorData(descs, [r[1] for r in rows], [int(r[0]) for r in rows])

    def count_since_last_head(self, user: str) -> int:
        """Corrections that no head has consumed yet: the trigger for retraining the user's
        personal head."""

        def tx(conn: sqlite3.Connection, uid: int) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM corrections WHERE user_id = ? AND consumed_by_head IS NULL", (uid,)).fetchone()[0])

        return self._user_run(self._name(user), tx, write=False, what="cannot count corrections")

    def label_counts(self, user: str) -> dict[str, int]:
        """``{label: number of corrections}`` of the user."""

        def tx(conn: sqlite3.Connection, uid: int) -> dict[str, int]:
            sql = "SELECT label, COUNT(*) FROM corrections WHERE user_id = ? GROUP BY label ORDER BY label"
            return {r[0]: int(r[1]) for r in conn.execute(sql, (uid,))}

        return self._user_run(self._name(user), tx, write=False, what="cannot count corrections")

    # -- heads ------------------------------------------------------------------------------
    @staticmethod
    def _head_payload(arrays: Mapping[str, Any], meta: Mapping[str, Any] | None) -> bytes:
        if not isinstance(arrays, Mapping) or not arrays:
            raise InvalidInputError("arrays must be a non-empty mapping of name -> array")
        payload: dict[str, np.ndarray] = {}
        for k, v in arrays.items():
            if not isinstance(k, str) or not _ARRAY_KEY_RE.match(k) or k == _META_KEY:
                raise InvalidInputError(f"bad array name {k!r} (letters, digits, _ . -; not {_META_KEY!r})")
            a = _asarray(v, f"arrays[{k!r}]")
            if a.dtype.kind not in "biufcUS":
                raise InvalidInputError(f"arrays[{k!r}] has dtype {a.dtype}; only numeric, bool and string arrays are stored (no pickles)")
            payload[k] = a
        payload[_META_KEY] = np.array(_to_json(meta, "meta"))
        buf = io.BytesIO()
        np.savez(buf, **payload)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        return buf.getvalue()

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
        blob = self._head_payload(arrays, meta)
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
            os.replace(current, final)
            current = final
            _fsync_dir(udir)
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
        return [udir / f for _, f in drop] + self._debris(udir, referenced)

    def _head_file_error(self, e: OSError, name: str, user_uid: str | None, what: str) -> EmoadaptError:
        """The error for a failed head file operation: UnknownUserError when the user was
        forgotten meanwhile (a concurrent forget removes the user's directory under a save),
        else StoreError."""
        try:  # under the write lock: a forget removes the directory before its commit
            self._run(lambda c: self._user_uid_check(c, name, user_uid), write=True, what=what)
        except UnknownUserError as gone:
            return gone
        return self._os_error(e, what)

    @staticmethod
    def _debris(udir: Path, referenced: set[str]) -> list[Path]:
        """Head files of ``udir`` no row references (crashed saves) and stale temp files."""
        out: list[Path] = []
        now = time.time()
        try:
            entries = list(os.scandir(udir))
        except OSError:
            return out
        for e in entries:
            if _HEAD_FILE_RE.match(e.name) and e.name not in referenced:
                out.append(Path(e.path))
            elif e.name.startswith(_TMP_PREFIX):
                with contextlib.suppress(OSError):
                    if now - e.stat(follow_symlinks=False).st_mtime > _TMP_MAX_AGE_S:
                        out.append(Path(e.path))
        return out

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

    def _load_verified(self, name: str, rec: HeadRecord) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Read, size- and sha256-check and parse a head file; ModelIntegrityError on any
        problem. Memory stays bounded by :data:`MAX_HEAD_BYTES` whatever the file or the
        database row claims: the file size is checked before reading, and the sizes the
        archive declares for its members before decompressing them."""
        if not _HEAD_FILE_RE.match(rec.file):
            raise ModelIntegrityError(f"head v{rec.version}: bad file name {rec.file!r} in the store")
        path = self._user_head_dir(name) / rec.file
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != rec.size or size > MAX_HEAD_BYTES:
                    raise ModelIntegrityError(
                        f"head v{rec.version} ({path}) is damaged: {size} bytes, expected {rec.size}"
                        + (f" (at most {MAX_HEAD_BYTES} are read)" if size > MAX_HEAD_BYTES else "")
                    )
                data = f.read(MAX_HEAD_BYTES + 1)
        except OSError as e:
            raise ModelIntegrityError(f"head v{rec.version} ({path}) cannot be read: {e}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != rec.sha256 or len(data) != rec.size:
            raise ModelIntegrityError(
                f"head v{rec.version} ({path}) is damaged: sha256 {digest[:12]}.. ({len(data)} bytes), expected {rec.sha256[:12]}.. ({rec.size} bytes)"
            )
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                declared = sum(i.file_size for i in zf.infolist())
            if declared > MAX_HEAD_BYTES:
                raise ValueError(f"its arrays would take {declared} bytes (at most {MAX_HEAD_BYTES})")
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta_arr = arrays.pop(_META_KEY)
            meta = json.loads(str(meta_arr[()]))
            if not isinstance(meta, dict):
                raise ValueError("metadata is not a JSON object")
        except Exception as e:  # matching sha256 but unreadable (also RecursionError, MemoryError): written by something else
            raise ModelIntegrityError(f"head v{rec.version} ({path}) is malformed: {type(e).__name__}: {e}") from None
        return arrays, meta

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
            files = self._remove_tree(udir)
            return row is not None, counts[0], counts[1], counts[2], files

        existed, n_emb, n_corr, n_heads, n_files = self._run(tx, write=True, what=what)
        scrubbed = self._scrub(what)
        if not existed and not missing_ok:
            raise UnknownUserError(f"unknown user {name!r}")
        log.info("forgot a user: %d embeddings, %d corrections, %d heads, %d files", n_emb, n_corr, n_heads, n_files)
        return ForgetReport(existed, n_emb, n_corr, n_heads, n_files, scrubbed)

    @staticmethod
    def _remove_tree(path: Path) -> int:
        """Delete directory ``path`` (never following symlinks); returns the number of files.
        Retries if a concurrent writer adds a temp file meanwhile."""
        if not os.path.lexists(path):
            return 0
        n = sum(len(files) for _, _, files in os.walk(path))
        for attempt in range(5):
            try:
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    shutil.rmtree(path)
                return n
            except FileNotFoundError:
                if not os.path.lexists(path):
                    return n
            except OSError:
                if attempt == 4:
                    raise
            time.sleep(0.01)
        return n

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


_ABANDONED: list[Any] = []  # connections inherited across fork (see Store._connection)
