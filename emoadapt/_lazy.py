"""A process-wide default object made on first use, never when its module is imported."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ProcessDefault"]

T = TypeVar("T")


class ProcessDefault(Generic[T]):
    """The one ``make()`` of the process, made by the first :meth:`get` (thread-safe: two
    threads asking at once get the same object) and kept for the life of the process."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """The object, made now if no one asked before."""
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value

    @property
    def made(self) -> bool:
        """Whether :meth:`get` has made the object yet."""
        return self._value is not None
