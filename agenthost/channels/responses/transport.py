"""The Responses routes: HTTP (JSON and Server-Sent Events), WebSocket mode, Conversations.

Under the mount (default ``/responses``) and the protocol suffix ``/v1``, so a client with
``base_url=http://host/responses/v1`` works unchanged:

- ``POST /responses`` (JSON, SSE with ``stream``, ``background``), and WebSocket mode on
  the same path; ``GET /responses/{id}`` (``stream=true&starting_after=N`` resumes a
  background stream), ``POST /responses/{id}/cancel``, ``DELETE /responses/{id}``,
  ``GET /responses/{id}/input_items``;
- ``POST /conversations``, ``GET|POST|DELETE /conversations/{id}``,
  ``POST|GET /conversations/{id}/items``, ``GET /conversations/{id}/items/{item_id}``.

Who the caller is comes from the bearer key (or the application's ``authenticate``); every
stored record is owned by that caller, and every session key it names is bound to it by
the host. Sessions: a response continues from ``previous_response_id`` by forking that
response's saved session into a new one named by the new response's id (OpenAI's
branching: each response is a snapshot), or runs in the session named by a
``conversation`` (created by ``POST /conversations``; items added there reach the target
with the next turn); with neither it starts a fresh one. An ``item_reference`` resolves to
an output item of the caller's stored responses.

This module reads bodies, asks the codec and the event machine to translate, hands
requests to the host and stores what the protocol must remember (``records.py``). It
decides nothing about sessions, identities or runs. Deleting a response deletes this
channel's records of it; the host keeps the session snapshot (the store has no deletion
for sessions), which nobody can reach without the response's record.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import anyio
import anyio.abc
import attrs
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agenthost.backends.answers import AsgiRoute, JsonAnswer
from agenthost.backends.bodies import (
    BODY_SECONDS,
    BodyRefused,
    ClientGone,
    read_json_body,
)
from agenthost.backends.channel import (
    INHERIT,
    Channel,
    HostServices,
    Inherit,
    TargetFeatures,
    cancel_owned_continuation,
    host_command_of,
    source_attributes,
)
from agenthost.backends.ids import ordered_hex
from agenthost.backends.streaming import Emit, ProducerResponse
from agenthost.backends.targets import StreamUpdate, UpdateSink
from agenthost.channels.responses import codec, events, records, sse
from agenthost.channels.responses.codec import CreateRequest, ResponsesError
from agenthost.channels.responses.live import BackgroundRun, EventLog
from agenthost.channels.responses.records import Records
from agenthost.sansio_core.authorization import Allowlist
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.commands import CommandReply
from agenthost.sansio_core.json_encoders import compact_encoder
from agenthost.sansio_core.link_policy import DEFAULT_TIER
from agenthost.sansio_core.turns import (
    RefusalReason,
    TurnCompleted,
    TurnFailed,
    TurnOutcome,
    TurnRefused,
)
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ContinuationToken,
    MultitaskStrategy,
    RunStatus,
)
from agenthost.sansio_core.values import builds_fast
from agenthost.stores.base import ChannelRecord

log = logging.getLogger("agenthost.channels.responses")

CallerAuthenticator = Callable[[HTTPConnection], "str | Awaitable[str | None] | None"]

_FAILED_MESSAGE = "The agent could not complete this response."
_encode_event = compact_encoder()  # built once: a WebSocket sends one event after another
_SETTLE_SECONDS = 5.0  # a final run whose result record never appears is settled after this


def new_id(prefix: str) -> str:
    # In minting order: a response id keys its stored record (see backends.ids).
    return f"{prefix}_{ordered_hex()}"


def _request_id() -> str:
    return f"req_{os.urandom(12).hex()}"


class ResponsesChannel(Channel):
    """The OpenAI Responses API (and its Conversations subset) over the hosted target.

    ``api_keys``: bearer key -> caller id. Without it (``None``) any bearer key is
    accepted and the caller is the key's SHA-256 (the key itself is never stored or
    logged), so two keys are two callers. ``authenticate``: a function of the Starlette
    connection answering the caller id, or ``None`` to refuse with 401; it replaces both.
    ``safety_identifier`` and ``user`` are passed on as hints in the identity's
    attributes and never change who the caller is.

    ``store=false`` is honoured for this channel's records (the response cannot be
    retrieved) and forwarded in ``attributes["store"]``; the session snapshot is still
    saved, since continuing with ``previous_response_id`` (which WebSocket mode relies on)
    needs it. A ``run_hook`` can make such runs stateless with ``SessionMode.DISABLED``.

    The channel reads no ``response_target`` from the wire. When a ``run_hook`` sends the
    reply elsewhere (a non-``originating`` target), a plain ``create`` is answered with a
    background response (``queued``, ``background: true``) whose ``retrieve`` shows the
    result once the run completes, and the reply is pushed (``Host.run_or_continue``). A
    streamed or WebSocket ``create`` is still answered on its wire, and pushed too.

    Tools: the agent's own tool calls run on the host and are not the caller's to run, so
    they are left out of ``output`` (``server_tool_calls="omit"``) or shown as ``mcp_call``
    items (``"mcp_call"``). Function tools the caller declares in ``tools`` reach an Agent
    Framework agent as declaration-only tools: a call to one ends the response with a
    ``function_call`` item, and the caller's next request (``function_call_output`` with
    ``previous_response_id`` or ``conversation``) continues the run.
    ``require_link``, ``allowlist``, ``confidentiality_tier`` and ``offers_link_commands``
    are the channel's access and linking settings (see ``agenthost.backends.channel``);
    a refused caller gets 401/403 before anything runs or streams. A host command
    (``/link`` ...) is answered at once, also when ``background`` is asked; its reply is
    shown in that one answer and stored redacted, so a link code is never kept.
    ``body_timeout_seconds`` bounds how long a request body may take to arrive (408).
    """

    def __init__(
        self,
        *,
        name: str = "responses",
        mount: str = "/responses",
        api_keys: Mapping[str, str] | None = None,
        authenticate: CallerAuthenticator | None = None,
        model: str = "agenthost",
        max_body_bytes: int = 8 * 1024 * 1024,
        multitask: MultitaskStrategy | None = None,
        response_ttl_seconds: float | None = 30 * 24 * 3600.0,
        event_ttl_seconds: float = 24 * 3600.0,
        poll_seconds: float = 0.25,
        server_tool_calls: events.ServerToolCalls = "omit",
        require_link: bool | Inherit = INHERIT,
        allowlist: Allowlist | Inherit | None = INHERIT,
        confidentiality_tier: str = DEFAULT_TIER,
        offers_link_commands: bool = True,
        body_timeout_seconds: float = BODY_SECONDS,
    ) -> None:
        if not mount.startswith("/") or mount.endswith("/"):
            raise ValueError(f"mount must start with '/' and not end with one, not {mount!r}")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        if api_keys is not None and (
            not api_keys or not all(isinstance(k, str) and k for k in api_keys)
        ):
            raise ValueError(
                "api_keys must map non-empty bearer keys to caller ids; pass None to accept "
                "any key (each key is then its own caller)"
            )
        if event_ttl_seconds <= 0 or poll_seconds <= 0 or body_timeout_seconds <= 0:
            raise ValueError(
                "event_ttl_seconds, poll_seconds and body_timeout_seconds must be greater than 0"
            )
        if server_tool_calls not in events.SERVER_TOOL_CALLS:
            raise ValueError(
                f"server_tool_calls must be one of {', '.join(events.SERVER_TOOL_CALLS)}, "
                f"not {server_tool_calls!r}"
            )
        self.name = name
        self.mount = mount
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.multitask = multitask
        self.response_ttl_seconds = response_ttl_seconds
        self.event_ttl_seconds = event_ttl_seconds
        self.poll_seconds = poll_seconds
        self.server_tool_calls: events.ServerToolCalls = server_tool_calls
        self.require_link = require_link
        self.allowlist = allowlist
        self.confidentiality_tier = confidentiality_tier
        self.offers_link_commands = offers_link_commands
        self.body_timeout_seconds = body_timeout_seconds
        self._authenticate = authenticate
        # Keys are compared by digest: the mapping lookup then reveals nothing about them.
        self._key_digests = (
            {_digest(key): caller for key, caller in api_keys.items()}
            if api_keys is not None
            else None
        )
        self._service: _Service | None = None

    @property
    def mints_callers(self) -> bool:
        """Whether any bearer key is a caller of its own (no ``api_keys``/``authenticate``)."""
        return self._key_digests is None and self._authenticate is None

    @property
    def prefix(self) -> str:
        return f"{self.mount}/v1"

    def _bind(self, host: HostServices) -> _Service:
        if self._service is None or self._service.host is not host:
            self._service = _Service(self, host)
        return self._service

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        service = self._bind(host)
        p = self.prefix
        return [
            # The hot route is a plain ASGI app: no per-request endpoint wrapping.
            Route(f"{p}/responses", AsgiRoute(service.create), methods=["POST"]),
            WebSocketRoute(f"{p}/responses", service.websocket),
            Route(f"{p}/responses/{{response_id}}", service.retrieve, methods=["GET"]),
            Route(f"{p}/responses/{{response_id}}", service.delete, methods=["DELETE"]),
            Route(f"{p}/responses/{{response_id}}/cancel", service.cancel, methods=["POST"]),
            Route(
                f"{p}/responses/{{response_id}}/input_items", service.input_items, methods=["GET"]
            ),
            Route(f"{p}/conversations", service.create_conversation, methods=["POST"]),
            Route(
                f"{p}/conversations/{{conversation_id}}",
                service.conversation,
                methods=["GET", "POST", "DELETE"],
            ),
            Route(
                f"{p}/conversations/{{conversation_id}}/items",
                service.conversation_items,
                methods=["GET", "POST"],
            ),
            Route(
                f"{p}/conversations/{{conversation_id}}/items/{{item_id}}",
                service.conversation_item,
                methods=["GET"],
            ),
        ]

    async def startup(self, host: HostServices) -> None:
        self._bind(host)

    def background_updates(self, record: RunRecord) -> UpdateSink | None:
        if self._service is None:
            return None
        return self._service.background_updates(record)

    async def background_finished(self, record: RunRecord) -> None:
        if self._service is not None:
            await self._service.background_finished(record)

    async def caller(self, connection: HTTPConnection) -> str:
        """The authenticated caller of a request or WebSocket, or a 401 error."""
        if self._authenticate is not None:
            answer = self._authenticate(connection)
            if inspect.isawaitable(answer):
                answer = await answer
            if not answer:
                raise ResponsesError(
                    401, "The request is not authenticated.", code="invalid_api_key"
                )
            return answer
        scheme, _, key = connection.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ResponsesError(
                401,
                "You didn't provide an API key. Send it in the Authorization header "
                "(Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        digest = _digest(key)
        if self._key_digests is None:
            return digest
        caller = self._key_digests.get(digest)
        if caller is None:
            raise ResponsesError(401, "Incorrect API key provided.", code="invalid_api_key")
        return caller


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


Handler = Callable[["_Service", Request], Awaitable[Response]]


def _answering_errors(handler: Handler) -> Handler:
    """Answer bad input in the OpenAI error shape, and a bug as a bland 500."""

    @functools.wraps(handler)
    async def answer(service: _Service, request: Request) -> Response:
        try:
            return await handler(service, request)
        except ResponsesError as error:
            return _error(error)
        except BodyRefused as refused:
            # Answered at once (a 413 then drains the rest of the body, bounded).
            body = codec.error_body(
                refused.message, type="invalid_request_error", code=refused.code
            )
            return refused.response(body, headers=_request_id_header())
        except ClientGone:
            log.debug("responses request abandoned: the client left before its body arrived")
            return Response(status_code=400)
        except Exception:
            log.exception("responses request failed unexpectedly")
            return _error(_internal_error())

    return answer


def _internal_error() -> ResponsesError:
    return ResponsesError(
        500,
        "The server had an error while processing your request.",
        type="server_error",
        code="server_error",
    )


@builds_fast  # one a create
@attrs.frozen
class _Turn:
    """One create, prepared: its id, the request for the host and what to store after."""

    response_id: str
    caller: str
    create: CreateRequest
    items: tuple[Mapping[str, Any], ...]  # input items with ids, references resolved
    response: Mapping[str, Any]  # the response object before the run
    request: ChannelRequest
    pending_taken: tuple[str, ...] = ()  # conversation items this turn hands the target


class _Service:
    """The channel bound to one host: handlers, records and background runs."""

    def __init__(self, channel: ResponsesChannel, host: HostServices) -> None:
        self.channel = channel
        self.host = host
        self.records = Records(
            channel.name,
            host,
            response_ttl=channel.response_ttl_seconds,
            event_ttl=channel.event_ttl_seconds,
        )
        self.log = EventLog(self.records, poll_seconds=channel.poll_seconds)
        # Known once: whether the host says its target cannot take tools (else the target's
        # adapter refuses a run with them).
        self._target_takes_no_tools = (
            isinstance(host, TargetFeatures) and not host.target_accepts_function_tools
        )
        self._live: dict[str, BackgroundRun] = {}

    # --- POST /responses --------------------------------------------------------------

    @_answering_errors
    async def create(self, request: Request) -> Response:
        caller = await self.channel.caller(request)
        body = codec.parse_json(await self._body(request))
        create = codec.parse_create(body)
        turn = await self._prepare(
            create, caller, request, id_shown_early=create.stream or create.background
        )
        if create.background and host_command_of(self.host, turn.request) is not None:
            # A command is answered at once, here, so its reply is never stored as a
            # background result (where a link code would outlive the one answer).
            turn = attrs.evolve(turn, request=attrs.evolve(turn.request, background=False))
        elif create.background:
            return await self._start_background(turn, request)
        if create.stream:
            return self._stream(turn, request)
        rendered: list[dict[str, Any]] = []

        def turn_records(outcome: TurnOutcome) -> list[ChannelRecord]:
            # Rendered once the target answered, so the stored response commits with the
            # turn's session instead of in a write of its own.
            rendered.append(self._finished_response(turn, outcome))
            return self._turn_records(turn, rendered[-1], outcome)

        answer = await self.host.run_or_continue(
            turn.request, protocol_request=request, records=turn_records
        )
        if isinstance(answer, ContinuationToken):
            # The run_hook sent the reply elsewhere: this wire answers with a background
            # response the caller can poll, as if it had asked for ``background``.
            response = dict(turn.request.attributes["response_object"])
            await self._record_background(turn, answer, response)
            return _json(response)
        if rendered:
            response = rendered[-1]
            await self._append_turn(turn, response)
        else:  # nothing was saved with the turn (stateless, a command): stored on its own
            response = self._finished_response(turn, answer)
            await self._save_turn(turn, response, answer)
        return _json(response)

    async def _body(self, request: Request) -> bytes:
        channel = self.channel
        return await read_json_body(
            request, channel.max_body_bytes, within=channel.body_timeout_seconds
        )

    async def _prepare(
        self,
        create: CreateRequest,
        caller: str,
        connection: HTTPConnection,
        *,
        id_shown_early: bool,
    ) -> _Turn:
        """The turn of ``create``; ``id_shown_early``: the response id is shown before the
        run ends (a stream's first event, a background answer, WebSocket mode)."""
        if self._target_takes_no_tools:
            _refuse_tools(create)
        response_id = new_id("resp")
        resolved = (
            await self._resolve_references(create.items, caller)
            if create.references
            else create.items
        )
        items = tuple(_with_id(item) for item in resolved)
        pending: Sequence[Mapping[str, Any]] = ()
        # Only a response id first shown in the reply names a session nobody else can reach
        # while the run goes on: that session is then written with the save.
        private = not id_shown_early
        if create.previous_response_id is not None:
            await self._check_previous(create.previous_response_id, caller)
            session = ChannelSession(
                key=create.previous_response_id,
                fork_key=response_id,
                caller_keyed=True,
                private_until_reply=private,
            )
        elif create.conversation_id is not None:
            conversation = await self.records.owned(
                records.CONVERSATION, create.conversation_id, caller
            )
            if conversation is None:
                raise codec.not_found("Conversation", create.conversation_id, "conversation")
            pending = conversation.value.get("pending", ())
            session = ChannelSession(key=create.conversation_id, caller_keyed=True)
        else:
            session = ChannelSession(
                fork_key=response_id, caller_keyed=True, private_until_reply=private
            )

        response = codec.base_response(
            create,
            response_id=response_id,
            created_at=int(self.host.now()),
            model=self.channel.model,
            status="queued" if create.background else "in_progress",
        )
        hints: dict[str, str] = {}
        if create.safety_identifier is not None:
            hints["safety_identifier"] = create.safety_identifier
        if create.user is not None:
            hints["user"] = create.user
        if self.channel.mints_callers:
            # Any new bearer key is a new caller: limits hold per source too.
            hints.update(source_attributes(connection))
        attributes: dict[str, Any] = {
            "response_id": response_id,
            "store": create.store,
            "input_items": [dict(item) for item in items],
            "model": create.model,
            "instructions": create.instructions,
            "extra_fields": dict(create.extra),
        }
        # Stored with a background run: the worker renders its events from the response,
        # and takes the conversation items it hands the target off the waiting list. A
        # foreground request carries them too: a run_hook that sends its reply elsewhere
        # turns it into a background run (answered queued, with ``background: true``).
        attributes["response_object"] = (
            response if create.background else {**response, "status": "queued", "background": True}
        )
        taken = [str(item["id"]) for item in pending]
        attributes["conversation_items_taken"] = taken
        channel_request = ChannelRequest(
            channel=self.channel.name,
            identity=ChannelIdentity(self.channel.name, caller, attributes=hints),
            input=codec.host_messages([*pending, *items] if pending else items),
            session=session,
            options=create.options,
            multitask=self.channel.multitask,
            background=create.background,
            stream=create.stream,
            metadata=create.metadata,
            attributes=attributes,
        )
        return _Turn(
            response_id=response_id,
            caller=caller,
            create=create,
            items=items,
            response=response,
            request=channel_request,
            pending_taken=tuple(taken),
        )

    async def _resolve_references(
        self, items: Sequence[Mapping[str, Any]], caller: str
    ) -> list[Mapping[str, Any]]:
        resolved = []
        for index, item in enumerate(items):
            if item.get("type") != "item_reference":
                resolved.append(item)
                continue
            found = await self._output_item(item["id"], caller)
            if found is None:
                raise codec.not_found("Item", item["id"], f"input[{index}].id")
            resolved.append(found)
        return resolved

    async def _output_item(self, item_id: str, caller: str) -> Mapping[str, Any] | None:
        """The caller's stored output item ``item_id``: from the record of the response its
        id names (``records.item_ids``), else from its own record (older responses)."""
        response_id = records.response_of_item(item_id)
        if response_id is not None:
            record = await self.records.owned(records.RESPONSE, response_id, caller)
            if record is not None and record.value.get("stored"):
                response = await self._current_response(record)
                for output in response.get("output", ()):
                    if output.get("id") == item_id:
                        return cast("Mapping[str, Any]", output)
        found = await self.records.owned(records.ITEM, item_id, caller)
        return found.value["item"] if found is not None else None

    async def _check_previous(self, previous_id: str, caller: str) -> None:
        record = await self.records.owned(records.RESPONSE, previous_id, caller)
        if record is None:
            raise codec.previous_response_not_found(previous_id)
        if record.value.get("conversation"):
            raise codec.bad_request(
                f"Response '{previous_id}' belongs to a conversation; continue it with "
                "'conversation' instead of 'previous_response_id'.",
                "previous_response_id",
            )
        if record.value.get("background"):
            current = await self._current_response(record)
            if current["status"] in ("queued", "in_progress"):
                raise codec.bad_request(
                    f"Response '{previous_id}' has not finished; continue from it once it has.",
                    "previous_response_id",
                    "previous_response_not_finished",
                )

    # --- foreground runs --------------------------------------------------------------

    def _finished_response(self, turn: _Turn, outcome: TurnOutcome) -> dict[str, Any]:
        now = int(self.host.now())
        if isinstance(outcome, TurnCompleted):
            return events.render_result(
                turn.response,
                outcome.result.result,
                new_id=records.item_ids(turn.response_id),
                completed_at=now,
                server_tool_calls=self.channel.server_tool_calls,
            )
        if isinstance(outcome, TurnRefused):
            raise _refusal_error(outcome, turn.create)
        machine = self._machine(turn.response)
        code, message = _failure(outcome)
        machine.fail(code=code, message=message, completed_at=now)
        return machine.response

    def _machine(self, response: Mapping[str, Any], **options: Any) -> events.ResponseEvents:
        return events.ResponseEvents(
            response,
            new_id=records.item_ids(response["id"]),
            server_tool_calls=self.channel.server_tool_calls,
            **options,
        )

    def _stream(self, turn: _Turn, request: Request) -> Response:
        machine = self._machine(turn.response)
        text_deltas = sse.TextDeltaFrames()

        async def produce(emit: Emit) -> Response | bytes:
            async def send(batch: list[dict[str, Any]]) -> None:
                if batch:
                    await emit(sse.frames(batch))

            async def send_text_delta(delta: tuple[int, str, int], text: str) -> None:
                await emit(text_deltas.frame(*delta, text))

            try:
                final = await self._run_streaming(
                    turn, machine, send, protocol_request=request, send_text_delta=send_text_delta
                )
            except ResponsesError as refused:
                # Nothing was sent yet: the refusal keeps its own status, no stream starts.
                return _error(refused)
            return sse.frames(final)  # sent with the end of the body

        return ProducerResponse(produce, headers=_request_id_header())

    async def _run_streaming(
        self,
        turn: _Turn,
        machine: events.ResponseEvents,
        send: Callable[[list[dict[str, Any]]], Awaitable[None]],
        *,
        protocol_request: Any,
        send_text_delta: Callable[[tuple[int, str, int], str], Awaitable[None]] | None = None,
    ) -> list[dict[str, Any]]:
        """Run a turn, sending its events as they come (SSE and WebSocket alike); the
        events left to send at the end (the terminal ones), for the caller to send.

        ``response.created`` goes out with the first update (or the end), once the host
        has accepted the turn: a refused turn raises its ``ResponsesError`` before any
        event, so no response is announced that will never exist. ``send_text_delta``,
        when given, sends the text that only continues the open message itself
        (:meth:`events.ResponseEvents.continue_text`), without an event dict.
        """
        opening = machine.started()

        async def send_opened(batch: list[dict[str, Any]]) -> None:
            nonlocal opening
            if opening:
                batch, opening = opening + batch, []
            await send(batch)

        async def on_update(update: StreamUpdate) -> None:
            if update.raw is not None:
                await send_opened(machine.feed(update.raw))
                return
            if send_text_delta is not None and not opening:
                delta = machine.continue_text(update.text)
                if delta is not None:
                    await send_text_delta(delta, update.text)
                    return
            await send_opened(machine.feed_text(update.text))

        finals: list[list[dict[str, Any]]] = []

        def turn_records(outcome: TurnOutcome) -> list[ChannelRecord]:
            # Finished once the target answered, so the stored response commits with the
            # turn's session instead of in a write of its own.
            assert not isinstance(outcome, TurnRefused)  # it ran: it was not refused
            finals.append(self._finish_events(machine, outcome))
            return self._turn_records(turn, machine.response, outcome)

        outcome = await self.host.run(
            turn.request,
            on_update=on_update,
            protocol_request=protocol_request,
            records=turn_records,
        )
        if isinstance(outcome, TurnRefused):
            raise _refusal_error(outcome, turn.create)
        # Stored before the terminal event, so a client that chains at once finds it.
        if finals:
            final = finals[-1]
            await self._append_turn(turn, machine.response)
        else:  # nothing was saved with the turn (stateless, a command): stored on its own
            final = self._finish_events(machine, outcome)
            await self._save_turn(turn, machine.response, outcome)
        return opening + final

    def _finish_events(
        self, machine: events.ResponseEvents, outcome: TurnCompleted | TurnFailed
    ) -> list[dict[str, Any]]:
        """The terminal events of a streamed response (``machine`` is then finished)."""
        now = int(self.host.now())
        if isinstance(outcome, TurnCompleted):
            machine.note_result(outcome.result.result)
            return machine.complete(completed_at=now)
        code, message = _failure(outcome)
        return machine.fail(code=code, message=message, completed_at=now)

    async def _save_turn(
        self, turn: _Turn, response: Mapping[str, Any], outcome: TurnOutcome
    ) -> None:
        """Store a finished foreground response (:meth:`_turn_records`, in one batch) and
        append it to its conversation."""
        await self.records.put(self._turn_records(turn, response, outcome))
        await self._append_turn(turn, response)

    def _turn_records(
        self, turn: _Turn, response: Mapping[str, Any], outcome: TurnOutcome
    ) -> list[ChannelRecord]:
        """The records of a finished foreground response, its input and output items.

        A command is stored redacted, its reply and its arguments: the reply was shown in
        the one answer, and a link code (issued in a reply, or sent as ``/link CODE`` and
        left usable when the link was refused) must not be readable later.
        """
        caller, rid = turn.caller, turn.response_id
        items: Sequence[Mapping[str, Any]] = turn.items
        if isinstance(outcome, TurnCompleted) and isinstance(outcome.result.result, CommandReply):
            response = _redacted(response)
            items = [_redacted_command(item, outcome.result.result.command) for item in items]
        value: dict[str, Any] = {
            "stored": turn.create.store,
            "background": False,
            "conversation": turn.create.conversation_id,
        }
        batch = []
        if turn.create.store:
            value["response"] = response
            value["input_items"] = list(items)
        batch.append(self.records.record(records.RESPONSE, rid, value, caller))
        return batch

    async def _append_turn(self, turn: _Turn, response: Mapping[str, Any]) -> None:
        if turn.create.conversation_id is not None and response.get("status") in (
            "completed",
            "incomplete",
        ):
            await self._append_to_conversation(
                turn.create.conversation_id,
                turn.caller,
                [*turn.items, *response["output"]],
                taken=turn.pending_taken,
            )

    # --- background runs --------------------------------------------------------------

    async def _start_background(self, turn: _Turn, request: Request) -> Response:
        answer = await self.host.run_in_background(turn.request, protocol_request=request)
        if isinstance(answer, TurnRefused):
            raise _refusal_error(answer, turn.create)
        await self._record_background(turn, answer, turn.response)
        if not turn.create.stream:
            return _json(turn.response)
        return self._follow(turn.response_id, turn.caller, starting_after=-1)

    async def _record_background(
        self, turn: _Turn, token: ContinuationToken, response: Mapping[str, Any]
    ) -> None:
        """Store a background response (its record, input items and opening events)."""
        rid, caller = turn.response_id, turn.caller
        machine = self._machine(response)
        opening = machine.created()  # response.created and response.queued: 0 and 1
        value = {
            "stored": True,
            "background": True,
            "response": response,
            "input_items": list(turn.items),
            "token": token.token,
            "conversation": turn.create.conversation_id,
        }
        batch = [self.records.record(records.RESPONSE, rid, value, caller)]
        batch += self.records.event_records(rid, opening, caller)
        await self.records.put(batch)
        self.log.wake(rid)

    def background_updates(self, record: RunRecord) -> UpdateSink | None:
        rid = record.request.attributes.get("response_id")
        response = record.request.attributes.get("response_object")
        if not isinstance(rid, str) or not isinstance(response, Mapping):
            return None  # a run_hook dropped what this channel needs: run without events
        run = BackgroundRun(
            response_id=rid,
            response=response,
            owner=record.request.identity.native_id,
            log=self.log,
            records=self.records,
            new_id=records.item_ids(rid),
            server_tool_calls=self.channel.server_tool_calls,
        )
        self._live[rid] = run
        return run.on_update

    async def background_finished(self, record: RunRecord) -> None:
        """Write the final events and response of a background run (once it is final)."""
        rid = record.request.attributes.get("response_id")
        response = record.request.attributes.get("response_object")
        if not isinstance(rid, str) or not isinstance(response, Mapping):
            return
        owner = record.request.identity.native_id
        run = self._live.pop(rid, None)
        if run is None:
            run = BackgroundRun(
                response_id=rid,
                response=response,
                owner=owner,
                log=self.log,
                records=self.records,
                new_id=records.item_ids(rid),
                server_tool_calls=self.channel.server_tool_calls,
            )
        async with run.lock:
            if run.closed:
                return
            run.closed = True
            final_events = await self._final_events(run, record)
            assert run.machine is not None
            final = run.machine.response
            batch = self.records.event_records(rid, final_events, owner)
            batch.append(self.records.record(records.RESULT, rid, {"response": final}, owner))
            await self.records.put(batch)
        self.log.wake(rid)
        conversation = (response.get("conversation") or {}).get("id")
        if conversation is not None and final["status"] in ("completed", "incomplete"):
            attributes = record.request.attributes
            await self._append_to_conversation(
                conversation,
                owner,
                [*attributes.get("input_items", []), *final["output"]],
                taken=tuple(attributes.get("conversation_items_taken", [])),
            )

    async def _final_events(self, run: BackgroundRun, record: RunRecord) -> list[dict[str, Any]]:
        had_machine = run.machine is not None
        machine, batch = await run.start()
        now = int(self.host.now())
        if record.status is RunStatus.COMPLETED:
            output = (record.result or {}).get("output")
            if not had_machine:
                # The target streamed nothing: render its stored result instead.
                batch += events.feed_result(machine, output)
            else:
                machine.note_result(output)
            return batch + machine.complete(completed_at=now)
        if record.status is RunStatus.FAILED:
            return batch + machine.fail(
                code="server_error", message=_FAILED_MESSAGE, completed_at=now
            )
        # Cancelled: OpenAI has no terminal event for it; the stream ends, GET says so.
        machine.stop("cancelled", completed_at=now)
        return batch if had_machine else []

    def _follow(self, rid: str, caller: str, *, starting_after: int) -> Response:
        async def produce(emit: Emit) -> None:
            async def send(batch: list[dict[str, Any]]) -> None:
                await emit(sse.frames(batch))

            async def settled() -> bool:
                return await self._settled(rid, caller)

            await self.log.follow(rid, starting_after, send, settled)

        return ProducerResponse(produce, headers=_request_id_header())

    async def _settled(self, rid: str, caller: str) -> bool:
        if await self.records.get(records.RESULT, rid) is not None:
            return True
        record = await self.records.owned(records.RESPONSE, rid, caller)
        if record is None:
            return True  # deleted meanwhile
        token = await self.host.get_continuation(record.value["token"])
        if token is None:
            return True
        return (
            token.status.is_final
            and token.completed_at is not None
            and self.host.now() - token.completed_at > _SETTLE_SECONDS
        )

    async def _current_response(self, record: Any) -> dict[str, Any]:
        """A stored response as it stands now (a background one from its run)."""
        value = record.value
        if not value.get("background"):
            return dict(value["response"])
        result = await self.records.get(records.RESULT, record.key)
        if result is not None:
            return dict(result.value["response"])
        base = dict(value["response"])
        token = await self.host.get_continuation(value["token"])
        return _from_token(base, token, int(self.host.now()), self.channel.server_tool_calls)

    # --- GET / cancel / delete / input items ------------------------------------------

    @_answering_errors
    async def retrieve(self, request: Request) -> Response:
        caller = await self.channel.caller(request)
        record = await self._owned_response(request, caller)
        stream = request.query_params.get("stream", "false").lower() == "true"
        if not stream:
            return _json(await self._current_response(record))
        if not record.value.get("background"):
            raise codec.bad_request(
                "Only background responses can be streamed again; this one was not "
                "created with 'background': true.",
                "stream",
            )
        raw = request.query_params.get("starting_after")
        starting_after = -1
        if raw is not None:
            try:
                starting_after = int(raw)
            except ValueError:
                raise codec.bad_request(
                    "'starting_after' must be an integer sequence number.", "starting_after"
                ) from None
        return self._follow(record.key, caller, starting_after=starting_after)

    @_answering_errors
    async def cancel(self, request: Request) -> Response:
        caller = await self.channel.caller(request)
        record = await self._owned_response(request, caller)
        if not record.value.get("background"):
            raise codec.bad_request("Only background responses can be cancelled.", "response_id")
        owner = ChannelIdentity(self.channel.name, caller)
        await cancel_owned_continuation(self.host, record.value["token"], owner)
        return _json(await self._current_response(record))

    @_answering_errors
    async def delete(self, request: Request) -> Response:
        caller = await self.channel.caller(request)
        rid = request.path_params["response_id"]
        record = await self.records.owned(records.RESPONSE, rid, caller)
        if record is None:
            raise codec.not_found("Response", rid, "response_id")
        output: list[Any] = []
        if record.value.get("stored"):
            current = await self._current_response(record)
            if current["status"] in ("queued", "in_progress"):
                await self.host.cancel_continuation(record.value["token"])
                current = await self._current_response(record)
            output = current.get("output", [])
        for item in output:
            if records.response_of_item(item["id"]) != rid:  # its own record (an older response)
                await self.records.delete(records.ITEM, item["id"])
        for kind in (records.INPUT_ITEM, records.EVENT):  # (input items: older responses)
            await self.records.delete(kind, f"{rid}:")
        await self.records.delete(records.RESULT, rid)
        await self.records.delete(records.RESPONSE, rid)
        return _json(codec.deleted(rid, "response"))

    @_answering_errors
    async def input_items(self, request: Request) -> Response:
        caller = await self.channel.caller(request)
        record = await self._owned_response(request, caller)
        query = codec.parse_list_query(request.query_params)
        items = record.value.get("input_items")
        if items is None:  # stored before a response's record held its input items
            items = await self.records.all_values(records.INPUT_ITEM, f"{record.key}:", "item")
        page, has_more = codec.page_of(items, query)
        return _json(codec.list_page(page, has_more=has_more))

    async def _owned_response(self, request: Request, caller: str) -> Any:
        rid = request.path_params["response_id"]
        record = await self.records.owned(records.RESPONSE, rid, caller)
        if record is None or not record.value.get("stored"):
            raise codec.not_found("Response", rid, "response_id")
        return record

    # --- WebSocket mode ---------------------------------------------------------------

    async def websocket(self, websocket: WebSocket) -> None:
        try:
            caller = await self.channel.caller(websocket)
        except ResponsesError as error:
            await _deny(websocket, error)
            return
        await websocket.accept()
        sending = anyio.Lock()
        busy = False

        async def send(batch: list[dict[str, Any]]) -> None:
            async with sending:
                for event in batch:
                    await websocket.send_text(_encode_event(event))

        async def respond(data: Mapping[str, Any], tasks: anyio.abc.TaskGroup) -> None:
            nonlocal busy
            try:
                await self._websocket_response(data, caller, send, websocket)
            except ResponsesError as error:
                await send([_websocket_error(error)])
            except (WebSocketDisconnect, OSError, RuntimeError):
                tasks.cancel_scope.cancel()  # the client is gone: so is its response
            except Exception:
                log.exception("websocket response failed")
                await send([_websocket_error(_internal_error())])
            finally:
                busy = False

        async with anyio.create_task_group() as tasks:
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    try:
                        data = _websocket_message(message)
                    except ResponsesError as error:
                        await send([_websocket_error(error)])
                        continue
                    if busy:  # one response at a time per connection
                        await send([_websocket_error(_busy_error())])
                        continue
                    busy = True
                    tasks.start_soon(respond, data, tasks)
            except (WebSocketDisconnect, OSError, RuntimeError):
                pass  # the client went away while we answered it
            finally:
                # The client left (or the server is stopping): stop its response too.
                tasks.cancel_scope.cancel()

    async def _websocket_response(
        self,
        data: Mapping[str, Any],
        caller: str,
        send: Callable[[list[dict[str, Any]]], Awaitable[None]],
        websocket: WebSocket,
    ) -> None:
        fields = {key: value for key, value in data.items() if key not in ("type", "stream_id")}
        create = codec.parse_create(fields, websocket=True)
        turn = await self._prepare(create, caller, websocket, id_shown_early=True)
        stream_id = data.get("stream_id")
        machine = self._machine(
            turn.response, stream_id=stream_id if isinstance(stream_id, str) else None
        )
        await send(await self._run_streaming(turn, machine, send, protocol_request=websocket))

    # --- conversations ----------------------------------------------------------------

    @_answering_errors
    async def create_conversation(self, request: Request) -> Response:
        caller = await self.channel.caller(request)
        raw = await self._body(request)
        parsed = codec.parse_conversation_create(codec.parse_json(raw) if raw.strip() else None)
        cid = new_id("conv")
        created_at = int(self.host.now())
        conversation = codec.conversation_object(
            cid, created_at=created_at, metadata=parsed.metadata
        )
        items = [_with_fresh_id(item) for item in parsed.items]
        value = {"conversation": conversation, "next": len(items), "pending": items}
        batch = [self.records.record(records.CONVERSATION, cid, value, caller, expires=False)]
        batch += self._conversation_item_records(cid, caller, items, first=0)
        await self.records.put(batch)
        return _json(conversation)

    @_answering_errors
    async def conversation(self, request: Request) -> Response:
        caller = await self.channel.caller(request)
        record = await self._owned_conversation(request, caller)
        cid = record.key
        if request.method == "GET":
            return _json(record.value["conversation"])
        if request.method == "DELETE":
            # The conversation first: an append (a store-level change of it) then either
            # ended before, and its items go below, or finds it gone and adds none.
            await self.records.delete(records.CONVERSATION, cid)
            for kind in (records.CONVERSATION_ITEM, records.CONVERSATION_ITEM_REF):
                await self.records.delete(kind, f"{cid}:")
            return _json(codec.deleted(cid, "conversation.deleted"))
        raw = await self._body(request)
        data = codec.parse_json(raw)
        if not isinstance(data, dict):
            raise codec.bad_request("The request body must be a JSON object.")
        metadata = codec.parse_metadata(data.get("metadata"))

        def with_metadata(record: ChannelRecord) -> list[ChannelRecord]:
            conversation = {**record.value["conversation"], "metadata": metadata}
            value = {**record.value, "conversation": conversation}
            return [self.records.record(records.CONVERSATION, cid, value, caller, expires=False)]

        changed = await self.records.change(records.CONVERSATION, cid, caller, with_metadata)
        if not changed:
            raise codec.not_found("Conversation", cid, "conversation_id")  # deleted meanwhile
        return _json(changed[0].value["conversation"])

    @_answering_errors
    async def conversation_items(self, request: Request) -> Response:
        caller = await self.channel.caller(request)
        record = await self._owned_conversation(request, caller)
        cid = record.key
        if request.method == "POST":
            raw = await self._body(request)
            data = codec.parse_json(raw)
            if not isinstance(data, dict):
                raise codec.bad_request("The request body must be a JSON object.")
            items = [_with_fresh_id(i) for i in codec.parse_conversation_items(data.get("items"))]
            await self._append_to_conversation(cid, caller, items, pending=True)
            return _json(codec.list_page(items, has_more=False))
        query = codec.parse_list_query(request.query_params)
        after = None
        if query.after is not None:
            ref = await self.records.get(records.CONVERSATION_ITEM_REF, f"{cid}:{query.after}")
            if ref is None:
                raise codec.not_found("Item", query.after, "after")
            after = records.conversation_item_key(cid, ref.value["number"])
        page = await self.records.list_records(
            records.CONVERSATION_ITEM,
            f"{cid}:",
            after=after,
            limit=query.limit + 1,
            descending=query.descending,
        )
        items = [record.value["item"] for record in page[: query.limit]]
        return _json(codec.list_page(items, has_more=len(page) > query.limit))

    @_answering_errors
    async def conversation_item(self, request: Request) -> Response:
        caller = await self.channel.caller(request)
        record = await self._owned_conversation(request, caller)
        item_id = request.path_params["item_id"]
        ref = await self.records.get(records.CONVERSATION_ITEM_REF, f"{record.key}:{item_id}")
        item = None
        if ref is not None:
            item = await self.records.get(
                records.CONVERSATION_ITEM,
                records.conversation_item_key(record.key, ref.value["number"]),
            )
        if item is None:
            raise codec.not_found("Item", item_id, "item_id")
        return _json(item.value["item"])

    async def _owned_conversation(self, request: Request, caller: str) -> Any:
        cid = request.path_params["conversation_id"]
        record = await self.records.owned(records.CONVERSATION, cid, caller)
        if record is None:
            raise codec.not_found("Conversation", cid, "conversation_id")
        return record

    async def _append_to_conversation(
        self,
        cid: str,
        caller: str,
        items: Sequence[Mapping[str, Any]],
        *,
        taken: Sequence[str] = (),
        pending: bool = False,
    ) -> None:
        """Append items (a turn's, or ones added by the API: ``pending`` for the target).

        One store-level change of the conversation (its item counter read and moved in the
        transaction that writes the items): appends through any replica never interleave.
        A conversation deleted meanwhile gets nothing.
        """

        def appended(record: ChannelRecord) -> list[ChannelRecord]:
            first = int(record.value["next"])
            waiting = [item for item in record.value.get("pending", []) if item["id"] not in taken]
            if pending:
                waiting += items
            value = {**record.value, "next": first + len(items), "pending": waiting}
            batch = [self.records.record(records.CONVERSATION, cid, value, caller, expires=False)]
            batch += self._conversation_item_records(cid, caller, items, first=first)
            return batch

        await self.records.change(records.CONVERSATION, cid, caller, appended)

    def _conversation_item_records(
        self, cid: str, caller: str, items: Sequence[Mapping[str, Any]], *, first: int
    ) -> list[Any]:
        batch = []
        for number, item in enumerate(items, start=first):
            key = records.conversation_item_key(cid, number)
            batch.append(
                self.records.record(
                    records.CONVERSATION_ITEM, key, {"item": item}, caller, expires=False
                )
            )
            batch.append(
                self.records.record(
                    records.CONVERSATION_ITEM_REF,
                    f"{cid}:{item['id']}",
                    {"number": number},
                    caller,
                    expires=False,
                )
            )
        return batch


# --- helpers of this module -------------------------------------------------------------


_REDACTED = "(The reply to this command was shown once and is not kept.)"


def _redacted(response: Mapping[str, Any]) -> dict[str, Any]:
    """``response`` with every output text replaced (item ids and shape unchanged)."""

    def part(content: Mapping[str, Any]) -> dict[str, Any]:
        if content.get("type") == "output_text":
            return {**content, "text": _REDACTED, "annotations": []}
        return dict(content)

    output = [
        {**item, "content": [part(c) for c in item.get("content", [])]}
        if item.get("type") == "message"
        else dict(item)
        for item in response.get("output", [])
    ]
    return {**response, "output": output}


def _redacted_command(item: Mapping[str, Any], command: str) -> Mapping[str, Any]:
    """A command's input item with only the command's name kept (``/link``)."""
    if item.get("type") != "message":
        return item
    parts = [
        {**part, "text": f"/{command}"} if part.get("type") == "input_text" else part
        for part in item.get("content", [])
    ]
    return {**item, "content": parts}


def _with_id(item: Mapping[str, Any]) -> Mapping[str, Any]:
    if item.get("id"):
        return item
    return {"id": new_id(codec.item_id_prefix(item)), **item}


def _with_fresh_id(item: Mapping[str, Any]) -> dict[str, Any]:
    return {**item, "id": new_id(codec.item_id_prefix(item))}


def _from_token(
    base: dict[str, Any],
    token: ContinuationToken | None,
    now: int,
    server_tool_calls: events.ServerToolCalls,
) -> dict[str, Any]:
    """A background response from its run, before (or without) its result record."""
    if token is None:
        return {
            **base,
            "status": "failed",
            "error": codec.failed_error("expired", "This response's run is no longer kept."),
        }
    if token.status is RunStatus.QUEUED:
        return {**base, "status": "queued"}
    if token.status is RunStatus.RUNNING:
        return {**base, "status": "in_progress"}
    completed_at = int(token.completed_at) if token.completed_at is not None else now
    if token.status is RunStatus.COMPLETED:
        output = (token.result or {}).get("output")
        return events.render_result(
            base,
            output,
            new_id=records.item_ids(base["id"]),
            completed_at=completed_at,
            server_tool_calls=server_tool_calls,
        )
    if token.status is RunStatus.CANCELLED:
        return {**base, "status": "cancelled", "completed_at": completed_at}
    return {
        **base,
        "status": "failed",
        "completed_at": completed_at,
        "error": codec.failed_error("server_error", _FAILED_MESSAGE),
    }


def _refuse_tools(create: CreateRequest) -> None:
    """A target that cannot call tools cannot honour ``tools`` nor a required tool call."""
    if create.options.get("tools"):
        raise codec.bad_request(
            "This agent cannot call tools, so it cannot use the function tools in 'tools'; "
            "send the request without them.",
            "tools",
            "tools_not_supported",
        )
    choice = create.options.get("tool_choice")
    if choice == "required" or isinstance(choice, Mapping):
        raise codec.bad_request(
            "This agent cannot call tools, so 'tool_choice' cannot require one; use 'auto' "
            "or 'none'.",
            "tool_choice",
            "tools_not_supported",
        )


def _failure(outcome: TurnFailed) -> tuple[str, str]:
    if outcome.cancelled:
        return "interrupted", "The run was interrupted before it finished."
    return "server_error", _FAILED_MESSAGE


def _refusal_error(outcome: TurnRefused, create: CreateRequest) -> ResponsesError:
    if outcome.reason is RefusalReason.SESSION_NOT_FOUND:
        if create.previous_response_id is not None:
            return codec.previous_response_not_found(create.previous_response_id)
        if create.conversation_id is not None:
            return codec.not_found("Conversation", create.conversation_id, "conversation")
        return ResponsesError(404, "No session matches this request.", code="not_found")
    if outcome.reason is RefusalReason.SESSION_BUSY:
        return ResponsesError(
            409,
            "Another response is running in this conversation; try again when it has finished.",
            code="conversation_busy",
        )
    # Denied, must link first, ...: the host's message (bland for a denial) or this
    # channel's, and nothing else.
    code, message = _FORBIDDEN[outcome.reason]
    return ResponsesError(403, outcome.user_message or message, type="permission_error", code=code)


_FORBIDDEN: dict[RefusalReason, tuple[str, str]] = {
    RefusalReason.IDENTITY_REFUSED: ("forbidden", "This caller may not use this agent."),
    RefusalReason.DENIED: ("forbidden", "This caller may not use this agent."),
    RefusalReason.LINK_REQUIRED: ("link_required", "Link this account first: send /link."),
    RefusalReason.TARGET_NOT_ALLOWED: (
        "target_not_allowed",
        "This caller may not choose where the reply is delivered.",
    ),
    # Answered above with their own status; here so that every reason has an entry.
    RefusalReason.SESSION_NOT_FOUND: ("not_found", "No session matches this request."),
    RefusalReason.SESSION_BUSY: ("conversation_busy", "The conversation is busy."),
}


def _request_id_header() -> dict[str, str]:
    return {"x-request-id": _request_id()}


def _json(body: Mapping[str, Any], status: int = 200) -> Response:
    return JsonAnswer(body, status, [(b"x-request-id", _request_id().encode())])


def _error(error: ResponsesError) -> Response:
    if error.status >= 500:
        log.warning("responses request failed", extra={"status": error.status, "code": error.code})
    return _json(error.body(), error.status)


def _busy_error() -> ResponsesError:
    return ResponsesError(
        409,
        "A response is in progress on this connection; send the next one when it has finished.",
        code="response_in_progress",
    )


def _websocket_error(error: ResponsesError) -> dict[str, Any]:
    return {"type": "error", "status": error.status, **error.body()}


def _websocket_message(message: Mapping[str, Any]) -> Mapping[str, Any]:
    raw = message.get("text")
    data = codec.parse_json(raw if raw is not None else message.get("bytes") or b"")
    if not isinstance(data, dict) or data.get("type") != "response.create":
        raise codec.bad_request(
            "This connection takes 'response.create' messages only.", "type", "unsupported_event"
        )
    return data


async def _deny(websocket: WebSocket, error: ResponsesError) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(_json(error.body(), error.status))
    else:
        await websocket.close(code=1008, reason=error.message[:120])
