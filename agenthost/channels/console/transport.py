"""The console's routes: pages, actions, the streamed chat, the live feed and ``/metrics``.

Every route goes through :meth:`_Handlers.guard`, which applies ``access``'s rules in
order (reach, login, CSRF on POST) and adds the security headers; handlers then load what
the page shows through the store contract and the host's operator verbs. Message text
travels only in POST bodies and response bodies, never in a URL or a log line.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, quote

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from agenthost.backends.bodies import BodyTooLarge, read_limited
from agenthost.backends.channel import Channel, HostServices
from agenthost.backends.configuration import ConfigurationError
from agenthost.backends.host_events import (
    HostEvent,
    HostEvents,
    TooManySubscribers,
    attach,
    detach,
)
from agenthost.backends.metrics import HostMetrics
from agenthost.backends.streaming import Emit, ProducerResponse
from agenthost.backends.targets import StreamUpdate, UpdateSink
from agenthost.backends.tracing import TraceMiddleware, channel_prefixes
from agenthost.channels.console import access, pages
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, DeliveryTransitionRefused
from agenthost.sansio_core.linking import LinkResult
from agenthost.sansio_core.sessions import DIRECT, ScopeKey
from agenthost.sansio_core.turns import TurnCompleted, TurnFailed, TurnOutcome, TurnRefused
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    HostMessage,
    RunStatus,
)
from agenthost.stores.base import DeliveryNotFound

log = logging.getLogger("agenthost.channels.console")

_STATIC = Path(__file__).parent / "static"
_STATIC_TYPES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
_CODE = re.compile(r"^[A-Za-z0-9-]{4,64}$")
_ID = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,256}$")
MAX_BROWSER_SESSIONS = 1000
MAX_FORM_BYTES = 64 * 1024
LIVE_HEARTBEAT_SECONDS = 15.0
LIVE_MAX_SECONDS = 3600.0  # the browser's EventSource reconnects after this
LIVE_KINDS = frozenset({"turn", "run", "delivery", "lease"})


@runtime_checkable
class OperatorHost(Protocol):
    """The host verbs the console's actions use (``agenthost.Host`` has them)."""

    async def replay_delivery(self, delivery_id: str) -> Delivery: ...

    async def unlink(self, identity: ChannelIdentity) -> LinkResult: ...


@attrs.define
class BrowserSession:
    """A browser allowed in (logged in, or on loopback without a login)."""

    expires_at: float


