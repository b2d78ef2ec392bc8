"""``A2AChannel``: the routes of the A2A protocol, both generations, on one endpoint.

- ``GET /.well-known/agent-card.json`` (and the v0.2 path ``agent.json``): the card.
- ``POST {mount}``: JSON-RPC; v1.0 method names (``SendMessage`` ...) and v0.3 ones
  (``message/send`` ...) side by side, told apart by the method name. An ``A2A-Version``
  header, when sent, must name 1.0 or 0.3 (``VersionNotSupported`` otherwise).
- ``{mount}/message:send``, ``/message:stream``, ``/tasks``, ``/tasks/{id}``,
  ``/tasks/{id}:cancel``, ``/tasks/{id}:subscribe``, ``/tasks/{id}/pushNotificationConfigs
  [/{config id}]``: the v1.0 HTTP+JSON binding.

This module authenticates the caller (the channel's hook), reads bodies (bounded), hands
them to the codec, the parsed calls to :mod:`operations`, and frames the answers
(JSON-RPC or HTTP+JSON, JSON or Server-Sent Events). Every message becomes a task run as
a host background run, so tasks are durable: see :mod:`live` and :mod:`records`. Errors
are A2A's, with bland messages; exception text never reaches a caller.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from a2a.types import a2a_pb2 as pb
from a2a.utils import errors
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agenthost.backends.bodies import BodyTooLarge, read_limited
from agenthost.backends.channel import INHERIT, Channel, HostServices, Inherit
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.backends.streaming import Emit, ProducerResponse
from agenthost.backends.targets import UpdateSink
from agenthost.channels.a2a import codec
from agenthost.channels.a2a.card import CardSettings, Skill, bearer_scheme, build_card
from agenthost.channels.a2a.codec import Call, InputLimits
from agenthost.channels.a2a.live import TASK_ATTRIBUTE, LiveTasks, TaskWriter
from agenthost.channels.a2a.operations import TaskOperations
from agenthost.channels.a2a.pushes import Pushes
from agenthost.channels.a2a.records import TaskRecords
from agenthost.sansio_core.authorization import Allowlist
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.delivery import RetryPolicy
from agenthost.sansio_core.json_encoders import compact_encoder
from agenthost.sansio_core.link_policy import DEFAULT_TIER
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.types import MultitaskStrategy

log = logging.getLogger("agenthost.channels.a2a")

_encode_event = compact_encoder()  # built once: a stream encodes one event after another

CallerAuthenticator = Callable[[Request], "str | Awaitable[str | None] | None"]
ANONYMOUS = "anonymous"
CARD_PATHS = ("/.well-known/agent-card.json", "/.well-known/agent.json")


class A2AChannel(Channel):
    """Other agents call the hosted agent over A2A (protocol v1.0 and v0.3).

    ``authenticate``: a function of the Starlette request answering the caller's id, or
    ``None`` to refuse with 401; ``security_schemes`` are what the card announces for it
    (v1.0 ProtoJSON; default a bearer scheme when ``authenticate`` is set). Without
    ``authenticate`` every caller is the same anonymous caller and shares its tasks and
    contexts: set it anywhere other agents than your own can reach.

    Each message becomes a task, run as a host background run: durable in the store,
    re-run after a crash, cancellable. A ``contextId`` is the session key, owned by the
    authenticated caller. Finished tasks are kept ``task_ttl_seconds``.
    ``allow_private_push_targets`` lets push URLs resolve to loopback or private
    addresses (tests, a private network); by default they are refused (SSRF).
    """

    push_is_idempotent = True  # every push carries its delivery id as ``idempotency-key``
    display_name = "A2A"

    def __init__(
        self,
        *,
        name: str = "a2a",
        mount: str = "/a2a",
        public_url: str | None = None,
        agent_name: str = "agent",
        description: str = "An agent hosted by agenthost.",
        version: str = "1.0.0",
        skills: Sequence[Skill] = (),
        authenticate: CallerAuthenticator | None = None,
        security_schemes: Mapping[str, Mapping[str, Any]] | None = None,
        push_notifications: bool = True,
        allow_private_push_targets: bool = False,
        push_retry: RetryPolicy | None = None,
        push_timeout_seconds: float = 10.0,
        task_ttl_seconds: float = 24 * 3600.0,
        input_modes: Sequence[str] = ("text/plain", "application/json", "image/*"),
        max_file_bytes: int = 4 * 1024 * 1024,
        max_body_bytes: int = 8 * 1024 * 1024,
        poll_seconds: float = 0.5,
        multitask: MultitaskStrategy | None = None,
        require_link: bool | Inherit = INHERIT,
        allowlist: Allowlist | Inherit | None = INHERIT,
        confidentiality_tier: str = DEFAULT_TIER,
        offers_link_commands: bool = True,
    ) -> None:
        if not mount.startswith("/") or mount.endswith("/"):
            raise ValueError(f"mount must start with '/' and not end with one, not {mount!r}")
        if public_url is not None and not public_url.startswith(("https://", "http://")):
            raise ValueError(f"public_url must be an http(s) URL, not {public_url!r}")
        if max_file_bytes < 1 or max_body_bytes < 1:
            raise ValueError("max_file_bytes and max_body_bytes must be at least 1")
        if task_ttl_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("task_ttl_seconds and poll_seconds must be greater than 0")
        self.name = name
        self.mount = mount
        self.public_url = public_url.rstrip("/") if public_url else None
        self.require_link = require_link
        self.allowlist = allowlist
        self.confidentiality_tier = confidentiality_tier
        self.offers_link_commands = offers_link_commands
        self._authenticate = authenticate
        if security_schemes is None:
            security_schemes = bearer_scheme() if authenticate is not None else {}
        self._card = CardSettings(
            name=agent_name,
            description=description,
            version=version,
            skills=tuple(skills) or (Skill("chat", "Chat", description, tags=("chat",)),),
            streaming=True,
            push_notifications=push_notifications,
            security_schemes=dict(security_schemes),
            input_modes=tuple(input_modes),
            output_modes=("text/plain",),
        )
        self.limits = InputLimits(tuple(input_modes), ("text/plain",), max_file_bytes)
        self.push_notifications = push_notifications
        self.allow_private_push_targets = allow_private_push_targets
        self._push_retry = push_retry or RetryPolicy()
        self._push_timeout = push_timeout_seconds
        self.task_ttl_seconds = task_ttl_seconds
        self.max_body_bytes = max_body_bytes
        self.poll_seconds = poll_seconds
        self.multitask = multitask
        self._service: _Service | None = None

    def _bind(self, host: HostServices) -> _Service:
        if self._service is None:
            self._service = _Service(self, host)
        return self._service

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        service = self._bind(host)
        mount = self.mount
        return [
            *(Route(path, service.card, methods=["GET"]) for path in CARD_PATHS),
            Route(mount, service.jsonrpc, methods=["POST"]),
            Route(f"{mount}/message:send", service.rest_send, methods=["POST"]),
            Route(f"{mount}/message:stream", service.rest_stream, methods=["POST"]),
            Route(f"{mount}/tasks", service.rest_list, methods=["GET"]),
            Route(f"{mount}/extendedAgentCard", service.rest_extended_card, methods=["GET"]),
            Route(
                f"{mount}/tasks/{{rest:path}}",
                service.rest_task,
                methods=["GET", "POST", "DELETE"],
            ),
        ]

    async def startup(self, host: HostServices) -> None:
        # A host run without its app (``async with host.running()``) never asks for routes.
        self._bind(host)

    def background_updates(self, record: RunRecord) -> UpdateSink | None:
        return self._service.background_updates(record) if self._service else None

    async def background_finished(self, record: RunRecord) -> None:
        if self._service is not None:
            await self._service.live.finish(record)

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        if self._service is None:
            return PushOutcome.transient("the channel is not attached to a running host")
        return await self._service.pushes.send(message)


class _Service:
    def __init__(self, channel: A2AChannel, host: HostServices) -> None:
        self.channel = channel
        self.host = host
        self.records = TaskRecords(channel.name, host, task_ttl=channel.task_ttl_seconds)
        self.pushes = Pushes(
            channel=channel.name,
            host=host,
            records=self.records,
            allow_private=channel.allow_private_push_targets,
            retry=channel._push_retry,
            timeout_seconds=channel._push_timeout,
        )
        self.live = LiveTasks(
            self.records,
            self.pushes,
            runs=host.get_continuation,
            poll_seconds=channel.poll_seconds,
        )
        self.operations = TaskOperations(channel, host, self.records, self.live)
        self._cards: dict[str, dict[str, Any]] = {}

    # --- the card -----------------------------------------------------------------------

    async def card(self, request: Request) -> Response:
        base = self.channel.public_url or str(request.base_url).rstrip("/")
        card = self._cards.get(base)
        if card is None:
            if len(self._cards) > 16:  # a bounded cache: Host headers are the caller's
                self._cards.clear()
            card = self._cards[base] = build_card(self.channel._card, base + self.channel.mount)
        return JSONResponse(card, headers={"cache-control": "public, max-age=300"})

    # --- JSON-RPC ----------------------------------------------------------------------

    async def jsonrpc(self, request: Request) -> Response:
        request_id: str | int | None = None
        try:
            caller = await self._caller(request)
            if caller is None:
                return _unauthenticated(json_rpc=True)
            raw = await read_limited(request, self.channel.max_body_bytes)
            request_id = codec.request_id_of(raw)
            codec.check_version(request.headers.get("a2a-version"))
            call = codec.parse_jsonrpc(raw)
            if call.operation in codec.STREAMING_OPERATIONS:
                return await self._stream_call(call, caller, request, json_rpc=True)
            result = await self.operations.answer(call, caller, request)
            return JSONResponse(codec.jsonrpc_result(call.request_id, result))
        except BodyTooLarge:
            error: errors.A2AError = errors.InvalidRequestError("The request is too large.")
            return JSONResponse(codec.jsonrpc_error(request_id, error), status_code=413)
        except errors.A2AError as failure:
            return JSONResponse(codec.jsonrpc_error(request_id, failure))
        except Exception:
            log.exception("a2a request failed")
            return JSONResponse(codec.jsonrpc_error(request_id, codec.internal_error()))

    # --- HTTP+JSON ---------------------------------------------------------------------

    async def rest_send(self, request: Request) -> Response:
        return await self._rest(request, "send", body=True)

    async def rest_stream(self, request: Request) -> Response:
        return await self._rest(request, "stream", body=True)

    async def rest_list(self, request: Request) -> Response:
        query = _query(request, ("historyLength", "pageSize"), ("includeArtifacts",))
        return await self._rest(request, "list", params=query)

    async def rest_extended_card(self, request: Request) -> Response:
        return await self._rest(request, "extended_card")

    async def rest_task(self, request: Request) -> Response:
        rest = request.path_params["rest"]
        method = request.method
        head, _, tail = rest.partition("/")
        if not tail:
            task_id, _, verb = head.partition(":")
            if method == "GET" and not verb:
                query = _query(request, ("historyLength",))
                return await self._rest(request, "get", params={**query, "id": task_id})
            if method == "POST" and verb == "cancel":
                return await self._rest(request, "cancel", body=True, params={"id": task_id})
            if method in ("POST", "GET") and verb == "subscribe":
                return await self._rest(request, "subscribe", params={"id": task_id})
        elif tail == "pushNotificationConfigs" or tail.startswith("pushNotificationConfigs/"):
            config_id = tail.partition("/")[2]
            ids = {"taskId": head}
            if method == "POST" and not config_id:
                return await self._rest(request, "push_set", body=True, params=ids)
            if method == "GET" and not config_id:
                query = _query(request, ("pageSize",))
                return await self._rest(request, "push_list", params={**query, **ids})
            if method == "GET":
                return await self._rest(request, "push_get", params={**ids, "id": config_id})
            if method == "DELETE":
                return await self._rest(request, "push_delete", params={**ids, "id": config_id})
        return _rest_error(errors.MethodNotFoundError("No such resource."))

    async def _rest(
        self,
        request: Request,
        operation: str,
        *,
        body: bool = False,
        params: Mapping[str, Any] | None = None,
    ) -> Response:
        try:
            caller = await self._caller(request)
            if caller is None:
                return _unauthenticated(json_rpc=False)
            codec.check_version(request.headers.get("a2a-version"))
            values: dict[str, Any] = {}
            if body:
                raw = await read_limited(request, self.channel.max_body_bytes)
                if raw.strip():
                    try:
                        parsed = json.loads(raw)
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        raise errors.JSONParseError("The request body is not valid JSON.") from None
                    if not isinstance(parsed, dict):
                        raise errors.InvalidParamsError("The request body must be an object.")
                    values.update(parsed)
            values.update(params or {})
            call = codec.parse_rest(operation, values)
            if operation in codec.STREAMING_OPERATIONS:
                return await self._stream_call(call, caller, request, json_rpc=False)
            result = await self.operations.answer(call, caller, request)
            return JSONResponse(result if result is not None else {})
        except BodyTooLarge:
            return _rest_error(errors.InvalidRequestError("The request is too large."), 413)
        except errors.A2AError as failure:
            return _rest_error(failure)
        except Exception:
            log.exception("a2a request failed", extra={"operation": operation})
            return _rest_error(codec.internal_error())

    # --- streams ------------------------------------------------------------------------

    async def _stream_call(
        self, call: Call, caller: str, request: Request, *, json_rpc: bool
    ) -> Response:
        # Everything that can fail cleanly fails before the stream opens, as a plain error.
        if call.operation == "stream":
            task, number = await self.operations.submit(
                call.params, caller, request, call.generation
            )
        else:
            task, number = await self.operations.subscription(call.params.id, caller)
        generation = call.generation

        def frame(event: Any) -> bytes:
            rendered = codec.render_event(event, generation)
            body = codec.jsonrpc_result(call.request_id, rendered) if json_rpc else rendered
            return b"data: " + _encode_event(body).encode() + b"\n\n"

        async def produce(emit: Emit) -> None:
            await emit(frame(pb.StreamResponse(task=task)))
            if codec.is_settled(task):
                return

            async def send(event: Any) -> None:
                await emit(frame(event))

            try:
                await self.live.follow(caller, task.id, number, send)
            except Exception:
                log.exception("a2a stream failed", extra={"operation": call.operation})
                error = codec.internal_error()
                if json_rpc:
                    body: Any = codec.jsonrpc_error(call.request_id, error)
                else:
                    body = codec.rest_error(error)[1]
                await emit(b"data: " + _encode_event(body).encode() + b"\n\n")

        return ProducerResponse(produce)

    def background_updates(self, record: RunRecord) -> UpdateSink | None:
        task_id = record.request.attributes.get(TASK_ATTRIBUTE)
        if not isinstance(task_id, str):
            return None
        writer = TaskWriter(
            self.live,
            caller=record.request.identity.native_id,
            task_id=task_id,
            token=record.token,
            owner=record.isolation_key,
            start_task=self.host.start_task,
        )
        self.live.writers[task_id] = writer
        return writer.on_update

    async def _caller(self, request: Request) -> str | None:
        authenticate = self.channel._authenticate
        if authenticate is None:
            return ANONYMOUS
        user = authenticate(request)
        if inspect.isawaitable(user):
            user = await user
        return user if isinstance(user, str) and user else None


def _query(request: Request, integers: Sequence[str], flags: Sequence[str] = ()) -> dict[str, Any]:
    """Query parameters as the codec parses them (a malformed number is left as it came,
    for the codec to refuse as invalid parameters)."""
    values: dict[str, Any] = {}
    for name, value in request.query_params.items():
        if name in flags:
            values[name] = value.lower() in ("true", "1")
        elif name in integers and value.lstrip("-").isdigit():
            values[name] = int(value)
        else:
            values[name] = value
    return values


def _rest_error(error: errors.A2AError, status: int | None = None) -> Response:
    code, body = codec.rest_error(error)
    return JSONResponse(body, status_code=status or code)


def _unauthenticated(*, json_rpc: bool) -> Response:
    headers = {"www-authenticate": "Bearer"}
    message = "The caller is not authenticated."
    if json_rpc:
        body: Any = codec.jsonrpc_error(None, errors.InvalidRequestError(message))
    else:
        body = {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": message}}
    return JSONResponse(body, status_code=401, headers=headers)


__all__ = ["A2AChannel", "Skill"]
