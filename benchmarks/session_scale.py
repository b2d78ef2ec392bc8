"""Session throughput against the number of sessions already stored: 100 versus 100,000.

The same host serves the same load twice, on two SQLite files that differ only in how many
sessions they hold before the first request. The issue's target: throughput flat (within
20 %) from 100 to 100k stored sessions — a turn's reads and writes go through indexes, so a
full store must cost no more than an empty one.

**Filling a file** (before its server starts, in this process): one user with one session
is written through the store's own methods (``issue_isolation_key``, ``create_session``),
each of its ids carrying the marker ``TEMPLATE``; then every row the store wrote that holds
the marker is copied ``count - 1`` times with the marker replaced by a numbered one, in
batched inserts on the same file, and the last copy is read back through the store
(``load_session``). Copying what the store wrote keeps the rows exactly the store's shape
(columns, JSON encoding) whatever its schema becomes, at a fraction of the time 100k
separate transactions take. Each stored session belongs to a user of its own.

**The load**: two host processes, one per file, each serving ``InvocationsChannel`` with a
plain ``async def`` echo target behind the project's Hypercorn helpers
(:mod:`benchmarks.loopback`); ``WORKERS`` keep-alive connections after a warm-up. A row is
``ROUNDS`` short slices, taken in turn on the two servers (alternating which goes first), so
a neighbour's burst on the shared machine lands on both rather than on one:

- *returning*: requests name ``session_id = s-<n % SESSIONS>`` (no two connections on one
  session at once), each turn loading and saving its session;
- *new session*: requests carry no ``session_id``, so every one creates a session (and the
  file grows by that many rows).

``ratio`` on a 100k row is its requests per second over the 100-session row's (1.00 is flat).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks import loopback
from benchmarks.report import Row

STORED = (100, 100_000)
ROUNDS = 8  # measured slices per row, interleaved between the two servers
SLICE_SECONDS = 0.25  # each slice; a row measures ROUNDS * SLICE_SECONDS
WARMUP_SECONDS = 0.5  # per row and server, not reported
WORKERS = 8  # concurrent keep-alive connections
SESSIONS = 64  # returning session ids s-0 ... s-63; a multiple of WORKERS
MAX_REQUESTS = 100_000  # a bound on each row besides the clock
FILL_BATCH = 10_000  # rows per executemany
TEMPLATE = "scale0000000"  # in every id the template user's rows hold; copies number it
PATH = "/invocations/invoke"


def _request(body: dict[str, Any]) -> bytes:
    return loopback.post_request(PATH, json.dumps(body).encode())


PLANS = {
    "returning": [_request({"input": "hello", "session_id": f"s-{n}"}) for n in range(SESSIONS)],
    "new session": [_request({"input": "hello"})],
}


def run() -> list[Row]:
    with (
        tempfile.TemporaryDirectory(prefix="agenthost-bench-scale-") as directory,
        ExitStack() as stack,
    ):
        servers: dict[int, loopback.Server] = {}
        filled: dict[int, float] = {}
        for count in STORED:
            state_dir = Path(directory) / f"stored-{count}"
            state_dir.mkdir()
            started = time.perf_counter()
            fill_store(state_dir / "bench.db", count)  # where loopback.host_app keeps it
            filled[count] = time.perf_counter() - started
            servers[count] = stack.enter_context(
                loopback.server_process(
                    partial(_build_app, state_dir),
                    name=f"bench-scale-{count}",
                    label=f"host with {count:,} sessions",
                )
            )
        loads = anyio.run(_measure, servers, backend="asyncio")

    rows: list[Row] = []
    for kind in PLANS:
        base = loads[kind, STORED[0]].requests / loads[kind, STORED[0]].wall_seconds
        for count in STORED:
            load = loads[kind, count]
            extra = {"stored": f"{count:,}", "filled in": f"{filled[count]:.1f} s"}
            if count != STORED[0]:
                extra["ratio"] = f"{load.requests / load.wall_seconds / base:.2f}"
            rows.append(load.row(f"sessions: invoke {kind}, {count:,} stored (asyncio)", extra))
    return rows


# --- filling a store ----------------------------------------------------------------


def fill_store(database: Path, count: int) -> None:
    """Leave ``count`` sessions in the SQLite store at ``database``, each its own user's."""
    anyio.run(_write_template, database, backend="asyncio")
    _copy_template_rows(database, count - 1)
    anyio.run(_read_back, database, f"s_{_numbered(count - 1)}", backend="asyncio")


