"""One HTTP/1.1 client connection: a request written in one piece, the response read with
as few reads, timeouts and layers as the bytes allow.

Why not httpcore's connection: a push is a small POST answered by a small response, and
httpcore spends most of a push's client cost around the bytes rather than on them (a
profile of the fan-out to 100: a cancel scope per read and per write, headers and body
written as separate h11 events and sends, h11's per-event state machine, a lock per
exchange). Here a request is formatted once (head and body in one send when the body is
in memory), the response head is read under one deadline, and a body that arrived with
the head is handed over without another read.

What it implements of RFC 9112 (the client side, one exchange at a time):
- request: the method, the target and the headers httpx built, checked for bytes that
  could split a header (CR, LF, NUL) or name a header wrongly; a body in memory goes with
  the head, a streamed one follows it (chunked when httpx framed it so);
- response: a status line ``HTTP/1.x NNN reason``, headers up to
  :data:`MAX_HEAD_BYTES` (no obsolete line folding), interim 1xx responses skipped;
  the body framed by ``Transfer-Encoding: chunked`` (extensions and trailers read and
  dropped), by one valid ``Content-Length``, or by the end of the connection; none after
  ``HEAD``, 204 or 304;
- keep-alive: the connection is kept for the next request when the exchange ended
  cleanly, neither side said ``Connection: close``, the server speaks HTTP/1.1 and the
  body was read to its end (and was not framed both by chunks and by a length); an idle
  connection the server closed (or sent anything on) is not reused, nor one idle past
  its expiry;
- a server that answers before reading the whole request body (a 413, say) and closes:
  its answer is returned rather than the write's error (under trio; on asyncio anyio's
  stream has not read it when the write fails, and the transport's close drops it).
Errors are httpx's (``ConnectError``, ``ConnectTimeout``, ``WriteTimeout``,
``ReadTimeout``, ``WriteError``, ``ReadError``, ``RemoteProtocolError``,
``LocalProtocolError``), as callers of an ``httpx`` client expect. The ``trace`` request
extension hears ``connection.connect_tcp.started`` / ``.complete`` and
``http11.send_request_headers.started``.
"""

from __future__ import annotations

import contextlib
import enum
import re
import select
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import httpx

MAX_HEAD_BYTES = 64 * 1024  # a response head (status line and headers) longer is refused
_READ_SIZE = 64 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_IN_VALUE = re.compile(rb"[\r\n\x00]")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
_NO_BODY_STATUSES = frozenset({204, 304})

Trace = Callable[[str, dict[str, Any]], Awaitable[None]]


class _State(enum.Enum):
    NEW = "new"  # not connected yet
    IDLE = "idle"
    ACTIVE = "active"  # an exchange is under way (its body not read to the end yet)
    CLOSED = "closed"


