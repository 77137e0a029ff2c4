"""Values in and out of SQLite rows: arrays as little-endian float32 blobs, JSON objects, id
lists (chunked under SQLite's variable limit) and ``WHERE`` clauses."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, StoreError

__all__: list[str] = []

_F32 = np.dtype("<f4")
_IN_CHUNK = 500  # ids per "IN (...)" (SQLite's variable limit is >= 999)


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
