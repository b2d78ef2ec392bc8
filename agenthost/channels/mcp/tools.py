"""The MCP channel's tool handlers: ``tools/list`` and ``tools/call`` against the host.

A call of the target's tool becomes a ``ChannelRequest`` from the authenticated caller (the
guard in ``transport.py`` put it on the request); streamed updates go out as
``notifications/progress`` when the call carried a ``progressToken`` (the SDK sends nothing
otherwise); a client's cancel (``notifications/cancelled``, or a closed stream in the
stateless generation) cancels the handler and with it the run. A run that fails, is
refused or is cancelled is a tool result with ``isError: true`` and a bland message.

Conversations: an explicit ``conversation`` names a caller-keyed session (the host
namespaces it by channel and binds it to the caller, so one caller can never reach
another's); without one, the MCP session's own key, the caller's direct conversation, or
a new conversation (see ``MCPChannel.conversations``). Background runs are owned by the
caller that started them: a record here says whose each run is, and any other caller
asking about it is told there is no such run.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from starlette.requests import Request

from agenthost.backends.targets import StreamUpdate
from agenthost.channels.mcp import codec
from agenthost.sansio_core.turns import TurnRefused
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ContinuationToken,
    HostMessage,
)
from agenthost.stores.base import ChannelRecord

if TYPE_CHECKING:
    from agenthost.backends.channel import HostServices
    from agenthost.channels.mcp.transport import MCPChannel

#: Where the guard leaves the authenticated caller id in the ASGI scope.
CALLER_SCOPE_KEY = "agenthost.mcp.caller"
RUN_RECORD = "run"
_SESSION_HEADER = "mcp-session-id"

Context = ServerRequestContext[Any, Any]


class ToolService:
    """The tools of one channel on one running host."""

    def __init__(self, channel: MCPChannel, host: HostServices, commands: Collection[str]) -> None:
        self._channel = channel
        self._host = host
        self._settings = channel.tool_settings
        # Built once: tools/list is answered from this list on every call.
        self._tools = codec.catalog(self._settings, commands)
        self._names = frozenset(tool.name for tool in self._tools)
        self._schemas = {tool.name: tool.input_schema for tool in self._tools}

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        return self._schemas.get(name)

    async def list_tools(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._tools)

    async def call_tool(
        self, ctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = _caller(ctx)
        if caller is None:  # the guard authenticates every request; this is a safety net
            return codec.tool_error("The request is not authenticated.")
        try:
            call = codec.parse_call(
                params.name, params.arguments, settings=self._settings, tools=self._names
            )
        except codec.ToolInputError as bad:
            return codec.tool_error(str(bad))
        if call is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {params.name[:64]}")
        if isinstance(call, codec.RunQuery):
            return await self._run_query(call, caller)
        if isinstance(call, codec.Command):
            request = self._request(ctx, caller, call.text, call.conversation, command=True)
            return codec.render_outcome(await self._host.run(request, protocol_request=ctx.request))
        request = self._request(ctx, caller, call.message, call.conversation, call.background)
        if call.background:
            started = await self._host.run_in_background(request, protocol_request=ctx.request)
            if isinstance(started, TurnRefused):
                return codec.render_outcome(started)
            return await self._accepted(started, caller, request)
        progress = _Progress(ctx)
        outcome = await self._host.run_or_continue(
            request, on_update=progress, protocol_request=ctx.request
        )
        if isinstance(outcome, ContinuationToken):
            # The run hook sent the reply elsewhere: answer like a background call.
            return await self._accepted(outcome, caller, request)
        return codec.render_outcome(outcome)

    def _request(
        self,
        ctx: Context,
        caller: str,
        text: str,
        conversation: str | None,
        background: bool = False,
        *,
        command: bool = False,
    ) -> ChannelRequest:
        name = self._channel.name
        return ChannelRequest(
            channel=name,
            identity=ChannelIdentity(name, caller),
            input=(HostMessage.user(text),),
            session=codec.session_for(
                conversation,
                # The manager only lets this caller's own, live MCP session id through.
                mcp_session=_mcp_session_id(ctx),
                direct=self._channel.conversations == "direct",
                # A command starts nothing: "/new" without a conversation resets none.
                fresh=None if command else f"new-{secrets.token_hex(12)}",
                answered_at_end=not background,
            ),
            multitask=self._channel.multitask,
            background=background,
            stream=not background,
            attributes={"mcp_protocol_version": ctx.protocol_version},
        )

    async def _accepted(
        self, token: ContinuationToken, caller: str, request: ChannelRequest
    ) -> types.CallToolResult:
        now = self._host.now()
        # Owned by the caller id (this channel's native id): check_run and cancel_run
        # answer only that caller, whatever links it makes later.
        await self._host.store.put_channel_records(
            [
                ChannelRecord(
                    channel=self._channel.name,
                    kind=RUN_RECORD,
                    key=token.token,
                    value={"conversation": request.session.key},
                    owner=caller,
                    created_at=now,
                    expires_at=now + self._channel.run_ttl_seconds,
                )
            ]
        )
        return codec.run_answer(
            token.token, token.status, text=None, conversation=request.session.key
        )

    async def _run_query(self, query: codec.RunQuery, caller: str) -> types.CallToolResult:
        record = await self._host.store.get_channel_record(
            self._channel.name, RUN_RECORD, query.run
        )
        if (
            record is None
            or record.owner != caller
            or (record.expires_at is not None and record.expires_at <= self._host.now())
        ):
            return codec.tool_error(codec.NO_RUN_MESSAGE)
        if query.cancel:
            token = await self._host.cancel_continuation(query.run)
        else:
            token = await self._host.get_continuation(query.run)
        if token is None:
            return codec.tool_error(codec.NO_RUN_MESSAGE)
        text = token.result.get("text") if token.result is not None else None
        conversation = record.value.get("conversation")
        return codec.run_answer(
            token.token,
            token.status,
            text=text if isinstance(text, str) else None,
            conversation=conversation if isinstance(conversation, str) else None,
        )


class _Progress:
    """Streamed updates as ``notifications/progress``: a count, and the new text."""

    def __init__(self, ctx: Context) -> None:
        self._session = ctx.session
        self._count = 0

    async def __call__(self, update: StreamUpdate) -> None:
        if not update.text:
            return
        self._count += 1
        await self._session.report_progress(self._count, message=update.text)


def _caller(ctx: Context) -> str | None:
    request = ctx.request
    if not isinstance(request, Request):
        return None
    caller = request.scope.get(CALLER_SCOPE_KEY)
    return caller if isinstance(caller, str) else None


def _mcp_session_id(ctx: Context) -> str | None:
    request = ctx.request
    if not isinstance(request, Request):
        return None
    return request.headers.get(_SESSION_HEADER)


__all__ = ["CALLER_SCOPE_KEY", "ToolService"]
