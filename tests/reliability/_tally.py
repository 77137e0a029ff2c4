"""Tally of the distinct inputs the reliability suite tried (printed by conftest at the end)."""

from __future__ import annotations

from collections import Counter

#: distinct inputs tried, by suite ("bad_inputs", "properties", "threads")
TRIED: dict[str, set[str]] = {}
#: hypothesis examples run, by property
EXAMPLES: Counter[str] = Counter()


def record(suite: str, *names: str) -> None:
    """Count ``names`` as tried inputs of ``suite`` (duplicates count once)."""
    TRIED.setdefault(suite, set()).update(names)


def example(prop: str) -> None:
    """Count one generated hypothesis example of property ``prop``."""
    EXAMPLES[prop] += 1


#: hypothesis examples that got past the early exits (an expected InvalidInputError, no face
#: found) to the property's real assertions, by property
REACHED: Counter[str] = Counter()


def reached(prop: str) -> None:
    """Count one example of property ``prop`` that reached the real assertions."""
    REACHED[prop] += 1
