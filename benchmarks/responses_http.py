"""The Responses channel over HTTP: ``POST /responses/v1/responses``, plain and streaming.

Each server runs in its own process (``multiprocessing``, spawn context) behind the
project's Hypercorn helpers on a loopback socket (:mod:`benchmarks.loopback`), so the load
generator here does not share the server's event loop. Three measurements per server, each
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

import gc
import json
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks import loopback
from benchmarks.report import Row, format_seconds
from benchmarks.timing import percentile, summarise

BUDGET_SECONDS = 1.5  # per measured row
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
    rows: list[Row] = []
    baselines = loopback.Baselines()  # compared per measurement
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-responses-") as directory:
        for index, spec in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            build = partial(_build_app, spec, state_dir)
            name = f"bench-responses-{spec.app}"
            with loopback.server_process(build, name=name, label=str(spec)) as server:
                measured = anyio.run(_measure, server, spec, backend="asyncio")
            for measurement, row in zip(MEASUREMENTS, measured, strict=True):
                rows.append(baselines.compare(row, measurement, baseline=spec.app == "baseline"))
    return rows


async def _measure(server: loopback.Server, spec: ServerSpec) -> list[Row]:
    await loopback.wait_ready(server)
    port = server.port
    rows = []
    with anyio.fail_after(3 * (WARMUP_SECONDS + BUDGET_SECONDS) + 60.0):
        # Check the answers once before measuring anything.
        connection = loopback.RawConnection(port)
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
        return summarise(name, await _first_events(port, seconds))
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
