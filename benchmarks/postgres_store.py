"""PostgreSQL next to SQLite: the store, Responses over HTTP, replicas, the outbox.

It needs a server: ``AGENTHOST_BENCH_POSTGRES`` (else ``AGENTHOST_TEST_POSTGRES``, which
``make`` exports) names it; the run makes its own schema and drops it. Without one, the
benchmark prints as pending. Rows, each with a baseline measured in the same run:

- **session cycles**: the two transactions of every stateful turn (``open_turn`` granting
  the lease and loading the session, then ``finish_run`` saving it), ``CONCURRENCY``
  sessions at once on one store object, each session one turn after another. ``ratio`` is
  PostgreSQL's cycles per second over SQLite's. The "no commit flush" rows set
  ``synchronous_commit=off`` in the URL: a durable commit waits for the WAL's flush to
  disk, which costs milliseconds on a slow disk; SQLite's default here does not flush.
- **Responses create**: ``POST /responses/v1/responses`` (not streamed; each one a new
  response, so a session is created and saved) from ``WORKERS`` keep-alive connections, to
  one host process on SQLite, then on PostgreSQL. ``ratio`` is over the SQLite host.
- **replicas**: the same load spread over 1, 2 and 4 host processes on one PostgreSQL
  database. ``ratio`` is over one replica. ``hosts CPU`` is the replicas' CPU time over the
  wall time (100% is one core busy), ``db CPU`` the PostgreSQL server's (every process
  named ``postgres`` on this machine): where the sum nears the machine's cores, adding
  replicas stops paying, and the column that grows says which side is the limit.
- **fan-out to 100**: ``Host.deliver`` to 100 webhooks through the outbox (as in the
  ``delivery`` benchmark), on SQLite and on PostgreSQL; ``ratio`` over SQLite.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import attrs

from agenthost.sansio_core import leases, opening, sessions
from agenthost.sansio_core.authorization import ChannelAccess
from agenthost.sansio_core.sessions import ScopeKey, SessionMode
from agenthost.sansio_core.types import ChannelIdentity, MultitaskStrategy
from agenthost.stores.base import Store
from benchmarks import loopback
from benchmarks.report import BenchmarkPending, Row

CONCURRENCY = 32  # sessions in flight at once in the session-cycle rows
CYCLE_BUDGET = 1.5  # seconds per session-cycle row
HTTP_BUDGET = 2.0  # seconds per HTTP row
HTTP_WARMUP = 0.4
WORKERS = 8  # connections in the HTTP rows, spread over the replicas
MAX_REQUESTS = 200_000  # a bound on each HTTP row besides the clock
REPLICAS = (1, 2, 4)


def run() -> list[Row]:
    dsn = os.environ.get("AGENTHOST_BENCH_POSTGRES") or os.environ.get("AGENTHOST_TEST_POSTGRES")
    if not dsn:
        raise BenchmarkPending("pending: set AGENTHOST_BENCH_POSTGRES (or make exports it)")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-pg-") as directory:
        root = Path(directory)
        with _schema(dsn) as url:
            rows += anyio.run(_session_cycle_rows, root, url, backend="asyncio")
        with _schema(dsn) as url:
            rows += _http_rows(root, url)
        with _schema(dsn) as url:
            rows += anyio.run(_fan_out_rows, root, url, backend="asyncio")
    return rows


@contextmanager
def _schema(dsn: str) -> Iterator[str]:
    """A store URL on a fresh schema, dropped afterwards."""
    import psycopg

    schema = f"agenthost_bench_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- session cycles on the store ------------------------------------------------------


async def _session_cycle_rows(root: Path, url: str) -> list[Row]:
    from agenthost.stores.selection import store_from_url
    from agenthost.stores.sqlite import SQLiteStore

    sqlite = await _session_cycles("sqlite", SQLiteStore(root / "cycles.db"))
    postgres = await _session_cycles("postgres", store_from_url(url))
    relaxed = await _session_cycles("postgres, no commit flush", store_from_url(_relaxed(url)))
    return [sqlite, _ratio(postgres, sqlite), _ratio(relaxed, sqlite)]


def _relaxed(url: str) -> str:
    """The URL with ``synchronous_commit=off``: commits do not wait for the WAL flush (a
    database crash may lose the last fraction of a second; nothing is corrupted) — about
    what SQLite's ``synchronous=NORMAL`` promises. It shows what the flush costs here."""
    return f"{url}&options=-c%20synchronous_commit%3Doff"


