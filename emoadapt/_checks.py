"""Argument checks shared by the public entry points: a bad value is an
:class:`~emoadapt.errors.InvalidInputError`, never a raw TypeError/ValueError from deeper down."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .errors import InvalidInputError


def number(value: Any, what: str, low: float, high: float) -> float:
    """A real number in ``[low, high]`` (bools and NaN refused) or InvalidInputError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise InvalidInputError(f"{what} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def count(value: Any, what: str, high: int = 1 << 20, *, low: int = 1) -> int:
    """An int in ``[low, high]`` (bools refused) or InvalidInputError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not low <= int(value) <= high:
        raise InvalidInputError(f"{what} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def flag(value: Any, what: str) -> bool:
    """A bool (not merely truthy) or InvalidInputError."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be a bool, got {type(value).__name__}")
    return value
