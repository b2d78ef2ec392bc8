"""A server in its own process on a loopback port, and the raw HTTP/1.1 client that drives it.

The HTTP benchmarks (``invocations_http``, ``responses_http``, ``mcp_http``,
``agent_framework_peer``, ``session_scale``, ``one_connection_latency``, ``server_memory``)
share this machinery; each keeps its own rows, request bodies, answer checks and apps. This
module owns:

- the server process's lifecycle: :func:`server_process` spawns a process
  (``multiprocessing``, spawn context) that builds the app, binds a loopback socket before
  serving (``fd://``, so there is no race for the port), sends the port over a pipe and
  serves with the project's Hypercorn helpers (:func:`serve_in_process`). The process stops
  when the parent sends ``"stop"``, when the parent goes away or after ``SERVER_LIFETIME``
  seconds; the parent asks it to stop, then terminates it, then kills it. Over the same pipe
  the process answers ``"cpu"`` with its CPU time (:meth:`Server.cpu_seconds`); its
  resident memory is read from ``/proc`` (:meth:`Server.memory_kib`);
- the readiness wait: :func:`wait_ready` polls ``GET /readiness`` until it answers 200;
- the load generator's client: :class:`RawConnection`, one keep-alive HTTP/1.1 connection on
  anyio sockets sending pre-built request bytes (:func:`post_request`) and reading
  ``content-length`` or chunked responses, reconnecting when the server answers
  ``connection: close`` (Hypercorn does after ``keep_alive_max_requests``). It costs the
  client far less CPU per request than ``httpx.AsyncClient``, so the rows measure the server;
- the closed-loop load: :func:`drive` keeps N connections busy, one request at a time
  each, for a bounded count and time, and :meth:`Load.row` turns what it measured into a row
  (p50, p99, p99/p50, the server's CPU share);
- what both serve around their own parts: :func:`host_app` (a ``Host`` on the SQLite or the
  memory store), :func:`bare_app` (the bare Starlette baseline doing the route's JSON work)
  and :class:`Baselines` (the other rows' ``ratio`` column against that baseline);
- :func:`in_rounds`, which measures the rows of several servers in turns, so a stretch of
  time when the machine runs slow falls on all of them rather than on one.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from benchmarks.report import Row, format_seconds
from benchmarks.timing import percentile

if TYPE_CHECKING:
    from starlette.responses import Response

STARTUP_TIMEOUT = 30.0  # process spawn, imports and the app's lifespan
STOP_TIMEOUT = 10.0  # graceful stop, then terminate, then kill
SERVER_LIFETIME = 300.0  # a server process stops itself after this, whatever happens
GRACE_SECONDS = 2.0  # Hypercorn's graceful timeout (and the hosts' shutdown grace)
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
HOST = "127.0.0.1"


# --- the parent side -------------------------------------------------------------------


@dataclass
class Server:
    """A running server process and its end of the pipe."""

    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far (all its threads), asked over the pipe."""
        self.conn.send("cpu")
        if not self.conn.poll(5.0):
            raise TimeoutError("the server process did not report its CPU time")
        return float(self.conn.recv())

    def memory_kib(self) -> dict[str, int]:
        """The server process's ``VmRSS`` (resident now) and ``VmHWM`` (resident at its
        peak), in KiB, as Linux reports them in ``/proc/<pid>/status``."""
        fields: dict[str, int] = {}
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])  # "  65432 kB"
        return fields


@contextmanager
def server_process(
    build_app: Callable[[], Any], *, name: str, label: str, backend: str = "asyncio"
) -> Iterator[Server]:
    """Start a server process, yield it once it has bound its port; always stop it.

    ``build_app`` runs in the new process, so it must pickle: a module-level function or a
    ``functools.partial`` of one. ``name`` names the process, ``label`` the server in errors;
    ``backend`` is the anyio backend the server runs on.
    """
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(
        target=serve_in_process,
        args=(build_app, backend, child_conn),
        name=name,
        daemon=True,  # multiprocessing also ends it if this process exits first
    )
    process.start()
    child_conn.close()
    try:
        if not conn.poll(STARTUP_TIMEOUT):
            raise TimeoutError(f"the {label} server did not bind a port in {STARTUP_TIMEOUT}s")
        try:
            port = int(conn.recv())
        except EOFError:
            raise RuntimeError(
                f"the {label} server process exited during start-up ({process.exitcode})"
            ) from None
        yield Server(process, conn, port)
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


async def wait_ready(server: Server) -> None:
    """Wait until ``GET /readiness`` answers 200 (the app's lifespan has run)."""
    request = f"GET /readiness HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode()
    with anyio.fail_after(STARTUP_TIMEOUT):
        while True:
            if not server.process.is_alive():
                raise RuntimeError(f"the server process exited ({server.process.exitcode})")
            connection = RawConnection(server.port)
            try:
                if (await connection.request(request)).status == 200:
                    return
            except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                pass
            finally:
                await connection.aclose()
            await anyio.sleep(0.05)


