"""HTTP round trips through the Invocations channel: ``POST /invocations/invoke`` on a Host.

Each server runs in its own process (``multiprocessing``, spawn context) behind the
project's Hypercorn helpers on a loopback socket (:mod:`benchmarks.loopback`), so the load
generator here does not share the server's event loop. All of them run at once: after a
short warm-up of each, every row is measured for ``BUDGET_SECONDS`` in all, in windows
taken in turn with the other rows' (``loopback.in_rounds``), so the machine's slow moments
fall on every row. In a window ``WORKERS`` concurrent workers each keep one connection
alive and send one request at a time; every request's latency is recorded.

- the baseline is a bare Starlette app, served the same way, whose route reads the JSON
  body, checks ``input`` is a string and answers ``{"output", "status", "session_id"}``;
- the host is ``Host(target=echo, channels=[InvocationsChannel()])`` with the store a user
  gets by default (SQLite on a file) and, for comparison, ``MemoryStore`` — the gap between
  the two is the store's share;
- "returning" requests name ``session_id = s-<n % 64>``; worker ``w`` only ever sends
  ``n = w + WORKERS * k``, so two requests in flight never share a session (no lease waits).
  The echo target is a plain ``async def``, so the host keeps its conversation history: a
  returning session's history grows by two messages a turn, and the ``history`` column says
  how long it had grown by the end of the last round. "new session" requests carry no session_id.

The load comes from a minimal HTTP/1.1 client on anyio sockets (``loopback.RawConnection``:
pre-built request bytes, reconnecting when Hypercorn closes a connection after
``keep_alive_max_requests``), because ``httpx.AsyncClient`` costs the client more CPU per
request than the bare app costs the server: with it the baseline measures httpx. One row
shows the bare app driven by httpx for comparison; httpx also checks each row's answers
before the load starts.

``ratio`` is the row's requests per second over the bare app's, on the same backend and
client. ``server CPU`` and ``client CPU`` are the processes' CPU time over the row's wall
time (100% is one core busy): a client near 100% means the row measures the load generator.
"""

from __future__ import annotations

import contextlib
import gc
import json
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

from benchmarks import loopback
from benchmarks.report import Row, format_seconds
from benchmarks.timing import percentile

BUDGET_SECONDS = 3.0  # per measured row
WARMUP_SECONDS = 0.5  # per row, not reported
WORKERS = 16  # concurrent requests in flight, one keep-alive connection each
SESSIONS = 64  # returning session ids s-0 ... s-63; a multiple of WORKERS (see above)
MAX_REQUESTS_PER_WORKER = 200_000  # a bound on each loop besides the clock
REQUEST_TIMEOUT = 10.0
PATH = "/invocations/invoke"


@dataclass(frozen=True)
class ServerSpec:
    app: str  # "baseline" or "host"
    backend: str  # "asyncio" or "trio"
    store: str = ""  # "sqlite" or "memory" for the host


@dataclass(frozen=True)
class RowSpec:
    name: str
    returning: bool
    client: str = "raw"  # or "httpx"


PLAN: tuple[tuple[ServerSpec, tuple[RowSpec, ...]], ...] = (
    (
        ServerSpec("baseline", "asyncio"),
        (
            RowSpec("http invoke: bare Starlette (asyncio)", returning=True),
            RowSpec("http invoke: bare Starlette, httpx client (asyncio)", True, "httpx"),
        ),
    ),
    (
        ServerSpec("host", "asyncio", "sqlite"),
        (
            RowSpec("http invoke: host SQLite, returning (asyncio)", returning=True),
            RowSpec("http invoke: host SQLite, new session (asyncio)", returning=False),
        ),
    ),
    (
        ServerSpec("host", "asyncio", "memory"),
        (
            RowSpec("http invoke: host memory, returning (asyncio)", returning=True),
            RowSpec("http invoke: host memory, new session (asyncio)", returning=False),
        ),
    ),
    (
        ServerSpec("baseline", "trio"),
        (RowSpec("http invoke: bare Starlette (trio)", returning=True),),
    ),
    (
        ServerSpec("host", "trio", "sqlite"),
        (RowSpec("http invoke: host SQLite, returning (trio)", returning=True),),
    ),
)


# --- the client side (this process) -------------------------------------------------


def run() -> list[Row]:
    with (
        tempfile.TemporaryDirectory(prefix="agenthost-bench-http-") as directory,
        contextlib.ExitStack() as servers_running,
    ):
        servers = []
        for index, (server_spec, _) in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            build = partial(_build_app, server_spec, state_dir)
            name = f"bench-{server_spec.app}-{server_spec.backend}"
            server = loopback.server_process(
                build, name=name, label=str(server_spec), backend=server_spec.backend
            )
            servers.append(servers_running.enter_context(server))
        measured = anyio.run(_measure_servers, servers, backend="asyncio")
    rows: list[Row] = []
    baselines = loopback.Baselines()  # compared per (backend, client)
    for (server_spec, row_specs), server_rows in zip(PLAN, measured, strict=True):
        for spec, row in zip(row_specs, server_rows, strict=True):
            key = (server_spec.backend, spec.client)
            rows.append(baselines.compare(row, key, baseline=server_spec.app == "baseline"))
    return rows


