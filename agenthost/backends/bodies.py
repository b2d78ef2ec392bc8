"""Bounded request bodies, shared by the channels.

A body is read only up to a size limit and within a time limit (the server times out
slow headers, not slow bodies, so a client trickling its body would otherwise hold a
request open for ever). An oversized one is answered 413 at once, and the response then
reads and drops the rest (bounded in bytes and time): a client that waits for the answer
sees it early, and one that writes its whole body first is not cut off mid-write and still
reads the 413 instead of a reset connection. A body that is too slow is answered 408; a
declared content type that is not JSON, where JSON is expected, 415. A client that goes
away mid-body is :class:`ClientGone`: nobody is left to answer, so it is a debug line.

Each refusal is a :class:`BodyRefused` with its status; the channel renders it in its own
protocol's error shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator, Mapping
from typing import Any, cast

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from agenthost.backends.answers import request_header
from agenthost.backends.asyncio_bridge import asyncio_timeout

DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_SECONDS = 10.0
BODY_SECONDS = 30.0
# Messages read before the deadline is armed, while each answers without waiting: a bound,
# so a server handing out empty messages for ever cannot hold the event loop.
MAX_MESSAGES_AT_ONCE = 16


class BodyRefused(Exception):
    """A body the host will not read: answer ``status`` with ``message`` (caller-safe)."""

    status = 400
    code = "invalid_body"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def response(self, content: Any, headers: Mapping[str, str] | None = None) -> Response:
        """The answer, with ``content`` in the channel's error shape."""
        return JSONResponse(content, status_code=self.status, headers=headers)


class BodyTooLarge(BodyRefused):
    status = 413
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body exceeds {limit} bytes.")
        self.limit = limit

    def response(self, content: Any, headers: Mapping[str, str] | None = None) -> Response:
        return OversizedBodyResponse(content, headers=headers)


class BodyTimedOut(BodyRefused):
    status = 408
    code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request body did not arrive within {seconds:g} seconds.")

    def response(self, content: Any, headers: Mapping[str, str] | None = None) -> Response:
        # The rest of the body may still be on its way: this connection cannot be reused.
        return JSONResponse(
            content, status_code=self.status, headers={**(headers or {}), "connection": "close"}
        )


class UnsupportedMediaType(BodyRefused):
    status = 415
    code = "unsupported_media_type"

    def __init__(self) -> None:
        super().__init__("The request body must be JSON (content-type: application/json).")


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


def require_json(request: Request) -> None:
    """Refuse a declared content type that is not JSON (none declared is taken as JSON)."""
    declared = request_header(request, b"content-type")
    if declared is None:
        return
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise UnsupportedMediaType()


async def read_json_body(request: Request, limit: int, *, within: float = BODY_SECONDS) -> bytes:
    """A JSON body's bytes (the codec parses them): :func:`require_json`, then
    :func:`read_limited`."""
    require_json(request)
    return await read_limited(request, limit, within=within)


