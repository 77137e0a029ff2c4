"""Path arguments checked at the API boundary: whatever a caller passes as a path (a str, a
:class:`pathlib.Path`, any ``os.PathLike``) either becomes a :class:`~pathlib.Path` or raises
:class:`~emoadapt.errors.InvalidInputError`, never a raw ``TypeError`` / ``OSError`` /
``UnicodeError`` from deeper down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

__all__ = ["as_path", "NAME_MAX", "PATH_MAX"]

#: longest file-name component, in bytes, that Linux, macOS and Windows file systems accept
NAME_MAX = 255
#: longest path, in bytes, the Linux system calls accept
PATH_MAX = 4096


def as_path(value: Any, what: str = "path", *, expanduser: bool = False) -> Path:
    """``value`` as a :class:`~pathlib.Path`, or :class:`InvalidInputError` when it is not a
    usable text path: not a str/PathLike, an ``os.PathLike`` whose ``__fspath__`` raises or
    returns bytes, an empty string, a NUL character, a name that cannot be encoded for the
    file system, a component over :data:`NAME_MAX` bytes or a path over :data:`PATH_MAX`."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"{what} must be a text path (str or os.PathLike), not {type(value).__name__}")
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidInputError(f"{what} must be a str or os.PathLike, got {type(value).__name__}")
    try:
        s = os.fspath(value)
    except Exception as e:  # a user's __fspath__ may raise anything
        raise InvalidInputError(f"{what}: {type(value).__name__}.__fspath__ raised {type(e).__name__}: {e}") from e
    if not isinstance(s, str):
        raise InvalidInputError(f"{what}: {type(value).__name__}.__fspath__ returned {type(s).__name__}, not a text path")
    if not s:
        raise InvalidInputError(f"{what} is an empty string")
    if "\0" in s:
        raise InvalidInputError(f"{what} contains a NUL character")
    try:
        encoded = os.fsencode(s)
    except UnicodeError as e:
        raise InvalidInputError(f"{what} cannot be encoded for the file system: {e}") from e
    if len(encoded) > PATH_MAX:
        raise InvalidInputError(f"{what} is {len(encoded)} bytes long; paths are limited to {PATH_MAX}")
    for part in encoded.split(os.fsencode(os.sep)):
        if len(part) > NAME_MAX:
            raise InvalidInputError(f"{what}: the name {os.fsdecode(part[:40])!r}... is {len(part)} bytes long; file names are limited to {NAME_MAX} bytes")
    p = Path(s)
    if expanduser:
        try:
            p = p.expanduser()
        except RuntimeError as e:  # "~nobody/...": no such user
            raise InvalidInputError(f"{what}: {e}") from e
    return p
