"""Timed loops: repeat one operation until a time budget is spent, and summarise it.

Each call of the operation is timed on its own so the rows can show p50 and p99 next to the
throughput; ``perf_counter`` costs well under a microsecond, far below what is measured.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

from benchmarks.report import Row, format_seconds

T = TypeVar("T")


def percentile(sorted_samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    index = min(len(sorted_samples) - 1, max(0, round(fraction * len(sorted_samples)) - 1))
    return sorted_samples[index]


def summarise(name: str, samples: list[float], extra: Mapping[str, str] | None = None) -> Row:
    ordered = sorted(samples)
    columns = {
        "p50": format_seconds(percentile(ordered, 0.50)),
        "p99": format_seconds(percentile(ordered, 0.99)),
    }
    return Row(name, len(samples), sum(samples), {**columns, **(extra or {})})


def time_calls(
    name: str,
    operation: Callable[[int], object],
    *,
    budget: float,
    extra: Mapping[str, str] | None = None,
) -> Row:
    """Call ``operation(i)`` for i = 0, 1, ... until ``budget`` seconds have passed."""
    gc.collect()  # start each row clean, so it does not pay for the garbage of the last one
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + budget
    i = 0
    while True:
        started = clock()
        operation(i)
        finished = clock()
        samples.append(finished - started)
        i += 1
        if finished >= deadline:
            return summarise(name, samples, extra)


CALIBRATION_ADDITIONS = 3_000_000


def machine_speed(rounds: int = 3) -> float:
    """Seconds a fixed pure-Python loop takes here (the best of ``rounds``): how fast this
    machine runs the interpreter now. Rows with no baseline measured beside them (the core
    and routing rows, fan-out) move with it; on a shared machine it drifts from run to run.
    """
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for n in range(CALIBRATION_ADDITIONS):
            total += n
        best = min(best, time.perf_counter() - started)
    return best


def time_prepared_calls(
    name: str,
    prepare: Callable[[int], T],
    operation: Callable[[T], object],
    *,
    budget: float,
    chunk: int = 1_000,
    extra: Mapping[str, str] | None = None,
) -> Row:
    """``time_calls`` for an operation whose input costs something to build that the row does
    not measure: ``prepare(i)`` builds the i-th input, ``chunk`` at a time, outside the
    timed calls of ``operation(input)``."""
    gc.collect()
    samples: list[float] = []
    clock = time.perf_counter
    spent = 0.0
    i = 0
    while spent < budget:
        inputs = [prepare(n) for n in range(i, i + chunk)]
        i += chunk
        for prepared in inputs:
            started = clock()
            operation(prepared)
            finished = clock()
            samples.append(finished - started)
            spent += finished - started
            if spent >= budget:
                break
    return summarise(name, samples, extra)


@contextmanager
def serving_collector() -> Iterator[None]:
    """The cyclic collector as a served host runs it (``serving.prepare_collector``: what
    exists now is frozen as start-up state, the young generation collected less often),
    restored on leaving."""
    from agenthost.backends.serving import prepare_collector

    threshold = gc.get_threshold()
    prepare_collector()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def time_async_calls(
    name: str,
    operation: Callable[[int], Awaitable[object]],
    *,
    budget: float,
    extra: Mapping[str, str] | None = None,
) -> Row:
    """Await ``operation(i)`` for i = 0, 1, ... until ``budget`` seconds have passed."""
    gc.collect()  # start each row clean, so it does not pay for the garbage of the last one
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + budget
    i = 0
    while True:
        started = clock()
        await operation(i)
        finished = clock()
        samples.append(finished - started)
        i += 1
        if finished >= deadline:
            return summarise(name, samples, extra)
