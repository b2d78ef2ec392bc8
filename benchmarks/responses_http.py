"""The Responses channel over HTTP: ``POST /responses/v1/responses``, plain and streaming.

Each server runs in its own process (``multiprocessing``, spawn context) behind the
project's Hypercorn helpers on a loopback socket (:mod:`benchmarks.loopback`), so the load
generator here does not share the server's event loop. The three servers run at once, and
each measurement's rows are taken in windows in turn (``loopback.in_rounds``), so the
machine's slow moments fall on every server's row. Three measurements per server, each
after a short warm-up:

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
HTTP/1.1 client on anyio sockets (``loopback.RawConnection``: pre-built request bytes,
``content-length`` and chunked framing), so the client costs little next to either server.
"""

from __future__ import annotations

import contextlib
import gc
import json
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks import loopback
from benchmarks.report import Row, format_seconds
from benchmarks.timing import percentile, summarise

BUDGET_SECONDS = 3.0  # per measured row; at 1.5 s the bare create row moved 10% between runs
WARMUP_SECONDS = 0.3  # per row, not reported
WORKERS = 8  # concurrent requests for the throughput rows, one connection each
MAX_REQUESTS_PER_WORKER = 100_000  # a bound on each loop besides the clock
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
    with (
        tempfile.TemporaryDirectory(prefix="agenthost-bench-responses-") as directory,
        contextlib.ExitStack() as servers_running,
    ):
        servers = []
        for index, spec in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            build = partial(_build_app, spec, state_dir)
            name = f"bench-responses-{spec.app}"
            server = loopback.server_process(build, name=name, label=str(spec))
            servers.append(servers_running.enter_context(server))
        measured = anyio.run(_measure, servers, backend="asyncio")
    rows: list[Row] = []
    baselines = loopback.Baselines()  # compared per measurement
    for spec, server_rows in zip(PLAN, measured, strict=True):
        for measurement, row in zip(MEASUREMENTS, server_rows, strict=True):
            rows.append(baselines.compare(row, measurement, baseline=spec.app == "baseline"))
    return rows


@dataclass
class _Tally:
    """One server's row of one measurement, summed over its windows (``loopback.in_rounds``)."""

    port: int
    spec: ServerSpec
    measurement: str
    counted: int = 0  # events or requests
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0

    async def window(self, seconds: float) -> None:
        gc.collect()
        if self.measurement == "first event":
            self.latencies += await _first_events(self.port, seconds)
            return
        started = time.perf_counter()
        counted, latencies = await _load(
            self.port, seconds, stream=self.measurement == "stream events"
        )
        self.wall += time.perf_counter() - started
        self.counted += counted
        self.latencies += latencies

    def row(self) -> Row:
        name = f"responses http {self.measurement}: {self.spec.label} (asyncio)"
        if self.measurement == "first event":
            return summarise(name, self.latencies)
        ordered = sorted(self.latencies)
        extra = {
            "p50": format_seconds(percentile(ordered, 0.50)),
            "p99": format_seconds(percentile(ordered, 0.99)),
        }
        if self.measurement == "stream events":
            extra["streams"] = f"{len(self.latencies):,}"
        return Row(name, self.counted, self.wall, extra)


async def _measure(servers: list[loopback.Server]) -> list[list[Row]]:
    """Check and warm up every server, then measure every row in rounds; rows per server."""
    tallies = []
    for server, spec in zip(servers, PLAN, strict=True):
        await loopback.wait_ready(server)
        with anyio.fail_after(len(MEASUREMENTS) * WARMUP_SECONDS + 60.0):
            # Check the answers once before measuring anything.
            connection = loopback.RawConnection(server.port)
            try:
                _check_json(await connection.request(_request(stream=False)))
                _check_stream(await connection.request(_request(stream=True)))
            finally:
                await connection.aclose()
            server_tallies = [_Tally(server.port, spec, m) for m in MEASUREMENTS]
            for tally in server_tallies:
                await tally.window(WARMUP_SECONDS)
                tally.counted, tally.latencies, tally.wall = 0, [], 0.0  # warm-up: not counted
        tallies.append(server_tallies)
    # Each measurement's rows in turn with the other servers' rows of that measurement.
    for measurement in range(len(MEASUREMENTS)):
        windows = [server_tallies[measurement].window for server_tallies in tallies]
        with anyio.fail_after(len(windows) * (BUDGET_SECONDS + 30.0)):
            await loopback.in_rounds(windows, BUDGET_SECONDS)
    return [[tally.row() for tally in server_tallies] for server_tallies in tallies]


async def _first_events(port: int, seconds: float) -> list[float]:
    """One stream at a time: the time to its first event (each stream read to its end)."""
    connection = loopback.RawConnection(port)
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
        connection = loopback.RawConnection(port)
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
    return loopback.post_request(PATH, body, headers={"authorization": "Bearer bench-key"})


def _check_json(answer: loopback.Answer) -> None:
    body = json.loads(answer.body) if answer.status == 200 else None
    text = body["output"][0]["content"][0]["text"] if isinstance(body, dict) else None
    if text is None or text.strip() != WORDS:
        raise AssertionError(f"unexpected answer {answer.status}: {answer.body[:300]!r}")


def _check_stream(answer: loopback.Answer) -> None:
    frames = [f for f in answer.body.decode().split("\n\n") if f]
    if answer.status != 200 or len(frames) != EVENTS_PER_STREAM:
        raise AssertionError(f"unexpected stream {answer.status}: {len(frames)} events")
    last = json.loads(frames[-1].split("data: ", 1)[1])
    if last["type"] != "response.completed" or not last["response"]["output"]:
        raise AssertionError(f"the stream ended with {last['type']}")


# --- the server side (a spawned process) ----------------------------------------------


async def echo(messages: list[Any]) -> Any:
    """Stream the last message's words back, one text delta a word."""
    words = str(messages[-1].text).split(" ")
    for word in words:
        yield word + " "


def _build_app(spec: ServerSpec, state_dir: Path) -> Any:
    if spec.app == "baseline":
        return _bare_app()
    from agenthost.channels.responses import ResponsesChannel

    return loopback.host_app(echo, ResponsesChannel(), spec.store, state_dir)


def _bare_app() -> Any:
    """A Starlette app doing the route's JSON work (and the same SSE frames) and no more."""
    import secrets

    from starlette.responses import JSONResponse, Response, StreamingResponse

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

    def create(body: dict[str, Any], text: str) -> Response:
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

    return loopback.bare_app(PATH, create, invalid_input_status=400)