class ConsoleChannel(Channel):
    """A web console for operators and developers at ``mount`` (default ``/console``).

    Secure by default: reachable from loopback only (``allow_remote=False``), and then
    without a login unless ``token`` is set. With ``allow_remote=True`` a login is always
    required: with ``token`` when given, else a token drawn at start-up and printed once
    on stderr (never logged). Every action carries a CSRF token; pages are served under a
    strict Content-Security-Policy.

    ``identity``: the native id the console chats as (channel ``name``), so the console
    user can ``/link`` to their identities elsewhere. ``metrics=True`` also serves
    ``/metrics`` (Prometheus text) under the same protection; a scraper presents the token
    as ``Authorization: Bearer <token>``. ``tracing=True`` (the default) adds the
    ``agenthost.receive`` span around every request the host serves.
    """

    def __init__(
        self,
        *,
        name: str = "console",
        mount: str = "/console",
        allow_remote: bool = False,
        token: str | None = None,
        identity: str = "operator",
        metrics: bool = False,
        tracing: bool = True,
        session_seconds: float = 12 * 3600.0,
    ) -> None:
        if not mount.startswith("/") or mount.endswith("/"):
            raise ConfigurationError(
                f"console mount must start with '/' and not end with one, not {mount!r}"
            )
        if token is not None and len(token) < 16:
            raise ConfigurationError("the console token must be at least 16 characters long")
        if not _ID.match(identity):
            raise ConfigurationError(f"console identity {identity!r} is not a plain id")
        self.name = name
        self.mount = mount
        self.allow_remote = allow_remote
        self.token = token
        self.identity = ChannelIdentity(name, identity)
        self.metrics_enabled = metrics
        self.tracing_enabled = tracing
        self.session_seconds = session_seconds
        self.events = HostEvents()
        self.metrics = HostMetrics()
        self.events.listen(self.metrics.observe)
        self._prefixes: list[tuple[str, str]] = []
        self.settings = access.AccessSettings(
            allow_remote=allow_remote, login_required=allow_remote or token is not None
        )
        self._handlers: _Handlers | None = None

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        if not isinstance(host, OperatorHost):
            raise ConfigurationError("the console needs an agenthost.Host")
        self._prefixes[:] = channel_prefixes(getattr(host, "channels", ()))
        handlers = self._handlers = _Handlers(self, host)
        m = self.mount
        g = handlers.guard
        routes: list[BaseRoute] = [
            Route(m, g(handlers.chat_page), methods=["GET"]),
            Route(f"{m}/", g(handlers.chat_page), methods=["GET"]),
            Route(f"{m}/chat", g(handlers.chat), methods=["POST"]),
            Route(f"{m}/login", handlers.login_page, methods=["GET"]),
            Route(f"{m}/login", handlers.login, methods=["POST"]),
            Route(f"{m}/logout", g(handlers.logout), methods=["POST"]),
            Route(f"{m}/users", g(handlers.users), methods=["GET"]),
            Route(f"{m}/users/{{key}}", g(handlers.user), methods=["GET"]),
            Route(f"{m}/unlink", g(handlers.unlink), methods=["POST"]),
            Route(f"{m}/sessions/{{session_id}}", g(handlers.session), methods=["GET"]),
            Route(f"{m}/runs", g(handlers.runs), methods=["GET"]),
            Route(f"{m}/runs/{{token}}/cancel", g(handlers.cancel_run), methods=["POST"]),
            Route(f"{m}/deliveries", g(handlers.deliveries), methods=["GET"]),
            Route(f"{m}/deliveries/{{delivery_id}}/replay", g(handlers.replay), methods=["POST"]),
            Route(f"{m}/live", g(handlers.live_page), methods=["GET"]),
            Route(f"{m}/events", g(handlers.live_events), methods=["GET"]),
            Route(f"{m}/link", g(handlers.link_page), methods=["GET"]),
            Route(f"{m}/link", g(handlers.link), methods=["POST"]),
            Route(f"{m}/static/{{name}}", handlers.static, methods=["GET"]),
        ]
        if self.metrics_enabled:
            routes.append(Route("/metrics", handlers.metrics, methods=["GET"]))
        return routes

    def middleware(self) -> Sequence[Middleware]:
        if not self.tracing_enabled:
            return ()
        return (Middleware(TraceMiddleware, prefixes=self._prefixes, events=self.events),)

    async def startup(self, host: HostServices) -> None:
        attach(self.events)
        if self.allow_remote and self.token is None:
            self.token = secrets.token_urlsafe(24)
            # Printed for the operator once, on the terminal; deliberately not a log record.
            print(f"agenthost console: log in with token {self.token}", file=sys.stderr)

    async def shutdown(self) -> None:
        detach(self.events)


Handler = Callable[[Request, BrowserSession, str], Awaitable[Response]]


