"""Session throughput against the number of sessions already stored: 100 versus 100,000.

The same host serves the same load on SQLite files that differ only in how many sessions
they hold before the first request: 100, 100 again (a control) and 100,000. The issue's
target: throughput flat (within 20 %) from 100 to 100k stored sessions — a turn's reads and
writes go through indexes, so a full store must cost no more than an empty one.

**Filling a file** (before its server starts, in this process): one user with one session
is written through the store's own methods (``issue_isolation_key``, ``create_session``),
each of its ids carrying the marker ``TEMPLATE``; then every row the store wrote that holds
the marker is copied ``count - 1`` times with the marker replaced by a numbered one, in
batched inserts on the same file, and the last copy is read back through the store
(``load_session``). Copying what the store wrote keeps the rows exactly the store's shape
(columns, JSON encoding) whatever its schema becomes, at a fraction of the time 100k
separate transactions take. Each stored session belongs to a user of its own.

**The load**: one host process per file, each serving ``InvocationsChannel`` with a
plain ``async def`` echo target behind the project's Hypercorn helpers
(:mod:`benchmarks.loopback`); ``WORKERS`` keep-alive connections after a warm-up. A row is
``ROUNDS`` short slices, taken in turn on the servers (rotating which goes first), so a
neighbour's burst on the shared machine lands on all rather than on one:

- *returning*: requests name ``session_id = s-<n % SESSIONS>`` (no two connections on one
  session at once), each turn loading and saving its session;
- *new session*: requests carry no ``session_id``, so every one creates a session (and the
  file grows by that many rows).

``ratio`` is a row's requests per second over the first 100-session row's (1.00 is flat).
The control row's ratio is the same measurement between two equal files: how far this run's
ratios can wander on their own (on a quiet machine within a few %, on a busy shared one far
more).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks import loopback
from benchmarks.report import Row


@dataclass(frozen=True)
class Store:
    sessions: int  # stored before the first request
    label: str


# The control is a second file like the first: its ratio is this run's noise floor, so a
# reader can tell whether the run could resolve the 20 % the target allows.
STORES = (
    Store(100, "100 stored"),
    Store(100, "100 stored, control"),
    Store(100_000, "100,000 stored"),
)
ROUNDS = 4  # measured slices per row, interleaved between the servers
SLICE_SECONDS = 0.6  # each slice; a row measures ROUNDS * SLICE_SECONDS
WARMUP_SECONDS = 0.3  # per row and server, not reported
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
        servers: dict[Store, loopback.Server] = {}
        filled: dict[Store, float] = {}
        for index, store in enumerate(STORES):
            state_dir = Path(directory) / f"store-{index}"
            state_dir.mkdir()
            started = time.perf_counter()
            fill_store(state_dir / "bench.db", store.sessions)  # where host_app keeps it
            filled[store] = time.perf_counter() - started
            servers[store] = stack.enter_context(
                loopback.server_process(
                    partial(_build_app, state_dir),
                    name=f"bench-scale-{index}",
                    label=f"host with {store.label}",
                )
            )
        loads = anyio.run(_measure, servers, backend="asyncio")

    rows: list[Row] = []
    for kind in PLANS:
        base = loads[kind, STORES[0]]
        for store in STORES:
            load = loads[kind, store]
            extra = {"stored": f"{store.sessions:,}", "filled in": f"{filled[store]:.1f} s"}
            if store != STORES[0]:
                ratio = (load.requests / load.wall_seconds) / (base.requests / base.wall_seconds)
                extra["ratio"] = f"{ratio:.2f}"
            rows.append(load.row(f"sessions: invoke {kind}, {store.label} (asyncio)", extra))
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


async def _measure(
    servers: dict[Store, loopback.Server],
) -> dict[tuple[str, Store], loopback.Load]:
    """Each plan on each server, in interleaved slices so all see the same machine."""
    for server in servers.values():
        await loopback.wait_ready(server)
    loads: dict[tuple[str, Store], list[loopback.Load]] = {}
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
                # Rotate which store goes first, so none always follows the same one.
                order = list(servers.items())
                order = order[round_ % len(order) :] + order[: round_ % len(order)]
                for store, server in order:
                    loads.setdefault((kind, store), []).append(
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
