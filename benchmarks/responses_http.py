"""The Responses channel over HTTP: ``POST /responses/v1/responses``, plain and streaming.

Each server runs in its own process (``multiprocessing``, spawn context) behind the
project's Hypercorn helpers on a loopback socket, so the load generator here does not share
the server's event loop. Three measurements per server, each after a short warm-up:

- **first event**: one stream at a time; the time from sending the request to having read
  the first whole SSE event (``response.created``). ``ops/s`` is one over the mean.
- **stream events**: ``WORKERS`` concurrent streams, one after another on each keep-alive
  connection; every SSE event read counts. ``ops/s`` is events per second of wall time.
- **create**: ``WORKERS`` concurrent non-streaming requests; ``ops/s`` is requests per
  second.

The baseline is a bare Starlette app, served the same way, whose route reads the JSON body,
checks ``input`` and answers a response object of the same shape, or (streaming) writes the
same 28 events the host sends for the echo target, each ``json.dumps``-ed as it goes. The
host is ``Host(target=echo, channels=[ResponsesChannel()])``: ``echo`` streams the input's
20 words back as 20 text deltas (created, in_progress, item and part added, 20 deltas,
text, part and item done, completed), with the SQLite store a user gets by default and,
for comparison, ``MemoryStore``. Every request is a new response (no
``previous_response_id``), so each one creates and saves its session snapshot.

``ratio`` is the row's ``ops/s`` over the bare app's for the same measurement (for the first
event: the bare app's mean time over the host's). Requests are sent and read by a minimal
HTTP/1.1 client on anyio sockets (pre-built request bytes, ``content-length`` and chunked
framing), so the client costs little next to either server.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from benchmarks.report import Row, format_seconds
from benchmarks.timing import percentile

BUDGET_SECONDS = 1.5  # per measured row
WARMUP_SECONDS = 0.3  # per row, not reported
WORKERS = 8  # concurrent requests for the throughput rows, one connection each
MAX_REQUESTS_PER_WORKER = 100_000  # a bound on each loop besides the clock
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SERVER_LIFETIME = 300.0  # a server process stops itself after this, whatever happens
GRACE_SECONDS = 2.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
PATH = "/responses/v1/responses"
WORDS = " ".join(f"word{n}" for n in range(20))
EVENTS_PER_STREAM = 28


@dataclass(frozen=True)
class ServerSpec:
    app: str  # "baseline" or "host"
    store: str = ""  # "sqlite" or "memory" for the host

    @property
    def label(self) -> str:
        return "bare Starlette" if self.app == "baseline" else f"host {self.store}"


PLAN = (ServerSpec("baseline"), ServerSpec("host", "sqlite"), ServerSpec("host", "memory"))
MEASUREMENTS = ("first event", "stream events", "create")


# --- the client side (this process) --------------------------------------------------


def run() -> list[Row]:
    rows: list[Row] = []
    baseline: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-responses-") as directory:
        for index, spec in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            with server_process(spec, state_dir) as port:
                measured = anyio.run(_measure, port, spec, backend="asyncio")
            for measurement, row in zip(MEASUREMENTS, measured, strict=True):
                if spec.app == "baseline":
                    baseline[measurement] = row.ops_per_second
                    rows.append(row)
                    continue
                reference = baseline.get(measurement)
                ratio = f"{row.ops_per_second / reference:.2f}" if reference else ""
                rows.append(
                    Row(row.name, row.operations, row.seconds, {**row.extra, "ratio": ratio})
                )
    return rows


async def _measure(port: int, spec: ServerSpec) -> list[Row]:
    with anyio.fail_after(STARTUP_TIMEOUT):
        await _wait_ready(port)
    rows = []
    with anyio.fail_after(3 * (WARMUP_SECONDS + BUDGET_SECONDS) + 60.0):
        # Check the answers once before measuring anything.
        connection = _RawConnection(port)
        try:
            _check_json(await connection.request(_request(stream=False)))
            _check_stream(await connection.request(_request(stream=True)))
        finally:
            await connection.aclose()
        for measurement in MEASUREMENTS:
            await _run_row(port, measurement, WARMUP_SECONDS)
            gc.collect()
            rows.append(await _run_row(port, measurement, BUDGET_SECONDS, spec=spec))
    return rows


async def _run_row(
    port: int, measurement: str, seconds: float, *, spec: ServerSpec | None = None
) -> Row:
    name = f"responses http {measurement}: {spec.label if spec else ''} (asyncio)"
    if measurement == "first event":
        samples = await _first_events(port, seconds)
        ordered = sorted(samples)
        extra = {
            "p50": format_seconds(percentile(ordered, 0.50)),
            "p99": format_seconds(percentile(ordered, 0.99)),
        }
        return Row(name, len(samples), sum(samples), extra)
    stream = measurement == "stream events"
    started = time.perf_counter()
    counts, latencies = await _load(port, seconds, stream=stream)
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    extra = {
        "p50": format_seconds(percentile(ordered, 0.50)),
        "p99": format_seconds(percentile(ordered, 0.99)),
    }
    if stream:
        extra["streams"] = f"{len(latencies):,}"
    return Row(name, counts, wall, extra)


async def _first_events(port: int, seconds: float) -> list[float]:
    """One stream at a time: the time to its first event (each stream read to its end)."""
    connection = _RawConnection(port)
    request = _request(stream=True)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    try:
        for _ in range(MAX_REQUESTS_PER_WORKER):
            if time.perf_counter() >= deadline:
                break
            answer = await connection.request(request)
            samples.append(answer.first_event_seconds)
    finally:
        await connection.aclose()
    return samples


async def _load(port: int, seconds: float, *, stream: bool) -> tuple[int, list[float]]:
    """``WORKERS`` workers send requests for ``seconds``: (events or requests, latencies)."""
    request = _request(stream=stream)
    latencies: list[float] = []
    counted = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal counted
        connection = _RawConnection(port)
        try:
            for _ in range(MAX_REQUESTS_PER_WORKER):
                if time.perf_counter() >= deadline:
                    return
                answer = await connection.request(request)
                latencies.append(answer.seconds)
                counted += answer.events if stream else 1
        finally:
            await connection.aclose()

    async with anyio.create_task_group() as tasks:
        for _ in range(WORKERS):
            tasks.start_soon(worker)
    return counted, latencies


def _request(*, stream: bool) -> bytes:
    body = json.dumps({"model": "bench", "input": WORDS, "stream": stream}).encode()
    return (
        f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer bench-key\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _check_json(answer: _Answer) -> None:
    body = json.loads(answer.body) if answer.status == 200 else None
    text = body["output"][0]["content"][0]["text"] if isinstance(body, dict) else None
    if text is None or text.strip() != WORDS:
        raise AssertionError(f"unexpected answer {answer.status}: {answer.body[:300]!r}")


def _check_stream(answer: _Answer) -> None:
    frames = [f for f in answer.body.decode().split("\n\n") if f]
    if answer.status != 200 or len(frames) != EVENTS_PER_STREAM:
        raise AssertionError(f"unexpected stream {answer.status}: {len(frames)} events")
    last = json.loads(frames[-1].split("data: ", 1)[1])
    if last["type"] != "response.completed" or not last["response"]["output"]:
        raise AssertionError(f"the stream ended with {last['type']}")


async def _wait_ready(port: int) -> None:
    request = b"GET /readiness HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    while True:
        connection = _RawConnection(port)
        try:
            if (await connection.request(request)).status == 200:
                return
        except OSError:
            pass
        finally:
            await connection.aclose()
        await anyio.sleep(0.05)


@dataclass
class _Answer:
    status: int
    body: bytes
    seconds: float
    first_event_seconds: float
    events: int


class _RawConnection:
    """One keep-alive HTTP/1.1 connection; reads ``content-length`` and chunked bodies."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stream: anyio.abc.SocketStream | None = None
        self._buffer = bytearray()

    async def request(self, data: bytes) -> _Answer:
        if self._stream is None:
            self._stream = await anyio.connect_tcp("127.0.0.1", self._port)
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
        return _Answer(status, body, seconds, first_event or seconds, body.count(b"\n\n"))

    async def _receive(self, stream: anyio.abc.SocketStream) -> None:
        self._buffer += await stream.receive(65536)
        if len(self._buffer) > MAX_RESPONSE_BYTES:
            raise AssertionError("a response larger than MAX_RESPONSE_BYTES")

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()


