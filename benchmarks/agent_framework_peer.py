"""An Agent Framework ``Agent`` behind the Responses API: the host against the framework's own
helper packages, side by side in one run.

Three servers, each in its own process behind the project's Hypercorn helpers on a loopback
socket (:mod:`benchmarks.loopback`), all on asyncio, all answering ``POST PATH`` with a
Responses object:

- **bare Starlette**: the route's JSON work and nothing else (``responses_http``'s baseline;
  no agent);
- **AF helper packages** (the peer): ``agent-framework-hosting`` +
  ``agent-framework-hosting-responses`` in the pattern their README documents, as a Starlette
  route: ``responses_to_run`` -> ``AgentState.get_or_create_session`` -> ``Agent.run`` ->
  ``AgentState.set_session`` -> ``responses_from_run``, with the default in-memory
  ``SessionStore`` and the README's allow-list of request options;
- **host SQLite**: ``Host(target=agent, channels=[ResponsesChannel()])`` on the SQLite store a
  user gets by default.

The peer and the host serve the same ``Agent`` (:func:`build_echo_agent`): an echo chat
client that answers the last message's text, with no network and no model. Every request is a
new response (no ``previous_response_id``), so both create and save a session each time.
Before any load, each server's answer is checked: the peer and the host must echo ``WORDS``.

The three servers run side by side; each row is ``ROUNDS`` short slices taken in turn on
the three (rotating which goes first), so a burst from another process on the shared
machine lands on all of them rather than on one row.

Rows, at 1 and at 8 concurrent keep-alive connections (one request at a time on each):
requests per second; ``ratio`` over the bare route at the same concurrency; and on the host
rows ``host/peer``, the host's requests per second over the peer's at the same concurrency
(the issue's target is >= 1.5).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks import loopback
from benchmarks.report import BenchmarkPending, Row

ROUNDS = 6  # measured slices per row, interleaved between the three servers
SLICE_SECONDS = 0.35  # each slice; a row measures ROUNDS * SLICE_SECONDS
WARMUP_SECONDS = 0.3  # per row, not reported
CONCURRENCIES = (1, 8)
MAX_REQUESTS = 200_000  # a bound on each row besides the clock
PATH = "/responses/v1/responses"
WORDS = "hello from the agent framework benchmark"
# The request options the peer's route honours: the README's example allow-list.
ALLOWED_REQUEST_OPTIONS = frozenset({"max_tokens", "reasoning"})


@dataclass(frozen=True)
class ServerSpec:
    app: str  # "bare", "peer" or "host"
    label: str


PLAN = (
    ServerSpec("bare", "bare Starlette"),
    ServerSpec("peer", "AF helper packages"),
    ServerSpec("host", "host SQLite"),
)


# --- the client side (this process) --------------------------------------------------


def run() -> list[Row]:
    try:
        import agent_framework_hosting  # noqa: F401
        import agent_framework_hosting_responses  # noqa: F401
    except ImportError as missing:
        raise BenchmarkPending(
            f"pending: the peer is not installed ({missing.name}); pip install -e '.[bench]'"
        ) from None

    with (
        tempfile.TemporaryDirectory(prefix="agenthost-bench-af-") as directory,
        ExitStack() as stack,
    ):
        servers: dict[ServerSpec, loopback.Server] = {}
        for index, spec in enumerate(PLAN):
            state_dir = Path(directory) / f"server-{index}"
            state_dir.mkdir()
            build = partial(_build_app, spec.app, state_dir)
            servers[spec] = stack.enter_context(
                loopback.server_process(build, name=f"bench-af-{spec.app}", label=spec.label)
            )
        loads = anyio.run(_measure, servers, backend="asyncio")

    rows: list[Row] = []
    for concurrency in CONCURRENCIES:
        bare, peer, host = (loads[spec, concurrency] for spec in PLAN)
        for spec, load in zip(PLAN, (bare, peer, host), strict=True):
            extra = {"conns": str(concurrency)}
            if load is not bare:
                extra["ratio"] = f"{_per_second(load) / _per_second(bare):.2f}"
            if load is host:
                extra["host/peer"] = f"{_per_second(host) / _per_second(peer):.2f}"
            name = f"af Agent create x{concurrency}: {spec.label} (asyncio)"
            rows.append(load.row(name, extra))
    return rows


def _per_second(load: loopback.Load) -> float:
    return load.requests / load.wall_seconds


async def _measure(
    servers: dict[ServerSpec, loopback.Server],
) -> dict[tuple[ServerSpec, int], loopback.Load]:
    """Every server at every concurrency, in interleaved slices so all see the same machine."""
    request = _request()
    slices: dict[tuple[ServerSpec, int], list[loopback.Load]] = {}
    count = len(CONCURRENCIES) * len(servers) * (1 + ROUNDS)
    with anyio.fail_after(count * max(WARMUP_SECONDS, SLICE_SECONDS) + 60.0):
        for spec, server in servers.items():
            await loopback.wait_ready(server)
            connection = loopback.RawConnection(server.port)
            try:
                _check(spec)(await connection.request(request))
            finally:
                await connection.aclose()
        for concurrency in CONCURRENCIES:
            drive = partial(
                loopback.drive,
                requests=[request],
                connections=concurrency,
                max_requests=MAX_REQUESTS,
            )
            for spec, server in servers.items():
                await drive(server, seconds=WARMUP_SECONDS, check=_check(spec))
            for round_ in range(ROUNDS):
                # Rotate which server goes first, so none always follows the same one.
                order = list(servers.items())
                order = order[round_ % len(order) :] + order[: round_ % len(order)]
                for spec, server in order:
                    load = await drive(server, seconds=SLICE_SECONDS, check=_check(spec))
                    slices.setdefault((spec, concurrency), []).append(load)
    return {key: loopback.Load.combined(parts) for key, parts in slices.items()}


def _check(spec: ServerSpec) -> Callable[[loopback.Answer], None]:
    return _check_bare if spec.app == "bare" else _check_echo


def _request() -> bytes:
    body = json.dumps({"model": "bench", "input": WORDS}).encode()
    return loopback.post_request(PATH, body, headers={"authorization": "Bearer bench-key"})


def _output_text(answer: loopback.Answer) -> str | None:
    try:
        body = json.loads(answer.body)
        return str(body["output"][0]["content"][0]["text"])
    except (ValueError, LookupError, TypeError):
        return None


def _check_echo(answer: loopback.Answer) -> None:
    """The Agent's answer: exactly the input, echoed (the peer and the host alike)."""
    if answer.status != 200 or _output_text(answer) != WORDS:
        raise AssertionError(f"unexpected answer {answer.status}: {answer.body[:300]!r}")