@dataclass
class _Tally:
    """One row's load and what its windows measured so far (see ``loopback.in_rounds``)."""

    server: loopback.Server
    server_spec: ServerSpec
    spec: RowSpec
    load: Callable[[float], Awaitable[list[float]]]
    sent_on_session: list[int]  # shared by the rows of one server
    samples: list[float] = field(default_factory=list)
    wall: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    async def window(self, seconds: float) -> None:
        gc.collect()
        server_cpu = self.server.cpu_seconds()
        client_cpu = time.process_time()
        started = time.perf_counter()
        self.samples += await self.load(seconds)
        self.wall += time.perf_counter() - started
        self.client_cpu += time.process_time() - client_cpu
        self.server_cpu += self.server.cpu_seconds() - server_cpu

    def row(self) -> Row:
        ordered = sorted(self.samples)
        extra = {
            "p50": format_seconds(percentile(ordered, 0.50)),
            "p99": format_seconds(percentile(ordered, 0.99)),
        }
        if self.spec.returning and self.server_spec.app == "host":
            # Each turn adds the input and the reply to its session's history.
            extra["history"] = f"~{2 * sum(self.sent_on_session) / SESSIONS:,.0f} msgs"
        extra["server CPU"] = f"{self.server_cpu / self.wall:.0%}"
        extra["client CPU"] = f"{self.client_cpu / self.wall:.0%}"
        return Row(self.spec.name, len(self.samples), self.wall, extra)


async def _measure_servers(servers: list[loopback.Server]) -> list[list[Row]]:
    """Check and warm up every row, then measure them all in rounds; the rows per server."""
    limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
    tallies: list[list[_Tally]] = []
    async with contextlib.AsyncExitStack() as clients:
        for server, (server_spec, row_specs) in zip(servers, PLAN, strict=True):
            await loopback.wait_ready(server)
            client = await clients.enter_async_context(
                httpx.AsyncClient(
                    base_url=server.base_url,
                    limits=limits,
                    timeout=REQUEST_TIMEOUT,
                    trust_env=False,
                )
            )
            sent_on_session = [0] * WORKERS  # per worker, requests sent on its sessions so far
            server_tallies = []
            for spec in row_specs:
                load = partial(_load, server, client, spec, sent_on_session=sent_on_session)
                with anyio.fail_after(WARMUP_SECONDS + 60.0):
                    for body in _bodies(spec.returning)[:3]:
                        _check(*await _httpx_post(client, body))
                    await load(WARMUP_SECONDS)
                server_tallies.append(_Tally(server, server_spec, spec, load, sent_on_session))
            tallies.append(server_tallies)
        windows = [tally.window for server_tallies in tallies for tally in server_tallies]
        with anyio.fail_after(len(windows) * (BUDGET_SECONDS + 30.0)):
            await loopback.in_rounds(windows, BUDGET_SECONDS)
    return [[tally.row() for tally in server_tallies] for server_tallies in tallies]


def _bodies(returning: bool) -> list[bytes]:
    if returning:
        return [
            json.dumps({"input": "hello", "session_id": f"s-{n}"}).encode() for n in range(SESSIONS)
        ]
    return [json.dumps({"input": "hello"}).encode()]


async def _load(
    server: loopback.Server,
    client: httpx.AsyncClient,
    spec: RowSpec,
    seconds: float,
    *,
    sent_on_session: list[int],
) -> list[float]:
    """``WORKERS`` workers send requests until ``seconds`` have passed; the latencies."""
    bodies = _bodies(spec.returning)
    host = f"127.0.0.1:{server.port}"
    requests = [loopback.post_request(PATH, body, host=host) for body in bodies]
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds

    async def worker(w: int) -> None:
        connection = loopback.RawConnection(server.port)
        try:
            for k in range(MAX_REQUESTS_PER_WORKER):
                if clock() >= deadline:
                    return
                n = (w + WORKERS * k) % len(bodies)
                began = clock()
                if spec.client == "httpx":
                    status, content = await _httpx_post(client, bodies[n])
                else:
                    answer = await connection.request(requests[n])
                    status, content = answer.status, answer.body
                samples.append(clock() - began)
                _check(status, content)
                if spec.returning:
                    sent_on_session[w] += 1
        finally:
            await connection.aclose()

    async with anyio.create_task_group() as tasks:
        for w in range(WORKERS):
            tasks.start_soon(worker, w)
    return samples


async def _httpx_post(client: httpx.AsyncClient, body: bytes) -> tuple[int, bytes]:
    headers = {"content-type": "application/json"}
    response = await client.post(PATH, content=body, headers=headers)
    return response.status_code, response.content


def _check(status: int, content: bytes) -> None:
    body = json.loads(content) if status == 200 else None
    if not isinstance(body, dict) or body.get("output") != "hello":
        raise AssertionError(f"unexpected answer {status}: {content[:200]!r}")


# --- the server side (a spawned process) ---------------------------------------------


async def echo(messages: list[Any]) -> str:
    return str(messages[-1].text)


def _build_app(spec: ServerSpec, state_dir: Path) -> Any:
    if spec.app == "baseline":
        return _bare_app()
    from agenthost.channels.invocations import InvocationsChannel

    return loopback.host_app(echo, InvocationsChannel(), spec.store, state_dir)


def _bare_app() -> Any:
    """A Starlette app doing the route's JSON work and nothing else."""
    from starlette.responses import JSONResponse

    def invoke(body: dict[str, Any], text: str) -> JSONResponse:
        session_id = body.get("session_id") or secrets.token_hex(16)
        return JSONResponse({"output": text, "status": "completed", "session_id": session_id})

    return loopback.bare_app(PATH, invoke, invalid_input_status=422)
