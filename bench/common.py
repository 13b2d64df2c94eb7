"""What every benchmark shares: figures, timing with percentiles, machine facts."""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any


class SkipBenchmark(Exception):
    """Raised by a benchmark that cannot run here (no GPU, no peer tool)."""


@dataclass
class Figure:
    """One measured figure, with its budget where DESIGN §6 sets one."""

    benchmark: str
    name: str
    value: float
    unit: str
    p50: float | None = None
    p99: float | None = None
    n: int | None = None
    budget: str | None = None
    ok: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def time_calls(fn: Callable[[], object], n: int, warmup: int = 10) -> list[float]:
    """Seconds taken by each of ``n`` calls of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def latency_figure(benchmark: str, name: str, seconds: list[float], budget_ms: float | None,
                   note: str = "") -> Figure:
    """p50/p99 in milliseconds; ok when p50 is within the budget."""
    p50, p99 = percentile(seconds, 0.5) * 1000, percentile(seconds, 0.99) * 1000
    return Figure(benchmark, name, round(statistics.fmean(seconds) * 1000, 4), "ms",
                  p50=round(p50, 4), p99=round(p99, 4), n=len(seconds),
                  budget=None if budget_ms is None else f"p50 <= {budget_ms} ms",
                  ok=None if budget_ms is None else p50 <= budget_ms, note=note)


def machine() -> dict[str, Any]:
    versions = {}
    for dist in ("gpuhistory", "SQLAlchemy", "alembic", "APScheduler", "nvidia-ml-py", "Flask",
                 "waitress"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "node": platform.node(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "versions": versions,
    }
