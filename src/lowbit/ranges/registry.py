"""The range registry: spec tokens (full-match patterns) to range estimators."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .estimators import RangeEstimator

__all__ = ["register_range", "range_from_token", "range_names"]

_RANGES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], RangeEstimator], str]] = []


def register_range(pattern: str, factory: Callable[[re.Match[str]], RangeEstimator], help: str = "") -> None:
    """Register a range estimator under a spec token pattern (full-match regex)."""
    _RANGES.append((re.compile(pattern), factory, help or pattern))


def range_from_token(token: str) -> RangeEstimator | None:
    """The range estimator named by ``token``, or None if no range has that name."""
    for pat, factory, _ in reversed(_RANGES):
        m = pat.fullmatch(token)
        if m:
            return factory(m)
    return None


def range_names() -> list[str]:
    """Human-readable list of the registered range tokens."""
    return [h for _, _, h in _RANGES]

