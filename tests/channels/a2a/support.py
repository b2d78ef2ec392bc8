"""Shared set-up for the A2A channel's tests: hosts, the real ``a2a-sdk`` client, targets,
and a loopback receiver for push notifications.

The ``a2a-sdk`` client is asyncio-only, while the host under test runs on the suite's
backend (asyncio or trio). :func:`in_client` therefore runs each client-side function on
a fresh asyncio loop in a worker thread: the host keeps serving from the test's own loop,
and the client talks to it over loopback HTTP exactly as another agent would.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.types import a2a_pb2 as pb
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthost import Host, HostMessage
from agenthost.channels.a2a import A2AChannel
from agenthost.stores.sqlite import SQLiteStore
from tests.served import served

T = TypeVar("T")
_MESSAGE_NUMBERS = itertools.count()
TIMEOUT = 30.0
KEYS = {"key-a": "agent-a", "key-b": "agent-b"}


def authenticate(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    return KEYS.get(key) if scheme.lower() == "bearer" else None


def make_channel(**options: Any) -> A2AChannel:
    settings: dict[str, Any] = {
        "authenticate": authenticate,
        "allow_private_push_targets": True,  # the receiver is on loopback
        "poll_seconds": 0.2,
        "agent_name": "test agent",
    }
    settings.update(options)
    return A2AChannel(**settings)


def make_host(
    target: Any, path: Path, *, channel: A2AChannel | None = None, **options: Any
) -> Host:
    settings: dict[str, Any] = {
        "delivery_lease_seconds": 1.0,  # the outbox looks for new deliveries every ~0.3 s
        "shutdown_grace_seconds": 0.5,
    }
    settings.update(options)
    return Host(
        target,
        channels=[channel or make_channel()],
        store=SQLiteStore(path / "state.db"),
        state_dir=path,
        **settings,
    )


@asynccontextmanager
async def serving(host: Host) -> AsyncIterator[str]:
    async with served(host.app) as base_url:
        yield base_url


async def in_client(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` (client-side code) on its own asyncio loop in a worker thread."""
    return await anyio.to_thread.run_sync(functools.partial(anyio.run, fn, backend="asyncio"))


@asynccontextmanager
async def sdk_client(
    base_url: str,
    *,
    generation: str = "1.0",
    binding: str = "JSONRPC",
    key: str = "key-a",
    streaming: bool = True,
    polling: bool = False,
) -> AsyncIterator[Any]:
    """The ``a2a-sdk`` client for the card's interface of ``generation`` and ``binding``.

    Call it inside an :func:`in_client` function (it needs an asyncio loop).
    """
    http = httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=TIMEOUT)
    try:
        card = await A2ACardResolver(http, base_url).get_agent_card()
        interfaces = [
            i
            for i in card.supported_interfaces
            if i.protocol_version == generation and i.protocol_binding == binding
        ]
        assert interfaces, f"the card has no {binding} interface for {generation}"
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(interfaces)
        config = ClientConfig(
            httpx_client=http,
            streaming=streaming,
            polling=polling,
            supported_protocol_bindings=[binding],
        )
        client = ClientFactory(config).create(card)
        yield client
    finally:
        await http.aclose()


def user_message(
    text: str, *, context_id: str = "", message_id: str | None = None, task_id: str = ""
) -> Any:
    message = pb.Message(
        role=pb.ROLE_USER,
        message_id=message_id or f"msg-{next(_MESSAGE_NUMBERS)}",
        context_id=context_id,
        task_id=task_id,
    )
    message.parts.add().text = text
    return message


def send_request(text: str, **options: Any) -> Any:
    history = options.pop("history_length", None)
    immediately = options.pop("return_immediately", False)
    request = pb.SendMessageRequest(message=user_message(text, **options))
    if history is not None:
        request.configuration.history_length = history
    if immediately:
        request.configuration.return_immediately = True
    return request


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    events = []
    with anyio.fail_after(TIMEOUT):
        async for event in stream:
            events.append(event)
    return events


def artifact_text(task: Any) -> str:
    return "".join(p.text for a in task.artifacts for p in a.parts)


async def echo_target(messages: list[HostMessage]) -> str:
    """Answers with the last message and how many user messages the session has seen."""
    users = [m for m in messages if m.role == "user"]
    return f"echo {messages[-1].text} #{len(users)}"


class Gated:
    """Streams ``first``, waits for ``release``, then streams ``rest``; notes cancellation.

    The events are set from the serving loop (the target runs there), and read by the test
    from the same loop.
    """

    def __init__(self, first: str = "one ", rest: Sequence[str] = ("two ", "three")) -> None:
        self.first = first
        self.rest = tuple(rest)
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = anyio.Event()

    async def __call__(self, messages: list[HostMessage]) -> AsyncIterator[str]:
        self.started.set()
        try:
            yield self.first
            await self.release.wait()
            for piece in self.rest:
                yield piece
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise


class PushReceiver:
    """A loopback endpoint for push notifications; answers scripted statuses, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], Any]] = []  # accepted (2xx) only
        self.refused: list[tuple[dict[str, str], Any]] = []
        self.script: list[int] = []
        self.arrived = anyio.Event()
        self.app = Starlette(
            routes=[
                Route("/readiness", self._ready, methods=["GET"]),
                Route("/push", self._push, methods=["POST"]),
            ]
        )

    async def _ready(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _push(self, request: Request) -> Response:
        body = json.loads(await request.body())
        status = self.script.pop(0) if self.script else 200
        (self.received if status < 300 else self.refused).append((dict(request.headers), body))
        self.arrived.set()
        self.arrived = anyio.Event()
        return JSONResponse({}, status_code=status)

    async def wait_for(self, predicate: Callable[[list[Any]], bool]) -> None:
        with anyio.fail_after(TIMEOUT):
            while not predicate(self.received):
                with anyio.move_on_after(0.5):
                    await self.arrived.wait()
