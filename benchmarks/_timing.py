"""Wall-clock timing shared by the benchmark scripts (run as ``python benchmarks/bench_*.py``)."""
from __future__ import annotations

import time
from typing import Any, Callable


def wall_times(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeat`` calls of ``fn()``, after ``warmup`` calls that are not counted."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
