"""The Invocations routes: ``POST {mount}/invoke`` (and ``POST {mount}``, the Foundry
contract's path), ``GET {mount}/{token}`` and ``POST {mount}/{token}/cancel``.

This module reads bodies (bounded), asks the codec to translate, hands requests to the
host and writes what the codec renders. It decides nothing about sessions or runs.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agenthost.backends.answers import AsgiRoute, JsonAnswer, raw_headers, request_header
from agenthost.backends.bodies import BODY_SECONDS, BodyRefused, ClientGone, read_json_body
from agenthost.backends.channel import (
    INHERIT,
    Channel,
    HostServices,
    Inherit,
    cancel_owned_continuation,
    host_command_of,
    owned_continuation,
    source_attributes,
)
from agenthost.backends.streaming import Emit, ProducerResponse
from agenthost.backends.targets import StreamUpdate
from agenthost.channels.invocations import codec
from agenthost.sansio_core.authorization import Allowlist
from agenthost.sansio_core.link_policy import DEFAULT_TIER
from agenthost.sansio_core.turns import (
    RefusalReason,
    TurnCompleted,
    TurnFailed,
    TurnOutcome,
    TurnRefused,
    runs_in_background,
)
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ContinuationToken,
    MultitaskStrategy,
)

log = logging.getLogger("agenthost.channels.invocations")

CallerAuthenticator = Callable[[Request], "str | Awaitable[str | None] | None"]

_REFUSALS: dict[RefusalReason, tuple[int, str, str]] = {
    RefusalReason.IDENTITY_REFUSED: (403, "forbidden", "This caller may not use this agent."),
    RefusalReason.SESSION_NOT_FOUND: (
        409,
        "session_not_found",
        "No session matches 'session_id', and 'session_mode' is 'required'.",
    ),
    RefusalReason.SESSION_BUSY: (
        409,
        "session_busy",
        "The session is busy with another run; try again when it has finished.",
    ),
    # The message of these two comes from the host's decision (bland for a denial).
    RefusalReason.DENIED: (403, "forbidden", "This caller may not use this agent."),
    RefusalReason.LINK_REQUIRED: (403, "link_required", "Link this account first: send /link."),
    RefusalReason.TARGET_NOT_ALLOWED: (
        403,
        "target_not_allowed",
        "This caller may not choose 'response_target'; the host's policy does not trust it.",
    ),
}

SessionKeys = Literal["caller", "host"]

_ANONYMOUS_CALLER = codec.PlatformCaller(user_id=codec.ANONYMOUS, conversation_id=None)


class InvocationsChannel(Channel):
    """The Foundry-style Invocations API.

    ``trust_platform_headers``: take the caller from Foundry's ``x-agent-user-id`` /
    ``x-agent-user-isolation-key`` headers. Only set it where the platform sets them (a
    Foundry hosted agent); anywhere else a caller could claim to be anyone.
    ``authenticate``: a function of the Starlette request answering the caller's id, or
    ``None`` to refuse with 401 (used instead of platform headers when given).
    Without either, every caller is the same anonymous user and ``session_id`` values
    are the only thing keeping conversations apart; such a channel does not authenticate
    its callers, so ``Host(...)`` refuses linking, an allowlist or ``require_link`` on it
    unless ``allow_unauthenticated_access_control=True`` says the application knows that
    one admitted caller admits them all.

    A run's poll and cancel routes answer only the caller that started it (the same
    caller id); anyone else gets 404, as for an unknown token.

    ``typed_input``: accept a JSON object that is not a message as ``input`` (a typed
    input for a workflow, which a ``run_hook`` adapts). Off by default: an agent or a
    function target cannot take one, so it is refused with 422 before anything runs.
    ``body_timeout_seconds`` bounds how long a request body may take to arrive (408).

    ``session_keys``: ``"caller"`` (the default) keys sessions on the caller's
    ``session_id``, and a request without one starts a new session (its id comes back in
    the answer). ``"host"`` makes the host track the conversation: a request without
    ``session_id`` continues the caller's one direct conversation, which is the one the
    caller's linked identities on other channels share; a ``session_id`` still names a
    session of its own.

    ``require_link``, ``allowlist``, ``confidentiality_tier`` and ``offers_link_commands``
    are the channel's access and linking settings (see ``agenthost.backends.channel``). A
    denied caller is answered 403 ``forbidden``, one that must link first 403
    ``link_required``; a host command (``/link`` ...) is answered 200 with the reply as
    ``output``.
    """

    def __init__(
        self,
        *,
        name: str = "invocations",
        mount: str = "/invocations",
        trust_platform_headers: bool = False,
        authenticate: CallerAuthenticator | None = None,
        max_body_bytes: int = 1024 * 1024,
        multitask: MultitaskStrategy | None = None,
        session_keys: SessionKeys = "caller",
        require_link: bool | Inherit = INHERIT,
        allowlist: Allowlist | Inherit | None = INHERIT,
        confidentiality_tier: str = DEFAULT_TIER,
        offers_link_commands: bool = True,
        allow_unauthenticated_access_control: bool = False,
        typed_input: bool = False,
        body_timeout_seconds: float = BODY_SECONDS,
    ) -> None:
        if not mount.startswith("/") or mount.endswith("/"):
            raise ValueError(f"mount must start with '/' and not end with one, not {mount!r}")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        if not body_timeout_seconds > 0:
            raise ValueError("body_timeout_seconds must be greater than 0")
        if session_keys not in ("caller", "host"):
            raise ValueError(f"session_keys must be 'caller' or 'host', not {session_keys!r}")
        self.session_keys = session_keys
        self.require_link = require_link
        self.allowlist = allowlist
        self.confidentiality_tier = confidentiality_tier
        self.offers_link_commands = offers_link_commands
        self.name = name
        self.mount = mount
        self.trust_platform_headers = trust_platform_headers
        self._authenticate = authenticate
        self.max_body_bytes = max_body_bytes
        self._multitask = multitask
        self.authenticates_callers = authenticate is not None or trust_platform_headers
        self.allow_unauthenticated_access_control = allow_unauthenticated_access_control
        self.typed_input = typed_input
        self.body_timeout_seconds = body_timeout_seconds

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        handlers = _Handlers(self, host)
        # The hot route is a plain ASGI app: no per-request endpoint wrapping.
        invoke = AsgiRoute(handlers.invoke)
        return [
            Route(f"{self.mount}/invoke", invoke, methods=["POST"]),
            Route(self.mount, invoke, methods=["POST"]),
            Route(f"{self.mount}/{{token}}", handlers.poll, methods=["GET"]),
            Route(f"{self.mount}/{{token}}/cancel", handlers.cancel, methods=["POST"]),
        ]


class _Handlers:
    def __init__(self, channel: InvocationsChannel, host: HostServices) -> None:
        self._channel = channel
        self._host = host

    async def invoke(self, request: Request) -> Response:
        invocation = codec.invocation_id(
            request_header(request, b"x-agent-invocation-id")
        ) or secrets.token_hex(16)
        headers = {"x-agent-invocation-id": invocation}
        channel = self._channel
        try:
            caller = await self._caller(request)
            raw = await read_json_body(
                request, channel.max_body_bytes, within=channel.body_timeout_seconds
            )
            body = codec.parse_body(raw, typed_input=channel.typed_input)
        except codec.InvocationError as error:
            return _error(error.status, error.code, error.message, headers)
        except BodyRefused as refused:
            code = "body_too_large" if refused.status == 413 else refused.code
            return refused.response(codec.error_body(code, refused.message), headers=headers)
        except ClientGone:
            log.debug("invocation abandoned: the client left before its body arrived")
            return Response(status_code=400)

        # The codec checked a body's session id; one in the query string is checked here.
        session_id = body.session_id
        if session_id is None and request.scope.get("query_string"):
            session_id = request.query_params.get("agent_session_id")
            if session_id is not None and codec.invocation_id(session_id) is None:
                return _error(
                    422, "invalid_session_id", "'agent_session_id' is malformed.", headers
                )
        caller_keyed = self._channel.session_keys == "caller"
        channel_request = ChannelRequest(
            channel=self._channel.name,
            identity=ChannelIdentity(
                self._channel.name,
                caller.user_id,
                # Unauthenticated callers are all one identity: limits hold per source too.
                attributes={} if channel.authenticates_callers else source_attributes(request),
            ),
            input=body.input,
            session=ChannelSession(
                key=session_id,
                conversation_id=caller.conversation_id,
                caller_keyed=caller_keyed,
                # A new session's id is first shown with the reply (a stream's ``done``
                # event, sent after the save), unless a background answer shows it first.
                private_until_reply=caller_keyed and session_id is None and not body.background,
            ),
            session_mode=body.session_mode,
            multitask=self._channel._multitask,
            background=body.background,
            stream=body.stream,
            response_target=body.response_target,
            attributes={"invocation_id": invocation},
        )
        if channel_request.background and host_command_of(self._host, channel_request):
            # A command is answered at once, here: its reply (a link code) is then shown
            # in this one answer and never stored as a pollable background result.
            channel_request = attrs.evolve(channel_request, background=False)
        if runs_in_background(channel_request):
            return await self._start_background(channel_request, request, headers)
        if body.stream:
            return self._stream(channel_request, request, invocation, headers)
        # When the run hook sends the reply elsewhere, the run continues in the background
        # and this wire answers 202 with the poll URL, like a background request.
        outcome = await self._host.run_or_continue(channel_request, protocol_request=request)
        if isinstance(outcome, ContinuationToken):
            return self._accepted(outcome, headers)
        return _render_outcome(outcome, invocation, headers)

    async def poll(self, request: Request) -> Response:
        return await self._owned(request, owned_continuation)

    async def cancel(self, request: Request) -> Response:
        return await self._owned(request, cancel_owned_continuation)

    async def _owned(
        self,
        request: Request,
        action: Callable[[HostServices, str, ChannelIdentity], Awaitable[ContinuationToken | None]],
    ) -> Response:
        """Poll or cancel a run for the caller that started it; 404 to anyone else."""
        try:
            caller = await self._caller(request)
        except codec.InvocationError as error:
            return _error(error.status, error.code, error.message)
        identity = ChannelIdentity(self._channel.name, caller.user_id)
        token = await action(self._host, request.path_params["token"], identity)
        if token is None:
            return _error(404, "not_found", "No invocation has that token (or it expired).")
        return JSONResponse(codec.token_body(token, poll_url=self._poll_url(token.token)))

    async def _caller(self, request: Request) -> codec.PlatformCaller:
        authenticate = self._channel._authenticate
        if authenticate is not None:
            user = authenticate(request)
            if inspect.isawaitable(user):
                user = await user
            if user is None:
                raise codec.InvocationError(
                    401, "unauthenticated", "The caller is not authenticated."
                )
            return codec.PlatformCaller(user_id=user, conversation_id=None)
        if self._channel.trust_platform_headers:
            caller = codec.platform_caller(request.headers)
            if caller is None:
                raise codec.InvocationError(
                    401, "unauthenticated", "The platform did not name the calling user."
                )
            return caller
        return _ANONYMOUS_CALLER

    async def _start_background(
        self, channel_request: ChannelRequest, request: Request, headers: dict[str, str]
    ) -> Response:
        answer = await self._host.run_in_background(channel_request, protocol_request=request)
        if isinstance(answer, TurnRefused):
            return _refusal(answer, headers)
        return self._accepted(answer, headers)

    def _accepted(self, token: ContinuationToken, headers: dict[str, str]) -> Response:
        poll_url = self._poll_url(token.token)
        return JSONResponse(
            codec.token_body(token, poll_url=poll_url),
            status_code=202,
            headers={**headers, "location": poll_url},
        )

    def _stream(
        self,
        channel_request: ChannelRequest,
        request: Request,
        invocation: str,
        headers: dict[str, str],
    ) -> Response:
        async def produce(emit: Emit) -> Response | None:
            async def on_update(update: StreamUpdate) -> None:
                if update.text:
                    await emit(codec.sse_event("delta", {"text": update.text}))

            outcome = await self._host.run(
                channel_request, on_update=on_update, protocol_request=request
            )
            if isinstance(outcome, TurnCompleted):
                body = codec.completed_body(
                    text=outcome.result.text,
                    session_id=outcome.result.session.key,
                    invocation=invocation,
                    result=outcome.result.result,
                )
                await emit(codec.sse_event("done", body))
            elif isinstance(outcome, TurnRefused):
                # Refused before anything streamed: answered with its status, no stream.
                return _refusal(outcome, headers)
            else:
                _, code, message = _failure_parts(outcome)
                await emit(codec.sse_event("error", codec.error_body(code, message)))
            return None

        return ProducerResponse(produce, headers=headers)

    def _poll_url(self, token: str) -> str:
        return f"{self._channel.mount}/{token}"


def _render_outcome(outcome: TurnOutcome, invocation: str, headers: dict[str, str]) -> Response:
    if isinstance(outcome, TurnCompleted):
        session = outcome.result.session.key
        answered = [(b"x-agent-invocation-id", invocation.encode("latin-1"))]
        if session is not None:
            answered.append((b"x-agent-session-id", session.encode("latin-1")))
        return JsonAnswer(
            codec.completed_body(
                text=outcome.result.text,
                session_id=session,
                invocation=invocation,
                result=outcome.result.result,
            ),
            headers=answered,
        )
    status, code, message = _failure_parts(outcome)
    return _error(status, code, message, headers)


def _failure_parts(outcome: TurnFailed | TurnRefused) -> tuple[int, str, str]:
    if isinstance(outcome, TurnRefused):
        return _refusal_parts(outcome)
    if outcome.cancelled:
        return 409, "run_interrupted", "The run was interrupted before it finished."
    return 500, "run_failed", "The agent could not answer this request."


def _refusal_parts(outcome: TurnRefused) -> tuple[int, str, str]:
    status, code, message = _REFUSALS[outcome.reason]
    return status, code, outcome.user_message or message


def _refusal(outcome: TurnRefused, headers: dict[str, str]) -> Response:
    status, code, message = _refusal_parts(outcome)
    return _error(status, code, message, headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JsonAnswer(
        codec.error_body(code, message), status, raw_headers(headers.items()) if headers else ()
    )
