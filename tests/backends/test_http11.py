"""The host client's HTTP/1.1 connection against a raw TCP server on loopback that answers
scripted bytes: response framings (length, chunked, to the close, none), keep-alive and
when a connection must not be reused, interim responses, malformed answers, timeouts,
streamed request bodies, header injection, and TLS."""

from __future__ import annotations

import os
import resource
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
import pytest
import sniffio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthost.backends.http11 import MAX_HEAD_BYTES
from agenthost.backends.http_client import HostHttpClient
from tests.channels.activity.tls import loopback_certificate, served_tls

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@attrs.define
class Scripted:
    """Answers each request with the next scripted reply (bytes, or ``None`` to hang up
    without answering, or a callable given the request's raw bytes); notes requests and
    connections."""

    replies: list[bytes | Callable[[bytes], bytes] | None]
    requests: list[bytes] = attrs.field(factory=list)
    connections: int = 0
    close_after_reply: bool = False

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        buffer = b""
        async with stream:
            while self.replies:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                body, buffer = await self._body(stream, head, buffer)
                self.requests.append(head + b"\r\n\r\n" + body)
                reply = self.replies.pop(0)
                if reply is None:
                    return
                if callable(reply):
                    reply = reply(head + b"\r\n\r\n" + body)
                await stream.send(reply)
                if self.close_after_reply:
                    return

    async def _body(
        self, stream: anyio.abc.SocketStream, head: bytes, buffer: bytes
    ) -> tuple[bytes, bytes]:
        lowered = head.lower()
        if b"transfer-encoding: chunked" in lowered:
            while not buffer.endswith(b"0\r\n\r\n"):
                buffer += await stream.receive()
            return buffer, b""
        length = 0
        for line in lowered.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(buffer) < length:
            buffer += await stream.receive()
        return buffer[:length], buffer[length:]


