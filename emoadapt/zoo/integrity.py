"""Integrity checks of model files: every file is checked against the manifest's sha256 (and
size) before it is used, so a truncated or tampered file raises
:class:`~emoadapt.errors.ModelIntegrityError` instead of reaching the TFLite runtime.

:func:`verify_file` caches what it verified per path, keyed by the file's identity ``(device,
inode, size, mtime_ns, ctime_ns)``: replacing or rewriting a file changes its inode or its
ctime (which no user can set back, unlike the mtime), so a tampered file is hashed again.
:func:`model_bytes` reads a model once and verifies those very bytes: interpreters are built
from them (``model_content``), never by reading the file a second time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ..errors import ModelIntegrityError
from .manifest import file_identity, model_entry, models_dir

__all__ = ["sha256_file", "verify_file", "model_bytes", "model_path", "VerifiedFiles"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class VerifiedFiles:
    """Which files were verified, by path: ``(file identity, sha256)`` (thread-safe).
    :func:`verify_file` uses one per process (:data:`VERIFIED`)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[int, int, int, int, int], str]] = {}
        self._lock = threading.Lock()

    def known(self, path: str, ident: tuple[int, int, int, int, int], sha256: str) -> bool:
        with self._lock:
            return self._seen.get(path) == (ident, sha256)

    def add(self, path: str, ident: tuple[int, int, int, int, int], sha256: str) -> None:
        with self._lock:
            self._seen[path] = (ident, sha256)


#: the verification cache of :func:`verify_file`
VERIFIED = VerifiedFiles()


def verify_file(path: str | os.PathLike[str], sha256: str, size: int | None = None, *, cache: VerifiedFiles | None = None) -> Path:
    """Check that ``path`` exists and hashes to ``sha256`` (and has ``size`` bytes).

    The result is cached (``cache``, default :data:`VERIFIED`) per path with the file's
    identity ``(device, inode, size, mtime_ns, ctime_ns)``; any replacement or rewrite of the
    file (even one that restores the size and the mtime) changes the inode or the ctime, so it
    is hashed again."""
    cache = VERIFIED if cache is None else cache
    p = Path(path)
    try:
        st = p.stat()
    except (OSError, ValueError) as e:
        raise ModelIntegrityError(f"model file missing: {p}") from e
    if size is not None and st.st_size != size:
        raise ModelIntegrityError(f"model file {p.name} has {st.st_size} bytes, manifest says {size} (truncated or replaced)")
    ident = file_identity(st)
    if cache.known(str(p), ident, sha256):
        return p
    try:
        digest = sha256_file(p)
        after = file_identity(p.stat())
    except OSError as e:
        raise ModelIntegrityError(f"model file {p.name} unreadable: {e}") from e
    if digest != sha256:
        raise ModelIntegrityError(f"model file {p.name} fails its sha256 check (expected {sha256[:12]}..., got {digest[:12]}...)")
    if after == ident:  # not cached when the file changed while it was hashed
        cache.add(str(p), ident, sha256)
    return p


def model_bytes(name: str) -> tuple[bytes, str]:
    """The content of model ``name`` and its sha256, verified on these very bytes (what is
    checked is what is used: no window between the check and a second read)."""
    e = model_entry(name)
    p = models_dir() / e["file"]
    size = e.get("size")
    try:
        with open(p, "rb") as f:
            data = f.read(size + 1 if isinstance(size, int) else -1)
    except (OSError, ValueError) as err:
        raise ModelIntegrityError(f"model file missing or unreadable: {p}: {err}") from err
    if isinstance(size, int) and len(data) != size:
        raise ModelIntegrityError(
            f"model file {p.name} has {'more than ' if len(data) > size else ''}{len(data)} bytes, manifest says {size} (truncated or replaced)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != e["sha256"]:
        raise ModelIntegrityError(f"model file {p.name} fails its sha256 check (expected {e['sha256'][:12]}..., got {digest[:12]}...)")
    return data, digest


def model_path(name: str) -> Path:
    """Path of model ``name`` after verifying its sha256 against the manifest."""
    e = model_entry(name)
    return verify_file(models_dir() / e["file"], e["sha256"], e.get("size"))