async def _session_cycles(label: str, store: Store) -> Row:
    await store.open()
    cycles = 0
    now = 1_000.0

    def tick() -> float:
        nonlocal now
        now += 0.001
        return now

    async def session_loop(n: int, deadline: float) -> None:
        nonlocal cycles
        identity = ChannelIdentity("bench", f"user-{n}")
        for turn in range(1_000_000):
            if time.perf_counter() >= deadline:
                return
            run_id = f"run-{n}-{turn}"
            plan = opening.Opening(
                identity=identity,
                scope=ScopeKey(None, sessions.DIRECT),
                session_key=None,
                session_mode=SessionMode.AUTO,
                access=ChannelAccess(),
                is_direct=True,
                run_id=run_id,
                strategy=MultitaskStrategy.ENQUEUE,
                now=tick(),
                last_seen=None,
                lease_seconds=30.0,
            )
            opened = await store.open_turn(plan)
            if not isinstance(opened, opening.Opened) or not isinstance(
                opened.lease, leases.Granted
            ):
                raise AssertionError(f"expected a granted lease, got {opened!r}")
            assert opened.session is not None and opened.session_ref.session_id is not None
            saved = sessions.after_successful_run(opened.session, {"turn": turn}, tick())
            if not await store.finish_run(opened.session_ref.session_id, run_id, saved, tick()):
                raise AssertionError("finish_run did not save")
            cycles += 1

    try:
        for warm_up in (True, False):
            cycles = 0
            started = time.perf_counter()
            deadline = started + (0.3 if warm_up else CYCLE_BUDGET)
            async with anyio.create_task_group() as tasks:
                for n in range(CONCURRENCY):
                    tasks.start_soon(session_loop, n, deadline)
            wall = time.perf_counter() - started
    finally:
        await store.close()
    return Row(
        f"session cycle x{CONCURRENCY}: {label} (open_turn + finish_run)",
        cycles,
        wall,
        {"tx/op": "2"},
    )


# --- Responses over HTTP: one host, then replicas ----------------------------------------


def _http_rows(root: Path, url: str) -> list[Row]:
    load, _ = _drive_hosts(root / "sqlite", [f"sqlite:///{root / 'http.db'}"])
    sqlite_row = _host_row("responses create: 1 host on SQLite", load, None)
    rows = [sqlite_row]
    load, db_cpu = _drive_hosts(root / "pg-relaxed", [_relaxed(url)])
    name = "responses create: 1 host on PostgreSQL, no commit flush"
    rows.append(_ratio(_host_row(name, load, db_cpu), sqlite_row))
    one_replica: Row | None = None
    for count in REPLICAS:
        load, db_cpu = _drive_hosts(root / f"pg-{count}", [url] * count)
        name = f"responses create: {count} host{'s' if count > 1 else ''} on PostgreSQL"
        row = _host_row(name, load, db_cpu)
        rows.append(_ratio(row, one_replica or sqlite_row))
        one_replica = one_replica or row
    return rows


def _host_row(name: str, load: loopback.Load, db_cpu: float | None) -> Row:
    row = load.row(name)
    columns = dict(row.extra)
    columns["hosts CPU"] = columns.pop("server CPU", "")
    if db_cpu is not None:
        columns["db CPU"] = f"{db_cpu / load.wall_seconds:.0%}"
    return attrs.evolve(row, extra=columns)


def _drive_hosts(state: Path, urls: Sequence[str]) -> tuple[loopback.Load, float]:
    """One server process per URL (a Responses host on that store); ``WORKERS`` connections
    spread over them; a warm-up, then the measured load (all servers' CPU summed) and the
    database's CPU seconds during it."""
    state.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                loopback.server_process(
                    partial(_responses_host, store_url, state / f"host-{index}"),
                    name=f"bench-pg-host-{index}",
                    label=f"responses host {index}",
                )
            )
            for index, store_url in enumerate(urls)
        ]
        result: tuple[loopback.Load, float] = anyio.run(_drive_all, servers, backend="asyncio")
        return result


