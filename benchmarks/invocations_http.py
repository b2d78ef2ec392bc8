"""HTTP round trips through the Invocations channel: ``POST /invocations/invoke`` on a Host.

Each server runs in its own process (``multiprocessing``, spawn context) behind the
project's Hypercorn helpers on a loopback socket, so the load generator here does not share
the server's event loop. ``WORKERS`` concurrent workers each keep one connection alive and
send one request at a time for ``BUDGET_SECONDS`` after a short warm-up; every request's
latency is recorded.

- the baseline is a bare Starlette app, served the same way, whose route reads the JSON
  body, checks ``input`` is a string and answers ``{"output", "status", "session_id"}``;
- the host is ``Host(target=echo, channels=[InvocationsChannel()])`` with the store a user
  gets by default (SQLite on a file) and, for comparison, ``MemoryStore`` — the gap between
  the two is the store's share;
- "returning" requests name ``session_id = s-<n % 64>``; worker ``w`` only ever sends
  ``n = w + WORKERS * k``, so two requests in flight never share a session (no lease waits).
  The echo target is a plain ``async def``, so the host keeps its conversation history: a
  returning session's history grows by two messages a turn, and the ``history`` column says
  how long it had grown by the end of the row. "new session" requests carry no session_id.

The load comes from a minimal HTTP/1.1 client on anyio sockets (pre-built request bytes,
``content-length`` framing, reconnecting when Hypercorn closes a connection after
``keep_alive_max_requests``), because ``httpx.AsyncClient`` costs the client more CPU per
request than the bare app costs the server: with it the baseline measures httpx. One row
shows the bare app driven by httpx for comparison; httpx also checks readiness and each
row's answers before the load starts.

``ratio`` is the row's requests per second over the bare app's, on the same backend and
client. ``server CPU`` and ``client CPU`` are the processes' CPU time over the row's wall
time (100% is one core busy): a client near 100% means the row measures the load generator.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx

from benchmarks.report import Row, format_seconds
from benchmarks.timing import percentile

BUDGET_SECONDS = 3.0  # per measured row
WARMUP_SECONDS = 0.5  # per row, not reported
WORKERS = 16  # concurrent requests in flight, one keep-alive connection each
SESSIONS = 64  # returning session ids s-0 ... s-63; a multiple of WORKERS (see above)
MAX_REQUESTS_PER_WORKER = 200_000  # a bound on each loop besides the clock
REQUEST_TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0  # process spawn, imports and the host's lifespan
STOP_TIMEOUT = 10.0  # graceful stop, then terminate, then kill
SERVER_LIFETIME = 300.0  # a server process stops itself after this, whatever happens
GRACE_SECONDS = 2.0
MAX_RESPONSE_BYTES = 1024 * 1024
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
    rows: list[Row] = []
    baselines: dict[tuple[str, str], float] = {}  # (backend, client) -> requests per second
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-http-") as directory:
        for index, (server_spec, row_specs) in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            with server_process(server_spec, state_dir) as server:
                measured = anyio.run(_measure_server, server, row_specs, backend="asyncio")
            for spec, row in zip(row_specs, measured, strict=True):
                key = (server_spec.backend, spec.client)
                if server_spec.app == "baseline":
                    baselines[key] = row.ops_per_second
                    rows.append(row)
                    continue
                baseline = baselines.get(key)
                ratio = f"{row.ops_per_second / baseline:.2f}" if baseline else ""
                extra = {**row.extra, "ratio": ratio}
                rows.append(Row(row.name, row.operations, row.seconds, extra))
    return rows


@dataclass
class Server:
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    port: int
    app: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far (all its threads), asked over the pipe."""
        self.conn.send("cpu")
        if not self.conn.poll(5.0):
            raise TimeoutError("the server process did not report its CPU time")
        return float(self.conn.recv())


@contextmanager
def server_process(spec: ServerSpec, state_dir: Path) -> Iterator[Server]:
    """Start a server process, yield it once it has bound its port; always stop it."""
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(
        target=serve_in_process,
        args=(spec, str(state_dir), child_conn),
        name=f"bench-{spec.app}-{spec.backend}",
        daemon=True,  # multiprocessing also ends it if this process exits first
    )
    process.start()
    child_conn.close()
    try:
        if not conn.poll(STARTUP_TIMEOUT):
            raise TimeoutError(f"the {spec} server did not bind a port in {STARTUP_TIMEOUT}s")
        try:
            port = int(conn.recv())
        except EOFError:
            raise RuntimeError(
                f"the {spec} server process exited during start-up ({process.exitcode})"
            ) from None
        yield Server(process, conn, port, spec.app)
    finally:
        _stop(process, conn)


