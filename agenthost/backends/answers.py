"""Plain JSON answers for the channels' hot routes, and the route shape that serves them.

Every foreground turn ends in one JSON answer, so what Starlette does per answer counts:
:class:`JsonAnswer` renders its body with one encoder built once (compact UTF-8 JSON with
no NaN, as Starlette's ``JSONResponse`` writes it, by :mod:`~agenthost.sansio_core.json_encoders`'
rules) and takes its headers as the bytes they go out as. :class:`AsgiRoute` serves a
handler of a ``Request`` as a plain ASGI app, mounted in the app's router like any route
(routing, middleware and exception handling stay the app's), without the per-request
wrapping a Starlette endpoint function gets.

This module renders and serves; it decides nothing about what an answer says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agenthost.sansio_core.json_encoders import compact_bytes_encoder

RawHeaders = list[tuple[bytes, bytes]]

_ENCODE = compact_bytes_encoder(allow_nan=False)
_JSON_TYPE = (b"content-type", b"application/json")


def raw_headers(headers: Iterable[tuple[str, str]]) -> RawHeaders:
    """Header pairs as they go out (names lower-cased; latin-1, as HTTP/1.1 sends them)."""
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def request_header(request: Request, name: bytes) -> str | None:
    """The first value of the header ``name`` (lower-case, as ASGI gives names), or
    ``None``: ``request.headers.get`` without building a ``Headers`` or raising a
    ``KeyError`` for a header the request lacks."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def encode_json(content: Any) -> bytes:
    """``content`` as the JSON bytes every answer here carries."""
    return _ENCODE(content)


class JsonAnswer(Response):
    """A JSON response; ``headers`` are raw pairs (see :func:`raw_headers`), sent first."""

    media_type = "application/json"

    def __init__(
        self, content: Any, status_code: int = 200, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        # Not Response.__init__: the body and headers are built here, once, as bytes.
        body = encode_json(content)
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [*headers, (b"content-length", str(len(body)).encode()), _JSON_TYPE]


Handler = Callable[[Request], Awaitable[Response]]


class AsgiRoute:
    """An ASGI app answering each request with ``handler(request)``'s response.

    Mounted as a route's endpoint (``Route(path, AsgiRoute(handler), methods=[...])``);
    errors the handler raises reach the app's exception middleware as they would from an
    endpoint function.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._handler(Request(scope, receive, send))
        await response(scope, receive, send)
