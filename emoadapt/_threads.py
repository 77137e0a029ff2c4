"""Thread counts: one way to set them, validated the same everywhere.

* TFLite threads per interpreter: ``num_threads=`` of :class:`~emoadapt.Recognizer`,
  :class:`~emoadapt.Backbone`, :class:`~emoadapt.detection.MTCNN` and
  :class:`~emoadapt.identity.FaceEmbedder`; when it is ``None``, ``$EMOADAPT_THREADS``; when
  that is unset (or empty), 1. Both go through :func:`check_threads`: an int in
  ``1..MAX_THREADS`` or :class:`~emoadapt.errors.InvalidInputError` (a bad
  ``$EMOADAPT_THREADS`` is the same error, naming the variable: never a silent fallback).
* OpenCV's thread pool is process-wide: the library never changes it unless the caller asks
  (``Recognizer(opencv_threads=n)``, which calls :func:`configure_opencv`). The command line,
  which owns its process, asks for 1.
* BLAS threads while a head trains (``n_threads`` of its training parameters): limited inside
  the training call only (:func:`blas_threads`), through a :class:`BlasThreads` controller;
  the process's is made on first use (:func:`default_blas`).
"""

from __future__ import annotations

import contextlib
import numbers
import os
import threading
from collections.abc import Iterator
from typing import Any

from ._lazy import ProcessDefault
from .errors import InvalidInputError

__all__ = [
    "MAX_THREADS",
    "THREADS_ENV",
    "check_threads",
    "default_threads",
    "check_opencv_threads",
    "configure_opencv",
    "BlasThreads",
    "default_blas",
    "blas_threads",
]

#: largest accepted thread count (TFLite / OpenCV would try to start that many threads)
MAX_THREADS = 256
#: the environment variable giving the TFLite threads per interpreter when ``num_threads`` is None
THREADS_ENV = "EMOADAPT_THREADS"


def _count(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(f"{what} must be an int in {low}..{MAX_THREADS}, got {value!r}")
    if not low <= int(value) <= MAX_THREADS:
        raise InvalidInputError(f"{what} must be in {low}..{MAX_THREADS}, got {value!r}")
    return int(value)


def default_threads() -> int:
    """TFLite threads per interpreter when ``num_threads`` is None: ``$EMOADAPT_THREADS``
    (an int in ``1..MAX_THREADS``; anything else is an InvalidInputError naming the variable),
    else 1 (parallelism comes from batching and from running clips in separate processes,
    which never oversubscribes small CPUs)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return 1
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"${THREADS_ENV} must be an int in 1..{MAX_THREADS}, got {raw!r}") from None
    return _count(value, f"${THREADS_ENV}", 1)


def check_threads(num_threads: Any) -> int:
    """``num_threads`` validated (None: :func:`default_threads`); InvalidInputError unless an
    int in ``1..MAX_THREADS``."""
    if num_threads is None:
        return default_threads()
    return _count(num_threads, "num_threads", 1)


def check_opencv_threads(n: Any) -> int:
    """``n`` validated for ``cv2.setNumThreads``: an int in ``0..MAX_THREADS`` (0: OpenCV runs
    its parallel loops sequentially); InvalidInputError otherwise."""
    return _count(n, "opencv_threads", 0)


def configure_opencv(n: Any) -> int:
    """Set OpenCV's process-wide thread pool to ``n`` threads (validated by
    :func:`check_opencv_threads`) and return ``n``. Called only when the caller asks for it
    (``Recognizer(opencv_threads=n)``, the command line): nothing else in the library touches
    OpenCV's threads."""
    n = check_opencv_threads(n)
    import cv2

    cv2.setNumThreads(n)
    return n


class BlasThreads:
    """Limits the BLAS threads of the process inside a block (``threadpoolctl``, a runtime
    dependency; a no-op where it cannot be imported). Its ``ThreadpoolController`` is made on
    first use. Thread-safe to make; the limit applies to the whole process while a block runs."""

    def __init__(self) -> None:
        self._controller: Any = None  # None: not made yet; False: threadpoolctl unavailable
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._controller is None:
                try:
                    from threadpoolctl import ThreadpoolController
                except ImportError:  # pragma: no cover - a dependency; absent only in odd installs
                    self._controller = False
                else:
                    self._controller = ThreadpoolController()
            return self._controller

    @contextlib.contextmanager
    def limit(self, n: int | None) -> Iterator[None]:
        """BLAS threads limited to ``n`` inside the block (``None``: left alone)."""
        controller = None if n is None else self._get()
        if n is None or not controller:
            yield
            return
        with controller.limit(limits=int(n), user_api="blas"):
            yield


_BLAS = ProcessDefault(BlasThreads)


def default_blas() -> BlasThreads:
    """The process's :class:`BlasThreads`, made on first use."""
    return _BLAS.get()


def blas_threads(n: int | None) -> contextlib.AbstractContextManager[None]:
    """``default_blas().limit(n)``: BLAS threads limited to ``n`` inside the block (``None``:
    left alone)."""
    return default_blas().limit(n)
