"""One progress helper for every long loop (training epochs, calibration, streaming).

Modes:

- ``"bar"``   -- a tqdm bar on stderr;
- ``"lines"`` -- one plain line per finished loop on stdout (``desc: done in 1.2 s`` or
  whatever the caller passes to :func:`note`), for logs and pipes;
- ``"none"``  -- silent;
- ``"auto"``  -- ``bar`` on a terminal, ``lines`` when stdout is not a terminal or ``CI=true``.

The mode is process-wide (:func:`set_mode`, the command line's ``--progress``); a
library call's ``progress=False`` still silences its own loop.
"""
from __future__ import annotations

import os
import sys
import contextlib
from typing import Any, Iterable, Iterator, TypeVar

__all__ = ["MODES", "set_mode", "get_mode", "resolved_mode", "track", "note", "counter", "Counter"]

MODES = ("auto", "bar", "lines", "none")
_T = TypeVar("_T")
_mode = "auto"


def set_mode(mode: str) -> None:
    """Set the process-wide progress mode: one of ``auto``, ``bar``, ``lines``, ``none``."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)}, got {mode!r}")
    _mode = mode


def get_mode() -> str:
    """The mode as set (``auto`` unless changed)."""
    return _mode


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def resolved_mode(progress: bool | None = None) -> str:
    """What a loop shows now: ``bar``, ``lines`` or ``none`` (``progress=False`` forces none)."""
    if progress is False:
        return "none"
    mode = _mode
    if mode == "auto":
        if progress is None and "PYTEST_CURRENT_TEST" in os.environ:
            return "none"  # library calls inside a test suite stay quiet unless asked
        mode = "bar" if sys.stderr.isatty() and not _ci() else "lines"
    if mode == "bar":
        try:
            import tqdm  # noqa: F401
        except ImportError:  # pragma: no cover - tqdm is a core dependency
            return "lines"
    return mode


def track(it: Iterable[_T], total: int | None = None, desc: str = "", progress: bool | None = None) -> Iterator[_T]:
    """Iterate over ``it`` with a bar (``bar`` mode) or silently; ``lines`` mode leaves the line to :func:`note`."""
    if resolved_mode(progress) == "bar":
        from tqdm import tqdm

        yield from tqdm(it, total=total, desc=desc, leave=False)
    else:
        yield from it


def note(line: str, progress: bool | None = None) -> None:
    """Print one progress line (``lines`` mode only): one line per epoch or stage in logs."""
    if resolved_mode(progress) == "lines":
        print(line, flush=True)


class Counter:
    """Progress counted in units (bytes, tensors) rather than iterations: ``update(n)``; a bar only in ``bar`` mode."""

    def __init__(self, bar: Any = None) -> None:
        self.bar, self.done = bar, 0

    def update(self, n: int) -> None:
        """Count ``n`` more units."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)


@contextlib.contextmanager
def counter(total: int, desc: str = "", unit: str = "it", progress: bool | None = None) -> Iterator[Counter]:
    """A :class:`Counter` for the block (``unit="B"`` counts bytes in KiB/MiB); the bar is closed when the block ends."""
    bar = None
    if resolved_mode(progress) == "bar":
        from tqdm import tqdm

        scaled = unit == "B"
        bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=scaled, unit_divisor=1024 if scaled else 1000, leave=False)
    try:
        yield Counter(bar)
    finally:
        if bar is not None:
            bar.close()
