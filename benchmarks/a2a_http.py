"""The A2A channel over HTTP next to the Responses channel: send and stream throughput.

Both servers are a ``Host`` with the SQLite store a user gets by default and the same
``echo`` target (the input's 20 words streamed back as 20 text pieces), each in its own
process behind the project's Hypercorn helpers on a loopback socket
(:mod:`benchmarks.loopback`). The baseline is the Responses channel
(``POST /responses/v1/responses``), measured in the same run; the subject is the A2A
channel's JSON-RPC endpoint with protocol v1.0 (``SendMessage``,
``SendStreamingMessage``). Two measurements per server, each after a short warm-up:

- **send**: ``WORKERS`` concurrent non-streaming requests, one after another on each
  keep-alive connection; ``ops/s`` is answered requests per second.
- **stream**: the same with streaming requests, each read to its end; ``ops/s`` is whole
  streams per second (the two protocols send different numbers of events for one reply:
  ``events/stream`` says how many).

``ratio`` is the A2A row's ``ops/s`` over the Responses row's for the same measurement.
An A2A message is a durable task: it is recorded, run as a host background run and its
events are stored before they are sent, where a Responses request runs in the
foreground, so the ratio is the price of that durability. Every request carries a fresh
``messageId`` (a repeated one would answer the first task again).
"""

from __future__ import annotations

import gc
import itertools
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
from benchmarks.timing import percentile

BUDGET_SECONDS = 1.5  # per measured row
WARMUP_SECONDS = 0.3  # per row, not reported
WORKERS = 8
MAX_REQUESTS_PER_WORKER = 100_000  # a bound on each loop besides the clock
WORDS = " ".join(f"word{n}" for n in range(20))
MEASUREMENTS = ("send", "stream")


@dataclass(frozen=True)
class ServerSpec:
    channel: str  # "responses" (the baseline) or "a2a"

    @property
    def label(self) -> str:
        return "Responses" if self.channel == "responses" else "A2A v1.0 JSON-RPC"


PLAN = (ServerSpec("responses"), ServerSpec("a2a"))


def run() -> list[Row]:
    rows: list[Row] = []
    baselines = loopback.Baselines()
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-a2a-") as directory:
        for index, spec in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            build = partial(_build_app, spec, state_dir)
            name = f"bench-a2a-{spec.channel}"
            with loopback.server_process(build, name=name, label=spec.label) as server:
                measured = anyio.run(_measure, server, spec, backend="asyncio")
            for measurement, row in zip(MEASUREMENTS, measured, strict=True):
                is_baseline = spec.channel == "responses"
                rows.append(baselines.compare(row, measurement, baseline=is_baseline))
    return rows


async def _measure(server: loopback.Server, spec: ServerSpec) -> list[Row]:
    await loopback.wait_ready(server)
    requests = _Requests(spec)
    rows = []
    with anyio.fail_after(3 * (WARMUP_SECONDS + BUDGET_SECONDS) + 60.0):
        connection = loopback.RawConnection(server.port)
        try:
            _check(spec, await connection.request(requests.next(stream=False)), stream=False)
            _check(spec, await connection.request(requests.next(stream=True)), stream=True)
        finally:
            await connection.aclose()
        for measurement in MEASUREMENTS:
            stream = measurement == "stream"
            await _load(server.port, requests, WARMUP_SECONDS, stream=stream)
            gc.collect()
            started = time.perf_counter()
            counts, latencies, events = await _load(
                server.port, requests, BUDGET_SECONDS, stream=stream
            )
            wall = time.perf_counter() - started
            ordered = sorted(latencies)
            extra = {
                "p50": format_seconds(percentile(ordered, 0.50)),
                "p99": format_seconds(percentile(ordered, 0.99)),
            }
            if stream and counts:
                extra["events/stream"] = f"{events / counts:.0f}"
            name = f"a2a vs responses {measurement}: {spec.label} (asyncio)"
            rows.append(Row(name, counts, wall, extra))
    return rows


class _Requests:
    """Request bytes for one server; A2A messages get fresh ids."""

    def __init__(self, spec: ServerSpec) -> None:
        self._spec = spec
        self._numbers = itertools.count()
        self._responses = {
            stream: loopback.post_request(
                "/responses/v1/responses",
                json.dumps({"model": "bench", "input": WORDS, "stream": stream}).encode(),
                headers={"authorization": "Bearer bench-key"},
            )
            for stream in (False, True)
        }

    def next(self, *, stream: bool) -> bytes:
        if self._spec.channel == "responses":
            return self._responses[stream]
        number = next(self._numbers)
        body = {
            "jsonrpc": "2.0",
            "id": number,
            "method": "SendStreamingMessage" if stream else "SendMessage",
            "params": {
                "message": {
                    "messageId": f"bench-{number}",
                    "role": "ROLE_USER",
                    "parts": [{"text": WORDS}],
                }
            },
        }
        return loopback.post_request("/a2a", json.dumps(body).encode())


async def _load(
    port: int, requests: _Requests, seconds: float, *, stream: bool
) -> tuple[int, list[float], int]:
    """``WORKERS`` workers send requests for ``seconds``: (answered, latencies, events)."""
    latencies: list[float] = []
    counted = 0
    events = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal counted, events
        connection = loopback.RawConnection(port)
        try:
            for _ in range(MAX_REQUESTS_PER_WORKER):
                if time.perf_counter() >= deadline:
                    return
                answer = await connection.request(requests.next(stream=stream))
                if answer.status != 200:
                    raise AssertionError(f"unexpected status {answer.status}")
                latencies.append(answer.seconds)
                counted += 1
                events += answer.events
        finally:
            await connection.aclose()

    async with anyio.create_task_group() as tasks:
        for _ in range(WORKERS):
            tasks.start_soon(worker)
    return counted, latencies, events


def _check(spec: ServerSpec, answer: loopback.Answer, *, stream: bool) -> None:
    """The reply carries the words back, in the protocol's own shape."""
    if answer.status != 200:
        raise AssertionError(f"{spec.label} answered {answer.status}: {answer.body[:300]!r}")
    if stream:
        frames = [f for f in answer.body.decode().split("\n\n") if f]
        text = "".join(_stream_text(spec, json.loads(f.split("data: ", 1)[1])) for f in frames)
    else:
        text = _reply_text(spec, json.loads(answer.body))
    if text.strip() != WORDS:
        raise AssertionError(f"{spec.label} answered {text[:100]!r}")


def _reply_text(spec: ServerSpec, body: Any) -> str:
    if spec.channel == "responses":
        return str(body["output"][0]["content"][0]["text"])
    artifacts = body["result"]["task"]["artifacts"]
    return "".join(p["text"] for a in artifacts for p in a["parts"])


def _stream_text(spec: ServerSpec, event: Any) -> str:
    if spec.channel == "responses":
        return str(event.get("delta", "")) if event["type"] == "response.output_text.delta" else ""
    update = event["result"].get("artifactUpdate")
    return "".join(p["text"] for p in update["artifact"]["parts"]) if update else ""


# --- the server side (a spawned process) ----------------------------------------------


async def echo(messages: list[Any]) -> Any:
    """Stream the last message's words back, one piece a word."""
    for word in str(messages[-1].text).split(" "):
        yield word + " "


def _build_app(spec: ServerSpec, state_dir: Path) -> Any:
    if spec.channel == "responses":
        from agenthost.channels.responses import ResponsesChannel

        return loopback.host_app(echo, ResponsesChannel(), "sqlite", state_dir)
    from agenthost.channels.a2a import A2AChannel

    return loopback.host_app(echo, A2AChannel(), "sqlite", state_dir)
