"""``A2AChannel``: the routes of the A2A protocol, both generations, on one endpoint.

- ``GET /.well-known/agent-card.json`` (and the v0.2 path ``agent.json``): the card.
- ``POST {mount}``: JSON-RPC; v1.0 method names (``SendMessage`` ...) and v0.3 ones
  (``message/send`` ...) side by side, told apart by the method name. An ``A2A-Version``
  header, when sent, must name 1.0 or 0.3 (``VersionNotSupported`` otherwise).
- ``{mount}/message:send``, ``/message:stream``, ``/tasks``, ``/tasks/{id}``,
  ``/tasks/{id}:cancel``, ``/tasks/{id}:subscribe``, ``/tasks/{id}/pushNotificationConfigs
  [/{config id}]``: the v1.0 HTTP+JSON binding.

This module authenticates the caller (the channel's hook), reads bodies (bounded), hands
requests to the codec and to the host, and renders answers. Every message becomes a
task run as a host background run, so tasks are durable: see :mod:`live` and
:mod:`records`. Errors are A2A's, with bland messages; exception text never reaches a
caller.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
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
from agenthost.channels.a2a import codec, tasks
from agenthost.channels.a2a.card import CardSettings, Skill, bearer_scheme, build_card
from agenthost.channels.a2a.codec import V03, Call, Generation, InputLimits
from agenthost.channels.a2a.live import TASK_ATTRIBUTE, LiveTasks, TaskWriter
from agenthost.channels.a2a.pushes import (
    Pushes,
    PushTargetRefused,
    check_push_url,
    config_from_record,
    config_key,
    config_record,
    refused_config_error,
)
from agenthost.channels.a2a.records import (
    MESSAGE,
    PUSH_CONFIG,
    TASK,
    TaskRecords,
    message_key,
    new_context_id,
    new_task_id,
    task_key,
)
from agenthost.sansio_core.authorization import Allowlist
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.delivery import RetryPolicy
from agenthost.sansio_core.link_policy import DEFAULT_TIER
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.turns import RefusalReason, TurnRefused
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ContinuationToken,
    MultitaskStrategy,
)

log = logging.getLogger("agenthost.channels.a2a")

CallerAuthenticator = Callable[[Request], "str | Awaitable[str | None] | None"]
ANONYMOUS = "anonymous"
CARD_PATHS = ("/.well-known/agent-card.json", "/.well-known/agent.json")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_LISTED_TASKS = 5000
MAX_PUSH_CONFIGS_PER_TASK = 10
_CANCEL_SETTLE_SECONDS = 5.0

_REFUSALS: Mapping[RefusalReason, str] = {
    RefusalReason.IDENTITY_REFUSED: "This caller may not use this agent.",
    RefusalReason.DENIED: "This caller may not use this agent.",
    RefusalReason.LINK_REQUIRED: "This caller must link an account first.",
    RefusalReason.SESSION_BUSY: "This context is busy with another task; try again later.",
    RefusalReason.SESSION_NOT_FOUND: "No conversation matches this context.",
    RefusalReason.TARGET_NOT_ALLOWED: "This caller may not choose where replies go.",
}


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
        self._multitask = multitask
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
            result = await self._answer(call, caller, request)
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
            result = await self._answer(call, caller, request)
            return JSONResponse(result if result is not None else {})
        except BodyTooLarge:
            return _rest_error(errors.InvalidRequestError("The request is too large."), 413)
        except errors.A2AError as failure:
            return _rest_error(failure)
        except Exception:
            log.exception("a2a request failed", extra={"operation": operation})
            return _rest_error(codec.internal_error())

    # --- operations ---------------------------------------------------------------------

    async def _answer(self, call: Call, caller: str, request: Request) -> Any:
        try:
            return await self._operate(call, caller, request)
        except errors.A2AError:
            raise
        except Exception:
            log.exception("a2a request failed", extra={"operation": call.operation})
            raise codec.internal_error() from None

    async def _operate(self, call: Call, caller: str, request: Request) -> Any:
        op, params, generation = call.operation, call.params, call.generation
        if op == "send":
            task, _ = await self._submit(params, caller, request, generation)
            if not params.configuration.return_immediately and not codec.is_terminal(task):
                task = await self.live.until_final(caller, task.id) or task
            task = tasks.with_history(task, _history_length(params.configuration))
            return codec.render_send_result(task, generation)
        if op == "get":
            task = await self._owned_task(caller, params.id)
            return codec.render_task(tasks.with_history(task, _history_length(params)), generation)
        if op == "list":
            return await self._list(params, caller)
        if op == "cancel":
            return codec.render_task(await self._cancel(params.id, caller), generation)
        if op == "push_set":
            return codec.render_push_config(
                await self._set_push(params, caller, generation), generation
            )
        if op == "push_get":
            return codec.render_push_config(await self._get_push(params, caller), generation)
        if op == "push_list":
            await self._owned_task(caller, params.task_id)
            configs = [
                config_from_record(r) for r in await self.records.push_configs(params.task_id)
            ]
            return codec.render_push_configs(configs, generation)
        if op == "push_delete":
            await self._owned_task(caller, params.task_id)
            self._require_push()
            await self.records.delete(PUSH_CONFIG, config_key(params.task_id, params.id))
            return None if generation == V03 else {}
        if op == "extended_card":
            raise errors.ExtendedAgentCardNotConfiguredError("This agent has no extended card.")
        raise errors.UnsupportedOperationError("This operation is not supported.")

    async def _owned_task(self, caller: str, task_id: str) -> Any:
        loaded = await self.live.settled(caller, task_id) if task_id else None
        if loaded is None:
            raise errors.TaskNotFoundError("No task has that id.")
        return loaded[0]

    async def _submit(
        self, params: Any, caller: str, request: Request, generation: Generation
    ) -> tuple[Any, int]:
        """The task a message becomes (a new one, or the one an earlier delivery of the
        same ``messageId`` made) and the number of the last event it reflects."""
        if not params.HasField("message"):
            raise errors.InvalidParamsError("The request has no message.")
        message = params.message
        configuration = params.configuration
        codec.check_output_modes(list(configuration.accepted_output_modes), self.channel.limits)
        inputs = codec.host_messages(message, self.channel.limits)
        if message.task_id:
            await self._owned_task(caller, message.task_id)
            # Every task here ends with its run; none waits for more input.
            raise errors.UnsupportedOperationError("This task does not take further messages.")
        context_id = message.context_id or new_context_id()
        codec.check_identifier(context_id, "contextId")
        push_config = None
        if configuration.HasField("task_push_notification_config"):
            self._require_push()
            push_config = pb.TaskPushNotificationConfig()
            push_config.CopyFrom(configuration.task_push_notification_config)
            await self._check_push_url(push_config.url)

        now = self.host.now()
        task_id = new_task_id(now)
        mark = self.records.record(
            MESSAGE,
            message_key(caller, message.message_id),
            {"task_id": task_id},
            None,
            expires_at=self.records.expiry(),
        )
        task = tasks.new_task(task_id, context_id, message, now)
        companions = [
            self.live.task_record(
                caller, task, {"token": None, "number": 0, "pushes": bool(push_config)}, None,
                final=False,
            )
        ]  # fmt: skip
        if push_config is not None:
            push_config.task_id = task_id
            push_config.id = push_config.id or task_id
            # Its notifications take the shape of the generation the caller speaks.
            companions.append(
                config_record(self.records, push_config, generation, None, expires_at=None)
            )
        # One write: the message's mark and, when it is new, its task (and push config).
        if not await self.records.insert(mark, companions=companions):
            earlier = await self.records.get(MESSAGE, mark.key)
            loaded = (
                await self.live.load(caller, str(earlier.value["task_id"])) if earlier else None
            )
            if loaded is None:
                raise errors.InvalidParamsError("This messageId was already used.")
            return loaded[0], int(loaded[1].value.get("number", 0))

        channel_request = ChannelRequest(
            channel=self.channel.name,
            identity=ChannelIdentity(self.channel.name, caller),
            input=inputs,
            session=ChannelSession(key=context_id, caller_keyed=True),
            multitask=self.channel._multitask,
            stream=True,
            attributes={TASK_ATTRIBUTE: task_id},
        )
        try:
            answer = await self.host.run_in_background(channel_request, protocol_request=request)
        except Exception:
            log.exception("an a2a task could not be started")
            answer = None
        if not isinstance(answer, ContinuationToken):
            # Nothing will run: forget the task, so a retry of the message starts afresh.
            with anyio.CancelScope(shield=True):
                await self.records.delete(TASK, task_key(caller, task_id))
                await self.records.delete(MESSAGE, mark.key)
                await self.records.delete(PUSH_CONFIG, f"{task_id}:")
            if answer is None:
                raise codec.internal_error()
            raise errors.InvalidRequestError(_refusal_message(answer))
        async with self.live.lock(task_id):
            loaded = await self.live.load(caller, task_id)
            if loaded is None:
                raise errors.TaskNotFoundError("No task has that id.")
            task, record = loaded
            if record.value.get("token") is None:
                await self.live.save(
                    caller,
                    task,
                    base={**record.value, "token": answer.token},
                    owner=answer.isolation_key,
                    final=codec.is_terminal(task),
                )
        return task, int(record.value.get("number", 0))

    async def _cancel(self, task_id: str, caller: str) -> Any:
        loaded = await self.live.settled(caller, task_id) if task_id else None
        if loaded is None:
            raise errors.TaskNotFoundError("No task has that id.")
        task, record = loaded
        token = record.value.get("token")
        if codec.is_terminal(task) or not isinstance(token, str):
            raise errors.TaskNotCancelableError("This task can no longer be canceled.")
        await self.host.cancel_continuation(token)
        with anyio.move_on_after(_CANCEL_SETTLE_SECONDS):
            task = await self.live.until_final(caller, task_id) or task
        if task.status.state != tasks.CANCELED:
            raise errors.TaskNotCancelableError("This task can no longer be canceled.")
        return task

    async def _list(self, params: Any, caller: str) -> dict[str, Any]:
        page_size = params.page_size or DEFAULT_PAGE_SIZE
        if page_size < 1 or page_size > MAX_PAGE_SIZE:
            raise errors.InvalidParamsError(f"'pageSize' must be 1-{MAX_PAGE_SIZE}.")
        history = params.history_length if params.HasField("history_length") else None
        if history is not None and history < 0:
            raise errors.InvalidParamsError("'historyLength' must not be negative.")
        include_artifacts = params.HasField("include_artifacts") and params.include_artifacts
        matching: list[Any] = []
        after: str | None = None
        scanned = 0
        while scanned < MAX_LISTED_TASKS:
            page = await self.records.tasks(caller, after=after, limit=500)
            for record in page:
                if self.records.expired(record):
                    continue
                task = codec.task_from_dict(record.value["task"])
                if params.context_id and task.context_id != params.context_id:
                    continue
                if params.status and task.status.state != params.status:
                    continue
                matching.append(task)
            scanned += len(page)
            if len(page) < 500:
                break
            after = page[-1].key
        start = 0
        if params.page_token:
            ids = [task.id for task in matching]
            if params.page_token not in ids:
                raise errors.InvalidParamsError("'pageToken' is not valid.")
            start = ids.index(params.page_token) + 1
        chosen = matching[start : start + page_size]
        next_token = chosen[-1].id if start + page_size < len(matching) and chosen else ""
        shaped = [
            tasks.with_history(
                task if include_artifacts else tasks.without_artifacts(task), history
            )
            for task in chosen
        ]
        return codec.render_task_list(
            shaped, next_page_token=next_token, page_size=page_size, total_size=len(matching)
        )

    async def _set_push(self, config: Any, caller: str, generation: Generation) -> Any:
        self._require_push()
        await self._owned_task(caller, config.task_id)
        await self._check_push_url(config.url)
        config.id = config.id or config.task_id
        codec.check_identifier(config.id, "id")
        existing = await self.records.push_configs(config.task_id)
        key = config_key(config.task_id, config.id)
        if len(existing) >= MAX_PUSH_CONFIGS_PER_TASK and all(r.key != key for r in existing):
            raise errors.InvalidParamsError("This task has as many push configs as it may.")
        async with self.live.lock(config.task_id):
            loaded = await self.live.load(caller, config.task_id)
            if loaded is None:
                raise errors.TaskNotFoundError("No task has that id.")
            task, record = loaded
            stored = config_record(self.records, config, generation, record.owner, expires_at=None)
            if record.value.get("pushes"):
                await self.records.put([stored])
            else:
                # The task notes that it has configs, so runs without any never look.
                await self.live.save(
                    caller,
                    task,
                    base={**record.value, "pushes": True},
                    owner=record.owner,
                    final=codec.is_terminal(task),
                    extra=[stored],
                )
        return config

    async def _get_push(self, params: Any, caller: str) -> Any:
        await self._owned_task(caller, params.task_id)
        configs = await self.records.push_configs(params.task_id)
        wanted = config_key(params.task_id, params.id) if params.id else None
        for record in configs:
            if wanted is None or record.key == wanted:
                return config_from_record(record)
        raise errors.TaskNotFoundError("No push config has that id.")

    def _require_push(self) -> None:
        if not self.channel.push_notifications:
            raise errors.PushNotificationNotSupportedError(
                "This agent does not send push notifications."
            )

    async def _check_push_url(self, url: str) -> None:
        try:
            await check_push_url(url, allow_private=self.channel.allow_private_push_targets)
        except PushTargetRefused:
            raise refused_config_error() from None

    # --- streams ------------------------------------------------------------------------

    async def _stream_call(
        self, call: Call, caller: str, request: Request, *, json_rpc: bool
    ) -> Response:
        # Everything that can fail cleanly fails before the stream opens, as a plain error.
        if call.operation == "stream":
            task, number = await self._submit(call.params, caller, request, call.generation)
        else:
            loaded = await self.live.settled(caller, call.params.id) if call.params.id else None
            if loaded is None:
                raise errors.TaskNotFoundError("No task has that id.")
            task, record = loaded
            if codec.is_terminal(task):
                raise errors.UnsupportedOperationError("This task has already finished.")
            number = int(record.value.get("number", 0))
        generation = call.generation

        def frame(event: Any) -> bytes:
            rendered = codec.render_event(event, generation)
            body = codec.jsonrpc_result(call.request_id, rendered) if json_rpc else rendered
            return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

        async def produce(emit: Emit) -> None:
            await emit(frame(pb.StreamResponse(task=task)))
            if codec.is_terminal(task):
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
                await emit(b"data: " + json.dumps(body).encode() + b"\n\n")

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


def _history_length(params: Any) -> int | None:
    if not params.HasField("history_length"):
        return None
    if params.history_length < 0:
        raise errors.InvalidParamsError("'historyLength' must not be negative.")
    return int(params.history_length)


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


def _refusal_message(outcome: TurnRefused) -> str:
    if (
        outcome.reason in (RefusalReason.DENIED, RefusalReason.LINK_REQUIRED)
        and outcome.user_message
    ):
        return outcome.user_message  # the host's own, bland by design
    return _REFUSALS[outcome.reason]


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