async def _write_template(database: Path) -> None:
    """One user with one direct session, through the store's own methods."""
    from agenthost.sansio_core import sessions
    from agenthost.sansio_core.types import ChannelIdentity
    from agenthost.stores.sqlite import SQLiteStore

    now = 1_000_000.0
    store = SQLiteStore(database)
    await store.open()
    try:
        identity = ChannelIdentity("invocations", f"user-{TEMPLATE}")
        key = await store.issue_isolation_key(identity, f"ik_{TEMPLATE}", now)
        alias = sessions.SessionAlias(
            key, sessions.DIRECT, f"s_{TEMPLATE}", generation=1, created_at=now
        )
        await store.create_session(alias, now)
    finally:
        await store.close()


async def _read_back(database: Path, session_id: str) -> None:
    from agenthost.stores.sqlite import SQLiteStore

    store = SQLiteStore(database)
    try:
        if await store.load_session(session_id) is None:
            raise AssertionError(f"the store cannot read the copied session {session_id}")
    finally:
        await store.close()


def _numbered(i: int) -> str:
    """The ``i``-th copy's marker: ``TEMPLATE`` itself is copy 0."""
    return f"{TEMPLATE[:-7]}{i:07d}"


def _copy_template_rows(database: Path, copies: int) -> None:
    """Copy every row holding ``TEMPLATE`` ``copies`` times, numbering the marker."""
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'meta'"
            )
        ]
        templates: dict[str, tuple[str, list[Sequence[Any]]]] = {}
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            marked = [row for row in rows if any(TEMPLATE in str(v) for v in row)]
            if marked:
                columns = [info[1] for info in conn.execute(f'PRAGMA table_info("{table}")')]
                names = ", ".join(f'"{c}"' for c in columns)
                marks = ", ".join("?" for _ in columns)
                templates[table] = (f'INSERT INTO "{table}" ({names}) VALUES ({marks})', marked)
        if "sessions" not in templates:
            raise AssertionError("the store wrote no 'sessions' row to copy; adapt the filler")
        conn.execute("BEGIN")
        for first in range(1, copies + 1, FILL_BATCH):
            numbers = range(first, min(first + FILL_BATCH, copies + 1))
            for insert, marked in templates.values():
                conn.executemany(insert, _copies(marked, numbers))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _copies(marked: list[Sequence[Any]], numbers: range) -> list[tuple[Any, ...]]:
    rows = []
    for i in numbers:
        marker = _numbered(i)
        for row in marked:
            rows.append(
                tuple(v.replace(TEMPLATE, marker) if isinstance(v, str) else v for v in row)
            )
    return rows


# --- the load -----------------------------------------------------------------------


async def _measure(servers: dict[int, loopback.Server]) -> dict[tuple[str, int], loopback.Load]:
    """Each plan on each server, in interleaved slices so both see the same machine."""
    for server in servers.values():
        await loopback.wait_ready(server)
    loads: dict[tuple[str, int], list[loopback.Load]] = {}
    slices = len(PLANS) * len(servers) * (1 + ROUNDS)
    with anyio.fail_after(slices * max(WARMUP_SECONDS, SLICE_SECONDS) + 60.0):
        for kind, requests in PLANS.items():
            drive = partial(
                loopback.drive,
                requests=requests,
                connections=WORKERS,
                max_requests=MAX_REQUESTS,
                check=_check,
            )
            for server in servers.values():
                await drive(server, seconds=WARMUP_SECONDS)
            for round_ in range(ROUNDS):
                # Alternate which store goes first, so neither always follows the other.
                order = list(servers.items())[:: 1 if round_ % 2 == 0 else -1]
                for count, server in order:
                    loads.setdefault((kind, count), []).append(
                        await drive(server, seconds=SLICE_SECONDS)
                    )
    return {key: loopback.Load.combined(parts) for key, parts in loads.items()}


def _check(answer: loopback.Answer) -> None:
    body = json.loads(answer.body)
    if not isinstance(body, dict) or body.get("output") != "hello":
        raise AssertionError(f"unexpected answer {answer.status}: {answer.body[:200]!r}")


# --- the server side (a spawned process) ---------------------------------------------


async def echo(messages: list[Any]) -> str:
    return str(messages[-1].text)


def _build_app(state_dir: Path) -> Any:
    from agenthost.channels.invocations import InvocationsChannel

    return loopback.host_app(echo, InvocationsChannel(), "sqlite", state_dir)
