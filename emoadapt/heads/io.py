"""Reading and writing heads: an ``.npz`` of plain arrays plus a JSON metadata string (never
pickles). :func:`load_head` validates everything and raises
:class:`~emoadapt.errors.ModelIntegrityError` on a damaged file."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, ModelIntegrityError
from ._format import FORMAT, FORMAT_VERSION
from .base import Head, _Head

__all__ = ["HEAD_TYPES", "load_head", "head_to_arrays", "head_from_arrays"]

#: The head types a file may name, by class name (filled by :mod:`emoadapt.heads`).
HEAD_TYPES: dict[str, type[_Head]] = {}


def load_head(path: str | os.PathLike[str]) -> _Head:
    """Load a head written by ``save`` (plain arrays only; ``allow_pickle=False``).

    Raises:
        ModelIntegrityError: missing/unreadable/garbage file, unknown head type, missing
            arrays, shape mismatches or non-finite weights.
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as e:
        raise ModelIntegrityError(f"head file not found: {p}") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise ModelIntegrityError(f"head file unreadable or corrupt: {p}: {e}") from e
    return _from_payload(arrays, str(p))


def _from_payload(arrays: Mapping[str, np.ndarray], p: str = "head") -> _Head:
    arrays = dict(arrays)
    if "meta" not in arrays or "classes" not in arrays:
        raise ModelIntegrityError(f"head file {p} lacks the 'meta' or 'classes' array")
    try:
        meta = json.loads(str(arrays["meta"][()] if arrays["meta"].ndim == 0 else arrays["meta"].reshape(-1)[0]))
    except (ValueError, IndexError, TypeError) as e:
        raise ModelIntegrityError(f"head file {p}: metadata is not valid JSON") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelIntegrityError(f"{p} is not an emoadapt head file")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelIntegrityError(f"{p}: unsupported head file version {meta.get('version')!r}")
    cls = HEAD_TYPES.get(str(meta.get("type")))
    if cls is None:
        raise ModelIntegrityError(f"{p}: unknown head type {meta.get('type')!r}")
    if not isinstance(meta.get("params", {}), dict):
        raise ModelIntegrityError(f"{p}: malformed parameters")
    try:
        return cls._from_state(meta, arrays)
    except ModelIntegrityError:
        raise
    except (TypeError, ValueError, KeyError, InvalidInputError) as e:
        raise ModelIntegrityError(f"{p}: invalid head file: {e}") from e


def _inner_head(arrays: Mapping[str, np.ndarray], prefix: str, wrapper: type, what: str) -> _Head:
    """The head saved under ``prefix`` (:func:`~emoadapt.heads._format.prefixed`) in a wrapper's
    file; a head of the wrapper's own type there is refused (no nesting)."""
    head = _from_payload({k[len(prefix) + 2 :]: v for k, v in arrays.items() if k.startswith(prefix + "__")}, prefix)
    if isinstance(head, wrapper):
        raise ModelIntegrityError(f"head file: nested {what} are not allowed")
    return head


def head_to_arrays(head: Head) -> dict[str, np.ndarray]:
    """The plain arrays :meth:`save` writes (``meta`` JSON string, ``classes``, weights), for
    stores that keep heads in their own files (e.g. :class:`emoadapt.store.Store`)."""
    if not isinstance(head, _Head):
        raise InvalidInputError(f"not an emoadapt head: {type(head).__name__}")
    return head._payload()


def head_from_arrays(arrays: Mapping[str, np.ndarray]) -> _Head:
    """Rebuild a head from :func:`head_to_arrays` output (validated like :func:`load_head`)."""
    return _from_payload(arrays)
