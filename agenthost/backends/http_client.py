"""The host's one outbound HTTP client: ``httpx.AsyncClient`` with a transport that keeps
HTTP/1.1 connections per origin and hands an idle one to one request at a time.

Why not httpx's own pool (httpcore 1.0.x): it serves each request by walking every pooled
connection twice (when the request enters, and when its response closes), polling each
idle one for a server-side close through several layers of calls; and it hands an idle
connection to a request but leaves it marked idle until that request's task runs again,
so a request to the same origin entering in between is handed the same connection, finds
it busy (``ConnectionNotAvailable``) and goes round again. Under a fan-out (tens of pushes
to one API at once) the walks were most of a push's cost in the host, and the rounds
another fifth. It also closes an idle connection whenever the pool holds more than
``max_keepalive_connections`` connections in all, busy ones counted, so a burst wider than
that reconnects on every burst.

:class:`KeepAliveTransport` instead keeps a stack of idle connections per origin: a
request takes the most recently used one that is still idle and unexpired (checking that
one only), or opens a new one, and gives it back when its response is closed. The
connections are :class:`agenthost.backends.http11.Http11Connection` (HTTP/1.1 with TLS,
httpx's timeouts and errors, the ``trace`` events a pool needs; why not httpcore's is
said there). It honours httpx's limits: at most ``max_connections`` open (an idle
connection of another origin is closed to make room; otherwise the request waits up to
the ``pool`` timeout, then ``httpx.PoolTimeout``), at most ``max_keepalive_connections``
idle, each for at most ``keepalive_expiry`` seconds. :class:`HostHttpClient` keeps every
connection a burst opened (``max_keepalive_connections`` defaults to ``max_connections``;
the expiry still closes what stays idle).

Transports the client does not build with this one (a caller's own ``transport``, an
environment proxy's, HTTP/2) keep httpx's pool behind a gate: requests to one origin
enter the pool one at a time, until the request ahead has a connection of its own, which
httpcore's ``trace`` extension reports (the TCP connect of a new connection begins, or
its first header goes out on a reused one); the gate opens when ``send`` returns or raises
in any case. A caller's own ``trace`` callback still sees every event.

The client builds these transports itself (:func:`host_routes`) and hands them to httpx
through its public ``transport=`` and ``mounts=`` parameters, using no private httpx name.
httpx reads proxies from the environment only when it is given no ``transport``, so the
client reads them itself, with httpx's rules (:func:`proxies_from_environment`; the tests
check that it routes every case as a plain ``httpx.AsyncClient`` does).
"""

from __future__ import annotations

import ipaddress
import math
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import attrs
import httpx

from agenthost.backends.http11 import Http11Connection

#: httpcore trace events after which the request holds its connection alone.
_HAS_ITS_CONNECTION = frozenset(
    {
        "connection.connect_tcp.started",
        "http11.send_request_headers.started",
        "http2.send_request_headers.started",
    }
)

TraceCallback = Callable[[str, dict[str, Any]], Awaitable[None]]
Origin = tuple[bytes, bytes, int | None]

#: How often, at most, idle connections of every origin are checked for expiry (a
#: request checks the one it takes in any case).
_EXPIRY_SWEEP_SECONDS = 1.0


class HostHttpClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` on :class:`KeepAliveTransport` (see the module docstring),
    taking httpx's settings; proxies from the environment are honoured as httpx honours
    them, everything else is httpx's own."""

    def __init__(self, **settings: Any) -> None:
        if "limits" not in settings:
            settings["limits"] = httpx.Limits(
                max_connections=100, max_keepalive_connections=100, keepalive_expiry=5.0
            )
        routes = host_routes(**{key: settings[key] for key in _ROUTE_SETTINGS if key in settings})
        # httpx builds no transport of its own when given one, but still checks the
        # settings it would have built it from (h2 installed for http2).
        super().__init__(
            **{key: value for key, value in settings.items() if key not in _REPLACED_SETTINGS},
            transport=routes.transport,
            mounts=routes.mounts,
        )
        self.cookies = settings.get("cookies")  # through the setter below

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies_kept

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._cookies_kept = _CookiesFromResponses(cookies)


#: The ``httpx.AsyncClient`` settings :func:`host_routes` decides with, and those its
#: routes replace.
_REPLACED_SETTINGS = frozenset({"transport", "proxy", "mounts"})
_ROUTE_SETTINGS = ("limits", "verify", "cert", "trust_env", "http1", "http2", *_REPLACED_SETTINGS)


@attrs.frozen
class HostRoutes:
    """What :class:`HostHttpClient` hands httpx: the ``transport`` for every URL no
    ``mounts`` pattern claims (a mount of ``None`` sends its URLs there too)."""

    transport: httpx.AsyncBaseTransport
    mounts: dict[str, httpx.AsyncBaseTransport | None]


def host_routes(
    *,
    limits: httpx.Limits,
    verify: Any = True,
    cert: Any = None,
    trust_env: bool = True,
    http1: bool = True,
    http2: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    proxy: httpx.Proxy | httpx.URL | str | None = None,
    mounts: Mapping[str, httpx.AsyncBaseTransport | None] | None = None,
) -> HostRoutes:
    """The transports for ``httpx.AsyncClient``'s settings, routed as httpx 0.28 routes
    them: ``proxy`` for every URL, or else (with ``trust_env`` and no ``transport`` of the
    caller's) the environment's proxies; the caller's ``mounts`` over both. The default
    transport is a :class:`KeepAliveTransport` for HTTP/1.1; any other, and every
    proxy's, is httpx's own behind a :class:`GatedTransport`."""
    pool_settings: dict[str, Any] = {
        "verify": verify,
        "cert": cert,
        "trust_env": trust_env,
        "http1": http1,
        "http2": http2,
        "limits": limits,
    }
    default: httpx.AsyncBaseTransport
    if transport is not None:
        default = GatedTransport(transport)
    elif http1 and not http2:
        default = KeepAliveTransport(verify=verify, cert=cert, trust_env=trust_env, limits=limits)
    else:
        default = GatedTransport(httpx.AsyncHTTPTransport(**pool_settings))
    proxies: Mapping[str, httpx.Proxy | httpx.URL | str | None]
    if proxy is not None:
        proxies = {"all://": proxy}
    elif trust_env and transport is None:
        proxies = proxies_from_environment()
    else:
        proxies = {}
    routes: dict[str, httpx.AsyncBaseTransport | None] = {
        pattern: None
        if via is None
        else GatedTransport(httpx.AsyncHTTPTransport(proxy=via, **pool_settings))
        for pattern, via in proxies.items()
    }
    routes.update(mounts or {})
    return HostRoutes(transport=default, mounts=routes)


def proxies_from_environment() -> dict[str, str | None]:
    """``mounts`` patterns and their proxy URLs from ``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY`` and ``NO_PROXY`` (either case); a ``NO_PROXY`` host's pattern maps to
    ``None``, the default transport.

    These are httpx 0.28's rules (``get_environment_proxies``, which httpx keeps private),
    on the same standard-library reader; the NO_PROXY forms follow curl's.
    """
    found = urllib.request.getproxies()
    proxies: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        # getproxies() also reports proxies for other schemes (ftp, ...): not httpx's.
        if url := found.get(scheme):
            proxies[f"{scheme}://"] = url if "://" in url else f"http://{url}"
    for host in (entry.strip() for entry in found.get("no", "").split(",")):
        if host == "*":
            return {}
        if not host:
            continue
        if "://" in host:
            proxies[host] = None
        elif _is_ip_address(host, ipaddress.IPv4Address):
            proxies[f"all://{host}"] = None
        elif _is_ip_address(host, ipaddress.IPv6Address):
            proxies[f"all://[{host}]"] = None
        elif host.lower() == "localhost":
            proxies[f"all://{host}"] = None
        else:
            # example.com exempts example.com and its subdomains; .example.com only these.
            proxies[f"all://*{host}"] = None
    return proxies


def _is_ip_address(host: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(host.split("/")[0])  # an address with a prefix length counts, as for httpx
    except ValueError:
        return False
    return True


class _CookiesFromResponses(httpx.Cookies):
    """httpx's cookies, reading a response for new ones only when it sets some.

    httpx reads every response for cookies, building urllib request and response
    stand-ins each time: about a tenth of a push's cost in the client (py-spy, fan-out
    to 100), for responses that almost never set one. A response without ``Set-Cookie``
    (or ``Set-Cookie2``) headers would add nothing to the jar.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections kept per origin, the most recently used handed out first."""

    def __init__(
        self,
        *,
        verify: Any = True,
        cert: Any = None,
        trust_env: bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits()
        self._ssl_context = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        self._max_open = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._idle: dict[Origin, list[Http11Connection]] = {}
        self._idle_count = 0
        self._open: set[Http11Connection] = set()  # idle, busy or connecting
        self._freed: anyio.Event | None = None  # set when a connection closes or goes idle
        self._next_sweep = 0.0
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port)
        connection = await self._connection_for(origin, request)
        try:
            response = await connection.exchange(request)
        except BaseException:
            await self._close(connection)
            raise
        response.stream = _GivenBackOnClose(response.stream, self, origin, connection)
        return response

    @property
    def idle_connections(self) -> int:
        """Connections kept for the next request, every origin counted."""
        return self._idle_count

    async def aclose(self) -> None:
        self._closed = True
        self._idle.clear()
        self._idle_count = 0
        with anyio.CancelScope(shield=True):
            for connection in list(self._open):
                await self._close(connection)

    # --- connections ------------------------------------------------------------------

    async def _connection_for(self, origin: Origin, request: httpx.Request) -> Http11Connection:
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        await self._sweep_expired()
        pool_timeout = request.extensions.get("timeout", {}).get("pool")
        with anyio.move_on_after(math.inf if pool_timeout is None else pool_timeout):
            while True:
                reused = await self._take_idle(origin)
                if reused is not None:
                    return reused
                if self._max_open is None or len(self._open) < self._max_open:
                    break
                if self._idle_count:
                    await self._close(self._pop_oldest_idle())  # room for this origin
                    continue
                if self._freed is None:
                    self._freed = anyio.Event()
                await self._freed.wait()
            scheme, host, port = origin
            if scheme not in (b"http", b"https"):
                raise httpx.UnsupportedProtocol("only http and https URLs can be requested")
            connection = Http11Connection(
                scheme, host, port, ssl_context=self._ssl_context, keepalive_expiry=self._expiry
            )
            self._open.add(connection)
            return connection
        raise httpx.PoolTimeout("no connection became free within the pool timeout")

    async def _take_idle(self, origin: Origin) -> Http11Connection | None:
        stack = self._idle.get(origin)
        while stack:
            connection = stack.pop()
            self._idle_count -= 1
            # Idle and not closed by the server (its socket is polled), nor too old.
            if connection.is_idle() and not connection.has_expired():
                return connection
            await self._close(connection)
        return None

    def _pop_oldest_idle(self) -> Http11Connection:
        for origin, stack in self._idle.items():
            if stack:
                self._idle_count -= 1
                connection = stack.pop(0)
                if not stack:
                    del self._idle[origin]
                return connection
        raise AssertionError("an idle connection was counted but none is kept")

    async def give_back(self, origin: Origin, connection: Http11Connection) -> None:
        """A response was closed: keep its connection for the next request, or close it."""
        room = self._max_idle is None or self._idle_count < self._max_idle
        if connection.is_idle() and not connection.is_closed() and room and not self._closed:
            self._idle.setdefault(origin, []).append(connection)
            self._idle_count += 1
            self._announce_freed()
        else:
            await self._close(connection)

    async def _close(self, connection: Http11Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._announce_freed()
        with anyio.CancelScope(shield=True):
            await connection.aclose()

    async def _sweep_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep or not self._idle_count:
            return
        self._next_sweep = now + _EXPIRY_SWEEP_SECONDS
        for origin, stack in list(self._idle.items()):
            for connection in [c for c in stack if c.has_expired()]:
                if connection not in stack:
                    continue  # taken by a request while an earlier one was closing
                stack.remove(connection)
                self._idle_count -= 1
                await self._close(connection)
            if not stack:
                self._idle.pop(origin, None)

    def _announce_freed(self) -> None:
        freed, self._freed = self._freed, None
        if freed is not None:
            freed.set()


class _GivenBackOnClose(httpx.AsyncByteStream):
    """A response body from one connection; closing it hands the connection back once."""

    def __init__(
        self,
        stream: Any,
        transport: KeepAliveTransport,
        origin: Origin,
        connection: Http11Connection,
    ) -> None:
        self._stream = stream
        self._transport = transport
        self._origin = origin
        self._connection: Http11Connection | None = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            connection, self._connection = self._connection, None
            if connection is not None:
                await self._transport.give_back(self._origin, connection)


# --- the gate in front of httpx's own pool ----------------------------------------------


@attrs.define
class _Gate:
    turn: anyio.Semaphore = attrs.field(factory=lambda: anyio.Semaphore(1))
    users: int = 0  # requests waiting at or passing the gate; at 0 the gate is dropped


class GatedTransport(httpx.AsyncBaseTransport):
    """Requests to one origin enter ``inner`` one at a time (see the module docstring)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self._gates: dict[tuple[str, str, int | None], _Gate] = {}

    async def __aenter__(self) -> GatedTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.inner.__aexit__(*exc_info)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = (request.url.scheme, request.url.host, request.url.port)
        gate = self._gates.get(origin)
        if gate is None:
            gate = self._gates[origin] = _Gate()
        gate.users += 1
        try:
            await gate.turn.acquire()
            passing = _Passing(gate.turn)
            callers_trace: TraceCallback | None = request.extensions.get("trace")

            async def trace(event: str, info: dict[str, Any]) -> None:
                if event in _HAS_ITS_CONNECTION:
                    passing.through()
                    # Later steps need not report here (httpcore reads the extension
                    # afresh for each step).
                    _set_trace(request, callers_trace)
                if callers_trace is not None:
                    await callers_trace(event, info)

            request.extensions["trace"] = trace
            try:
                return await self.inner.handle_async_request(request)
            finally:
                passing.through()
                _set_trace(request, callers_trace)
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[origin]


@attrs.define
class _Passing:
    """One request's turn at its gate, given back once."""

    turn: anyio.Semaphore
    done: bool = False

    def through(self) -> None:
        if not self.done:
            self.done = True
            self.turn.release()


def _set_trace(request: httpx.Request, trace: TraceCallback | None) -> None:
    if trace is None:
        request.extensions.pop("trace", None)
    else:
        request.extensions["trace"] = trace
