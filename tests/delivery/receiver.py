"""Test doubles for delivery: a webhook receiver with programmable answers, and a chat
channel that can push.

``Receiver`` is a Starlette app (serve it with ``tests.served.served``). Every
``POST /hook/{name}`` is checked with ``agenthost.channels.webhook.verify`` and recorded;
its answer is the next status scripted for that hook (then 200), with ``Retry-After``
for a scripted ``(429, seconds)``. Like a real receiver it drops a repeated idempotency
key it already accepted (answering 200, recorded as a duplicate): ``accepted(name)``
counts what it processed per key, which is what "delivered once" means to a receiver.

``PushChat`` is a minimal chat channel (``POST /{name}/send {"user", "text", "group"?}``)
whose ``push`` records what it was given, with scripted outcomes too.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agenthost import (
    Channel,
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    HostMessage,
    HostServices,
    TurnCompleted,
    TurnRefused,
)
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.channels.webhook import verify
from agenthost.sansio_core.routing import Destination

SECRET = "test-webhook-secret"

Answer = int | tuple[int, float]  # a status, or (429, retry-after seconds)


@attrs.frozen
class Received:
    hook: str
    key: str
    body: dict[str, Any]
    status: int
    at: float
    duplicate: bool = False


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, list[Answer]] = {}
        self.bad_signatures = 0
        self.app = Starlette(
            routes=[
                Route("/readiness", self._ready, methods=["GET"]),
                Route("/hook/{name}", self._hook, methods=["POST"]),
            ]
        )

    def script(self, hook: str, *answers: Answer) -> None:
        self.scripts[hook] = list(answers)

    def to(self, hook: str) -> list[Received]:
        return [r for r in self.received if r.hook == hook]

    def accepted(self, hook: str) -> Counter[str]:
        return Counter(r.key for r in self.to(hook) if 200 <= r.status < 300 and not r.duplicate)

    async def _ready(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        if not verify(
            SECRET.encode(),
            timestamp=request.headers.get("x-agenthost-timestamp", ""),
            signature=request.headers.get("x-agenthost-signature", ""),
            body=body,
            now=time.time(),
        ):
            self.bad_signatures += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        hook = request.path_params["name"]
        key = request.headers["idempotency-key"]
        if key in self.accepted(hook):
            self.received.append(Received(hook, key, json.loads(body), 200, time.time(), True))
            return JSONResponse({"status": 200, "duplicate": True})
        script = self.scripts.get(hook, [])
        answer = script.pop(0) if script else 200
        status, retry_after = answer if isinstance(answer, tuple) else (answer, None)
        self.received.append(Received(hook, key, json.loads(body), status, time.time()))
        headers = {"retry-after": str(retry_after)} if retry_after is not None else None
        return JSONResponse({"status": status}, status_code=status, headers=headers)


class PushChat(Channel):
    """A chat channel that can push: replies on its own wire, and records pushes."""

    push_is_idempotent = False
    display_name = "Chat"

    def __init__(self, name: str = "chat") -> None:
        self.name = name
        self.pushed: list[tuple[Destination, PushMessage]] = []
        self.outcomes: list[PushOutcome] = []

    def texts(self) -> list[str]:
        return [message.text for _, message in self.pushed]

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        self.pushed.append((destination, message))
        return self.outcomes.pop(0) if self.outcomes else PushOutcome.ok()

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        async def send(request: Request) -> Response:
            body = await request.json()
            group = body.get("group")
            outcome = await host.run(
                ChannelRequest(
                    channel=self.name,
                    identity=ChannelIdentity(self.name, body["user"]),
                    input=(HostMessage.user(body["text"]),),
                    session=ChannelSession(conversation_id=group, is_direct=group is None),
                )
            )
            if isinstance(outcome, TurnCompleted):
                return JSONResponse({"output": outcome.result.text})
            if isinstance(outcome, TurnRefused):
                return JSONResponse({"error": outcome.reason.value}, status_code=403)
            return JSONResponse({"error": "failed"}, status_code=500)

        return [Route(f"/{self.name}/send", send, methods=["POST"])]
