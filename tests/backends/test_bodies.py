"""Bounded bodies: the request stream is closed on every way out of ``read_limited``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anyio
import pytest
from starlette.requests import Request

from agenthost.backends.bodies import (
    BodyTimedOut,
    BodyTooLarge,
    ClientGone,
    UnsupportedMediaType,
    read_json_body,
    read_limited,
)

pytestmark = pytest.mark.anyio


class TrackedRequest(Request):
    """Starlette's request, keeping the body streams it hands out (to see them closed)."""

    streams: list[AsyncGenerator[bytes, None]]

    def stream(self) -> AsyncGenerator[bytes, None]:
        generator = super().stream()
        self.streams.append(generator)
        return generator


def request_with(messages: list[dict[str, Any]], headers: dict[str, str]) -> TrackedRequest:
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    request = TrackedRequest(scope, receive)
    request.streams = []
    return request


def chunks(count: int, size: int = 10) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": b"x" * size, "more_body": True}] * count


def closed(generator: AsyncGenerator[bytes, None]) -> bool:
    return generator.ag_frame is None


async def test_an_oversized_body_leaves_no_open_stream() -> None:
    request = request_with(chunks(50), {})
    with pytest.raises(BodyTooLarge):
        await read_limited(request, 100)
    assert [closed(s) for s in request.streams] == [True]


async def test_a_slow_body_times_out_and_leaves_no_open_stream() -> None:
    request = request_with(chunks(2), {})  # then the client sends nothing more
    with pytest.raises(BodyTimedOut):
        await read_limited(request, 1000, within=0.2)
    assert [closed(s) for s in request.streams] == [True]


async def test_a_client_gone_mid_body_is_client_gone() -> None:
    request = request_with([*chunks(2), {"type": "http.disconnect"}], {})
    with pytest.raises(ClientGone):
        await read_limited(request, 1000)
    assert [closed(s) for s in request.streams] == [True]


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/merge-patch+json", True),
        (None, True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
async def test_json_bodies_need_a_json_content_type(
    content_type: str | None, accepted: bool
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    request = request_with([{"type": "http.request", "body": b"{}", "more_body": False}], headers)
    if accepted:
        assert await read_json_body(request, 100) == b"{}"
    else:
        with pytest.raises(UnsupportedMediaType):
            await read_json_body(request, 100)
