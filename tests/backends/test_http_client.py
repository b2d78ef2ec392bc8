"""The host's outbound HTTP client: connections kept per origin and reused (a burst's
connections serve the next burst; the limits and the pool timeout hold); and in front of
any other transport, requests enter one at a time per origin, exchanges still run side by
side, and no failure leaves an origin's gate shut."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthost.backends.http_client import (
    GatedTransport,
    HostHttpClient,
    KeepAliveTransport,
    host_routes,
)
from tests.served import served

pytestmark = pytest.mark.anyio


class PoolLikeTransport(httpx.AsyncBaseTransport):
    """Stands in for httpx's pooled transport: a request spends a few event-loop turns
    between entering and starting on a connection (which it reports through the ``trace``
    extension, as httpcore does), then its exchange waits until ``answer`` is set."""

    def __init__(self) -> None:
        self.entering: dict[str, int] = {}
        self.most_entering: dict[str, int] = {}
        self.exchanging = 0
        self.most_exchanging = 0
        self.answer = anyio.Event()
        self.hold_entry: dict[str, anyio.Event] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.entering[host] = self.entering.get(host, 0) + 1
        self.most_entering[host] = max(self.most_entering.get(host, 0), self.entering[host])
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        if host in self.hold_entry:
            await self.hold_entry[host].wait()
        self.entering[host] -= 1
        await request.extensions["trace"]("http11.send_request_headers.started", {})
        self.exchanging += 1
        self.most_exchanging = max(self.most_exchanging, self.exchanging)
        await self.answer.wait()
        self.exchanging -= 1
        return httpx.Response(200, json={"ok": True})


async def test_one_request_at_a_time_enters_while_the_exchanges_overlap() -> None:
    transport = PoolLikeTransport()
    async with HostHttpClient(transport=transport) as client:
        statuses: list[int] = []

        async def post(url: str) -> None:
            statuses.append((await client.post(url, content=b"{}")).status_code)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                for _ in range(10):
                    tasks.start_soon(post, "http://a.example/hook")
                while transport.exchanging < 10:
                    await anyio.sleep(0.01)
                transport.answer.set()
    assert statuses == [200] * 10
    assert transport.most_entering == {"a.example": 1}  # without the gate: 10
    assert transport.most_exchanging == 10


async def test_a_request_entering_one_origin_does_not_hold_up_another() -> None:
    transport = PoolLikeTransport()
    transport.answer.set()
    held = transport.hold_entry["slow.example"] = anyio.Event()
    async with HostHttpClient(transport=transport) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(client.get, "http://slow.example/")
                while transport.entering.get("slow.example") != 1:
                    await anyio.sleep(0.01)
                assert (await client.get("http://fast.example/")).status_code == 200
                held.set()


async def test_a_callers_own_trace_still_sees_every_event() -> None:
    events: list[str] = []

    async def trace(event: str, info: dict[str, Any]) -> None:
        events.append(event)

    async def hook(request: Request) -> Response:
        await request.body()
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/readiness", hook)])
    # httpx's own transport (httpcore's pool) behind the gate.
    gated = HostHttpClient(transport=httpx.AsyncHTTPTransport())
    async with served(app) as base_url, gated as client:
        request = client.build_request(
            "POST", f"{base_url}/hook", content=b"{}", extensions={"trace": trace}
        )
        response = await client.send(request)
    assert response.status_code == 200
    assert "http11.send_request_headers.started" in events
    assert "http11.response_closed.complete" in events  # after the gate had let it through
    assert request.extensions["trace"] is trace


async def test_the_default_transport_reports_its_connects_and_requests_to_a_trace() -> None:
    events: list[str] = []

    async def trace(event: str, info: dict[str, Any]) -> None:
        events.append(event)

    async def hook(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/readiness", hook)])
    async with served(app) as base_url, HostHttpClient() as client:
        for _ in range(2):
            response = await client.get(f"{base_url}/readiness", extensions={"trace": trace})
            assert response.status_code == 200
    assert events == [
        "connection.connect_tcp.started",
        "connection.connect_tcp.complete",
        "http11.send_request_headers.started",
        "http11.send_request_headers.started",  # the second request reused the connection
    ]


async def test_many_concurrent_posts_to_a_real_server_all_arrive() -> None:
    arrived: list[bytes] = []

    async def hook(request: Request) -> Response:
        arrived.append(await request.body())
        return JSONResponse({"ok": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/readiness", ready)])
    statuses: list[int] = []
    async with served(app) as base_url, HostHttpClient() as client:

        async def post(i: int) -> None:
            response = await client.post(f"{base_url}/hook", content=str(i).encode())
            statuses.append(response.status_code)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tasks:
                for i in range(40):
                    tasks.start_soon(post, i)
    assert statuses == [200] * 40
    assert sorted(arrived, key=int) == [str(i).encode() for i in range(40)]


async def test_a_request_waiting_past_the_pool_timeout_fails_and_the_next_gets_through() -> None:
    # One connection at most: while a slow exchange holds it, the next request waits for a
    # connection and times out; a third waiting behind it gets the connection once the
    # slow exchange gives it back.
    release = anyio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return JSONResponse({"ok": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/slow", slow), Route("/readiness", ready)])
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(10.0, pool=0.3)
    outcomes: list[str] = []
    async with served(app) as base_url, HostHttpClient(limits=limits, timeout=timeout) as client:

        async def fetch(query: str) -> None:
            try:
                response = await client.get(f"{base_url}/{query}")
            except httpx.PoolTimeout:
                outcomes.append(f"{query}: pool timeout")
                release.set()  # the slow exchange ends: the connection is free again
                return
            outcomes.append(f"{query}: {response.status_code}")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(fetch, "slow")
                await anyio.sleep(0.2)  # the slow request holds the one connection
                tasks.start_soon(fetch, "readiness?second")
                await anyio.sleep(0.05)
                tasks.start_soon(fetch, "readiness?third")
    assert sorted(outcomes) == [
        "readiness?second: pool timeout",
        "readiness?third: 200",
        "slow: 200",
    ]


def _counting_connects() -> tuple[list[str], Any]:
    connects: list[str] = []

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            connects.append(event)

    return connects, trace


async def _burst(client: HostHttpClient, url: str, width: int, trace: Any) -> list[int]:
    statuses: list[int] = []
    hold = anyio.Event()
    started = 0

    async def post() -> None:
        nonlocal started
        started += 1
        if started == width:
            hold.set()
        await hold.wait()  # every request of the burst in flight at once
        response = await client.post(url, content=b"{}", extensions={"trace": trace})
        statuses.append(response.status_code)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            for _ in range(width):
                tasks.start_soon(post)
    return statuses


async def test_a_burst_wider_than_twenty_keeps_its_connections_for_the_next_burst() -> None:
    # httpcore's pool closes an idle connection whenever it holds more than
    # max_keepalive_connections (20 by default) in all, busy ones counted: a fan-out of
    # 30 then reconnected at every burst.
    async def hook(request: Request) -> Response:
        await request.body()
        await anyio.sleep(0.05)  # the burst's requests overlap on the server
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/readiness", hook)])
    connects, trace = _counting_connects()
    async with served(app) as base_url, HostHttpClient() as client:
        first = await _burst(client, f"{base_url}/hook", 30, trace)
        opened_by_the_first = len(connects)
        second = await _burst(client, f"{base_url}/hook", 30, trace)
    assert first == second == [200] * 30
    assert opened_by_the_first > 20
    assert len(connects) == opened_by_the_first  # the second burst reused them all


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def closing(request: Request) -> Response:
        return JSONResponse({"ok": True}, headers={"connection": "close"})

    app = Starlette(routes=[Route("/closing", closing), Route("/readiness", closing)])
    connects, trace = _counting_connects()
    async with served(app) as base_url, HostHttpClient() as client:
        for _ in range(3):
            response = await client.get(f"{base_url}/closing", extensions={"trace": trace})
            assert response.status_code == 200
    assert len(connects) == 3


async def test_at_the_connection_limit_an_idle_connection_of_another_origin_makes_room() -> None:
    async def ok(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/readiness", ok)])
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(10.0, pool=1.0)
    async with (
        served(app) as first,
        served(app) as second,
        HostHttpClient(limits=limits, timeout=timeout) as client,
    ):
        with anyio.fail_after(10):
            for base_url in (first, second, first):
                assert (await client.get(f"{base_url}/readiness")).status_code == 200


async def test_the_client_hands_httpx_the_keep_alive_transport_and_gates_every_other() -> None:
    limits = httpx.Limits()
    default = host_routes(limits=limits)
    assert isinstance(default.transport, KeepAliveTransport)
    own = PoolLikeTransport()
    given = host_routes(limits=limits, transport=own)
    assert isinstance(given.transport, GatedTransport) and given.transport.inner is own
    http2 = host_routes(limits=limits, http2=True).transport
    assert isinstance(http2, GatedTransport)
    assert isinstance(http2.inner, httpx.AsyncHTTPTransport)
    proxied = host_routes(limits=limits, proxy="http://proxy.example:3128").mounts
    assert list(proxied) == ["all://"]
    assert isinstance(proxied["all://"], GatedTransport)
    # A caller's own mounts stand as given, over the proxy.
    mounted = host_routes(limits=limits, proxy="http://proxy.example:3128", mounts={"all://": own})
    assert mounted.mounts == {"all://": own}


_PROXY_VARIABLES = [
    f"{scheme}_{suffix}"
    for scheme in ("http", "https", "all", "no")
    for suffix in ("proxy", "PROXY")
]


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without proxy settings, for a test to set its own."""
    for name in [*_PROXY_VARIABLES, "REQUEST_METHOD"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@asynccontextmanager
async def loopback_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP proxy on 127.0.0.1 that records each request line (absolute-form when a
    client sends through a proxy) and answers ``200 proxied`` itself."""
    request_lines: list[str] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                try:
                    head += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            request_lines.append(head.split(b"\r\n", 1)[0].decode())
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nproxied"
            )

    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, answer)
        try:
            yield f"http://127.0.0.1:{port}", request_lines
        finally:
            tasks.cancel_scope.cancel()


def _direct_app() -> Starlette:
    async def direct(request: Request) -> Response:
        return Response(b"direct")

    return Starlette(routes=[Route("/readiness", direct), Route("/hook", direct)])


async def test_a_request_goes_through_the_environments_proxy_unless_no_proxy_exempts_it(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    async with served(_direct_app()) as base_url, loopback_proxy() as (proxy_url, lines):
        port = httpx.URL(base_url).port
        no_proxy_settings.setenv("HTTP_PROXY", proxy_url)
        no_proxy_settings.setenv("NO_PROXY", "127.0.0.1")
        async with HostHttpClient() as client:
            with anyio.fail_after(10):
                # The same server by name: not exempt, so through the proxy.
                proxied = await client.get(f"http://localhost:{port}/hook?x=1")
                exempt = await client.get(f"{base_url}/hook")
    assert proxied.text == "proxied"
    assert lines == [f"GET http://localhost:{port}/hook?x=1 HTTP/1.1"]
    assert exempt.text == "direct"  # straight to the server; the proxy saw nothing more


async def test_a_proxy_given_to_the_client_carries_its_requests(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    async with loopback_proxy() as (proxy_url, lines), HostHttpClient(proxy=proxy_url) as client:
        with anyio.fail_after(10):
            # Port 9 (discard): refused on loopback unless the proxy answers in its place.
            response = await client.post("http://127.0.0.1:9/hook", content=b"{}")
    assert response.text == "proxied"
    assert lines == ["POST http://127.0.0.1:9/hook HTTP/1.1"]


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        # (proxy settings, with {proxy} for the loopback proxy's URL), what
        # http://127.0.0.1:<port>/ and http://localhost:<port>/ reach.
        ({"HTTP_PROXY": "{proxy}"}, ("proxied", "proxied")),
        ({"http_proxy": "{proxy}"}, ("proxied", "proxied")),
        ({"ALL_PROXY": "{proxy}"}, ("proxied", "proxied")),
        ({"HTTP_PROXY": "{proxy_without_scheme}"}, ("proxied", "proxied")),
        ({"HTTPS_PROXY": "{proxy}"}, ("direct", "direct")),
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1"}, ("direct", "proxied")),
        ({"HTTP_PROXY": "{proxy}", "no_proxy": "localhost"}, ("proxied", "direct")),
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "*"}, ("direct", "direct")),
        ({"ALL_PROXY": "{proxy}", "NO_PROXY": "other, localhost"}, ("proxied", "direct")),
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "http://127.0.0.1"}, ("direct", "proxied")),
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "https://127.0.0.1"}, ("proxied", "proxied")),
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": ".localhost"}, ("proxied", "proxied")),
        # A name exempts itself and the names ending in ".<name>" (curl's rule).
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "0.0.1"}, ("direct", "proxied")),
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "127.0.0.0/8"}, ("proxied", "proxied")),
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1/8"}, ("direct", "proxied")),
    ],
)
async def test_the_environments_proxies_route_each_url_as_httpx_routes_it(
    no_proxy_settings: pytest.MonkeyPatch, environment: dict[str, str], expected: tuple[str, str]
) -> None:
    async with served(_direct_app()) as base_url, loopback_proxy() as (proxy_url, _):
        port = httpx.URL(base_url).port
        urls = [f"http://127.0.0.1:{port}/readiness", f"http://localhost:{port}/readiness"]
        for name, value in environment.items():
            no_proxy_settings.setenv(
                name,
                value.format(proxy=proxy_url, proxy_without_scheme=proxy_url[len("http://") :]),
            )
        reached: dict[str, tuple[str, ...]] = {}
        with anyio.fail_after(20):
            for name, client in [("host", HostHttpClient()), ("httpx", httpx.AsyncClient())]:
                async with client:
                    reached[name] = tuple([(await client.get(url)).text for url in urls])
    assert reached == {"host": expected, "httpx": expected}


async def test_without_trust_env_the_environments_proxy_is_not_used(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    async with served(_direct_app()) as base_url, loopback_proxy() as (proxy_url, lines):
        no_proxy_settings.setenv("HTTP_PROXY", proxy_url)
        async with HostHttpClient(trust_env=False) as client:
            with anyio.fail_after(10):
                assert (await client.get(f"{base_url}/hook")).text == "direct"
    assert lines == []


async def test_a_cookie_a_server_sets_is_kept_and_sent_back() -> None:
    async def login(request: Request) -> Response:
        response = JSONResponse({"ok": True})
        response.set_cookie("session", "s1")
        return response

    async def echo(request: Request) -> Response:
        return JSONResponse({"session": request.cookies.get("session")})

    app = Starlette(routes=[Route("/login", login), Route("/readiness", echo)])
    async with served(app) as base_url, HostHttpClient(cookies={"given": "g"}) as client:
        assert client.cookies.get("given") == "g"
        assert (await client.get(f"{base_url}/readiness")).json() == {"session": None}
        await client.get(f"{base_url}/login")
        assert client.cookies.get("session") == "s1"
        assert (await client.get(f"{base_url}/readiness")).json() == {"session": "s1"}


async def test_idle_connections_past_their_expiry_are_closed_by_a_later_request() -> None:
    async def ok(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/readiness", ok)])
    transport = KeepAliveTransport(limits=httpx.Limits(keepalive_expiry=0.05))
    async with (
        served(app) as first,
        served(app) as second,
        httpx.AsyncClient(transport=transport) as client,
    ):
        await client.get(f"{first}/readiness")
        assert transport.idle_connections == 1
        await anyio.sleep(1.1)  # past the expiry and the sweep's interval
        await client.get(f"{second}/readiness")
        assert transport.idle_connections == 1  # the second origin's; the first's is gone
