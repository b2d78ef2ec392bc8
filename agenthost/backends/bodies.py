"""Bounded request bodies, shared by the channels.

A body is read only up to a limit. An oversized one is answered 413 at once, and the
response then reads and drops the rest (bounded in bytes and time): a client that waits for
the answer sees it early, and one that writes its whole body first is not cut off mid-write
and still reads the 413 instead of a reset connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_SECONDS = 10.0


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body exceeds {limit} bytes.")
        self.limit = limit


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


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
