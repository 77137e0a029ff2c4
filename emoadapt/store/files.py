"""Files on disk: private directories, fsync, removal, and the personal head files (the
``.npz`` payload, its verified reading, the debris of crashed writers, the retention policy).

A head file is ``heads/<user-hash>/v<version>.npz`` (mode 0o600): plain arrays and a JSON
``__meta__`` entry, never pickles. Its reading is bounded by :data:`MAX_HEAD_BYTES` whatever
the file or the database row claims.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelIntegrityError
from .records import HeadRecord
from .rows import _asarray, _to_json

__all__ = ["MAX_HEAD_BYTES", "head_payload", "read_head", "install_head_file", "debris", "remove_tree"]

log = logging.getLogger(__package__)

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_META_KEY = "__meta__"
_HEAD_FILE_RE = re.compile(r"^v([0-9]+)\.npz$")
_TMP_PREFIX = ".tmp-head-"
_TMP_MAX_AGE_S = 3600.0  # temp files older than this are debris of a crashed writer
_ARRAY_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
#: Largest head file read, and largest total its arrays may declare (bounds the memory a
#: damaged or hostile head file can take; personal heads are well under 1 MB).
MAX_HEAD_BYTES = 64 * 1024 * 1024


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


def install_head_file(tmp: Path, final: Path) -> Path:
    """Rename the complete, fsynced temporary head file ``tmp`` to ``final`` and fsync the
    directory (step 2 of :meth:`~emoadapt.store.Store.save_head`, run inside its write
    transaction, before the row that activates it is committed); returns ``final``."""
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def head_payload(arrays: Mapping[str, Any], meta: Mapping[str, Any] | None) -> bytes:
    """The ``.npz`` bytes of a head: ``arrays`` (numeric, bool or string; no pickles) and
    ``meta`` (JSON) as the ``__meta__`` entry."""
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


def read_head(udir: Path, rec: HeadRecord) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read, size- and sha256-check and parse head ``rec`` of the user directory ``udir``
    (``arrays, meta``); ModelIntegrityError on any
    problem. Memory stays bounded by :data:`MAX_HEAD_BYTES` whatever the file or the
    database row claims: the file size is checked before reading, and the sizes the
    archive declares for its members before decompressing them."""
    if not _HEAD_FILE_RE.match(rec.file):
        raise ModelIntegrityError(f"head v{rec.version}: bad file name {rec.file!r} in the store")
    path = udir / rec.file
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


def debris(udir: Path, referenced: set[str]) -> list[Path]:
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


def remove_tree(path: Path) -> int:
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
