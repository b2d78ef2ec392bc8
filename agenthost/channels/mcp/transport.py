"""The MCP endpoint: the SDK's streamable-HTTP session manager behind the channel's guard.

One route (``{mount}``, default ``/mcp``) serves both protocol generations the ``mcp`` SDK
speaks: the session era (``initialize``, ``Mcp-Session-Id``, 2024-11-05 to 2025-11-25) and
the stateless 2026-07-28 generation, which the SDK routes by the ``MCP-Protocol-Version``
header. Before the SDK sees a request this module refuses a foreign ``Host`` (421) or
``Origin`` (403) and an unauthenticated caller (401 with ``WWW-Authenticate: Bearer``), and
stamps the authenticated caller on the request, which is also how the SDK binds each MCP
session to the credential that opened it (another caller naming it gets 404).

The session manager runs in the host's lifespan task group (``startup`` starts it,
``shutdown`` stops it, cancelling the sessions' in-flight calls). Tool calls are answered
by :mod:`agenthost.channels.mcp.tools`; this module decides nothing about them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Literal

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from agenthost.backends.channel import INHERIT, Channel, HostServices, Inherit
from agenthost.channels.mcp import codec
from agenthost.channels.mcp.tools import CALLER_SCOPE_KEY, ToolService
from agenthost.sansio_core.authorization import Allowlist
from agenthost.sansio_core.link_policy import DEFAULT_TIER
from agenthost.sansio_core.types import MultitaskStrategy

log = logging.getLogger("agenthost.channels.mcp")

CallerAuthenticator = Callable[[HTTPConnection], "str | Awaitable[str | None] | None"]
Conversations = Literal["session", "direct"]

#: Browsers on this machine may call; a page served anywhere else may not.
LOOPBACK_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")
_STOP_SECONDS = 10.0


class MCPChannel(Channel):
    """The hosted target as an MCP tool, over streamable HTTP.

    Callers: ``api_keys`` maps bearer tokens to caller ids; without it any bearer token is
    accepted and the caller is the token's SHA-256 (the token is never stored or logged),
    so two tokens are two callers. ``authenticate`` (a function of the Starlette
    connection answering a caller id, or ``None`` to refuse) replaces both: plug in OAuth
    token validation there. A request without an accepted token is answered 401.

    The tool: ``tool_name`` / ``tool_title`` / ``tool_description`` name the target's tool
    (arguments ``message``, optional ``conversation`` and ``background``). The host's
    commands are tools of their own (``new_conversation``, ``link_account``,
    ``unlink_account``); ``background_runs`` adds ``check_run`` and ``cancel_run``.

    ``conversations``: what a call without ``conversation`` continues. ``"session"`` (the
    default): its MCP session's conversation (session era); a stateless (2026-07-28) call
    then starts a new conversation and answers its name. ``"direct"``: the caller's one
    direct conversation, which their linked identities on other channels share.

    Safety: ``allowed_origins`` (exact values or ``scheme://host:*``; loopback pages by
    default; requests without ``Origin`` pass), ``allowed_hosts`` (``Host`` values, or
    ``None`` not to check), ``max_body_bytes`` (413 beyond), ``session_idle_seconds`` (an
    idle MCP session ends; its id then answers 404) and ``max_sessions`` (503 beyond).
    """

    def __init__(
        self,
        *,
        name: str = "mcp",
        mount: str = "/mcp",
        tool_name: str = "ask",
        tool_title: str = "Ask the agent",
        tool_description: str = (
            "Send a message to the agent and get its reply. The agent remembers the "
            "conversation: later calls continue it."
        ),
        server_name: str = "agenthost",
        instructions: str | None = None,
        api_keys: Mapping[str, str] | None = None,
        authenticate: CallerAuthenticator | None = None,
        allowed_origins: Collection[str] = LOOPBACK_ORIGINS,
        allowed_hosts: Collection[str] | None = None,
        max_body_bytes: int = 1024 * 1024,
        session_idle_seconds: float = 30 * 60.0,
        max_sessions: int = 10_000,
        conversations: Conversations = "session",
        background_runs: bool = True,
        run_ttl_seconds: float = 24 * 3600.0,
        multitask: MultitaskStrategy | None = None,
        require_link: bool | Inherit = INHERIT,
        allowlist: Allowlist | Inherit | None = INHERIT,
        confidentiality_tier: str = DEFAULT_TIER,
        offers_link_commands: bool = True,
    ) -> None:
        if not mount.startswith("/") or mount.endswith("/"):
            raise ValueError(f"mount must start with '/' and not end with one, not {mount!r}")
        if not tool_name or tool_name in (
            *codec.COMMAND_TOOLS.values(),
            codec.CHECK_RUN,
            codec.CANCEL_RUN,
        ):
            raise ValueError(f"tool_name {tool_name!r} is empty or the name of a host tool")
        if max_body_bytes < 1 or max_sessions < 1:
            raise ValueError("max_body_bytes and max_sessions must be at least 1")
        if session_idle_seconds <= 0 or run_ttl_seconds <= 0:
            raise ValueError("session_idle_seconds and run_ttl_seconds must be greater than 0")
        if conversations not in ("session", "direct"):
            raise ValueError(f"conversations must be 'session' or 'direct', not {conversations!r}")
        if api_keys is not None and (
            not api_keys or not all(isinstance(k, str) and k for k in api_keys)
        ):
            raise ValueError(
                "api_keys must map non-empty bearer tokens to caller ids; pass None to accept "
                "any token (each token is then its own caller)"
            )
        self.name = name
        self.mount = mount
        self.require_link = require_link
        self.allowlist = allowlist
        self.confidentiality_tier = confidentiality_tier
        self.offers_link_commands = offers_link_commands
        self.allowed_origins = tuple(allowed_origins)
        self.allowed_hosts = tuple(allowed_hosts) if allowed_hosts is not None else None
        self.max_body_bytes = max_body_bytes
        self.session_idle_seconds = session_idle_seconds
        self.max_sessions = max_sessions
        self.conversations: Conversations = conversations
        self.multitask = multitask
        self.run_ttl_seconds = run_ttl_seconds
        self.tool_settings = codec.ToolSettings(
            name=tool_name,
            title=tool_title,
            description=tool_description,
            background_runs=background_runs,
        )
        self._server_name = server_name
        self._instructions = instructions
        self._authenticate = authenticate
        # Tokens are compared by digest: the mapping lookup then reveals nothing about them.
        self._token_digests = (
            {_digest(token): caller for token, caller in api_keys.items()}
            if api_keys is not None
            else None
        )
        self._manager: StreamableHTTPSessionManager | None = None
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        # An ASGI app (not a request handler): the SDK reads and answers the request.
        return [Route(self.mount, endpoint=_Endpoint(self))]

    async def startup(self, host: HostServices) -> None:
        commands = {command.name for command in host.command_catalog(self.name)}
        tools = ToolService(self, host, commands)
        server: Server[object] = Server(
            self._server_name,
            instructions=self._instructions,
            on_list_tools=tools.list_tools,
            on_call_tool=tools.call_tool,
            get_tool_input_schema=tools.input_schema,
        )
        # A manager runs once: each start of the host gets a new one.
        manager = StreamableHTTPSessionManager(
            app=server,
            json_response=False,
            stateless=False,
            # Host and Origin are checked by the guard, before authentication; the SDK
            # still checks each POST's content type.
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            session_idle_timeout=self.session_idle_seconds,
            max_request_body_size=self.max_body_bytes,
            max_sessions=self.max_sessions,
        )
        ready, stop, stopped = anyio.Event(), anyio.Event(), anyio.Event()

        async def serve_sessions() -> None:
            try:
                async with manager.run():
                    self._manager = manager
                    ready.set()
                    await stop.wait()
            finally:
                self._manager = None
                stopped.set()
                ready.set()

        self._stop, self._stopped = stop, stopped
        host.start_task(serve_sessions, name=f"{self.name} sessions")
        await ready.wait()
        if self._manager is None:
            raise RuntimeError("the MCP session manager did not start (see the log)")

    async def shutdown(self) -> None:
        if self._stop is None or self._stopped is None:
            return
        self._stop.set()
        with anyio.move_on_after(_STOP_SECONDS):
            await self._stopped.wait()
        self._stop = self._stopped = None

    # --- the guard ---------------------------------------------------------------------

    async def guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Host, Origin and the caller, then hand the request to the SDK."""
        headers = Headers(scope=scope)
        if not codec.host_allowed(headers.get("host"), self.allowed_hosts):
            await _refuse(send, 421, codec.jsonrpc_error(INVALID_REQUEST, "Unknown Host header."))
            return
        if not codec.origin_allowed(headers.get("origin"), self.allowed_origins):
            await _refuse(send, 403, codec.jsonrpc_error(INVALID_REQUEST, "Origin not allowed."))
            return
        manager = self._manager
        if manager is None:
            await _refuse(send, 503, codec.jsonrpc_error(INVALID_REQUEST, "Not started."))
            return
        try:
            caller = await self._caller(HTTPConnection(scope))
        except Exception:
            # The application's authenticate hook failed: a bland 500, details in the log.
            log.exception("the MCP channel's authenticate hook failed")
            await _refuse(send, 500, codec.jsonrpc_error(INTERNAL_ERROR, "Server error."))
            return
        if caller is None:
            await _refuse(
                send,
                401,
                {"error": "invalid_token", "error_description": "Authentication required."},
                {"www-authenticate": 'Bearer error="invalid_token"'},
            )
            return
        # The SDK binds a session to this principal: a request for a session opened with
        # another caller's credential is answered 404, as if the session did not exist.
        user = AuthenticatedUser(
            AccessToken(token="", client_id=f"{self.name}:{caller}", scopes=[], subject=caller)
        )
        scope = {**scope, "user": user, "auth": AuthCredentials([]), CALLER_SCOPE_KEY: caller}
        await manager.handle_request(scope, receive, send)

    async def _caller(self, connection: HTTPConnection) -> str | None:
        if self._authenticate is not None:
            answer = self._authenticate(connection)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer or None
        token = codec.bearer_token(connection.headers.get("authorization"))
        if token is None:
            return None
        digest = _digest(token)
        if self._token_digests is None:
            return digest
        return self._token_digests.get(digest)


class _Endpoint:
    """The route's ASGI app (Starlette treats a plain method as a request handler)."""

    def __init__(self, channel: MCPChannel) -> None:
        self._channel = channel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._channel.guard(scope, receive, send)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _refuse(
    send: Send, status: int, body: Mapping[str, object], headers: Mapping[str, str] | None = None
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