def _stop(process: Any, conn: Connection) -> None:
    with suppress(OSError):  # the process may be gone already
        conn.send("stop")
    process.join(STOP_TIMEOUT)
    if process.is_alive():
        process.terminate()
        process.join(3.0)
    if process.is_alive():
        process.kill()
        process.join(3.0)
    conn.close()


async def _measure_server(server: Server, row_specs: tuple[RowSpec, ...]) -> list[Row]:
    limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
    async with httpx.AsyncClient(
        base_url=server.base_url, limits=limits, timeout=REQUEST_TIMEOUT, trust_env=False
    ) as client:
        await _wait_ready(client, server)
        sent_on_session = [0] * WORKERS  # per worker, requests sent on its sessions so far
        rows = []
        for spec in row_specs:
            with anyio.fail_after(WARMUP_SECONDS + BUDGET_SECONDS + 60.0):
                for body in _bodies(spec.returning)[:3]:
                    _check(await _httpx_post(client, body))
                load = partial(_load, server, client, spec, sent_on_session=sent_on_session)
                await load(WARMUP_SECONDS)
                rows.append(await _measured_row(server, spec, load, sent_on_session))
        return rows


async def _wait_ready(client: httpx.AsyncClient, server: Server) -> None:
    with anyio.fail_after(STARTUP_TIMEOUT):
        while True:
            if not server.process.is_alive():
                raise RuntimeError(f"the server process exited ({server.process.exitcode})")
            try:
                if (await client.get("/readiness")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.05)


async def _measured_row(
    server: Server,
    spec: RowSpec,
    load: Callable[[float], Awaitable[list[float]]],
    sent_on_session: list[int],
) -> Row:
    gc.collect()
    server_cpu = server.cpu_seconds()
    client_cpu = time.process_time()
    started = time.perf_counter()
    samples = await load(BUDGET_SECONDS)
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    server_cpu = server.cpu_seconds() - server_cpu
    ordered = sorted(samples)
    extra = {
        "p50": format_seconds(percentile(ordered, 0.50)),
        "p99": format_seconds(percentile(ordered, 0.99)),
    }
    if spec.returning and server.app == "host":
        # Each turn adds the input and the reply to its session's history.
        extra["history"] = f"~{2 * sum(sent_on_session) / SESSIONS:,.0f} msgs"
    extra["server CPU"] = f"{server_cpu / wall:.0%}"
    extra["client CPU"] = f"{client_cpu / wall:.0%}"
    return Row(spec.name, len(samples), wall, extra)


def _bodies(returning: bool) -> list[bytes]:
    if returning:
        return [
            json.dumps({"input": "hello", "session_id": f"s-{n}"}).encode() for n in range(SESSIONS)
        ]
    return [json.dumps({"input": "hello"}).encode()]


async def _load(
    server: Server,
    client: httpx.AsyncClient,
    spec: RowSpec,
    seconds: float,
    *,
    sent_on_session: list[int],
) -> list[float]:
    """``WORKERS`` workers send requests until ``seconds`` have passed; the latencies."""
    bodies = _bodies(spec.returning)
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds

    async def worker(w: int) -> None:
        connection = _RawConnection(server.port, bodies)
        try:
            for k in range(MAX_REQUESTS_PER_WORKER):
                if clock() >= deadline:
                    return
                n = (w + WORKERS * k) % len(bodies)
                began = clock()
                if spec.client == "httpx":
                    status, content = await _httpx_post(client, bodies[n])
                else:
                    status, content = await connection.post(n)
                samples.append(clock() - began)
                _check((status, content))
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


def _check(answer: tuple[int, bytes]) -> None:
    status, content = answer
    body = json.loads(content) if status == 200 else None
    if not isinstance(body, dict) or body.get("output") != "hello":
        raise AssertionError(f"unexpected answer {status}: {content[:200]!r}")


