"""TFLite interpreters: made from verified model bytes, pooled, leased by the models.

Interpreter lifetime. Interpreters are kept in an :class:`InterpreterPool`, keyed by the
sha256 of their verified content and the thread count; models use the pool of
:func:`default_pool` (one per process, made on first use) unless given another. A
:class:`~emoadapt.Backbone`, :class:`~emoadapt.identity.FaceEmbedder` or
:class:`~emoadapt.detection.MTCNN` leases its interpreters when made (:class:`Lease`) and gives
them back (they are *not* destroyed) when it is closed or collected; the next model of the
same content reuses them. So an application that creates and drops Recognizers never runs an
``Interpreter.__del__`` while the process runs (the teardown that crashed once in
``benchmarks/fer2013.py``, issue 12), and interpreters of a dropped object are never freed
from whatever thread happens to collect it. At most :data:`MAX_IDLE` idle interpreters are
kept per key (the peak number of live objects); only beyond that is one dropped. Outputs are
always copied out of the interpreter (``get_tensor``), never held as views (``tensor()``).

Standard error. The TFLite runtime writes ``INFO: Created TensorFlow Lite XNNPACK delegate for
CPU.`` to file descriptor 2 (once per process, from native code: ``logging`` cannot silence it).
The library leaves it there: filtering it means redirecting file descriptor 2 of the whole
process while an interpreter is made, which only an application that owns its process may ask
for (``InterpreterPool(quiet_native=True)``, or ``default_pool().quiet_native = True`` as the
command line does; :func:`native_stderr_filtered`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .._lazy import ProcessDefault
from .._threads import check_threads
from ..errors import ModelIntegrityError
from .integrity import model_bytes

__all__ = [
    "MAX_IDLE",
    "NATIVE_NOTICES",
    "InterpreterPool",
    "Lease",
    "default_pool",
    "interpreter_lease",
    "load_interpreter",
    "new_interpreter",
    "native_stderr_filtered",
]

log = logging.getLogger(__name__)

#: idle pooled objects kept per key (see the module docstring)
MAX_IDLE = 8
#: lines the TFLite runtime writes to file descriptor 2 when an interpreter is made (routine
#: information), dropped by :func:`native_stderr_filtered`
NATIVE_NOTICES = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def native_stderr_filtered(drop: tuple[bytes, ...] = NATIVE_NOTICES, *, drop_prefixes: tuple[bytes, ...] = ()) -> Iterator[None]:
    """Capture what native code writes to file descriptor 2 inside the block and replay it,
    less the lines ``drop`` and those starting with one of ``drop_prefixes``. This redirects fd 2 *of the whole process* meanwhile: only for
    callers that own their process (opt-in, see the module docstring).

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
                    kept = [
                        ln
                        for ln in tmp.read().splitlines(keepends=True)
                        if ln.rstrip(b"\r\n") not in drop and not (drop_prefixes and ln.startswith(drop_prefixes))
                    ]
                    if kept:
                        os.write(2, b"".join(kept))
        finally:
            os.close(saved)