@asynccontextmanager
async def listening(
    handler: Callable[[anyio.abc.SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """Serve each connection to a loopback port with ``handler``; yield the base URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handler)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tasks.cancel_scope.cancel()


@asynccontextmanager
async def scripted(
    *replies: bytes | Callable[[bytes], bytes] | None,
) -> AsyncIterator[tuple[str, Scripted]]:
    server = Scripted(list(replies))
    async with listening(server.serve) as url:
        yield url, server


async def test_a_length_framed_body_is_read_and_the_connection_reused() -> None:
    async with scripted(OK, OK) as (url, server), HostHttpClient() as client:
        with anyio.fail_after(10):
            first = await client.post(f"{url}/a", content=b'{"n": 1}')
            second = await client.post(f"{url}/b", content=b'{"n": 2}')
    assert (first.status_code, first.text, second.text) == (200, "ok", "ok")
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /a HTTP/1.1\r\n")
    assert server.requests[0].endswith(b'\r\n\r\n{"n": 1}')
    assert first.http_version == "HTTP/1.1" and first.reason_phrase == "OK"


async def test_a_chunked_body_with_extensions_and_trailers_is_read_and_reused() -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    )
    async with scripted(chunked, OK) as (url, server), HostHttpClient() as client:
        with anyio.fail_after(10):
            first = await client.get(f"{url}/")
            second = await client.get(f"{url}/")
    assert (first.status_code, first.text, first.headers["x-a"]) == (201, "hello world", "b")
    assert second.text == "ok"
    assert server.connections == 1


async def test_a_body_without_framing_runs_to_the_close_and_the_connection_is_not_kept() -> None:
    async with scripted(b"HTTP/1.1 200 OK\r\n\r\nall of it", OK) as (url, server):
        server.close_after_reply = True
        async with HostHttpClient() as client:
            with anyio.fail_after(10):
                first = await client.get(f"{url}/")
                second = await client.get(f"{url}/")
    assert (first.text, second.text) == ("all of it", "ok")
    assert server.connections == 2


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_a_server_that_closes_or_speaks_http_1_0_gets_a_new_connection(reply: bytes) -> None:
    async with scripted(reply, OK) as (url, server), HostHttpClient() as client:
        with anyio.fail_after(10):
            assert (await client.get(f"{url}/")).text == "ok"
            assert (await client.get(f"{url}/")).text == "ok"
    assert server.connections == 2


async def test_interim_responses_are_skipped_and_head_and_204_have_no_body() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + OK
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    empty = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    async with scripted(interim, head, empty, OK) as (url, server), HostHttpClient() as client:
        with anyio.fail_after(10):
            assert (await client.post(f"{url}/", content=b"x")).text == "ok"
            headed = await client.head(f"{url}/")
            assert (headed.status_code, headed.content) == (200, b"")
            assert (await client.get(f"{url}/")).status_code == 204
            assert (await client.get(f"{url}/")).text == "ok"
    assert server.connections == 1


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokay\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then the server hangs up
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n",
    ],
)
async def test_a_malformed_answer_is_a_protocol_error_and_the_next_request_connects_again(
    reply: bytes,
) -> None:
    async with scripted(reply, OK) as (url, server):
        server.close_after_reply = True
        async with HostHttpClient() as client:
            with anyio.fail_after(10):
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.get(f"{url}/")
                assert (await client.get(f"{url}/")).text == "ok"
    assert server.connections == 2


async def test_a_server_hanging_up_without_an_answer_is_a_protocol_error() -> None:
    async with scripted(None, OK) as (url, server), HostHttpClient() as client:
        with anyio.fail_after(10):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"{url}/")
            assert (await client.get(f"{url}/")).text == "ok"
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    async with scripted(OK, OK) as (url, server):
        server.close_after_reply = True  # closes right after answering, without saying so
        async with HostHttpClient() as client:
            with anyio.fail_after(10):
                assert (await client.get(f"{url}/")).text == "ok"
                await anyio.sleep(0.1)  # the server's close arrives while idle
                assert (await client.get(f"{url}/")).text == "ok"
    assert server.connections == 2


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep(30)

    async with (
        listening(hold) as url,
        HostHttpClient(timeout=httpx.Timeout(5.0, read=0.2)) as client,
    ):
        with anyio.fail_after(10), pytest.raises(httpx.ReadTimeout):
            await client.get(f"{url}/")


async def test_a_refused_connection_is_a_connect_error() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there now
    async with HostHttpClient() as client:
        with anyio.fail_after(10), pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_a_streamed_request_body_is_sent_chunked() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"one ", b"", b"two"):
            yield piece

    async with scripted(OK, OK) as (url, server), HostHttpClient() as client:
        with anyio.fail_after(10):
            assert (await client.post(f"{url}/", content=pieces())).text == "ok"
            assert (await client.post(f"{url}/", content=b"")).text == "ok"
    body = server.requests[0].partition(b"\r\n\r\n")[2]
    assert b"transfer-encoding: chunked" in server.requests[0].lower()
    assert body == b"4\r\none \r\n3\r\ntwo\r\n0\r\n\r\n"
    assert server.connections == 1


async def test_a_response_closed_before_its_end_does_not_leave_its_connection_for_reuse() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200_000
    async with scripted(big, OK) as (url, server), HostHttpClient() as client:
        with anyio.fail_after(10):
            async with client.stream("GET", f"{url}/") as response:
                async for _ in response.aiter_raw():
                    break  # the rest is never read
            assert (await client.get(f"{url}/")).text == "ok"
    assert server.connections == 2


@pytest.mark.parametrize(
    "headers",
    [{"x-evil": "a\r\nInjected: yes"}, {"x-evil": "a\nInjected: yes"}, {"x-nul": "a\x00b"}],
)
async def test_a_header_that_would_split_the_request_is_refused(headers: dict[str, str]) -> None:
    async with scripted(OK) as (url, server), HostHttpClient() as client:
        with anyio.fail_after(10), pytest.raises((httpx.LocalProtocolError, ValueError)):
            await client.get(f"{url}/", headers=headers)
    assert server.requests == []


async def test_https_with_a_trusted_certificate(tmp_path: Path) -> None:
    async def ok(request: Request) -> Response:
        return JSONResponse({"body": (await request.body()).decode()})

    app = Starlette(routes=[Route("/", ok, methods=["GET", "POST"])])
    certificate = loopback_certificate(tmp_path)
    trusted = ssl.create_default_context(cafile=str(certificate.certfile))
    events: list[str] = []

    async def trace(event: str, info: dict[str, Any]) -> None:
        events.append(event)

    async with served_tls(app, certificate) as base_url:
        async with HostHttpClient(verify=trusted) as client:
            with anyio.fail_after(10):
                for n in range(3):
                    response = await client.post(
                        f"{base_url}/", content=f"n{n}".encode(), extensions={"trace": trace}
                    )
                    assert response.json() == {"body": f"n{n}"}
        async with HostHttpClient() as untrusting:
            with anyio.fail_after(10), pytest.raises(httpx.ConnectError):
                await untrusting.get(f"{base_url}/")
    assert events.count("connection.connect_tcp.started") == 1


async def test_a_response_framed_by_chunks_and_a_length_ends_its_connection() -> None:
    both = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )
    async with scripted(both, OK) as (url, server), HostHttpClient() as client:
        with anyio.fail_after(10):
            assert (await client.get(f"{url}/")).text == "ok"  # the chunks win
            assert (await client.get(f"{url}/")).text == "ok"
    assert server.connections == 2


async def test_an_answer_sent_before_the_body_was_read_is_returned() -> None:
    # The server answers 413 after the head and hangs up without reading the body: the
    # client's write breaks, and the 413 is what the caller should see. On asyncio,
    # anyio's stream reads nothing between receives and its transport closes the socket
    # when the write fails, so the answer is lost there: the write's error it is.
    async def refuse(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive()
            await stream.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
            await anyio.sleep(0.2)

    async with listening(refuse) as url, HostHttpClient() as client:
        with anyio.fail_after(10):
            try:
                response = await client.post(f"{url}/", content=b"x" * 20_000_000)
                answered: int | str = response.status_code
            except httpx.WriteError:
                answered = "write error"
    assert answered == (413 if sniffio.current_async_library() == "trio" else "write error")


async def test_connections_are_reused_when_descriptors_run_past_1023() -> None:
    # A busy host holds many sockets: the idle check must not stop working (select()
    # refuses descriptors past 1023) and make every request open a new connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1400
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    filler = [os.dup(0) for _ in range(1100)]
    try:
        async with scripted(OK, OK, OK) as (url, server), HostHttpClient() as client:
            with anyio.fail_after(10):
                for _ in range(3):
                    assert (await client.get(f"{url}/")).text == "ok"
        assert server.connections == 1
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