class _RawConnection:
    """One keep-alive HTTP/1.1 connection sending pre-built ``POST`` requests.

    It reads ``content-length`` framed responses only (all that Hypercorn sends for a
    ``JSONResponse``) and reconnects when the server answers ``connection: close``.
    """

    def __init__(self, port: int, bodies: list[bytes]) -> None:
        self._port = port
        self._requests = [
            (
                f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode()
            + body
            for body in bodies
        ]
        self._stream: anyio.abc.SocketStream | None = None
        self._buffer = bytearray()

    async def post(self, index: int) -> tuple[int, bytes]:
        if self._stream is None:
            self._stream = await anyio.connect_tcp("127.0.0.1", self._port)
            self._buffer.clear()
        stream = self._stream
        await stream.send(self._requests[index])
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            await self._receive(stream)
        head = bytes(buffer[:end]).lower().split(b"\r\n")
        status = int(head[0].split(b" ", 2)[1])
        fields = dict(line.split(b":", 1) for line in head[1:])
        if b"content-length" not in fields:
            raise AssertionError(f"a response without content-length: {head!r}")
        size = int(fields[b"content-length"])
        while len(buffer) < end + 4 + size:
            await self._receive(stream)
        content = bytes(buffer[end + 4 : end + 4 + size])
        del buffer[: end + 4 + size]
        if fields.get(b"connection", b"").strip() == b"close":
            await self.aclose()
        return status, content

    async def _receive(self, stream: anyio.abc.SocketStream) -> None:
        self._buffer += await stream.receive(65536)
        if len(self._buffer) > MAX_RESPONSE_BYTES:
            raise AssertionError("a response larger than MAX_RESPONSE_BYTES")

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()


# --- the server side (a spawned process) ---------------------------------------------


def serve_in_process(spec: ServerSpec, state_dir: str, conn: Connection) -> None:
    """The server process: bind a loopback port, report it, serve until told to stop.

    It stops when the parent sends ``"stop"``, when the parent goes away (the pipe closes)
    or after ``SERVER_LIFETIME`` seconds, whichever comes first.
    """
    from agenthost.backends.serving import bound_socket, hypercorn_config, serve_app

    app = _build_app(spec, Path(state_dir))
    sock = bound_socket("127.0.0.1")
    port = sock.getsockname()[1]
    # Hypercorn takes ownership of the descriptor and closes it when it stops.
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=GRACE_SECONDS)
    config.loglevel = "WARNING"  # no "Running on ..." line per server
    conn.send(port)
    trigger = partial(_until_stopped, conn)
    anyio.run(partial(serve_app, app, config, shutdown_trigger=trigger), backend=spec.backend)


async def _until_stopped(conn: Connection) -> None:
    """Answer the parent's ``"cpu"`` questions until it says ``"stop"`` or goes away."""
    deadline = time.monotonic() + SERVER_LIFETIME
    while time.monotonic() < deadline:
        while conn.poll():
            try:
                message = conn.recv()
            except EOFError:
                return
            if message == "cpu":
                conn.send(time.process_time())
            else:
                return
        await anyio.sleep(0.05)


async def echo(messages: list[Any]) -> str:
    return str(messages[-1].text)


def _build_app(spec: ServerSpec, state_dir: Path) -> Any:
    if spec.app == "baseline":
        return _bare_app()
    from agenthost import Host
    from agenthost.channels.invocations import InvocationsChannel
    from agenthost.stores.base import Store
    from agenthost.stores.memory import MemoryStore
    from agenthost.stores.sqlite import SQLiteStore

    store: Store = SQLiteStore(state_dir / "bench.db") if spec.store == "sqlite" else MemoryStore()
    host = Host(
        target=echo,
        channels=[InvocationsChannel()],
        store=store,
        state_dir=state_dir,
        shutdown_grace_seconds=GRACE_SECONDS,
    )
    return host.app


def _bare_app() -> Any:
    """A Starlette app doing the route's JSON work and nothing else."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def readiness(request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    async def invoke(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"code": "invalid_json"}}, status_code=400)
        text = body.get("input") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return JSONResponse({"error": {"code": "invalid_input"}}, status_code=422)
        session_id = body.get("session_id") or secrets.token_hex(16)
        return JSONResponse({"output": text, "status": "completed", "session_id": session_id})

    routes = [
        Route("/readiness", readiness, methods=["GET"]),
        Route(PATH, invoke, methods=["POST"]),
    ]
    return Starlette(routes=routes)
