"""The model zoo: locate shipped model files, verify their sha256, open TFLite interpreters.

Every model file that ships in ``models/`` is listed in ``models/manifest.json`` with its
sha256, size, source package, licence, input spec and output names. Loading a model always
verifies the hash first, so a truncated or tampered file raises
:class:`~emoadapt.errors.ModelIntegrityError` instead of reaching the TFLite runtime.

Verification is cached per path, keyed by the file's identity ``(device, inode, size,
mtime_ns, ctime_ns)``: replacing or rewriting a file changes its inode or its ctime (which no
user can set back, unlike the mtime), so a tampered file is hashed again. Interpreters are
built from the verified bytes themselves (``model_content``), never by re-reading the file.

Interpreter lifetime. TFLite interpreters are pooled process-wide, keyed by the sha256 of
their verified content and the thread count (:class:`Lease`): a :class:`~emoadapt.Backbone`,
:class:`~emoadapt.identity.FaceEmbedder` or :class:`~emoadapt.detection.MTCNN` leases its
interpreters when made and gives them back (they are *not* destroyed) when it is closed or
collected; the next model of the same content reuses them. So an application that creates
and drops Recognizers never runs an ``Interpreter.__del__`` while the process runs (the
teardown that crashed once in ``benchmarks/fer2013.py``, issue 12), and interpreters of a
dropped object are never freed from whatever thread happens to collect it. At most
:data:`MAX_IDLE` idle interpreters are kept per key (the peak number of live objects); only
beyond that is one dropped. Outputs are always copied out of the interpreter
(``get_tensor``), never held as views (``tensor()``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import numbers
import os
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ModelIntegrityError

__all__ = [
    "models_dir",
    "manifest",
    "model_entry",
    "model_path",
    "verify_file",
    "load_interpreter",
    "sha256_file",
    "model_bytes",
    "Lease",
    "MAX_IDLE",
    "default_model",
    "replay_set_for",
    "resolve_head",
]

log = logging.getLogger(__name__)

#: path -> (file identity (dev, ino, size, mtime_ns, ctime_ns), sha256) of verified files
_VERIFIED: dict[str, tuple[tuple[int, int, int, int, int], str]] = {}
_LOCK = threading.Lock()
#: idle pooled objects kept per key (see the module docstring)
MAX_IDLE = 8


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
def _load_manifest(path: str, ident: tuple[int, int, int, int, int]) -> dict[str, Any]:
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
        ident = _identity(path.stat())
    except (OSError, ValueError) as e:
        raise ModelIntegrityError(f"model manifest not found: {path}") from e
    return _load_manifest(str(path), ident)


def model_entry(name: str) -> dict[str, Any]:
    """The manifest entry of model ``name`` (raises ModelIntegrityError when unknown)."""
    models = manifest()["models"]
    if name not in models:
        raise ModelIntegrityError(f"model {name!r} is not in the manifest (known: {sorted(models)})")
    return models[name]


def default_model(key: str, backbone: str | None = None) -> str | None:
    """The manifest's default model for a role: the one place defaults are looked up.

    ``key`` is a role of the manifest's ``defaults`` (``"backbone"``, ``"universal_head"``,
    ``"personal_head"``, ``"replay_set"``, ...). ``key="backbone"`` gives the default emotion
    backbone (else the first one listed; ModelIntegrityError when none is). For the other
    roles, ``backbone`` names the backbone the model must fit (default: the default backbone):
    the manifest's ``backbone_defaults[backbone]`` (written by the scripts that train heads and
    replay sets for every backbone) decides first; then ``defaults``, made for the default
    backbone. Another backbone gets the model that plays the same role for it, named like the
    default with the backbone part swapped (``universal_<backbone>_single_attention``,
    ``replay_<backbone>``), when the manifest has it; else ``None``. ``"mean_probability"``
    (a head that needs no file) fits every backbone.
    """
    man = manifest()
    if key == "backbone":
        name = man.get("defaults", {}).get("backbone")
        if name:
            return str(name)
        for k, e in man["models"].items():
            if e.get("kind") == "emotion_backbone":
                return str(k)
        raise ModelIntegrityError("the manifest lists no emotion backbone")
    backbone = backbone or default_model("backbone")
    own = man.get("backbone_defaults", {}).get(backbone, {})
    if key in own:
        return own[key]
    name = man.get("defaults", {}).get(key)
    if name is None or name == "mean_probability":
        return name
    trained_on = model_entry(name).get("backbone")
    if trained_on in (None, backbone):
        return name
    twin = name.replace(trained_on, backbone, 1)
    return twin if man["models"].get(twin, {}).get("backbone") == backbone else None


def replay_set_for(backbone: str, dim: int) -> str | None:
    """The manifest name of the replay set (universal training features replayed when
    adapting) of ``backbone`` whose features have ``dim`` dimensions, else ``None``."""
    name = default_model("replay_set", backbone)
    entry = model_entry(name) if name else None
    if entry is None or entry.get("backbone") != backbone or entry.get("inputs", {}).get("features") != dim:
        return None
    return name


def resolve_head(spec: Any, role: str, backbone: Any, *, trainable: bool = False) -> Any:
    """A head object for a :class:`~emoadapt.features.Backbone` from ``spec``: a head object
    (returned as is), a manifest name, ``"mean_probability"``, or ``None`` for the manifest's
    default for ``role`` (:func:`default_model`). ``trainable``: a head that can be fine-tuned
    is needed (the default personal head when the role's default is ``mean_probability``)."""
    from .heads import MeanProbabilityHead, load_head

    if spec is not None and not isinstance(spec, str):
        return spec
    if spec:
        name: str | None = spec
    else:  # the manifest default, or its counterpart for a non-default backbone
        name = default_model(role, backbone.name)
        if trainable and (name is None or name == "mean_probability"):
            name = default_model("personal_head", backbone.name)
    if name is None or name == "mean_probability":
        if trainable:
            raise ModelIntegrityError(
                f"no trainable universal head for backbone {backbone.name!r} in the manifest "
                f"(train one: python scripts/train_universal_head.py --backbone {backbone.name})"
            )
        return MeanProbabilityHead(classes=list(backbone.classes))
    entry = model_entry(name)
    if entry.get("backbone") not in (None, backbone.name):
        raise ModelIntegrityError(f"head {name!r} was trained on backbone {entry.get('backbone')!r}, not {backbone.name!r}")
    return load_head(model_path(name))


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verify_file(path: str | os.PathLike[str], sha256: str, size: int | None = None) -> Path:
    """Check that ``path`` exists and hashes to ``sha256``.

    The result is cached per path with the file's identity ``(device, inode, size, mtime_ns,
    ctime_ns)``; any replacement or rewrite of the file (even one that restores the size and
    the mtime) changes the inode or the ctime, so it is hashed again."""
    p = Path(path)
    try:
        st = p.stat()
    except (OSError, ValueError) as e:
        raise ModelIntegrityError(f"model file missing: {p}") from e
    if size is not None and st.st_size != size:
        raise ModelIntegrityError(f"model file {p.name} has {st.st_size} bytes, manifest says {size} (truncated or replaced)")
    ident = _identity(st)
    with _LOCK:
        if _VERIFIED.get(str(p)) == (ident, sha256):
            return p
    try:
        digest = sha256_file(p)
        after = _identity(p.stat())
    except OSError as e:
        raise ModelIntegrityError(f"model file {p.name} unreadable: {e}") from e
    if digest != sha256:
        raise ModelIntegrityError(f"model file {p.name} fails its sha256 check (expected {sha256[:12]}..., got {digest[:12]}...)")
    if after == ident:  # not cached when the file changed while it was hashed
        with _LOCK:
            _VERIFIED[str(p)] = (ident, sha256)
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


def _new_interpreter(data: bytes, threads: int, label: str):
    from ai_edge_litert.interpreter import Interpreter

    try:
        with _native_stderr_filtered():
            interp = Interpreter(model_content=data, num_threads=threads)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelIntegrityError(f"TFLite could not load {label}: {e}") from e
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


def _content(name_or_path: str | os.PathLike[str]) -> tuple[bytes, str, str]:
    """(bytes, sha256, label) of a manifest model name (verified) or an explicit file path."""
    if isinstance(name_or_path, str) and not name_or_path.endswith(".tflite"):
        data, digest = model_bytes(name_or_path)
        return data, digest, name_or_path
    path = Path(name_or_path)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as e:
        raise ModelIntegrityError(f"model file missing or unreadable: {path}: {e}") from e
    return data, hashlib.sha256(data).hexdigest(), path.name


def check_threads(num_threads: Any) -> int:
    """``num_threads`` validated (None: :func:`default_threads`); InvalidInputError unless an
    int in ``1..MAX_THREADS``."""
    from .errors import InvalidInputError

    if num_threads is None:
        return default_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise InvalidInputError(f"num_threads must be an int in 1..{MAX_THREADS} or None, got {num_threads!r}")
    if not 1 <= int(num_threads) <= MAX_THREADS:
        raise InvalidInputError(f"num_threads must be in 1..{MAX_THREADS}, got {num_threads!r}")
    return int(num_threads)


#: largest accepted ``num_threads`` (TFLite would try to start that many threads)
MAX_THREADS = 256


class _Pool:
    """Idle interpreters (or other objects holding interpreters) per key, process-wide."""

    def __init__(self) -> None:
        self._idle: dict[Any, list[Any]] = {}
        self._lock = threading.Lock()

    def take(self, key: Any) -> Any | None:
        with self._lock:
            free = self._idle.get(key)
            return free.pop() if free else None

    def give(self, key: Any, obj: Any) -> None:
        with self._lock:
            free = self._idle.setdefault(key, [])
            if len(free) < MAX_IDLE:
                free.append(obj)
                return
        log.debug("pool for %s full: dropping an idle object", key)

    def idle(self, key: Any) -> int:
        with self._lock:
            return len(self._idle.get(key, ()))


_POOL = _Pool()


class Lease:
    """One pooled object (an interpreter, by default) held by its owner.

    :meth:`get` returns the object, taking it from the process-wide pool (or making it with
    ``factory``) on first use or after :meth:`release`; :meth:`release` gives it back to the
    pool. The object also goes back when the lease is collected (``weakref.finalize``, which
    only appends it to the pool's list: no native destructor runs, whatever the thread).
    Not thread-safe by itself: owners call it under their own lock."""

    def __init__(self, key: Any, factory: Any) -> None:
        self.key = key
        self._factory = factory
        self._obj: Any = None
        self._fin: weakref.finalize | None = None

    def get(self) -> Any:
        if self._obj is None:
            obj = _POOL.take(self.key)
            if obj is None:
                obj = self._factory()
            self._obj = obj
            self._fin = weakref.finalize(self, _POOL.give, self.key, obj)
        return self._obj

    @property
    def held(self) -> bool:
        return self._obj is not None

    def release(self) -> None:
        fin, self._fin, self._obj = self._fin, None, None
        if fin is not None:
            fin()


def interpreter_lease(name_or_path: str | os.PathLike[str], num_threads: int | None = None) -> Lease:
    """A :class:`Lease` of a TFLite interpreter (tensors allocated) for a manifest model name
    (sha256-verified) or an explicit ``.tflite`` path, from the process-wide pool."""
    threads = check_threads(num_threads)
    data, digest, label = _content(name_or_path)
    lease = Lease(("interpreter", digest, threads), lambda: _new_interpreter(data, threads, label))
    lease.get()
    return lease


def load_interpreter(name_or_path: str | os.PathLike[str], num_threads: int | None = None):
    """A new (unpooled) TFLite interpreter for a manifest model name (verified) or an explicit
    file path; library objects use :func:`interpreter_lease` instead."""
    threads = check_threads(num_threads)
    data, _, label = _content(name_or_path)
    return _new_interpreter(data, threads, label)


def default_threads() -> int:
    """Threads per interpreter: ``$EMOADAPT_THREADS`` or 1 (parallelism comes from batching
    and from running clips in separate processes, which never oversubscribes small CPUs)."""
    try:
        return min(MAX_THREADS, max(1, int(os.environ.get("EMOADAPT_THREADS", "1"))))
    except ValueError:
        return 1
