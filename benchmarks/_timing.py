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


def step_time_table(title: str, variants: dict, optimizers: dict, x: Any, y: Any, steps: int, warmup: int = 5) -> str:
    """Median training-step time of each model variant, interleaved so machine load hits all alike, as a
    markdown table with ratios to the first variant (the float baseline measured in the same run)."""
    import statistics

    import torch.nn.functional as F

    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(steps + warmup):
        for k, m in variants.items():
            m.train()
            t0 = time.perf_counter()
            loss = F.cross_entropy(m(x), y)
            optimizers[k].zero_grad()
            loss.backward()
            optimizers[k].step()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(next(iter(times.values())))
    lines = [f"| {title} | median ms | × float |", "|---|---:|---:|"]
    for k, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {k} | {med * 1e3:.2f} | {med / base:.2f} |")
    return "\n".join(lines)
