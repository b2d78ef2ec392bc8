"""The host's outbound HTTP client: requests enter the pool one at a time per origin,
exchanges still run side by side, and no failure leaves an origin's gate shut."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthost.backends.http_client import HostHttpClient
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
    async with served(app) as base_url, HostHttpClient() as client:
        request = client.build_request(
            "POST", f"{base_url}/hook", content=b"{}", extensions={"trace": trace}
        )
        response = await client.send(request)
    assert response.status_code == 200
    assert "http11.send_request_headers.started" in events
    assert "http11.response_closed.complete" in events  # after the gate had let it through
    assert request.extensions["trace"] is trace


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


async def test_a_request_that_never_got_a_connection_opens_the_gate() -> None:
    # One connection at most: while a slow exchange holds it, the next request waits in
    # the pool (holding its origin's gate) and times out there, before any trace event;
    # a third request waiting at the gate behind it must then get through.
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

        with anyio.fail_after(10):  # a gate left shut would hang the third request here
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(fetch, "slow")
                await anyio.sleep(0.2)  # the slow request holds the one connection
                tasks.start_soon(fetch, "readiness?second")
                await anyio.sleep(0.05)  # the second holds the gate, waiting in the pool
                tasks.start_soon(fetch, "readiness?third")
    assert sorted(outcomes) == [
        "readiness?second: pool timeout",
        "readiness?third: 200",
        "slow: 200",
    ]
