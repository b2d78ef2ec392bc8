"""The host's outbound HTTP client: connections kept per origin and reused (a burst's
connections serve the next burst; the limits and the pool timeout hold); and in front of
any other transport, requests enter one at a time per origin, exchanges still run side by
side, and no failure leaves an origin's gate shut."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthost.backends.http_client import GatedTransport, HostHttpClient, KeepAliveTransport
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


async def test_httpx_builds_the_default_transport_through_the_host_client() -> None:
    # The client overrides httpx's (0.28) private transport factories: if httpx stopped
    # calling them, the fan-out would silently be back on the pool this module avoids.
    async with HostHttpClient() as default, HostHttpClient(transport=PoolLikeTransport()) as own:
        assert isinstance(
            default._transport_for_url(httpx.URL("http://a.example/")), KeepAliveTransport
        )
        assert isinstance(own._transport_for_url(httpx.URL("http://a.example/")), GatedTransport)
    async with HostHttpClient(proxy="http://proxy.example:3128") as proxied:
        assert isinstance(
            proxied._transport_for_url(httpx.URL("http://a.example/")), GatedTransport
        )


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