class Http11Connection:
    """A connection to one origin (``scheme``, ``host``, ``port``), opened by its first
    request; see the module docstring."""

    def __init__(
        self,
        scheme: bytes,
        host: bytes,
        port: int | None,
        *,
        ssl_context: ssl.SSLContext,
        keepalive_expiry: float | None,
    ) -> None:
        self._tls = scheme == b"https"
        self._host = host.decode("ascii")
        self._port = port if port is not None else (443 if self._tls else 80)
        self._ssl_context = ssl_context
        self._expiry = keepalive_expiry
        self._stream: anyio.abc.ByteStream | None = None
        self._socket: Any = None
        self._state = _State.NEW
        self._idle_until = float("inf")

    # --- what the pool asks ------------------------------------------------------------

    def is_idle(self) -> bool:
        return self._state in (_State.NEW, _State.IDLE)

    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    def has_expired(self) -> bool:
        """Idle past its expiry, or closed (or spoken to) by the server while idle."""
        if self._state is not _State.IDLE:
            return self._state is _State.CLOSED
        if time.monotonic() > self._idle_until:
            return True
        # An idle connection has nothing to read: anything readable is the server's
        # close (or garbage), and the next request on it would fail.
        return self._socket is not None and _readable(self._socket)

    async def aclose(self) -> None:
        self._state = _State.CLOSED
        stream, self._stream = self._stream, None
        if stream is not None:
            # The peer may have gone first: nothing is left to release then.
            with (
                anyio.CancelScope(shield=True),
                contextlib.suppress(OSError, anyio.BrokenResourceError, ssl.SSLError),
            ):
                await stream.aclose()

    # --- one exchange ------------------------------------------------------------------

    async def exchange(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read the response head; the body streams from the
        returned response (the connection is idle again once it is read to its end)."""
        if not self.is_idle():
            raise RuntimeError("an HTTP/1.1 connection serves one exchange at a time")
        self._state = _State.ACTIVE
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        trace: Trace | None = request.extensions.get("trace")
        try:
            if self._stream is None:
                await self._connect(timeouts.get("connect"), trace)
            head, body, chunked = _request_head(request)
            if trace is not None:
                await trace("http11.send_request_headers.started", {"request": request})
            try:
                await self._send(head, body, chunked, request, timeouts.get("write"))
            except httpx.WriteError as broken:
                # A server may answer before reading the whole body (413, 401) and close:
                # its answer, when it sent one, says more than the broken pipe.
                try:
                    return await self._read_response(request, timeouts.get("read"), reusable=False)
                except httpx.HTTPError:
                    raise broken from None
            return await self._read_response(request, timeouts.get("read"))
        except BaseException:
            await self.aclose()
            raise

    async def _connect(self, limit: float | None, trace: Trace | None) -> None:
        info = {"host": self._host, "port": self._port}
        if trace is not None:
            await trace("connection.connect_tcp.started", info)
        try:
            with anyio.fail_after(limit):
                stream: anyio.abc.ByteStream
                if self._tls:
                    stream = await anyio.connect_tcp(
                        self._host,
                        self._port,
                        ssl_context=self._ssl_context,
                        tls_hostname=self._host,
                        tls_standard_compatible=False,  # servers may close without close_notify
                    )
                else:
                    stream = await anyio.connect_tcp(self._host, self._port)
        except TimeoutError as error:
            raise httpx.ConnectTimeout("timed out connecting") from error
        except (OSError, ssl.SSLError, anyio.BrokenResourceError) as error:
            raise httpx.ConnectError(f"connecting failed: {type(error).__name__}") from error
        self._stream = stream
        # A socket, or asyncio's stand-in for one (which has ``fileno`` too).
        self._socket = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)  # noqa: S610 - not SQL
        if trace is not None:
            await trace("connection.connect_tcp.complete", info)

    async def _send(
        self,
        head: bytes,
        body: bytes | None,
        chunked: bool,
        request: httpx.Request,
        limit: float | None,
    ) -> None:
        assert self._stream is not None
        try:
            with anyio.fail_after(limit):
                if body is not None:
                    await self._stream.send(head + body)
                    return
                await self._stream.send(head)
                async for piece in request.stream:  # type: ignore[union-attr]
                    if not piece:
                        continue
                    if chunked:
                        piece = b"%x\r\n%s\r\n" % (len(piece), piece)
                    await self._stream.send(piece)
                if chunked:
                    await self._stream.send(b"0\r\n\r\n")
        except TimeoutError as error:
            raise httpx.WriteTimeout("timed out writing the request") from error
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as error:
            raise httpx.WriteError(f"writing failed: {type(error).__name__}") from error

    async def _read_response(
        self, request: httpx.Request, limit: float | None, *, reusable: bool = True
    ) -> httpx.Response:
        reader = _Reader(self, limit)
        while True:
            head = await reader.head()
            version, status, reason, headers = _parse_head(head)
            if not 100 <= status < 200:
                break
            if status == 101:
                raise httpx.RemoteProtocolError("the server switched protocols unasked")
        tokens = _connection_tokens(headers)
        reusable = reusable and version == 1 and b"close" not in tokens
        if b"close" in _connection_tokens(request.headers.raw):
            reusable = False
        framing = _body_framing(request.method, status, headers)
        if framing.until_close or not framing.keep:
            reusable = False
        body = _Body(self, reader, framing, reusable)
        return httpx.Response(
            status_code=status,
            headers=headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.%d" % version, "reason_phrase": reason},
        )

    def _finished(self, reusable: bool) -> bool:
        """The exchange ended with its body read to the end: idle again, or to close."""
        if not reusable:
            return False
        self._state = _State.IDLE
        self._idle_until = float("inf") if self._expiry is None else time.monotonic() + self._expiry
        return True

    async def _receive(self) -> bytes:
        assert self._stream is not None
        try:
            return await self._stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            return b""
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError) as e:
            raise httpx.ReadError(f"reading failed: {type(e).__name__}") from e


class _Reader:
    """The bytes of one response, read as needed, each read under the read timeout."""

    def __init__(self, connection: Http11Connection, limit: float | None) -> None:
        self._connection = connection
        self._limit = limit
        self.buffer = bytearray()
        self.ended = False  # the server closed its side

    async def more(self) -> bool:
        """Read once more; ``False`` when the server has closed the connection."""
        if self.ended:
            return False
        try:
            with anyio.fail_after(self._limit):
                data = await self._connection._receive()
        except TimeoutError as error:
            raise httpx.ReadTimeout("timed out reading the response") from error
        if not data:
            self.ended = True
            return False
        self.buffer += data
        return True

    async def head(self) -> bytes:
        searched = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n", max(0, searched - 3))
            if end > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("the response head is too long")
            if end >= 0:
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                return head
            searched = len(self.buffer)
            if searched > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("the response head is too long")
            if not await self.more():
                raise httpx.RemoteProtocolError(
                    "the server closed the connection before a whole response head"
                    if self.buffer
                    else "the server closed the connection without a response"
                )

    async def line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("a chunk line is too long")
            if not await self.more():
                raise httpx.RemoteProtocolError("the server closed the connection mid-body")

    async def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not await self.more():
                raise httpx.RemoteProtocolError("the server closed the connection mid-body")
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data


class _Framing:
    """How a response body ends; ``keep`` is false when the connection must not serve
    another exchange afterwards."""

    __slots__ = ("chunked", "keep", "length", "until_close")

    def __init__(
        self,
        *,
        chunked: bool = False,
        length: int = 0,
        until_close: bool = False,
        keep: bool = True,
    ) -> None:
        self.chunked = chunked
        self.length = length
        self.until_close = until_close
        self.keep = keep


class _Body(httpx.AsyncByteStream):
    """A response body; read to its end it gives the connection back to idle, closed
    before that (or on any error) it closes the connection."""

    def __init__(
        self, connection: Http11Connection, reader: _Reader, framing: _Framing, reusable: bool
    ) -> None:
        self._connection = connection
        self._reader = reader
        self._framing = framing
        self._reusable = reusable
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._pieces():
                yield piece
        except BaseException:
            await self._connection.aclose()
            raise
        self._done = self._connection._finished(self._reusable and not self._reader.buffer)

    async def _pieces(self) -> AsyncIterator[bytes]:
        reader, framing = self._reader, self._framing
        if framing.chunked:
            while True:
                size_line = (await reader.line()).split(b";", 1)[0].strip()
                if not size_line or not all(c in b"0123456789abcdefABCDEF" for c in size_line):
                    raise httpx.RemoteProtocolError("a malformed chunk size")
                size = int(size_line, 16)
                if size == 0:
                    while await reader.line():  # trailers, up to the empty line
                        pass
                    return
                yield await reader.exactly(size)
                if await reader.line():
                    raise httpx.RemoteProtocolError("a chunk is longer than its size")
        elif framing.until_close:
            while True:
                if reader.buffer:
                    data = bytes(reader.buffer)
                    reader.buffer.clear()
                    yield data
                if not await reader.more():
                    return
        else:
            left = framing.length
            while left:
                if not reader.buffer and not await reader.more():
                    raise httpx.RemoteProtocolError("the server closed the connection mid-body")
                data = bytes(reader.buffer[:left])
                del reader.buffer[: len(data)]
                left -= len(data)
                yield data

    async def aclose(self) -> None:
        if not self._done:
            await self._connection.aclose()


# --- formatting and parsing ------------------------------------------------------------


def _request_head(request: httpx.Request) -> tuple[bytes, bytes | None, bool]:
    """The request's head, its body when it is in memory, and whether a streamed body is
    to be sent chunked."""
    method = request.method.encode("ascii")
    target = request.url.raw_path
    if not _TOKEN.fullmatch(method) or _UNSAFE_IN_VALUE.search(target) or b" " in target:
        raise httpx.LocalProtocolError("the request line cannot be sent")
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    chunked = False
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name) or _UNSAFE_IN_VALUE.search(value):
            raise httpx.LocalProtocolError("a request header cannot be sent")
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        lines.append(b"%s: %s" % (name, value))
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    try:
        body: bytes | None = request.content
    except httpx.RequestNotRead:
        body = None
    if body is not None and chunked:
        body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
    return head, body, chunked


def _parse_head(head: bytes) -> tuple[int, int, bytes, list[tuple[bytes, bytes]]]:
    status_line, _, rest = head.partition(b"\r\n")
    matched = _STATUS_LINE.fullmatch(status_line)
    if matched is None:
        raise httpx.RemoteProtocolError("a malformed status line")
    headers: list[tuple[bytes, bytes]] = []
    if rest:
        for line in rest.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name) or b"\n" in value or b"\r" in value:
                raise httpx.RemoteProtocolError("a malformed response header")
            headers.append((name, value.strip(b" \t")))
    return int(matched[1]), int(matched[2]), matched[3] or b"", headers


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }


def _body_framing(method: str, status: int, headers: list[tuple[bytes, bytes]]) -> _Framing:
    if method == "HEAD" or status in _NO_BODY_STATUSES:
        return _Framing()
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    if codings:
        last = b",".join(codings).split(b",")[-1].strip().lower()
        if last != b"chunked":
            return _Framing(until_close=True)
        # With a Content-Length too, the coding wins; a message framed both ways may be
        # an attempt to smuggle one, so the connection ends with it (RFC 9112 6.3).
        keep = not any(n.lower() == b"content-length" for n, _ in headers)
        return _Framing(chunked=True, keep=keep)
    lengths = {v.strip() for n, v in headers if n.lower() == b"content-length"}
    if not lengths:
        return _Framing(until_close=True)
    values = {part.strip() for value in lengths for part in value.split(b",")}
    if len(values) != 1:
        raise httpx.RemoteProtocolError("conflicting Content-Length headers")
    [value] = values
    if not value.isdigit() or len(value) > 18:
        raise httpx.RemoteProtocolError("a malformed Content-Length")
    return _Framing(length=int(value))


def _readable(sock: Any) -> bool:
    """Whether the socket has something to read (or has been closed): polled, not
    selected, since ``select`` refuses descriptors past 1023 and a busy host has more."""
    try:
        fd = sock.fileno()
        if fd < 0:
            return True  # closed under us
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True  # closed under us
    return bool(readable)
