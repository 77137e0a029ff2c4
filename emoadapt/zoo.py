"""The model zoo: locate shipped model files, verify their sha256, open TFLite interpreters.

Every model file that ships in ``models/`` is listed in ``models/manifest.json`` with its
sha256, size, source package, licence, input spec and output names. Loading a model always
verifies the hash first, so a truncated or tampered file raises
:class:`~emoadapt.errors.ModelIntegrityError` instead of reaching the TFLite runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ModelIntegrityError

__all__ = ["models_dir", "manifest", "model_entry", "model_path", "verify_file", "load_interpreter", "sha256_file"]

log = logging.getLogger(__name__)

_VERIFIED: dict[tuple[str, float, int], str] = {}
_LOCK = threading.Lock()


def models_dir() -> Path:
    """Directory holding the shipped models (``$EMOADAPT_MODELS`` overrides it)."""
    env = os.environ.get("EMOADAPT_MODELS")
    if env:
        return Path(env)
    try:  # installed wheel or editable install: package emoadapt.models
        from importlib.resources import files

        p = Path(str(files("emoadapt.models")))
        if (p / "manifest.json").is_file():
            return p
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - depends on install mode
        pass
    return Path(__file__).resolve().parent.parent / "models"


@lru_cache(maxsize=4)
def _load_manifest(path: str, mtime: float) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise ModelIntegrityError(f"model manifest not found: {path}") from e
    except (OSError, ValueError) as e:
        raise ModelIntegrityError(f"model manifest unreadable: {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ModelIntegrityError(f"model manifest malformed (no 'models' table): {path}")
    return data


def manifest() -> dict[str, Any]:
    """The parsed ``manifest.json``."""
    path = models_dir() / "manifest.json"
    try:
        mtime = path.stat().st_mtime
    except OSError as e:
        raise ModelIntegrityError(f"model manifest not found: {path}") from e
    return _load_manifest(str(path), mtime)


def model_entry(name: str) -> dict[str, Any]:
    """The manifest entry of model ``name`` (raises ModelIntegrityError when unknown)."""
    models = manifest()["models"]
    if name not in models:
        raise ModelIntegrityError(f"model {name!r} is not in the manifest (known: {sorted(models)})")
    return models[name]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike[str], sha256: str, size: int | None = None) -> Path:
    """Check that ``path`` exists and hashes to ``sha256``; cache by (path, mtime, size)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise ModelIntegrityError(f"model file missing: {p}") from e
    if size is not None and st.st_size != size:
        raise ModelIntegrityError(f"model file {p.name} has {st.st_size} bytes, manifest says {size} (truncated or replaced)")
    key = (str(p), st.st_mtime, st.st_size)
    with _LOCK:
        if _VERIFIED.get(key) == sha256:
            return p
    digest = sha256_file(p)
    if digest != sha256:
        raise ModelIntegrityError(f"model file {p.name} fails its sha256 check (expected {sha256[:12]}..., got {digest[:12]}...)")
    with _LOCK:
        _VERIFIED[key] = sha256
    return p


def model_path(name: str) -> Path:
    """Path of model ``name`` after verifying its sha256 against the manifest."""
    e = model_entry(name)
    return verify_file(models_dir() / e["file"], e["sha256"], e.get("size"))


def load_interpreter(name_or_path: str | os.PathLike[str], num_threads: int | None = None):
    """A TFLite interpreter for a manifest model name (verified) or an explicit file path."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(name_or_path, str) and not name_or_path.endswith(".tflite"):
        path = model_path(name_or_path)
    else:
        path = Path(name_or_path)
    threads = num_threads if num_threads is not None else default_threads()
    try:
        with _native_stderr_filtered():
            interp = Interpreter(model_path=str(path), num_threads=threads)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelIntegrityError(f"TFLite could not load {path.name}: {e}") from e
    return interp


#: lines the TFLite runtime writes to file descriptor 2 when an interpreter is made (not through
#: Python, so ``logging`` cannot silence them): routine information, dropped
_NATIVE_NOISE = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    """Capture what native code writes to fd 2 inside the block; replay it, less :data:`_NATIVE_NOISE`.

    Nothing is lost: output of other threads written meanwhile is replayed after the block
    (delayed, in order). Blocks are serialised by a lock. When fd 2 cannot be duplicated (no
    stderr at all), the block runs as is.
    """
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        try:
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    kept = [ln for ln in tmp.read().splitlines(keepends=True) if ln.rstrip(b"\r\n") not in _NATIVE_NOISE]
                    if kept:
                        os.write(2, b"".join(kept))
        finally:
            os.close(saved)


def default_threads() -> int:
    """Threads per interpreter: ``$EMOADAPT_THREADS`` or 1 (parallelism comes from batching
    and from running clips in separate processes, which never oversubscribes small CPUs)."""
    try:
        return max(1, int(os.environ.get("EMOADAPT_THREADS", "1")))
    except ValueError:
        return 1
