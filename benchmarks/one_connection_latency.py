"""Latency at one connection on the SQLite store: p50, p99 and how far apart they are.

With one request in flight there is no queueing, so a p99 far above the p50 is a stall on
the server's side: a garbage collection, a WAL checkpoint, a timer's sweep. The issue's
target is p99 <= 3x p50 at one connection; ``p99/p50`` is printed on every row.

Three servers, each in its own process behind the project's Hypercorn helpers on a loopback
socket (:mod:`benchmarks.loopback`), on asyncio, side by side:

- **bare Starlette**: ``responses_http``'s baseline route (JSON in, a Responses object out,
  no store). Its ``p99/p50`` is the floor the machine itself sets: on a shared machine other
  processes' bursts show up here too, and the host rows are read against it;
- **Invocations invoke, host SQLite**: ``POST /invocations/invoke`` with ``session_id``
  ``s-<n % SESSIONS>``, a plain ``async def`` echo target (each turn loads and saves its
  session, whose history grows by two messages a turn);
- **Responses create, host SQLite**: ``POST /responses/v1/responses``, non-streaming, every
  request a new response (a session and the response record saved each time).

Each server gets a short warm-up, then ``ROUNDS`` slices in which one keep-alive
connection sends one request at a time for ``SLICE_SECONDS``, taken in turn on the three
servers (rotating which goes first), so a burst from another process on the shared machine
lands on all of them rather than on one row. ``max`` is the slowest request seen.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks import loopback
from benchmarks.report import Row, format_seconds

ROUNDS = 6  # measured slices per row, interleaved between the three servers
SLICE_SECONDS = 0.5  # each slice; a row measures ROUNDS * SLICE_SECONDS
WARMUP_SECONDS = 0.5  # per server, not reported
MAX_REQUESTS = 50_000  # a bound on each slice besides the clock
SESSIONS = 64  # Invocations session ids s-0 ... s-63
WORDS = "hello from the latency benchmark"
RESPONSES_PATH = "/responses/v1/responses"
INVOCATIONS_PATH = "/invocations/invoke"


@dataclass(frozen=True)
class ServerSpec:
    app: str  # "bare", "invocations" or "responses"
    label: str


PLAN = (
    ServerSpec("bare", "responses create: bare Starlette"),
    ServerSpec("invocations", "invocations invoke: host SQLite"),
    ServerSpec("responses", "responses create: host SQLite"),
)


# --- the client side (this process) --------------------------------------------------


def run() -> list[Row]:
    with (
        tempfile.TemporaryDirectory(prefix="agenthost-bench-latency-") as directory,
        ExitStack() as stack,
    ):
        servers: dict[ServerSpec, loopback.Server] = {}
        for index, spec in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            build = partial(_build_app, spec.app, state_dir)
            servers[spec] = stack.enter_context(
                loopback.server_process(build, name=f"bench-latency-{spec.app}", label=spec.label)
            )
        loads = anyio.run(_measure, servers, backend="asyncio")
    return [
        loads[spec].row(
            f"one connection, {spec.label} (asyncio)",
            {"max": format_seconds(max(loads[spec].latencies))},
        )
        for spec in PLAN
    ]


async def _measure(servers: dict[ServerSpec, loopback.Server]) -> dict[ServerSpec, loopback.Load]:
    """Each server in interleaved slices at one connection, so all see the same machine."""
    slices: dict[ServerSpec, list[loopback.Load]] = {}
    count = len(servers) * (1 + ROUNDS)
    with anyio.fail_after(count * max(WARMUP_SECONDS, SLICE_SECONDS) + 60.0):
        for spec, server in servers.items():
            await loopback.wait_ready(server)
            requests, check = _plan(spec.app)
            connection = loopback.RawConnection(server.port)
            try:
                answer = await connection.request(requests[0])
                if answer.status != 200:
                    raise AssertionError(f"answer {answer.status}: {answer.body[:300]!r}")
                check(answer)
            finally:
                await connection.aclose()
        for spec, server in servers.items():
            await _drive(server, spec, WARMUP_SECONDS)
        for round_ in range(ROUNDS):
            # Rotate which server goes first, so none always follows the same one.
            order = list(servers.items())
            order = order[round_ % len(order) :] + order[: round_ % len(order)]
            for spec, server in order:
                slices.setdefault(spec, []).append(await _drive(server, spec, SLICE_SECONDS))
    return {spec: loopback.Load.combined(parts) for spec, parts in slices.items()}


async def _drive(server: loopback.Server, spec: ServerSpec, seconds: float) -> loopback.Load:
    requests, check = _plan(spec.app)
    return await loopback.drive(
        server, requests, connections=1, seconds=seconds, max_requests=MAX_REQUESTS, check=check
    )


def _plan(app: str) -> tuple[list[bytes], Any]:
    if app == "invocations":
        bodies = [{"input": WORDS, "session_id": f"s-{n}"} for n in range(SESSIONS)]
        return [_post(INVOCATIONS_PATH, body) for body in bodies], _check_invocation
    body = {"model": "bench", "input": WORDS}
    return [_post(RESPONSES_PATH, body)], _check_response


def _post(path: str, body: dict[str, Any]) -> bytes:
    headers = {"authorization": "Bearer bench-key"}
    return loopback.post_request(path, json.dumps(body).encode(), headers=headers)


def _check_invocation(answer: loopback.Answer) -> None:
    body = json.loads(answer.body)
    if not isinstance(body, dict) or body.get("output") != WORDS:
        raise AssertionError(f"unexpected answer {answer.status}: {answer.body[:300]!r}")


def _check_response(answer: loopback.Answer) -> None:
    body = json.loads(answer.body)
    try:
        text = body["output"][0]["content"][0]["text"]
    except (LookupError, TypeError):
        text = None
    if not isinstance(text, str) or text.strip() != WORDS:
        raise AssertionError(f"unexpected answer {answer.status}: {answer.body[:300]!r}")


# --- the server side (a spawned process) ----------------------------------------------


async def echo(messages: list[Any]) -> str:
    return str(messages[-1].text)


def _build_app(app: str, state_dir: Path) -> Any:
    if app == "bare":
        from benchmarks.responses_http import _bare_app

        return _bare_app()
    if app == "invocations":
        from agenthost.channels.invocations import InvocationsChannel

        return loopback.host_app(echo, InvocationsChannel(), "sqlite", state_dir)
    from agenthost.channels.responses import ResponsesChannel

    return loopback.host_app(echo, ResponsesChannel(), "sqlite", state_dir)
