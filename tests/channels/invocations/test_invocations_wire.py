"""The Invocations wire under bad input and hostile callers: every refusal a clear 4xx,
nothing run or stored first, and every run readable and cancellable by its owner only.

Most tests drive the real app in process with Starlette's ``TestClient`` on the suite's
backend (fast enough for generated input); the body-timing tests use real Hypercorn.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import HTTPConnection
from starlette.testclient import TestClient

from agenthost import Host, HostMessage, NativeIdAllowlist, OneTimeCodeLinker
from agenthost.channels.invocations import InvocationsChannel
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.wire_fuzz import (
    LINK_CODE,
    bad_fragments,
    odd_values,
    splice,
    stored_text,
    with_mark,
)
from tests.conftest import BACKEND
from tests.served import served

INVOKE = "/invocations/invoke"
JSON = {"content-type": "application/json"}


class Recorder:
    """An async target that notes each call; a ``/slow`` input keeps it running."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, messages: list[HostMessage]) -> str:
        self.calls += 1
        if messages[-1].text.startswith("slow"):
            await anyio.sleep(30)
        return f"echo: {messages[-1].text}"


def by_header(connection: HTTPConnection) -> str | None:
    return connection.headers.get("x-user") or None


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def client_for(host: Host) -> TestClient:
    return TestClient(host.app, backend=BACKEND, raise_server_exceptions=True)


@pytest.fixture
def client(tmp_path: Path, recorder: Recorder) -> Iterator[TestClient]:
    host = Host(
        recorder,
        channels=[InvocationsChannel(authenticate=by_header)],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
    )
    with client_for(host) as test_client:
        yield test_client


# --- generated bad input -----------------------------------------------------------