def new_interpreter(data: bytes, threads: int, label: str, *, quiet_native: bool = False) -> Any:
    """A TFLite interpreter of model bytes ``data`` with ``threads`` threads, tensors
    allocated (ModelIntegrityError when TFLite cannot load it). ``quiet_native``: made inside
    :func:`native_stderr_filtered` (redirects fd 2 of the process meanwhile)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        with native_stderr_filtered() if quiet_native else contextlib.nullcontext():
            interp = Interpreter(model_content=data, num_threads=threads)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelIntegrityError(f"TFLite could not load {label}: {e}") from e
    return interp


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


class InterpreterPool:
    """Idle interpreters (or other objects holding interpreters) per key (thread-safe).

    Args:
        max_idle: idle objects kept per key; one given back beyond that is dropped.
        quiet_native: interpreters made for this pool's leases are made inside
            :func:`native_stderr_filtered` (off by default: it redirects fd 2 of the process).
    """

    def __init__(self, max_idle: int = MAX_IDLE, *, quiet_native: bool = False) -> None:
        self.max_idle = int(max_idle)
        self.quiet_native = bool(quiet_native)
        self._idle: dict[Any, list[Any]] = {}
        self._lock = threading.Lock()

    def take(self, key: Any) -> Any | None:
        """An idle object of ``key`` (removed from the pool), else None."""
        with self._lock:
            free = self._idle.get(key)
            return free.pop() if free else None

    def give(self, key: Any, obj: Any) -> None:
        """Give ``obj`` back under ``key`` (dropped when ``max_idle`` are idle already)."""
        with self._lock:
            free = self._idle.setdefault(key, [])
            if len(free) < self.max_idle:
                free.append(obj)
                return
        log.debug("pool for %s full: dropping an idle object", key)

    def idle(self, key: Any) -> int:
        """How many objects of ``key`` are idle."""
        with self._lock:
            return len(self._idle.get(key, ()))

    def interpreter_lease(self, name_or_path: str | os.PathLike[str], num_threads: int | None = None) -> Lease:
        """A :class:`Lease` of a TFLite interpreter (tensors allocated) for a manifest model
        name (sha256-verified) or an explicit ``.tflite`` path, from this pool."""
        threads = check_threads(num_threads)
        data, digest, label = _content(name_or_path)
        quiet = self.quiet_native
        lease = Lease(("interpreter", digest, threads), lambda: new_interpreter(data, threads, label, quiet_native=quiet), pool=self)
        lease.get()
        return lease


_DEFAULT = ProcessDefault(InterpreterPool)


def default_pool() -> InterpreterPool:
    """The process's pool, made on first use (``InterpreterPool()``: :data:`MAX_IDLE` idle
    objects per key, TFLite's notices left on stderr); what models lease from when they are
    given no pool."""
    return _DEFAULT.get()


class Lease:
    """One pooled object (an interpreter, by default) held by its owner.

    :meth:`get` returns the object, taking it from ``pool`` (default :func:`default_pool`)
    or making it with ``factory`` on first use or after :meth:`release`; :meth:`release`
    gives it back to the pool. The object also goes back when the lease is collected
    (``weakref.finalize``, which only appends it to the pool's list: no native destructor
    runs, whatever the thread). Not thread-safe by itself: owners call it under their own lock."""

    def __init__(self, key: Any, factory: Callable[[], Any], *, pool: InterpreterPool | None = None) -> None:
        self.key = key
        self.pool = default_pool() if pool is None else pool
        self._factory = factory
        self._obj: Any = None
        self._fin: weakref.finalize | None = None

    def get(self) -> Any:
        if self._obj is None:
            obj = self.pool.take(self.key)
            if obj is None:
                obj = self._factory()
            self._obj = obj
            self._fin = weakref.finalize(self, self.pool.give, self.key, obj)
        return self._obj

    @property
    def held(self) -> bool:
        return self._obj is not None

    def release(self) -> None:
        fin, self._fin, self._obj = self._fin, None, None
        if fin is not None:
            fin()


def interpreter_lease(name_or_path: str | os.PathLike[str], num_threads: int | None = None, *, pool: InterpreterPool | None = None) -> Lease:
    """:meth:`InterpreterPool.interpreter_lease` of ``pool`` (default :func:`default_pool`)."""
    return (default_pool() if pool is None else pool).interpreter_lease(name_or_path, num_threads)


def load_interpreter(name_or_path: str | os.PathLike[str], num_threads: int | None = None, *, quiet_native: bool = False) -> Any:
    """A new (unpooled) TFLite interpreter for a manifest model name (verified) or an explicit
    file path; library objects use :func:`interpreter_lease` instead."""
    threads = check_threads(num_threads)
    data, _, label = _content(name_or_path)
    return new_interpreter(data, threads, label, quiet_native=quiet_native)
