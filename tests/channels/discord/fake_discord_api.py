"""A fake Discord API: a real HTTP server (Starlette, served on 127.0.0.1) for tests.

It plays both sides Discord plays for an HTTP-interactions app, following the documented
wire behaviour (discord.com/developers/docs: interactions, rate limits, messages):

- **Discord calling the app**: :meth:`deliver` signs an interaction with the test's
  :class:`~tests.channels.discord.signer.Signer` (Ed25519 over timestamp + body) and POSTs
  it to the app's endpoint; an answer that is not a 200 with a callback type within three
  seconds leaves the interaction unacknowledged, and its token then works for nothing.
- **The REST API** under ``/api/v10``: ``PUT /applications/{app}/commands`` and the guild
  variant (bulk overwrite, validated: lower-case names of 1-32, descriptions of 1-100, at
  most 25 options), ``POST /users/@me/channels`` (the DM channel), ``POST
  /channels/{id}/messages``, and the interaction webhook: ``PATCH
  /webhooks/{app}/{token}/messages/@original`` and ``POST /webhooks/{app}/{token}``
  (follow-ups; at most five for an app only the user installed), and ``GET
  /applications/@me`` (the application the bot token belongs to: its id, name,
  ``verify_key`` (the signer's public key) and bot user). Bot calls need
  ``Authorization: Bot <token>``; any other is 401 ``{"message": "401: Unauthorized"}``.
  Messages are validated (1-2,000 characters of content, flags a message may carry) and
  recorded.
- **Failures Discord documents**: an expired interaction token (401, code 50027), an
  unknown one (404, 10015), DMs closed (403, 50007), no access to a channel (403, 50001),
  an unknown channel (404, 10003), and rate limits: every answer carries
  ``X-RateLimit-Limit/-Remaining/-Reset/-Reset-After/-Bucket`` from a real per-route
  bucket (:meth:`set_bucket`), a call past the bucket is 429, and :meth:`rate_limit`
  forces 429s (per bucket or global) with ``Retry-After``, ``X-RateLimit-Scope`` and the
  body ``{"message", "retry_after", "global"}``; ``server_errors`` and :meth:`fail` answer
  502.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.channels.discord.signer import Signer

API = "/api/v10"
ACK_SECONDS = 3.0
USER_APP_FOLLOWUPS = 5  # follow-ups a user-installed app may send per interaction
_COMMAND_NAME = r"^[-_'\w]{1,32}$"
_MESSAGE_FLAGS = (1 << 2) | (1 << 12)  # SUPPRESS_EMBEDS, SUPPRESS_NOTIFICATIONS
_EPHEMERAL = 1 << 6


@attrs.define
class Call:
    method: str
    route: str  # the route template, e.g. "POST /channels/{channel}/messages"
    major: str  # the major parameter's value (channel id, webhook token...)
    body: Any
    at: float  # time.monotonic()
    status: int = 0


@attrs.define
class Message:
    id: str
    channel_id: str
    content: str
    flags: int
    allowed_mentions: Any
    kind: str  # "original", "followup" or "channel"
    interaction_id: str | None = None
    history: list[str] = attrs.field(factory=list)  # every content it showed, in order


@attrs.define
class Delivered:
    """An interaction the fake sent, and what became of it."""

    payload: dict[str, Any]
    sent_at: float
    status: int
    answer: Any
    acknowledged: bool
    original: Message | None = None
    followups: list[Message] = attrs.field(factory=list)


@attrs.define
class ForcedLimit:
    route: str
    times: int
    retry_after: float
    is_global: bool


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: int = 0, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"message": message, "code": code, **extra}
        self.headers: dict[str, str] = {}


class FakeDiscordApi:
    def __init__(
        self,
        *,
        application_id: str,
        bot_token: str,
        signer: Signer,
        token_lifetime: float = 900.0,
    ) -> None:
        self.application_id = application_id
        self.bot_token = bot_token
        self.signer = signer
        self.token_lifetime = token_lifetime
        self.endpoint = ""  # the app's Interactions Endpoint URL
        self.calls: list[Call] = []
        self.messages: list[Message] = []
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or a guild id
        self.delivered: dict[str, Delivered] = {}  # by interaction id
        self.channels: set[str] = set()  # guild channels the bot can see
        self.closed_dms: set[str] = set()  # users who do not accept DMs from the bot
        self.forbidden_channels: set[str] = set()
        self.server_errors = 0
        self._dms: dict[str, str] = {}  # DM channel id -> user id
        self._tokens: dict[str, str] = {}  # token -> interaction id
        self._buckets: dict[str, tuple[int, float]] = {}  # route -> (limit, window)
        self._usage: dict[tuple[str, str], deque[float]] = {}
        self._forced: list[ForcedLimit] = []
        self._failing: dict[str, int] = {}  # route -> calls still to answer 502
        self._ids = itertools.count(1_500_000_000_000_000_000)
        self._changed = anyio.Event()
        prefix = f"{API}/applications/{{app}}"
        self.app = Starlette(
            routes=[
                Route("/readiness", self._readiness, methods=["GET"]),
                Route(f"{API}/applications/@me", self._current_application, methods=["GET"]),
                Route(f"{prefix}/commands", self._put_commands, methods=["PUT"]),
                Route(f"{prefix}/guilds/{{guild}}/commands", self._put_commands, methods=["PUT"]),
                Route(f"{API}/users/@me/channels", self._open_dm, methods=["POST"]),
                Route(
                    f"{API}/channels/{{channel}}/messages", self._create_message, methods=["POST"]
                ),
                Route(
                    f"{API}/webhooks/{{app}}/{{token}}/messages/@original",
                    self._edit_original,
                    methods=["PATCH"],
                ),
                Route(f"{API}/webhooks/{{app}}/{{token}}", self._followup, methods=["POST"]),
            ]
        )

    # --- test controls -------------------------------------------------------------------

    def set_bucket(self, route: str, *, limit: int, window: float) -> None:
        """Allow ``limit`` calls per ``window`` seconds on ``route`` (per major parameter)."""
        self._buckets[route] = (limit, window)

    def rate_limit(
        self, route: str, *, times: int = 1, retry_after: float = 1.0, is_global: bool = False
    ) -> None:
        """Answer the next ``times`` calls of ``route`` with 429."""
        self._forced.append(ForcedLimit(route, times, retry_after, is_global))

    def fail(self, route: str, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``route`` with 502."""
        self._failing[route] = self._failing.get(route, 0) + times

    def expire(self, interaction_id: str) -> None:
        """Age the interaction's token past its lifetime."""
        self.delivered[interaction_id].sent_at -= self.token_lifetime + 1

    def called(self, route: str) -> list[Call]:
        return [call for call in self.calls if call.route == route]

    def in_channel(self, channel_id: str) -> list[Message]:
        return [m for m in self.messages if m.channel_id == channel_id and m.kind == "channel"]

    def dm_messages(self, user_id: str) -> list[Message]:
        """What the bot posted in its DM with ``user_id`` (not interaction replies)."""
        channels = {c for c, u in self._dms.items() if u == user_id}
        return [m for m in self.messages if m.channel_id in channels and m.kind == "channel"]

    async def deliver(
        self,
        payload: Mapping[str, Any],
        *,
        timestamp: float | None = None,
        signature: str | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        """Sign and POST an interaction to the app, as Discord does.

        ``signature`` replaces the real one (a forgery); ``body`` replaces the signed body
        after signing (tampering); ``timestamp`` signs another time (a stale replay)."""
        assert self.endpoint, "no endpoint configured"
        raw = json.dumps(payload, separators=(",", ":")).encode()
        headers = self.signer.headers(raw, timestamp=timestamp)
        if signature is not None:
            headers["x-signature-ed25519"] = signature
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.post(self.endpoint, content=body or raw, headers=headers)
        took = time.monotonic() - started
        answer: Any = None
        if response.headers.get("content-type", "").startswith("application/json"):
            answer = response.json()
        acknowledged = (
            response.status_code == 200
            and took < ACK_SECONDS
            and isinstance(answer, dict)
            and answer.get("type") in (4, 5, 6, 7, 8, 9)
        )
        interaction_id = str(payload.get("id"))
        if body is None and signature is None and interaction_id not in self.delivered:
            self.delivered[interaction_id] = Delivered(
                dict(payload), started, response.status_code, answer, acknowledged
            )
            if acknowledged and isinstance(payload.get("token"), str):
                self._tokens[payload["token"]] = interaction_id
                if answer.get("type") == 4:
                    self._original(interaction_id, answer.get("data") or {})
        self._notify()
        return response

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``condition()`` holds, re-checked after every call the fake answers."""
        with anyio.fail_after(timeout):
            while not condition():
                await self._changed.wait()

    async def settle(self, quiet: float = 0.3, timeout: float = 10.0) -> None:
        """Until no call has arrived for ``quiet`` seconds."""
        with anyio.fail_after(timeout):
            while True:
                count = len(self.calls)
                await anyio.sleep(quiet)
                if len(self.calls) == count:
                    return

    # --- HTTP ------------------------------------------------------------------------------

    async def _readiness(self, request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    async def _serve(
        self,
        request: Request,
        route: str,
        major: str,
        handler: Callable[[Any], Any],
        *,
        bot: bool = True,
    ) -> Response:
        try:
            body = await request.json() if await request.body() else None
        except ValueError:
            body = None
        call = Call(request.method, route, major, body, time.monotonic())
        self.calls.append(call)
        headers: dict[str, str] = {}
        try:
            if bot and request.headers.get("authorization") != f"Bot {self.bot_token}":
                raise ApiError(401, "401: Unauthorized")
            if self.server_errors > 0:
                self.server_errors -= 1
                raise ApiError(502, "Bad Gateway")
            if self._failing.get(route, 0) > 0:
                self._failing[route] -= 1
                raise ApiError(502, "Bad Gateway")
            headers = self._take_bucket(route, major)
            result = handler(body)
        except ApiError as error:
            call.status = error.status
            self._notify()
            return JSONResponse(
                error.body, status_code=error.status, headers={**headers, **error.headers}
            )
        call.status = 200 if result is not None else 204
        self._notify()
        if result is None:
            return Response(status_code=204, headers=headers)
        return JSONResponse(result, headers=headers)

    def _take_bucket(self, route: str, major: str) -> dict[str, str]:
        bucket = hashlib.sha1(route.encode()).hexdigest()[:16]
        for forced in self._forced:
            if forced.times > 0 and forced.route == route:
                forced.times -= 1
                error = ApiError(
                    429,
                    "You are being rate limited.",
                    retry_after=forced.retry_after,
                    **{"global": forced.is_global},
                )
                error.headers = {
                    "retry-after": str(max(1, round(forced.retry_after))),
                    "x-ratelimit-scope": "global" if forced.is_global else "user",
                    "x-ratelimit-bucket": bucket,
                }
                if forced.is_global:
                    error.headers["x-ratelimit-global"] = "true"
                else:
                    error.headers.update(
                        {
                            "x-ratelimit-limit": "5",
                            "x-ratelimit-remaining": "0",
                            "x-ratelimit-reset-after": f"{forced.retry_after:.3f}",
                            "x-ratelimit-reset": f"{time.time() + forced.retry_after:.3f}",
                        }
                    )
                raise error
        limit, window = self._buckets.get(route, (50, 1.0))
        now = time.monotonic()
        used = self._usage.setdefault((route, major), deque())
        while used and used[0] <= now - window:
            used.popleft()
        reset_after = (used[0] + window - now) if used else window
        if len(used) >= limit:
            error = ApiError(
                429,
                "You are being rate limited.",
                retry_after=round(reset_after, 3),
                **{"global": False},
            )
            error.headers = {
                "retry-after": str(max(1, round(reset_after))),
                "x-ratelimit-scope": "user",
                "x-ratelimit-bucket": bucket,
                "x-ratelimit-limit": str(limit),
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset-after": f"{reset_after:.3f}",
                "x-ratelimit-reset": f"{time.time() + reset_after:.3f}",
            }
            raise error
        used.append(now)
        reset_after = used[0] + window - now
        return {
            "x-ratelimit-bucket": bucket,
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(limit - len(used)),
            "x-ratelimit-reset-after": f"{reset_after:.3f}",
            "x-ratelimit-reset": f"{time.time() + reset_after:.3f}",
        }

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # --- the bot's routes ----------------------------------------------------------------

    async def _current_application(self, request: Request) -> Response:
        def handle(body: Any) -> Any:
            return {
                "id": self.application_id,
                "name": "agenthost-test",
                "icon": None,
                "description": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": self.signer.public_key_hex,
                "flags": 0,
                "bot": {
                    "id": self.application_id,  # the bot user shares the application's id
                    "username": "agenthost-test",
                    "discriminator": "0",
                    "avatar": None,
                    "bot": True,
                    "public_flags": 0,
                },
            }

        return await self._serve(request, "GET /applications/@me", "@me", handle)

    async def _put_commands(self, request: Request) -> Response:
        app = request.path_params["app"]
        guild = request.path_params.get("guild")
        route = (
            "PUT /applications/{app}/guilds/{guild}/commands"
            if guild
            else "PUT /applications/{app}/commands"
        )

        def handle(body: Any) -> Any:
            if app != self.application_id:
                raise ApiError(403, "Missing Access", 50001)
            if not isinstance(body, list) or len(body) > 100:
                raise ApiError(400, "Invalid Form Body", 50035)
            names: set[str] = set()
            for command in body:
                _check_command(command)
                if command["name"] in names:
                    raise ApiError(
                        400,
                        "Invalid Form Body",
                        50035,
                        errors="APPLICATION_COMMANDS_DUPLICATE_NAME",
                    )
                names.add(command["name"])
            stored = [
                {**c, "id": str(next(self._ids)), "application_id": app, "version": "1"}
                for c in body
            ]
            self.commands[guild or "global"] = stored
            return stored

        return await self._serve(request, route, guild or app, handle)

    async def _open_dm(self, request: Request) -> Response:
        def handle(body: Any) -> Any:
            user = body.get("recipient_id") if isinstance(body, dict) else None
            if not isinstance(user, str) or not user.isdigit():
                raise ApiError(400, "Invalid Recipient(s)", 50033)
            channel = str(int(user) + 10**18)
            self._dms[channel] = user
            return {
                "id": channel,
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [{"id": user, "username": f"user{user[-4:]}", "discriminator": "0"}],
            }

        return await self._serve(request, "POST /users/@me/channels", "@me", handle)

    async def _create_message(self, request: Request) -> Response:
        channel = request.path_params["channel"]

        def handle(body: Any) -> Any:
            if channel in self._dms:
                if self._dms[channel] in self.closed_dms:
                    raise ApiError(403, "Cannot send messages to this user", 50007)
            elif channel not in self.channels:
                raise ApiError(404, "Unknown Channel", 10003)
            if channel in self.forbidden_channels:
                raise ApiError(403, "Missing Access", 50001)
            content, flags = _check_message(body, ephemeral_allowed=False)
            message = self._new_message(channel, content, flags, body, kind="channel")
            return self._message_json(message)

        return await self._serve(request, "POST /channels/{channel}/messages", channel, handle)

    # --- the interaction webhook ------------------------------------------------------------

    def _interaction_of(self, app: str, token: str) -> Delivered:
        interaction_id = self._tokens.get(token)
        if app != self.application_id or interaction_id is None:
            raise ApiError(404, "Unknown Webhook", 10015)
        delivered = self.delivered[interaction_id]
        if time.monotonic() - delivered.sent_at > self.token_lifetime:
            raise ApiError(401, "Invalid Webhook Token", 50027)
        return delivered

    async def _edit_original(self, request: Request) -> Response:
        app, token = request.path_params["app"], request.path_params["token"]

        def handle(body: Any) -> Any:
            delivered = self._interaction_of(app, token)
            content, _ = _check_message(body, ephemeral_allowed=True)
            message = delivered.original
            if message is None:
                message = self._original(str(delivered.payload["id"]), body)
            message.content = content
            message.allowed_mentions = body.get("allowed_mentions")
            message.history.append(content)
            return self._message_json(message)

        return await self._serve(
            request, "PATCH /webhooks/{app}/{token}/messages/@original", token, handle, bot=False
        )

    async def _followup(self, request: Request) -> Response:
        app, token = request.path_params["app"], request.path_params["token"]

        def handle(body: Any) -> Any:
            delivered = self._interaction_of(app, token)
            owners = delivered.payload.get("authorizing_integration_owners") or {}
            if "0" not in owners and len(delivered.followups) >= USER_APP_FOLLOWUPS:
                raise ApiError(400, "Maximum number of follow-up messages reached", 50035)
            content, flags = _check_message(body, ephemeral_allowed=True)
            channel = str(delivered.payload.get("channel_id"))
            message = self._new_message(
                channel,
                content,
                flags,
                body,
                kind="followup",
                interaction_id=str(delivered.payload["id"]),
            )
            delivered.followups.append(message)
            return self._message_json(message)

        return await self._serve(request, "POST /webhooks/{app}/{token}", token, handle, bot=False)

    # --- messages ------------------------------------------------------------------------------

    def _original(self, interaction_id: str, data: Mapping[str, Any]) -> Message:
        delivered = self.delivered[interaction_id]
        answer = delivered.answer if isinstance(delivered.answer, dict) else {}
        flags = int((answer.get("data") or {}).get("flags") or 0)
        content = data.get("content") if isinstance(data.get("content"), str) else ""
        message = Message(
            str(next(self._ids)),
            str(delivered.payload.get("channel_id")),
            content,
            flags,
            data.get("allowed_mentions"),
            "original",
            interaction_id,
            [content] if content else [],
        )
        delivered.original = message
        self.messages.append(message)
        return message

    def _new_message(
        self,
        channel: str,
        content: str,
        flags: int,
        body: Mapping[str, Any],
        *,
        kind: str,
        interaction_id: str | None = None,
    ) -> Message:
        message = Message(
            str(next(self._ids)),
            channel,
            content,
            flags,
            body.get("allowed_mentions"),
            kind,
            interaction_id,
            [content],
        )
        self.messages.append(message)
        return message

    def _message_json(self, message: Message) -> dict[str, Any]:
        return {
            "id": message.id,
            "channel_id": message.channel_id,
            "content": message.content,
            "flags": message.flags,
            "type": 0 if message.kind == "channel" else 20,
            "author": {"id": self.application_id, "username": "agenthost-test", "bot": True},
            "mentions": [],
            "mention_everyone": False,
            "timestamp": "2026-11-20T10:00:00.000000+00:00",
        }


def _check_command(command: Any) -> None:
    if not isinstance(command, dict):
        raise ApiError(400, "Invalid Form Body", 50035)
    name = command.get("name")
    if not isinstance(name, str) or not re.match(_COMMAND_NAME, name) or name != name.lower():
        raise ApiError(400, "Invalid Form Body", 50035, errors="APPLICATION_COMMAND_INVALID_NAME")
    description = command.get("description")
    if not isinstance(description, str) or not 1 <= len(description) <= 100:
        raise ApiError(400, "Invalid Form Body", 50035, errors="BASE_TYPE_BAD_LENGTH")
    options = command.get("options") or []
    if len(options) > 25:
        raise ApiError(400, "Invalid Form Body", 50035, errors="BASE_TYPE_MAX_LENGTH")
    for option in options:
        _check_command({**option, "options": []})


def _check_message(body: Any, *, ephemeral_allowed: bool) -> tuple[str, int]:
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid Form Body", 50035)
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        raise ApiError(400, "Invalid Form Body", 50035)
    if not content:
        raise ApiError(400, "Cannot send an empty message", 50006)
    if len(content) > 2000:
        raise ApiError(
            400, "Invalid Form Body", 50035, errors={"content": "Must be 2000 or fewer in length."}
        )
    flags = body.get("flags") or 0
    allowed = _MESSAGE_FLAGS | (_EPHEMERAL if ephemeral_allowed else 0)
    if not isinstance(flags, int) or flags & ~allowed:
        raise ApiError(400, "Invalid Form Body", 50035, errors={"flags": "invalid"})
    return content, flags
