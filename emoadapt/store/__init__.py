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
  (``former_name``, schema version 7, see below); names that differ only by case or width
  are one user (``name_key``, :func:`user_name_key`, unique, schema version 8: ``"Alice"``
  reaches the user ``"alice"``; two users stored under such names before keep both names);
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

Where things are (a package; ``from emoadapt.store import X`` works for every public name):

* :mod:`~emoadapt.store.core`: :class:`Store` itself (forgetting a user, checking a store);
  its methods by topic in :mod:`~emoadapt.store.users` (users, enrolment embeddings),
  :mod:`~emoadapt.store.corrections` and :mod:`~emoadapt.store.heads` (personal heads);
* :mod:`~emoadapt.store.database`: opening the SQLite file, transactions, retries, errors;
* :mod:`~emoadapt.store.schema`: :data:`MIGRATIONS` (and migration 7, names in normal form);
* :mod:`~emoadapt.store.names`: :func:`normalize_user_name`, :func:`normalize_label`,
  :func:`user_dir_name`, :func:`legacy_normal_form`;
* :mod:`~emoadapt.store.records`: what the methods return (:class:`UserRecord`, ...);
* :mod:`~emoadapt.store.files`: head files on disk (payload, verified reading, debris);
  :mod:`~emoadapt.store.rows`: values in and out of SQLite rows.
"""

from __future__ import annotations

from .core import Store
from .database import DB_NAME, HEADS_DIR
from .files import MAX_HEAD_BYTES
from .names import MAX_LABEL_LENGTH, MAX_NAME_LENGTH, legacy_normal_form, normalize_label, normalize_user_name, user_dir_name, user_name_key
from .records import CorrectionData, CorrectionRecord, DescriptorData, ForgetReport, HeadRecord, LoadedHead, RenamedUser, UserRecord
from .schema import MIGRATIONS, SCHEMA_VERSION, Migration

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
    "user_name_key",
    "legacy_normal_form",
]