VALID = {"input": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
PLACES: list[tuple[str | int, ...]] = [
    ("input",),
    ("input", 0, "content"),
    ("input", 0, "content", 0, "text"),
    ("input", 0, "content", 0, "image_url"),
    ("input", 0, "role"),
    ("session_id",),
    ("session_mode",),
    ("background",),
    ("response_target",),
    ("metadata",),
]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(place=st.sampled_from(PLACES), fragment=bad_fragments, background=st.booleans())
def test_generated_bad_input_is_a_4xx_before_anything_runs(
    client: TestClient, recorder: Recorder, place: tuple[str | int, ...], fragment: Any,
    background: bool,
) -> None:  # fmt: skip
    body = with_mark({**VALID, "background": background}, place)
    before = recorder.calls
    response = client.post(INVOKE, content=splice(body, fragment), headers={**JSON, "x-user": "a"})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"]
    assert recorder.calls == before


@FUZZ
@given(place=st.sampled_from(PLACES), fragment=odd_values, background=st.booleans())
def test_generated_odd_shapes_are_answered_or_refused_never_a_5xx(
    client: TestClient, place: tuple[str | int, ...], fragment: str, background: bool
) -> None:
    body = with_mark({**VALID, "background": background}, place)
    response = client.post(INVOKE, content=splice(body, fragment), headers={**JSON, "x-user": "a"})
    assert response.status_code < 500, response.text
    if response.status_code == 202:
        polled = client.get(response.json()["poll_url"], headers={"x-user": "a"})
        assert polled.status_code == 200, polled.text


@pytest.mark.parametrize(
    "body",
    [
        {"input": {"foo": "bar"}},  # an object where this agent takes no typed input
        {"input": {"role": "user"}},  # a message without content
        {"input": {"content": "hi", "role": ["user"]}},
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        {"input": [{"role": "user", "content": [{"type": "image_url", "image_url": "ftp://h/a"}]}]},
        {"input": [{"content": [{"type": "input_image", "image_url": "data:image/png;base64,!"}]}]},
        {"input": [{"content": [{"type": "input_image", "image_url": "https://a b/c.png"}]}]},
    ],
)
def test_malformed_shapes_are_refused_before_the_target_runs(
    client: TestClient, recorder: Recorder, body: Any
) -> None:
    response = client.post(INVOKE, json=body, headers={"x-user": "a"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert recorder.calls == 0


def test_a_well_formed_image_part_is_accepted(client: TestClient, recorder: Recorder) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    content = [{"type": "text", "text": "look"}, {"type": "input_image", "image_url": image}]
    response = client.post(
        INVOKE, json={"input": [{"role": "user", "content": content}]}, headers={"x-user": "a"}
    )
    assert response.status_code == 200, response.text
    assert recorder.calls == 1


@pytest.mark.parametrize("session_id", ["abc\n", "abc\r\n", "a" * 257, "with space"])
def test_session_ids_must_match_whole(client: TestClient, session_id: str) -> None:
    in_body = client.post(
        INVOKE, json={"input": "hi", "session_id": session_id}, headers={"x-user": "a"}
    )
    assert in_body.status_code == 422
    in_query = client.post(
        INVOKE,
        json={"input": "hi"},
        params={"agent_session_id": session_id},
        headers={"x-user": "a"},
    )
    assert in_query.status_code == 422


def test_a_non_json_content_type_is_415(client: TestClient, recorder: Recorder) -> None:
    response = client.post(
        INVOKE,
        content=b'{"input": "hi"}',
        headers={"content-type": "text/plain", "x-user": "a"},
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert recorder.calls == 0


# --- ownership of runs -------------------------------------------------------------


def test_only_the_owner_polls_or_cancels_a_run(client: TestClient) -> None:
    accepted = client.post(
        INVOKE, json={"input": "slow job", "background": True}, headers={"x-user": "alice"}
    )
    assert accepted.status_code == 202
    url = accepted.json()["poll_url"]

    assert client.get(url, headers={"x-user": "bob"}).status_code == 404
    assert client.get(url).status_code == 401  # no caller at all
    assert client.post(f"{url}/cancel", headers={"x-user": "bob"}).status_code == 404
    assert client.post(f"{url}/cancel").status_code == 401
    # Bob's cancel did nothing: Alice's run is still alive, and only she stops it.
    mine = client.get(url, headers={"x-user": "alice"})
    assert mine.status_code == 200
    assert mine.json()["status"] in ("queued", "running")
    cancelled = client.post(f"{url}/cancel", headers={"x-user": "alice"})
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"


# --- refusals before a stream starts ---------------------------------------------------


def test_a_refused_caller_asking_for_a_stream_gets_403_not_a_stream(
    tmp_path: Path, recorder: Recorder
) -> None:
    host = Host(
        recorder,
        channels=[InvocationsChannel(authenticate=by_header)],
        allowlist=NativeIdAllowlist({"invocations": ["alice"]}),
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
    )
    with client_for(host) as client:
        refused = client.post(
            INVOKE, json={"input": "hi", "stream": True}, headers={"x-user": "mallory"}
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("application/json")
        assert refused.json()["error"]["code"] == "forbidden"
        allowed = client.post(
            INVOKE, json={"input": "hi", "stream": True}, headers={"x-user": "alice"}
        )
        assert allowed.status_code == 200
        assert "event: done" in allowed.text
    assert recorder.calls == 1


# --- link codes exist only in the one answer -------------------------------------------


def test_a_background_link_is_answered_at_once_and_its_code_never_stored(
    tmp_path: Path, recorder: Recorder
) -> None:
    db = tmp_path / "state.db"
    host = Host(
        recorder,
        channels=[InvocationsChannel(authenticate=by_header)],
        linker=OneTimeCodeLinker(),
        store=SQLiteStore(db),
        state_dir=tmp_path,
    )
    with client_for(host) as client:
        answer = client.post(
            INVOKE, json={"input": "/link", "background": True}, headers={"x-user": "alice"}
        )
        assert answer.status_code == 200, answer.text
        code = LINK_CODE.search(answer.json()["output"])
        assert code is not None
    assert code.group() not in stored_text(db)
    assert recorder.calls == 0


# --- bodies over a real socket ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_slow_body_is_408_and_a_vanished_client_is_no_error(
    tmp_path: Path, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    host = Host(
        recorder,
        channels=[InvocationsChannel(body_timeout_seconds=0.5)],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
    )
    head = (
        b"POST /invocations/invoke HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        b"content-length: 100\r\n\r\n" + b'{"input": "'
    )
    with anyio.fail_after(20):
        async with served(host.app) as base_url:
            port = int(base_url.rsplit(":", 1)[1])
            async with await anyio.connect_tcp("127.0.0.1", port) as slow:
                await slow.send(head)  # ...and never the rest
                answer = b""
                with contextlib.suppress(anyio.EndOfStream):
                    while True:  # until the server closes the connection
                        answer += await slow.receive()
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            assert b'"code":"request_timeout"' in answer
            assert b"connection: close" in answer.lower()

            async with await anyio.connect_tcp("127.0.0.1", port) as leaving:
                await leaving.send(head)
            while not any("abandoned" in r.getMessage() for r in caplog.records):
                await anyio.sleep(0.02)
    assert recorder.calls == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
