"""The throughput issue's targets, read off one run's rows and printed under the table.

Every target compares one column of one row (or the throughput of a row) with a bound, so
a reader sees at the end of ``make bench`` which targets this run met without matching
rows by eye. Ratios come from rows measured in the same run, as the issue asks. A row the
run did not produce (its benchmark was not selected, or failed) is counted as not measured.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from benchmarks.report import Row

OPS = "ops/s"  # the row's throughput rather than one of its columns


@attrs.frozen
class Target:
    label: str
    row: str  # the row's name; the first row of that name counts
    column: str  # a column of the row, or OPS
    at_least: float | None = None
    below: float | None = None  # strictly below
    at_most: float | None = None


def _invoke(store: str, kind: str, bound: float) -> Target:
    return Target(
        f"invoke, {store}, {kind}",
        f"http invoke: host {store}, {kind} (asyncio)",
        "ratio",
        at_least=bound,
    )


TARGETS: tuple[Target, ...] = (
    Target(
        "Responses create, SQLite",
        "responses http create: host sqlite (asyncio)",
        "ratio",
        at_least=0.5,
    ),
    Target(
        "Responses create, memory",
        "responses http create: host memory (asyncio)",
        "ratio",
        at_least=0.8,
    ),
    _invoke("SQLite", "returning", 0.5),
    _invoke("SQLite", "new session", 0.5),
    _invoke("memory", "returning", 0.8),
    _invoke("memory", "new session", 0.8),
    Target(
        "SSE stream events, SQLite",
        "responses http stream events: host sqlite (asyncio)",
        "ratio",
        at_least=0.6,
    ),
    Target(
        "SSE stream events, memory",
        "responses http stream events: host memory (asyncio)",
        "ratio",
        at_least=0.8,
    ),
    Target(
        "Agent target, 1 connection, host/peer",
        "af Agent create x1: host SQLite (asyncio)",
        "host/peer",
        at_least=1.5,
    ),
    Target(
        "Agent target, 8 connections, host/peer",
        "af Agent create x8: host SQLite (asyncio)",
        "host/peer",
        at_least=1.5,
    ),
    Target(
        "p99/p50 at one connection, invoke",
        "one connection, invocations invoke: host SQLite (asyncio)",
        "p99/p50",
        at_most=3.0,
    ),
    Target(
        "p99/p50 at one connection, Responses create",
        "one connection, responses create: host SQLite (asyncio)",
        "p99/p50",
        at_most=3.0,
    ),
    Target("fan-out to 100, ms a round", "fan-out to 100 via SQLite outbox", "ms/round", below=100),
    Target("fan-out to 10, ms a round", "fan-out to 10 via SQLite outbox", "ms/round", below=20),
    *(
        Target(f"core run_turn, {kind}", f"core run_turn: {kind}", OPS, at_least=100_000)
        for kind in ("new identities", "returning identities", "mixed, 1 new : 3 returning")
    ),
    *(
        Target(f"routing, {kind}", f"routing decision ({kind})", OPS, at_least=200_000)
        for kind in ("all_linked", "channels x3", "active")
    ),
    *(
        Target(
            f"sessions, {kind}: 100,000 stored against 100",
            f"sessions: invoke {kind}, 100,000 stored (asyncio)",
            "ratio",
            at_least=0.8,
            at_most=1.2,
        )
        for kind in ("returning", "new session")
    ),
    Target(
        "RSS after 10k requests, MiB",
        "server RSS after 10,007 requests, host SQLite (asyncio)",
        "RSS after",
        at_most=60,
    ),
)

_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


def value_of(row: Row, column: str) -> float | None:
    """The number a row shows in ``column`` (its throughput for OPS), or ``None``."""
    if column == OPS:
        return row.ops_per_second
    match = _NUMBER.match(row.extra.get(column, "").strip())
    return float(match.group().replace(",", "")) if match else None


def met(target: Target, value: float) -> bool:
    return (
        (target.at_least is None or value >= target.at_least)
        and (target.below is None or value < target.below)
        and (target.at_most is None or value <= target.at_most)
    )


def _bound(target: Target) -> str:
    parts = []
    if target.at_least is not None:
        parts.append(f">= {target.at_least:,g}")
    if target.below is not None:
        parts.append(f"< {target.below:,g}")
    if target.at_most is not None:
        parts.append(f"<= {target.at_most:,g}")
    return " and ".join(parts)


def report(rows: Sequence[Row], targets: Sequence[Target] = TARGETS) -> str:
    """One line a measured target, met or not, with the value this run showed; targets whose
    rows this run did not produce are counted in the heading."""
    first: dict[str, Row] = {}
    for row in rows:
        first.setdefault(row.name, row)
    lines, held, unmeasured = [], 0, 0
    for target in targets:
        row = first.get(target.row)
        value = value_of(row, target.column) if row is not None else None
        if value is None:
            unmeasured += 1
            continue
        held += (holds := met(target, value))
        verdict = "met" if holds else "NOT MET"
        shown = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"
        lines.append(f"  {verdict:<7}  {target.label}: {shown} (target {_bound(target)})")
    heading = f"targets of the throughput issue, this run: {held} of {len(lines)} met"
    if unmeasured:
        heading += f" ({unmeasured} not measured: their benchmarks did not run)"
    return "\n".join([heading, *lines])