async def _drive_all(servers: list[loopback.Server]) -> tuple[loopback.Load, float]:
    from benchmarks.responses_http import _check_json, _request

    request = _request(stream=False)
    for server in servers:
        await loopback.wait_ready(server)
    share = max(WORKERS // len(servers), 1)
    loads: list[loopback.Load] = []

    async def one(server: loopback.Server, seconds: float) -> None:
        loads.append(
            await loopback.drive(
                server,
                [request],
                connections=share,
                seconds=seconds,
                max_requests=MAX_REQUESTS,
                check=_check_json,
            )
        )

    db_cpu = 0.0
    for seconds in (HTTP_WARMUP, HTTP_BUDGET):
        loads.clear()
        before = _postgres_cpu_seconds()
        async with anyio.create_task_group() as tasks:
            for server in servers:
                tasks.start_soon(one, server, seconds)
        db_cpu = _postgres_cpu_seconds() - before
    # Side by side, not one after another: the wall time is the longest, the rest adds up.
    load = loopback.Load(
        sum(load.requests for load in loads),
        max(load.wall_seconds for load in loads),
        [latency for load in loads for latency in load.latencies],
        sum(load.server_cpu_seconds for load in loads),
        sum(load.client_cpu_seconds for load in loads),
    )
    return load, db_cpu


def _responses_host(store_url: str, state_dir: Path) -> Any:
    """A Responses host on the store ``store_url`` names (runs in the server process)."""
    from agenthost import Host
    from agenthost.channels.responses import ResponsesChannel
    from agenthost.stores.selection import store_from_url
    from benchmarks.responses_http import echo

    state_dir.mkdir(parents=True, exist_ok=True)
    host = Host(
        echo,
        channels=[ResponsesChannel()],
        store=store_from_url(store_url),
        state_dir=state_dir,
        shutdown_grace_seconds=loopback.GRACE_SECONDS,
    )
    return host.app


def _postgres_cpu_seconds() -> float:
    """CPU time of every ``postgres`` process on this machine (the database server)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone, or not ours to read
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


# --- fan-out through the outbox ----------------------------------------------------------


async def _fan_out_rows(root: Path, url: str) -> list[Row]:
    from agenthost.stores.postgres import PostgresStore
    from agenthost.stores.selection import store_from_url
    from agenthost.stores.sqlite import SQLiteStore
    from benchmarks.delivery import SettledSteps

    class WatchedSQLite(SettledSteps, SQLiteStore):
        pass

    class WatchedPostgres(SettledSteps, PostgresStore):
        pass

    given = store_from_url(url)
    assert isinstance(given, PostgresStore)
    sqlite = await _fan_out(root / "fan-out-sqlite", WatchedSQLite(root / "fan-out.db"), "SQLite")
    postgres = await _fan_out(
        root / "fan-out-pg", WatchedPostgres(given.dsn, schema=given.schema), "PostgreSQL"
    )
    return [sqlite, _ratio(postgres, sqlite)]


async def _fan_out(state: Path, store: Any, label: str) -> Row:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from agenthost import Host, HostMessage
    from agenthost.backends.serving import bound_socket, hypercorn_config, serve_app
    from agenthost.channels.webhook import WebhookChannel
    from benchmarks.delivery import HOOKS, SECRET, _fan_out_row

    async def hook(request: Request) -> Response:
        await request.body()
        return JSONResponse({"ok": True})

    receiver = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    sock = bound_socket("127.0.0.1")
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=2.0)
    stop = anyio.Event()

    async def answer(messages: list[HostMessage]) -> str:
        return "ok"

    names = [f"hook_{i:03}" for i in range(HOOKS)]
    await anyio.Path(state).mkdir(parents=True, exist_ok=True)
    host = Host(
        answer,
        channels=[WebhookChannel(name=name, url=url, secret=SECRET) for name in names],
        store=store,
        state_dir=state,
        max_concurrent_deliveries=32,
    )
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: serve_app(receiver, config, shutdown_trigger=stop.wait))
        try:
            async with host.running():
                row = await _fan_out_row(host, store, names, "", None)
        finally:
            stop.set()
    return attrs.evolve(row, name=f"fan-out to {HOOKS} via {label} outbox")


def _ratio(row: Row, baseline: Row) -> Row:
    ratio = row.ops_per_second / baseline.ops_per_second if baseline.ops_per_second else 0.0
    return attrs.evolve(row, extra={**row.extra, "ratio": f"{ratio:.2f}"})