@contextmanager
def server_process(spec: ServerSpec, state_dir: Path) -> Iterator[int]:
    """Start a server process; yield its port once bound; always stop it."""
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(
        target=serve_in_process,
        args=(spec, str(state_dir), child_conn),
        name=f"bench-responses-{spec.app}",
        daemon=True,
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
        yield port
    finally:
        with suppress(OSError):
            conn.send("stop")
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            process.terminate()
            process.join(3.0)
        if process.is_alive():
            process.kill()
            process.join(3.0)
        conn.close()


# --- the server side (a spawned process) ----------------------------------------------


def serve_in_process(spec: ServerSpec, state_dir: str, conn: Connection) -> None:
    """Bind a loopback port, report it, serve until told to stop (or the parent leaves)."""
    from agenthost.backends.serving import bound_socket, hypercorn_config, serve_app

    app = _build_app(spec, Path(state_dir))
    sock = bound_socket("127.0.0.1")
    port = sock.getsockname()[1]
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=GRACE_SECONDS)
    config.loglevel = "WARNING"
    conn.send(port)
    anyio.run(partial(serve_app, app, config, shutdown_trigger=partial(_until_stopped, conn)))


async def _until_stopped(conn: Connection) -> None:
    deadline = time.monotonic() + SERVER_LIFETIME
    while time.monotonic() < deadline:
        with suppress(EOFError):
            if conn.poll():
                return
        await anyio.sleep(0.05)