async def read_limited(request: Request, limit: int, *, within: float = BODY_SECONDS) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as it passes ``limit`` bytes,
    :class:`BodyTimedOut` when it takes longer than ``within`` seconds, :class:`ClientGone`
    when the client disconnects first.

    The body is read straight from the request's ``receive`` (no stream generator, one
    deadline) and kept on the request, so a later ``request.body()`` (say, in a run hook
    that gets the request) answers it instead of waiting for a body already read.
    """
    cached: bytes | None = getattr(request, "_body", None)
    if cached is not None:  # read before (by a middleware or a verifier)
        if len(cached) > limit:
            raise BodyTooLarge(limit)
        return cached
    declared = request_header(request, b"content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    body = await receive_limited(request.receive, limit, within=within)
    request._body = body  # what Starlette's own ``body()`` keeps, and answers from
    return body


async def receive_limited(receive: Receive, limit: int, *, within: float) -> bytes:
    """The body's bytes from ASGI ``receive`` messages, within ``limit`` and ``within``
    (:func:`read_limited`'s rules, for an app that holds no ``Request``).

    On asyncio the deadline is armed only once a ``receive`` has to wait: a body the
    server already holds whole (most are: the request's first read brought it; Hypercorn
    hands it over as two messages, the bytes and an empty last one) is read with no timer.
    The timer costs far more in a served loop than timeit shows in an idle one: without it
    a new-session Invocations request on MemoryStore took 447k instructions instead of
    475k (callgrind, in process, Hypercorn's two messages).
    """
    body = _Body(limit)
    timeout = asyncio_timeout(within)  # cheaper than anyio's scope, where there is one
    if timeout is None:
        # On trio every receive starts inside the deadline's cancel scope: a scope that
        # receive opens before it waits must nest inside this one.
        with anyio.CancelScope(deadline=anyio.current_time() + within):
            return await _receive_rest(receive, None, body)
        # Only the deadline ends the scope without an answer: a cancellation from outside
        # propagates.
        raise BodyTimedOut(within)
    rest: Awaitable[Message] | None = None
    for _ in range(MAX_MESSAGES_AT_ONCE):
        message, rest = _answered_now(receive)
        if message is None:
            break  # this receive waits: the rest goes on under the deadline
        if body.take(message):
            return body.joined()
    # asyncio's timeout is no scope on a stack: a receive started before it continues
    # inside it, and its cancellation reaches the await that receive waits in.
    try:
        async with timeout:
            return await _receive_rest(receive, rest, body)
    except TimeoutError:
        raise BodyTimedOut(within) from None


async def _receive_rest(receive: Receive, started: Awaitable[Message] | None, body: _Body) -> bytes:
    """Receive until the body ends, beginning with the ``receive`` already ``started``."""
    if started is not None and body.take(await started):
        return body.joined()
    while not body.take(await receive()):
        pass
    return body.joined()


class _Body:
    """The chunks of a body read so far, refused past ``limit`` bytes."""

    __slots__ = ("chunks", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.limit = limit
        self.size = 0

    def take(self, message: Message) -> bool:
        """Add ``message``'s bytes; whether the body has ended."""
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                self.size += len(chunk)
                if self.size > self.limit:
                    raise BodyTooLarge(self.limit)
                self.chunks.append(chunk)
            return not message.get("more_body", False)
        if kind == "http.disconnect":
            raise ClientGone()
        return False

    def joined(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _answered_now(receive: Receive) -> tuple[Message | None, Awaitable[Message] | None]:
    """Start ``receive()``: its message when it answers without waiting, else ``None`` and
    an awaitable that goes on with it (the wait it began, not a second ``receive``)."""
    steps = receive().__await__()
    try:
        first = steps.send(None)
    except StopIteration as answered:
        return answered.value, None
    return None, _Continued(steps, first)


class _Continued:
    """Awaits the rest of an ``__await__`` iterator that has yielded ``first`` once to the
    event loop: what the loop answers (a value or an exception) is passed back in, as
    ``yield from`` would have passed it."""

    __slots__ = ("_first", "_steps")

    def __init__(self, steps: Generator[Any, Any, Message], first: Any) -> None:
        self._steps = steps
        self._first = first

    def __await__(self) -> Generator[Any, Any, Message]:
        steps, yielded = self._steps, self._first
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as thrown:
                try:
                    yielded = steps.throw(thrown)
                except StopIteration as answered:
                    return cast("Message", answered.value)
            else:
                try:
                    yielded = steps.send(sent)
                except StopIteration as answered:
                    return cast("Message", answered.value)


class OversizedBodyResponse(JSONResponse):
    """A JSON 413 that drains what is left of the request body after it is sent."""

    def __init__(self, content: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(content, status_code=413, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
        drained = 0
        with anyio.move_on_after(DRAIN_SECONDS):
            while drained <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
