"""The Responses wire under bad input and refused callers: every refusal a clear 4xx in
OpenAI's error shape, before anything runs, streams or is stored; link codes never kept.

The real app runs in process with Starlette's ``TestClient`` on the suite's backend (fast
enough for generated input), WebSocket mode included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from agenthost import DenyAllLinks, Host, HostMessage, NativeIdAllowlist, OneTimeCodeLinker
from agenthost.channels.responses import ResponsesChannel
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

V1 = "/responses/v1"
KEYS = {"key-a": "alice", "key-m": "mallory"}
ALICE = {"authorization": "Bearer key-a", "content-type": "application/json"}
MALLORY = {"authorization": "Bearer key-m", "content-type": "application/json"}


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, messages: list[HostMessage]) -> str:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        return f"echo: {messages[-1].text}"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def host_for(target: Any, tmp_path: Path, **options: Any) -> Host:
    channel_options = options.pop("channel", {})
    return Host(
        target,
        channels=[ResponsesChannel(api_keys=KEYS, **channel_options)],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        **options,
    )


def client_for(host: Host) -> TestClient:
    return TestClient(host.app, backend=BACKEND, raise_server_exceptions=True)


@pytest.fixture
def client(tmp_path: Path, recorder: Recorder) -> Iterator[TestClient]:
    with client_for(host_for(recorder, tmp_path)) as test_client:
        yield test_client


def openai_error(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --- generated bad input -----------------------------------------------------------

VALID: dict[str, Any] = {
    "model": "m",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
}
PLACES: list[tuple[str | int, ...]] = [
    ("input",),
    ("input", 0, "content", 0, "text"),
    ("input", 0, "content"),
    ("input", 1, "summary"),  # inside an opaque (reasoning) item, stored as sent
    ("model",),
    ("user",),
    ("safety_identifier",),
    ("metadata", "k"),
    ("text",),
    ("text", "format", "type"),
    ("reasoning",),
    ("reasoning", "effort"),
    ("top_logprobs",),
    ("max_tool_calls",),
    ("temperature",),
    ("tools",),
    ("instructions",),
    ("previous_response_id",),
]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def with_reasoning_item(body: dict[str, Any], place: tuple[str | int, ...]) -> dict[str, Any]:
    if place[:2] == ("input", 1):
        body = {**body, "input": [*body["input"], {"type": "reasoning", "id": "rs_1"}]}
    return body


@FUZZ
@given(
    place=st.sampled_from(PLACES),
    fragment=bad_fragments,
    mode=st.sampled_from(["plain", "stream", "background"]),
)
def test_generated_bad_input_is_a_4xx_before_anything_runs(
    client: TestClient, recorder: Recorder, place: tuple[str | int, ...], fragment: Any, mode: str
) -> None:
    body = with_mark(with_reasoning_item(VALID, place), place)
    if mode != "plain":
        body[mode] = True
    before = recorder.calls
    response = client.post(f"{V1}/responses", content=splice(body, fragment), headers=ALICE)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert openai_error(response)["type"] == "invalid_request_error"
    assert recorder.calls == before


@FUZZ
@given(
    place=st.sampled_from(PLACES),
    fragment=odd_values,
    mode=st.sampled_from(["plain", "stream", "background"]),
)
def test_generated_odd_shapes_are_answered_or_refused_never_a_5xx(
    client: TestClient, place: tuple[str | int, ...], fragment: str, mode: str
) -> None:
    body = with_mark(with_reasoning_item(VALID, place), place)
    if mode != "plain":
        body[mode] = True
    response = client.post(f"{V1}/responses", content=splice(body, fragment), headers=ALICE)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        openai_error(response)
    elif mode != "stream":
        # Whatever was accepted was stored renderable: it reads back, as valid JSON.
        stored = client.get(f"{V1}/responses/{response.json()['id']}", headers=ALICE)
        assert stored.status_code == 200, stored.text
        items = client.get(f"{V1}/responses/{response.json()['id']}/input_items", headers=ALICE)
        assert items.status_code == 200, items.text


@pytest.mark.parametrize("limit", ["\u00b2", "٣", "9" * 5000, "-1", "0", "101", " 5"])
def test_list_limits_take_ascii_digits_in_range(client: TestClient, limit: str) -> None:
    created = client.post(f"{V1}/responses", json={"input": "hi"}, headers=ALICE)
    assert created.status_code == 200
    rid = created.json()["id"]
    conversation = client.post(f"{V1}/conversations", json={}, headers=ALICE).json()["id"]
    for url in (f"{V1}/responses/{rid}/input_items", f"{V1}/conversations/{conversation}/items"):
        answer = client.get(url, params={"limit": limit}, headers=ALICE)
        assert answer.status_code == 400, (url, answer.text)
        assert openai_error(answer)["param"] == "limit"
    assert client.get(f"{V1}/responses/{rid}/input_items?limit=5", headers=ALICE).status_code == 200


def test_ids_must_match_whole(client: TestClient, recorder: Recorder) -> None:
    first = client.post(f"{V1}/responses", json={"input": "hi"}, headers=ALICE).json()["id"]
    chained = client.post(
        f"{V1}/responses",
        json={"input": "again", "previous_response_id": f"{first}\n"},
        headers=ALICE,
    )
    assert chained.status_code == 400
    assert openai_error(chained)["param"] == "previous_response_id"
    assert recorder.calls == 1


def test_a_non_json_content_type_is_415(client: TestClient, recorder: Recorder) -> None:
    answer = client.post(
        f"{V1}/responses",
        content=b'{"input": "hi"}',
        headers={**ALICE, "content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 415
    assert openai_error(answer)["code"] == "unsupported_media_type"
    assert recorder.calls == 0


def test_the_websocket_answers_bad_messages_with_an_error_and_stays_open(
    client: TestClient, recorder: Recorder
) -> None:
    with client.websocket_connect(f"{V1}/responses", headers=ALICE) as websocket:
        for raw in (
            '{"type": "response.create", "input": "hi", "temperature": NaN}',
            '{"type": "response.create", "input": "\\ud800"}',
            '{"type": "response.create", "input": ' + "[" * 2000 + "]" * 2000 + "}",
            '{"type": "response.create", "input": "hi", "top_logprobs": ' + "7" * 5000 + "}",
        ):
            websocket.send_text(raw)
            error = websocket.receive_json()
            assert error["type"] == "error" and error["status"] == 400
        websocket.send_text(json.dumps({"type": "response.create", "input": "fine"}))
        while (event := websocket.receive_json())["type"] != "response.completed":
            assert event["type"] != "error"
    assert recorder.calls == 1


# --- a refused caller gets its status before any stream ----------------------------


def test_a_refused_caller_asking_for_a_stream_gets_403_not_a_stream(
    tmp_path: Path, recorder: Recorder
) -> None:
    host = host_for(
        recorder,
        tmp_path,
        channel={"allowlist": NativeIdAllowlist({"responses": ["alice"]})},
    )
    with client_for(host) as client:
        refused = client.post(
            f"{V1}/responses", json={"input": "hi", "stream": True}, headers=MALLORY
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("application/json")
        assert "response.created" not in refused.text
        assert openai_error(refused)["type"] == "permission_error"
        allowed = client.post(
            f"{V1}/responses", json={"input": "hi", "stream": True}, headers=ALICE
        )
        assert allowed.status_code == 200
        assert allowed.text.index("response.created") < allowed.text.index("response.completed")
    assert recorder.calls == 1


# --- link codes exist only in the one answer -----------------------------------------


def output_text(response: dict[str, Any]) -> str:
    return "".join(
        part.get("text", "")
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
    )


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_a_link_reply_is_shown_once_and_stored_redacted(
    tmp_path: Path, recorder: Recorder, background: bool
) -> None:
    host = host_for(recorder, tmp_path, linker=OneTimeCodeLinker())
    with client_for(host) as client:
        answer = client.post(
            f"{V1}/responses", json={"input": "/link", "background": background}, headers=ALICE
        )
        assert answer.status_code == 200, answer.text
        code = LINK_CODE.search(output_text(answer.json()))
        assert code is not None
        again = client.get(f"{V1}/responses/{answer.json()['id']}", headers=ALICE)
        assert again.status_code == 200
        assert again.json()["status"] == "completed"
        assert code.group() not in again.text
    assert code.group() not in stored_text(tmp_path / "state.db")
    assert recorder.calls == 0


def test_a_code_sent_to_link_is_not_kept_in_the_input_items(
    tmp_path: Path, recorder: Recorder
) -> None:
    # The link policy refuses the link, so the code stays usable: it must not be stored.
    host = host_for(recorder, tmp_path, linker=OneTimeCodeLinker(), link_policy=DenyAllLinks())
    with client_for(host) as client:
        issued = client.post(f"{V1}/responses", json={"input": "/link"}, headers=ALICE)
        code = LINK_CODE.search(output_text(issued.json()))
        assert code is not None
        sent = client.post(
            f"{V1}/responses", json={"input": f"/link {code.group()}"}, headers=MALLORY
        )
        assert sent.status_code == 200, sent.text
        items = client.get(f"{V1}/responses/{sent.json()['id']}/input_items", headers=MALLORY)
        assert items.status_code == 200
        assert items.json()["data"][0]["content"][0]["text"] == "/link"
    assert code.group() not in stored_text(tmp_path / "state.db")