class _Handlers:
    def __init__(self, channel: ConsoleChannel, host: HostServices) -> None:
        self._channel = channel
        self._host = host
        self._operator: OperatorHost = host  # type: ignore[assignment]  # checked in routes
        self._key = secrets.token_bytes(32)
        self._sessions: dict[str, BrowserSession] = {}

    # --- access -------------------------------------------------------------------

    def _reachable(self, request: Request) -> bool:
        peer = request.client.host if request.client else None
        return access.may_reach(self._channel.settings, peer, request.headers.get("host"))

    def _browser_session(self, request: Request) -> tuple[str, BrowserSession, bool] | None:
        """The request's browser session, or a new one (third item: whether new).

        ``None`` when a login is needed and the request has no logged-in session: nothing
        is stored for such a visitor, so a flood of them cannot push real sessions out.
        """
        now = time.time()
        session_id = request.cookies.get(access.SESSION_COOKIE, "")
        found = self._sessions.get(session_id)
        if found is not None and found.expires_at > now:
            return session_id, found, False
        if self._channel.settings.login_required:
            return None
        return self._new_session()

    def _new_session(self) -> tuple[str, BrowserSession, bool]:
        now = time.time()
        if len(self._sessions) >= MAX_BROWSER_SESSIONS:
            for stale in [k for k, s in self._sessions.items() if s.expires_at <= now]:
                del self._sessions[stale]
            while len(self._sessions) >= MAX_BROWSER_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
        session_id = secrets.token_urlsafe(32)
        session = BrowserSession(now + self._channel.session_seconds)
        self._sessions[session_id] = session
        return session_id, session, True

    def _set_cookie(self, response: Response, request: Request, session_id: str) -> None:
        response.set_cookie(
            access.SESSION_COOKIE,
            session_id,
            max_age=int(self._channel.session_seconds),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def guard(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not self._reachable(request):
                return _secured(PlainTextResponse("Not Found", status_code=404))
            found = self._browser_session(request)
            if found is None:
                if request.method == "GET":
                    return _secured(
                        RedirectResponse(f"{self._channel.mount}/login", status_code=303)
                    )
                return _secured(PlainTextResponse("Log in first.", status_code=403))
            session_id, session, new = found
            response: Response
            if request.method == "POST" and not await self._post_allowed(request, session_id):
                response = PlainTextResponse(
                    "This action did not come from the console's page.", status_code=403
                )
            else:
                csrf = access.csrf_token(self._key, session_id)
                response = await handler(request, session, csrf)
            if new:
                self._set_cookie(response, request, session_id)
            return _secured(response)

        return guarded

    async def _post_allowed(self, request: Request, session_id: str) -> bool:
        if not access.same_origin(
            origin=request.headers.get("origin"),
            fetch_site=request.headers.get("sec-fetch-site"),
            scheme=request.url.scheme,
            host_header=request.headers.get("host"),
        ):
            return False
        form = await self._form(request)
        return access.csrf_valid(self._key, session_id, (form or {}).get(access.CSRF_FIELD))

    async def _form(self, request: Request) -> dict[str, str] | None:
        cached = request.scope.get("agenthost.console.form")
        if cached is not None:
            return dict(cached)
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            return None
        try:
            raw = await read_limited(request, MAX_FORM_BYTES)
        except BodyTooLarge:
            return None
        try:
            parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            return None
        form = {k: v[0] for k, v in parsed.items()}
        request.scope["agenthost.console.form"] = form
        return form

    def _page(self, csrf: str) -> pages.Page:
        return pages.Page(
            self._channel.mount, csrf, logged_in=self._channel.settings.login_required
        )

    # --- login --------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if not self._reachable(request):
            return _secured(PlainTextResponse("Not Found", status_code=404))
        return _secured(HTMLResponse(pages.login_page(self._channel.mount, failed=False)))

    async def login(self, request: Request) -> Response:
        if not self._reachable(request):
            return _secured(PlainTextResponse("Not Found", status_code=404))
        if not access.same_origin(
            origin=request.headers.get("origin"),
            fetch_site=request.headers.get("sec-fetch-site"),
            scheme=request.url.scheme,
            host_header=request.headers.get("host"),
        ):
            return _secured(PlainTextResponse("Forbidden", status_code=403))
        form = await self._form(request) or {}
        expected = self._channel.token
        if expected is None or not access.token_matches(expected, form.get("token")):
            await anyio.sleep(0.5)  # a guess costs time
            log.warning("console login refused")
            return _secured(
                HTMLResponse(pages.login_page(self._channel.mount, failed=True), status_code=401)
            )
        # A fresh session on login: a session id planted before it is worth nothing after.
        old = request.cookies.get(access.SESSION_COOKIE)
        if old:
            self._sessions.pop(old, None)
        session_id, _, _ = self._new_session()
        response = RedirectResponse(self._channel.mount, status_code=303)
        self._set_cookie(response, request, session_id)
        log.info("console login")
        return _secured(response)

    async def logout(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        session_id = request.cookies.get(access.SESSION_COOKIE, "")
        self._sessions.pop(session_id, None)
        response = RedirectResponse(f"{self._channel.mount}/login", status_code=303)
        response.delete_cookie(access.SESSION_COOKIE, path="/")
        return response

    # --- chat ---------------------------------------------------------------------

    async def chat_page(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        return HTMLResponse(
            pages.chat_page(
                self._page(csrf),
                identity=self._channel.identity,
                history=await self._own_history(),
            )
        )

    async def _own_history(self) -> list[tuple[str, str]]:
        """The console identity's current direct conversation (what a reload shows)."""
        store = self._host.store
        context = await store.load_context(self._channel.identity, ScopeKey(None, DIRECT))
        if context.alias is None:
            return []
        found = await store.load_session(context.alias.session_id)
        return pages.history_of(found.state) if found is not None else []

    def _request(self, text: str, *, stream: bool) -> ChannelRequest:
        return ChannelRequest(
            channel=self._channel.name,
            identity=self._channel.identity,
            input=(HostMessage.user(text),),
            session=ChannelSession(conversation_id=None, is_direct=True),
            stream=stream,
        )

    async def chat(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        form = await self._form(request) or {}
        text = form.get("message", "").strip()
        if not text:
            return PlainTextResponse("Write a message first.", status_code=422)
        if "text/event-stream" not in request.headers.get("accept", ""):
            outcome = await self._run(self._request(text, stream=False))
            return HTMLResponse(
                pages.chat_page(
                    self._page(csrf),
                    identity=self._channel.identity,
                    asked=text,
                    answer=_answer_text(outcome),
                )
            )
        channel_request = self._request(text, stream=True)

        async def produce(emit: Emit) -> None:
            async def on_update(update: StreamUpdate) -> None:
                if update.text:
                    await emit(pages.sse("delta", {"text": update.text}))

            outcome = await self._run(channel_request, on_update=on_update)
            if isinstance(outcome, TurnCompleted):
                await emit(pages.sse("done", {"text": outcome.result.text}))
            else:
                await emit(pages.sse("error", {"message": _answer_text(outcome)}))

        return ProducerResponse(produce)

    async def _run(
        self, request: ChannelRequest, *, on_update: UpdateSink | None = None
    ) -> TurnOutcome:
        return await self._host.run(request, on_update=on_update)  # which opens agenthost.turn

    # --- identities and sessions ---------------------------------------------------

    async def users(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        channel = request.query_params.get("channel")
        native_id = request.query_params.get("native_id")
        store = self._host.store
        if channel and native_id:
            context = await store.load_context(ChannelIdentity(channel, native_id), None)
            if context.isolation_key is not None:
                key = quote(context.isolation_key, safe="")
                return RedirectResponse(f"{self._channel.mount}/users/{key}", status_code=303)
        known = await self._known_users()
        names = [c.name for c in getattr(self._host, "channels", ())]
        return HTMLResponse(
            pages.users_page(
                self._page(csrf),
                known=known,
                channels=names,
                not_found=bool(channel and native_id),
            ),
            status_code=404 if channel and native_id else 200,
        )

    async def _known_users(self) -> list[tuple[str, str]]:
        store = self._host.store
        seen: dict[str, set[str]] = {}
        own = await store.load_context(self._channel.identity, None)
        if own.isolation_key is not None:
            seen.setdefault(own.isolation_key, set()).add("console")
        for run in await store.list_runs(list(RunStatus)):
            seen.setdefault(run.isolation_key, set()).add(f"{run.request.channel} run")
        for d in await store.list_deliveries(None, limit=200):
            seen.setdefault(d.isolation_key, set()).add(f"{d.channel} delivery")
        return [(key, ", ".join(sorted(why))) for key, why in list(seen.items())[:200]]

    async def user(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        key = request.path_params["key"]
        store = self._host.store
        identities = await store.list_identities(key)
        sessions = await store.list_sessions(key)
        if not identities and not sessions:
            return PlainTextResponse("No such user.", status_code=404)
        return HTMLResponse(
            pages.user_page(
                self._page(csrf),
                isolation_key=key,
                identities=identities,
                links=await store.list_links(key),
                sessions=sessions,
                last_seen=await store.list_last_seen(key),
            )
        )

    async def unlink(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        form = await self._form(request) or {}
        channel, native_id = form.get("channel", ""), form.get("native_id", "")
        if not channel or not native_id:
            return PlainTextResponse("Name the identity to unlink.", status_code=422)
        identity = ChannelIdentity(channel, native_id)
        context = await self._host.store.load_context(identity, None)
        if context.isolation_key is None:
            return PlainTextResponse("No such identity.", status_code=404)
        before = context.isolation_key
        result = await self._operator.unlink(identity)
        log.info("console unlink", extra={"channel": channel, "reason": result.reason.value})
        return RedirectResponse(
            f"{self._channel.mount}/users/{quote(before, safe='')}", status_code=303
        )

    async def session(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        found = await self._host.store.load_session(request.path_params["session_id"])
        if found is None:
            return PlainTextResponse("No such session.", status_code=404)
        return HTMLResponse(pages.session_page(self._page(csrf), found))

    # --- runs and deliveries --------------------------------------------------------

    async def runs(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        runs = await self._host.store.list_runs(list(RunStatus))
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return HTMLResponse(pages.runs_page(self._page(csrf), runs[:500]))

    async def cancel_run(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        token = await self._host.cancel_continuation(request.path_params["token"])
        if token is None:
            return PlainTextResponse("No such run.", status_code=404)
        log.info("console cancelled a run", extra={"token": token.token})
        return RedirectResponse(f"{self._channel.mount}/runs", status_code=303)

    async def deliveries(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        state_name = request.query_params.get("state")
        state: DeliveryStatus | None = None
        if state_name:
            try:
                state = DeliveryStatus(state_name)
            except ValueError:
                return PlainTextResponse("No such delivery state.", status_code=400)
        found = await self._host.store.list_deliveries(
            [state] if state is not None else None, limit=500
        )
        return HTMLResponse(pages.deliveries_page(self._page(csrf), found, state=state))

    async def replay(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        delivery_id = request.path_params["delivery_id"]
        try:
            await self._operator.replay_delivery(delivery_id)
        except DeliveryNotFound:
            return PlainTextResponse("No such delivery.", status_code=404)
        except DeliveryTransitionRefused:
            return PlainTextResponse(
                "Only a dead or unknown delivery can be replayed.", status_code=409
            )
        return RedirectResponse(f"{self._channel.mount}/deliveries", status_code=303)

    # --- live -----------------------------------------------------------------------

    async def live_page(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        return HTMLResponse(pages.live_page(self._page(csrf)))

    async def live_events(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        events = self._channel.events

        async def produce(emit: Emit) -> None:
            try:
                with events.subscribe() as stream:
                    await emit(b": connected\n\n")
                    await _relay(stream, emit)
            except TooManySubscribers:
                await emit(b": busy\n\n")

        return ProducerResponse(produce)

    # --- linking --------------------------------------------------------------------

    async def link_page(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        return HTMLResponse(pages.link_page(self._page(csrf)))

    async def link(self, request: Request, session: BrowserSession, csrf: str) -> Response:
        form = await self._form(request) or {}
        code = form.get("code", "").strip()
        if code and not _CODE.match(code):
            return HTMLResponse(
                pages.link_page(self._page(csrf), reply="That is not a link code."),
                status_code=422,
            )
        command = f"/link {code}" if code else "/link"
        outcome = await self._run(self._request(command, stream=False))
        return HTMLResponse(pages.link_page(self._page(csrf), reply=_answer_text(outcome)))

    # --- static files and metrics -----------------------------------------------------

    async def static(self, request: Request) -> Response:
        if not self._reachable(request):
            return _secured(PlainTextResponse("Not Found", status_code=404))
        name = request.path_params["name"]
        media_type = _STATIC_TYPES.get(name)
        if media_type is None:
            return _secured(PlainTextResponse("Not Found", status_code=404))
        response = Response((_STATIC / name).read_bytes(), media_type=media_type)
        return _secured(response)

    async def metrics(self, request: Request) -> Response:
        if not self._reachable(request):
            return _secured(PlainTextResponse("Not Found", status_code=404))
        if self._channel.settings.login_required and not self._metrics_authorized(request):
            return _secured(
                PlainTextResponse(
                    "Unauthorized", status_code=401, headers={"www-authenticate": "Bearer"}
                )
            )
        body = await self._channel.metrics.render(self._host.store, self._host.now())
        return _secured(
            PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")
        )

    def _metrics_authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        token = self._channel.token
        if token is not None and scheme.lower() == "bearer":
            return access.token_matches(token, presented.strip())
        found = self._sessions.get(request.cookies.get(access.SESSION_COOKIE, ""))
        return found is not None and found.expires_at > time.time()


async def _relay(stream: MemoryObjectReceiveStream[HostEvent], emit: Emit) -> None:
    """Host events as SSE ``host`` events, a heartbeat when quiet, for a bounded time."""
    with anyio.move_on_after(LIVE_MAX_SECONDS):
        while True:
            with anyio.move_on_after(LIVE_HEARTBEAT_SECONDS) as quiet:
                event = await stream.receive()
            if quiet.cancelled_caught:
                await emit(b": heartbeat\n\n")
                continue
            if event.kind not in LIVE_KINDS:
                continue  # requests are for /metrics; the feed shows what the host did
            await emit(
                pages.sse(
                    "host",
                    {
                        "time": time.strftime("%H:%M:%S", time.gmtime()),
                        "kind": event.kind,
                        "outcome": event.outcome,
                        "channel": event.channel,
                        "ids": dict(event.ids),
                    },
                )
            )


def _answer_text(outcome: TurnOutcome | Any) -> str:
    if isinstance(outcome, TurnCompleted):
        return outcome.result.text
    if isinstance(outcome, TurnRefused):
        return outcome.user_message or "The host refused this message."
    if isinstance(outcome, TurnFailed):
        return "The run was interrupted." if outcome.cancelled else "The agent could not answer."
    return "The agent could not answer."


def _secured(response: Response, headers: Mapping[str, str] = access.SECURITY_HEADERS) -> Response:
    for name, value in headers.items():
        response.headers.setdefault(name, value)
    return response