async def echo(messages: list[Any]) -> Any:
    """Stream the last message's words back, one text delta a word."""
    words = str(messages[-1].text).split(" ")
    for word in words:
        yield word + " "


def _build_app(spec: ServerSpec, state_dir: Path) -> Any:
    if spec.app == "baseline":
        return _bare_app()
    from agenthost import Host
    from agenthost.channels.responses import ResponsesChannel
    from agenthost.stores.base import Store
    from agenthost.stores.memory import MemoryStore
    from agenthost.stores.sqlite import SQLiteStore

    store: Store = SQLiteStore(state_dir / "bench.db") if spec.store == "sqlite" else MemoryStore()
    host = Host(
        target=echo,
        channels=[ResponsesChannel()],
        store=store,
        state_dir=state_dir,
        shutdown_grace_seconds=GRACE_SECONDS,
    )
    return host.app


def _bare_app() -> Any:
    """A Starlette app doing the route's JSON work (and the same SSE frames) and no more."""
    import secrets

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def readiness(request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    def response_object(rid: str, status: str, text: str | None) -> dict[str, Any]:
        output = []
        if text is not None:
            output.append(
                {
                    "id": f"msg_{rid}",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            )
        return {"id": f"resp_{rid}", "object": "response", "status": status, "output": output}

    async def create(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"code": "invalid_json"}}, status_code=400)
        text = body.get("input") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return JSONResponse({"error": {"code": "invalid_input"}}, status_code=400)
        rid = secrets.token_hex(16)
        if not body.get("stream"):
            return JSONResponse(response_object(rid, "completed", text + " "))
        return StreamingResponse(_events(rid, text), media_type="text/event-stream")

    async def _events(rid: str, text: str) -> Any:
        where = {"item_id": f"msg_{rid}", "output_index": 0, "content_index": 0}
        kinds: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": response_object(rid, "in_progress", None)}),
            ("response.in_progress", {"response": response_object(rid, "in_progress", None)}),
            ("response.output_item.added", {"output_index": 0, "item": {"id": f"msg_{rid}"}}),
            ("response.content_part.added", {**where, "part": {"type": "output_text"}}),
        ]
        kinds += [
            ("response.output_text.delta", {**where, "delta": word + " ", "logprobs": []})
            for word in text.split(" ")
        ]
        kinds += [
            ("response.output_text.done", {**where, "text": text + " "}),
            ("response.content_part.done", {**where, "part": {"type": "output_text"}}),
            ("response.output_item.done", {"output_index": 0, "item": {"id": f"msg_{rid}"}}),
            ("response.completed", {"response": response_object(rid, "completed", text + " ")}),
        ]
        for sequence, (kind, fields) in enumerate(kinds):
            event = {"type": kind, "sequence_number": sequence, **fields}
            yield f"event: {kind}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"

    return Starlette(
        routes=[
            Route("/readiness", readiness, methods=["GET"]),
            Route(PATH, create, methods=["POST"]),
        ]
    )
