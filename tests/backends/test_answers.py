"""JSON answers render as Starlette's JSONResponse does; an AsgiRoute behaves as a route."""

from __future__ import annotations

import math

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthost.backends.answers import AsgiRoute, JsonAnswer, raw_headers, request_header

pytestmark = pytest.mark.anyio

CONTENT = {"text": "héllo ✓ \u2028", "n": [1, 2.5, None, True], "nested": {"a": "b"}}


def test_a_json_answer_is_the_bytes_starlette_renders() -> None:
    answer = JsonAnswer(CONTENT, 201, raw_headers([("X-Request-Id", "req_1")]))
    assert answer.body == JSONResponse(CONTENT).body
    assert answer.status_code == 201
    assert answer.headers["x-request-id"] == "req_1"
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["content-length"] == str(len(answer.body))


def test_a_json_answer_refuses_what_json_cannot_spell() -> None:
    with pytest.raises(ValueError):
        JsonAnswer({"x": math.nan})
    with pytest.raises(ValueError):
        JsonAnswer({"x": [1.5, -math.inf]})


async def _answer(request: Request) -> Response:
    if request.query_params.get("fail"):
        raise HTTPException(418, "teapot")
    return JsonAnswer({"path": request.url.path, "body": (await request.body()).decode()})


async def test_an_asgi_route_answers_and_keeps_the_apps_method_and_error_handling() -> None:
    app = Starlette(routes=[Route("/a", AsgiRoute(_answer), methods=["POST"])])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answered = await client.post("/a", content=b"hi")
        wrong_method = await client.get("/a")
        failed = await client.post("/a?fail=1")
    assert answered.status_code == 200
    assert answered.json() == {"path": "/a", "body": "hi"}
    assert wrong_method.status_code == 405
    assert failed.status_code == 418


_HEADER_NAMES = st.sampled_from(
    [b"content-type", b"content-length", b"x-agent-invocation-id", b"x-other", b"x"]
)


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(st.tuples(_HEADER_NAMES, st.binary(max_size=12)), max_size=6),
    name=_HEADER_NAMES,
)
def test_a_request_header_is_what_starlette_headers_answer(
    headers: list[tuple[bytes, bytes]], name: bytes
) -> None:
    request = Request({"type": "http", "headers": headers})
    assert request_header(request, name) == request.headers.get(name.decode())