def post_request(
    path: str, body: bytes, *, host: str = HOST, headers: Mapping[str, str] | None = None
) -> bytes:
    """The bytes of a JSON ``POST`` request, for :meth:`RawConnection.request`."""
    fields = "".join(f"{key}: {value}\r\n" for key, value in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\n{fields}"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Answer:
    """A response as :class:`RawConnection` read it, with its timings."""

    status: int
    body: bytes
    seconds: float  # from sending the request to having read the whole body
    first_event_seconds: float  # ... to the first whole SSE event (chunked bodies only)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names

    @property
    def events(self) -> int:
        """How many SSE events (frames ending in a blank line) the body holds."""
        return self.body.count(b"\n\n")


class RawConnection:
    """One keep-alive HTTP/1.1 connection; reads ``content-length`` and chunked bodies.

    It connects on the first request and again after the server answers
    ``connection: close``.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._stream: anyio.abc.SocketStream | None = None
        self._buffer = bytearray()

    async def request(self, data: bytes) -> Answer:
        if self._stream is None:
            self._stream = await anyio.connect_tcp(HOST, self._port)
            self._buffer.clear()
        stream, buffer = self._stream, self._buffer
        began = time.perf_counter()
        await stream.send(data)
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            await self._receive(stream)
        head = bytes(buffer[:end]).lower().split(b"\r\n")
        del buffer[: end + 4]
        status = int(head[0].split(b" ", 2)[1])
        fields = dict(line.split(b":", 1) for line in head[1:])
        first_event = 0.0
        if b"content-length" in fields:
            size = int(fields[b"content-length"])
            while len(buffer) < size:
                await self._receive(stream)
            body = bytes(buffer[:size])
            del buffer[:size]
        else:
            body_parts = bytearray()
            while True:
                while (line_end := buffer.find(b"\r\n")) < 0:
                    await self._receive(stream)
                size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
                while len(buffer) < line_end + 2 + size + 2:
                    await self._receive(stream)
                body_parts += buffer[line_end + 2 : line_end + 2 + size]
                del buffer[: line_end + 2 + size + 2]
                if not first_event and b"\n\n" in body_parts:
                    first_event = time.perf_counter() - began
                if size == 0:
                    break
            body = bytes(body_parts)
        seconds = time.perf_counter() - began
        if fields.get(b"connection", b"").strip() == b"close":
            await self.aclose()
        headers = {k.decode("latin-1"): v.strip().decode("latin-1") for k, v in fields.items()}
        return Answer(status, body, seconds, first_event or seconds, headers)

    async def _receive(self, stream: anyio.abc.SocketStream) -> None:
        self._buffer += await stream.receive(65536)
        if len(self._buffer) > MAX_RESPONSE_BYTES:
            raise AssertionError("a response larger than MAX_RESPONSE_BYTES")

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()


@dataclass
class Load:
    """What one :func:`drive` measured: answers, wall time, latencies and server CPU."""

    requests: int
    wall_seconds: float
    latencies: list[float]
    server_cpu_seconds: float
    client_cpu_seconds: float

    @classmethod
    def combined(cls, loads: Sequence[Load]) -> Load:
        """Several slices of one load (say, interleaved with another server's) as one."""
        return cls(
            sum(load.requests for load in loads),
            sum(load.wall_seconds for load in loads),
            [latency for load in loads for latency in load.latencies],
            sum(load.server_cpu_seconds for load in loads),
            sum(load.client_cpu_seconds for load in loads),
        )

    def row(self, name: str, extra: Mapping[str, str] | None = None) -> Row:
        """Requests per second of wall time, with p50, p99, p99/p50 and both processes' CPU
        over the wall time (100% is one core busy; a client near 100% measures itself)."""
        ordered = sorted(self.latencies)
        p50, p99 = percentile(ordered, 0.50), percentile(ordered, 0.99)
        columns = {
            "p50": format_seconds(p50),
            "p99": format_seconds(p99),
            "p99/p50": f"{p99 / p50:.1f}" if p50 > 0 else "",
            "server CPU": f"{self.server_cpu_seconds / self.wall_seconds:.0%}",
            "client CPU": f"{self.client_cpu_seconds / self.wall_seconds:.0%}",
        }
        return Row(name, self.requests, self.wall_seconds, {**columns, **(extra or {})})


async def drive(
    server: Server,
    requests: Sequence[bytes],
    *,
    connections: int,
    seconds: float,
    max_requests: int,
    check: Callable[[Answer], None] | None = None,
) -> Load:
    """Keep ``connections`` keep-alive connections busy, one request at a time each, until
    ``seconds`` have passed or ``max_requests`` answers have come back in all.

    Connection ``c`` sends ``requests[(c + connections * k) % len(requests)]`` as its
    ``k``-th request: when ``len(requests)`` is a multiple of ``connections``, no two
    connections ever send the same request (say, two turns on one session at once).

    Every answer must be a 200 (and pass ``check``, when given): a load that quietly turns
    into errors would measure the error path.
    """
    latencies: list[float] = []
    clock = time.perf_counter
    server_cpu = server.cpu_seconds()
    client_cpu = time.process_time()
    started = clock()
    deadline = started + seconds

    async def connection_loop(c: int) -> None:
        connection = RawConnection(server.port)
        n = c
        try:
            # The shared count bounds the loop with the clock; each connection checks both.
            while len(latencies) < max_requests and clock() < deadline:
                answer = await connection.request(requests[n % len(requests)])
                n += connections
                if answer.status != 200:
                    raise AssertionError(f"answer {answer.status}: {answer.body[:300]!r}")
                if check is not None:
                    check(answer)
                latencies.append(answer.seconds)
        finally:
            await connection.aclose()

    async with anyio.create_task_group() as tasks:
        for c in range(connections):
            tasks.start_soon(connection_loop, c)
    wall = clock() - started
    client_cpu = time.process_time() - client_cpu
    return Load(len(latencies), wall, latencies, server.cpu_seconds() - server_cpu, client_cpu)


# --- the server side (a spawned process) -----------------------------------------------


def serve_in_process(build_app: Callable[[], Any], backend: str, conn: Connection) -> None:
    """The server process: bind a loopback port, report it, serve until told to stop.

    It stops when the parent sends ``"stop"``, when the parent goes away (the pipe closes)
    or after ``SERVER_LIFETIME`` seconds, whichever comes first.
    """
    from agenthost.backends.serving import (
        bound_socket,
        hypercorn_config,
        prepare_collector,
        serve_app,
    )

    app = build_app()
    prepare_collector()  # as `agenthost serve` does
    sock = bound_socket(HOST)
    port = sock.getsockname()[1]
    # Hypercorn takes ownership of the descriptor and closes it when it stops.
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=GRACE_SECONDS)
    config.loglevel = "WARNING"  # no "Running on ..." line per server
    conn.send(port)
    trigger = partial(_until_stopped, conn)
    anyio.run(partial(serve_app, app, config, shutdown_trigger=trigger), backend=backend)


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


def host_app(target: Any, channel: Any, store: str, state_dir: Path) -> Any:
    """A ``Host`` serving ``target`` on ``channel``, as the host rows measure it.

    ``store`` is ``"sqlite"`` (the store a user gets by default, on a file in ``state_dir``)
    or ``"memory"``; the host's shutdown grace matches Hypercorn's graceful timeout.
    """
    from agenthost import Host
    from agenthost.stores.base import Store
    from agenthost.stores.memory import MemoryStore
    from agenthost.stores.sqlite import SQLiteStore

    chosen: Store = SQLiteStore(state_dir / "bench.db") if store == "sqlite" else MemoryStore()
    host = Host(
        target=target,
        channels=[channel],
        store=chosen,
        state_dir=state_dir,
        shutdown_grace_seconds=GRACE_SECONDS,
    )
    return host.app


def bare_app(
    path: str, answer: Callable[[dict[str, Any], str], Response], *, invalid_input_status: int
) -> Any:
    """The baseline the host rows are compared with: a bare Starlette app, served the same way.

    ``GET /readiness`` answers 200 (what :func:`wait_ready` waits for). ``POST path`` reads
    the JSON body, checks its ``input`` is a string (400 for bad JSON,
    ``invalid_input_status`` for a bad ``input``, as the channel answers) and returns
    ``answer(body, input)``.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def readiness(request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    async def post(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"code": "invalid_json"}}, status_code=400)
        text = body.get("input") if isinstance(body, dict) else None
        if not isinstance(text, str):
            error = {"error": {"code": "invalid_input"}}
            return JSONResponse(error, status_code=invalid_input_status)
        return answer(body, text)

    routes = [
        Route("/readiness", readiness, methods=["GET"]),
        Route(path, post, methods=["POST"]),
    ]
    return Starlette(routes=routes)


ROUNDS = 6  # windows each interleaved row is measured in


async def in_rounds(
    windows: Sequence[Callable[[float], Awaitable[None]]],
    seconds: float,
    *,
    rounds: int = ROUNDS,
) -> None:
    """Measure every row for ``seconds`` in all, in ``rounds`` windows taken in turn.

    ``windows[k](length)`` measures row ``k`` for ``length`` seconds and adds what it saw
    to the row's tally. Each round runs every row's window once, starting one row further
    along than the round before. On a shared machine whose speed drifts over seconds (other
    tenants, the kernel's own work), a slow stretch then slows every row a little instead
    of one row a lot: the ratios between rows hold better than their absolute values.
    """
    length = seconds / rounds
    for round_number in range(rounds):
        for k in range(len(windows)):
            await windows[(round_number + k) % len(windows)](length)


class Baselines:
    """The bare baseline's ops/s per comparison key, and the other rows' ``ratio`` column."""

    def __init__(self) -> None:
        self._ops_per_second: dict[Hashable, float] = {}

    def compare(self, row: Row, key: Hashable, *, baseline: bool) -> Row:
        """A baseline row as it is, remembered under ``key``; another row with a ``ratio``:
        its ops/s over the baseline's under the same ``key`` (blank when there is none)."""
        if baseline:
            self._ops_per_second[key] = row.ops_per_second
            return row
        reference = self._ops_per_second.get(key)
        ratio = f"{row.ops_per_second / reference:.2f}" if reference else ""
        return Row(row.name, row.operations, row.seconds, {**row.extra, "ratio": ratio})
