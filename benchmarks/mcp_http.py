"""The MCP channel's ``tools/call`` next to the Responses channel's ``create``.

Each server runs in its own process behind the project's Hypercorn helpers on a loopback
socket (:mod:`benchmarks.loopback`), with the SQLite store a user gets by default and the
same target: ``echo`` (from :mod:`benchmarks.responses_http`), which streams the input's 20
words back as 20 updates. Every request starts a new conversation, so no row pays for a
growing history: a Responses ``create`` without ``previous_response_id``, and a
``tools/call`` of ``ask`` naming a fresh ``conversation``.

Rows, each ``WORKERS`` concurrent keep-alive connections for ``BUDGET_SECONDS`` after a
short warm-up, ``ops/s`` being calls answered per second of wall time:

- **responses create** (the baseline): ``POST /responses/v1/responses``, JSON answer;
- **mcp tools/call 2026-07-28**: one self-contained ``POST /mcp`` per call (the stateless
  envelope in ``_meta`` and the ``MCP-Protocol-Version`` / ``Mcp-Method`` / ``Mcp-Name``
  headers); with no ``progressToken`` the SDK answers JSON;
- **mcp tools/call 2025-11-25 session**: each connection opens one MCP session
  (``initialize`` and ``notifications/initialized``, not timed), then posts its calls with
  ``Mcp-Session-Id``; the SDK answers each on a short SSE stream.

``ratio`` is the row's ``ops/s`` over the Responses row's. Requests are sent and read by
``loopback.RawConnection`` (pre-built bytes; only the conversation name changes per call),
so the client costs little next to the servers.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks import loopback
from benchmarks.report import Row, format_seconds
from benchmarks.responses_http import WORDS, echo
from benchmarks.timing import percentile

BUDGET_SECONDS = 1.5  # per measured row
WARMUP_SECONDS = 0.3  # per row, not reported
WORKERS = 8  # concurrent connections
MAX_REQUESTS_PER_WORKER = 100_000  # a bound on each loop besides the clock
TOKEN = "bench-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ACCEPT = {"accept": "application/json, text/event-stream"}
MODERN = "2026-07-28"
SESSION_ERA = "2025-11-25"


@dataclass(frozen=True)
class Spec:
    channel: str  # "responses" or "mcp"
    generation: str = ""  # for mcp: MODERN or SESSION_ERA

    @property
    def label(self) -> str:
        if self.channel == "responses":
            return "responses create"
        era = "" if self.generation == MODERN else " session"
        return f"mcp tools/call {self.generation}{era}"


PLAN = (Spec("responses"), Spec("mcp", MODERN), Spec("mcp", SESSION_ERA))


def run() -> list[Row]:
    rows: list[Row] = []
    baselines = loopback.Baselines()
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-mcp-") as directory:
        for index, spec in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            build = partial(_build_app, spec.channel, state_dir)
            name = f"bench-mcp-{spec.channel}"
            with loopback.server_process(build, name=name, label=spec.label) as server:
                row = anyio.run(_measure, server, spec, backend="asyncio")
            rows.append(baselines.compare(row, "call", baseline=spec.channel == "responses"))
    return rows


async def _measure(server: loopback.Server, spec: Spec) -> Row:
    await loopback.wait_ready(server)
    with anyio.fail_after(3 * (WARMUP_SECONDS + BUDGET_SECONDS) + 60.0):
        # Check one answer before measuring anything.
        connection = loopback.RawConnection(server.port)
        try:
            call = await _open(connection, spec)
            _check(spec, await connection.request(call("check")))
        finally:
            await connection.aclose()
        await _load(server.port, spec, WARMUP_SECONDS)
        gc.collect()
        started = time.perf_counter()
        latencies = await _load(server.port, spec, BUDGET_SECONDS)
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    extra = {
        "p50": format_seconds(percentile(ordered, 0.50)),
        "p99": format_seconds(percentile(ordered, 0.99)),
    }
    return Row(f"{spec.label}: host sqlite (asyncio)", len(latencies), wall, extra)


async def _load(port: int, spec: Spec, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(number: int) -> None:
        connection = loopback.RawConnection(port)
        try:
            call = await _open(connection, spec)
            for n in range(MAX_REQUESTS_PER_WORKER):
                if time.perf_counter() >= deadline:
                    return
                answer = await connection.request(call(f"w{number}-{n}-{time.monotonic_ns()}"))
                if answer.status != 200:
                    raise AssertionError(f"{spec.label} answered {answer.status}")
                latencies.append(answer.seconds)
        finally:
            await connection.aclose()

    async with anyio.create_task_group() as tasks:
        for number in range(WORKERS):
            tasks.start_soon(worker, number)
    return latencies


async def _open(connection: loopback.RawConnection, spec: Spec) -> Callable[[str], bytes]:
    """Prepare ``connection`` (an MCP session for the session era); answer a function
    giving one call's request bytes for a conversation name."""
    if spec.channel == "responses":
        return partial(_responses_create)
    if spec.generation == MODERN:
        return partial(_stateless_call)
    opened = await connection.request(
        _post(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": SESSION_ERA,
                    "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "1"},
                },
            },
            {},
        )
    )
    if opened.status != 200:
        raise AssertionError(f"initialize answered {opened.status}: {opened.body[:200]!r}")
    session = _session_id(opened)
    headers = {"mcp-session-id": session, "mcp-protocol-version": SESSION_ERA}
    done = await connection.request(
        _post({"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
    )
    if done.status != 202:
        raise AssertionError(f"notifications/initialized answered {done.status}")
    return partial(_session_call, headers)


def _responses_create(conversation: str) -> bytes:
    body = json.dumps({"model": "bench", "input": WORDS}).encode()
    return loopback.post_request("/responses/v1/responses", body, headers=AUTH)


def _tool_call(conversation: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "name": "ask",
        "arguments": {"message": WORDS, "conversation": conversation},
    }
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}


def _stateless_call(conversation: str) -> bytes:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    headers = {"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "ask"}
    return _post(_tool_call(conversation, meta), headers)


def _session_call(headers: dict[str, str], conversation: str) -> bytes:
    return _post(_tool_call(conversation), headers)


def _post(message: dict[str, Any], headers: dict[str, str]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return loopback.post_request("/mcp", body, headers={**AUTH, **ACCEPT, **headers})


def _session_id(answer: loopback.Answer) -> str:
    session = answer.headers.get("mcp-session-id")
    if not session:
        raise AssertionError("initialize answered no Mcp-Session-Id")
    return session


def _check(spec: Spec, answer: loopback.Answer) -> None:
    if answer.status != 200:
        raise AssertionError(f"{spec.label} answered {answer.status}: {answer.body[:300]!r}")
    if spec.channel == "responses":
        text = json.loads(answer.body)["output"][0]["content"][0]["text"]
    else:
        frames = [
            line[len(b"data:") :]
            for line in answer.body.splitlines()
            if line.startswith(b"data:") and line[len(b"data:") :].strip()
        ]
        message = json.loads(frames[-1] if frames else answer.body)
        text = message["result"]["structuredContent"]["text"]
    if text.strip() != WORDS:
        raise AssertionError(f"unexpected answer from {spec.label}: {answer.body[:300]!r}")


# --- the server side (a spawned process) ----------------------------------------------


def _build_app(channel: str, state_dir: Path) -> Any:
    if channel == "responses":
        from agenthost.channels.responses import ResponsesChannel

        return loopback.host_app(echo, ResponsesChannel(), "sqlite", state_dir)
    from agenthost.channels.mcp import MCPChannel

    return loopback.host_app(echo, MCPChannel(api_keys={TOKEN: "bench"}), "sqlite", state_dir)
