"""The head file format's plain pieces (no head types here): JSON metadata, parameters as
JSON, atomic writes and the prefixes of wrapped heads. :mod:`emoadapt.heads.io` reads files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelIntegrityError

FORMAT = "emoadapt.head"
FORMAT_VERSION = 1


def meta_array(type_name: str, params: Mapping[str, Any], **extra: Any) -> np.ndarray:
    """The ``meta`` array of a head file (a JSON string)."""
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "type": type_name, "params": dict(params), **extra}
    return np.array(json.dumps(meta, sort_keys=True))


def check_file_classes(classes: np.ndarray) -> None:
    if classes.ndim != 1 or len(classes) < 1 or len(np.unique(classes)) != len(classes):
        raise ModelIntegrityError("head file: classes must be a non-empty 1-D array of distinct labels")


def json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, tuple):
            out[k] = {"__tuple__": list(v)}
        elif isinstance(v, Mapping):
            out[k] = {"__dict__": [[(x.item() if isinstance(x, np.generic) else x), float(w)] for x, w in v.items()]}
        elif isinstance(v, np.ndarray):
            out[k] = {"__tuple__": v.tolist()}
        elif isinstance(v, np.generic):
            out[k] = v.item()
        elif isinstance(v, type):
            out[k] = np.dtype(v).name
        else:
            out[k] = v
    return out


def unjson_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict) and "__tuple__" in v:
            out[k] = tuple(v["__tuple__"])
        elif isinstance(v, dict) and "__dict__" in v:
            out[k] = {kk: vv for kk, vv in v["__dict__"]}
        else:
            out[k] = v
    return out


def prefixed(prefix: str, payload: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A wrapped head's arrays inside its wrapper's file: ``<prefix>__<name>``."""
    return {f"{prefix}__{k}": v for k, v in payload.items()}


def atomic_savez(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **dict(arrays))  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