def _check_bare(answer: loopback.Answer) -> None:
    text = _output_text(answer) if answer.status == 200 else None
    if text is None or text.strip() != WORDS:
        raise AssertionError(f"unexpected answer {answer.status}: {answer.body[:300]!r}")


# --- the server side (a spawned process) ----------------------------------------------


def build_echo_agent() -> Any:
    """An Agent Framework ``Agent`` whose chat client echoes the last message's text."""
    from agent_framework import (
        Agent,
        BaseChatClient,
        ChatResponse,
        ChatResponseUpdate,
        Content,
        FunctionInvocationLayer,
        Message,
        ResponseStream,
    )

    class EchoChatClient(FunctionInvocationLayer[Any], BaseChatClient[Any]):
        """A stand-in model: no network, the reply is the last message's text."""

        OTEL_PROVIDER_NAME = "agenthost.bench.echo"

        def _inner_get_response(
            self,
            *,
            messages: Sequence[Message],
            stream: bool,
            options: Mapping[str, Any],
            **kwargs: Any,
        ) -> Awaitable[ChatResponse] | ResponseStream[ChatResponseUpdate, ChatResponse]:
            text = messages[-1].text or ""
            if stream:

                async def updates() -> AsyncIterator[ChatResponseUpdate]:
                    yield ChatResponseUpdate(role="assistant", contents=[Content.from_text(text)])

                return self._build_response_stream(updates())

            async def complete() -> ChatResponse:
                reply = Message(role="assistant", contents=[Content.from_text(text)])
                return ChatResponse(messages=[reply])

            return complete()

    return Agent(client=EchoChatClient(), name="echo", instructions="Echo the user.")


def _build_app(app: str, state_dir: Path) -> Any:
    if app == "bare":
        from benchmarks.responses_http import _bare_app

        return _bare_app()
    if app == "peer":
        return _peer_app(build_echo_agent())
    from agenthost.channels.responses import ResponsesChannel

    return loopback.host_app(build_echo_agent(), ResponsesChannel(), "sqlite", state_dir)


def _peer_app(agent: Any) -> Any:
    """The helper packages' documented route, on Starlette, plus ``GET /readiness``."""
    from agent_framework_hosting import AgentState
    from agent_framework_hosting_responses import (
        create_response_id,
        responses_from_run,
        responses_session_id,
        responses_to_run,
    )
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    # The in-memory SessionStore says it is experimental once per process; that is known.
    warnings.filterwarnings("ignore", message=r"\[SESSION_STORE\]")
    state = AgentState(agent)

    async def readiness(request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    async def responses(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"code": "invalid_json"}}, status_code=400)
        run = responses_to_run(body)
        session_id, is_conversation_id = responses_session_id(body)
        response_id = create_response_id()
        session = await state.get_or_create_session(session_id or response_id)
        options = {
            key: value for key, value in run["options"].items() if key in ALLOWED_REQUEST_OPTIONS
        }
        result = await (await state.get_target()).run(
            run["messages"], session=session, options=options
        )
        if is_conversation_id and session_id is not None:
            await state.set_session(session_id, session)
        else:
            await state.set_session(response_id, session)
        conversation_id = session_id if is_conversation_id else None
        return JSONResponse(
            responses_from_run(result, response_id=response_id, conversation_id=conversation_id)
        )

    routes = [
        Route("/readiness", readiness, methods=["GET"]),
        Route(PATH, responses, methods=["POST"]),
    ]
    return Starlette(routes=routes)
