"""The A2A wire itself, with raw HTTP: v0.3 JSON shapes, the card, and every kind of bad
input answered with A2A's error codes and bland messages (never a 500, never a trace)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.channels.a2a.support import (
    TIMEOUT,
    echo_target,
    make_channel,
    make_host,
    serving,
)

pytestmark = pytest.mark.anyio

AUTH = {"authorization": "Bearer key-a"}


def rpc(method: str, params: Any, request_id: int | str = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def v03_message(text: str, message_id: str = "m-1", **extra: Any) -> dict[str, Any]:
    return {
        "kind": "message",
        "messageId": message_id,
        "role": "user",
        "parts": [{"kind": "text", "text": text}],
        **extra,
    }


def v10_message(
    parts: list[dict[str, Any]], message_id: str = "m-1", **extra: Any
) -> dict[str, Any]:
    return {"messageId": message_id, "role": "ROLE_USER", "parts": parts, **extra}


def sse_data(body: str) -> list[Any]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


async def test_v03_shapes_on_the_wire(tmp_path: Path) -> None:
    async with (
        serving(make_host(echo_target, tmp_path)) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        sent = (
            await http.post("/a2a", json=rpc("message/send", {"message": v03_message("hi")}))
        ).json()
        task = sent["result"]
        streamed = await http.post(
            "/a2a", json=rpc("message/stream", {"message": v03_message("yo", "m-2")}, "s-1")
        )
        listed = (await http.post("/a2a", json=rpc("tasks/list", {}))).json()
        got = (
            await http.post("/a2a", json=rpc("tasks/get", {"id": task["id"], "historyLength": 1}))
        ).json()
    assert sent["id"] == 1
    assert task["kind"] == "task"
    assert task["status"]["state"] == "completed"
    assert task["artifacts"][0]["parts"] == [{"kind": "text", "text": "echo hi #1"}]
    assert [m["role"] for m in task["history"]] == ["user", "agent"]
    events = sse_data(streamed.text)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert all(e["id"] == "s-1" and e["jsonrpc"] == "2.0" for e in events)
    kinds = [e["result"]["kind"] for e in events]
    assert kinds[0] == "task" and kinds[-1] == "status-update"
    assert events[-1]["result"]["final"] is True
    assert events[-1]["result"]["status"]["state"] == "completed"
    assert "artifact-update" in kinds
    assert {t["id"] for t in listed["result"]["tasks"]} >= {task["id"]}
    assert [m["role"] for m in got["result"]["history"]] == ["agent"]


async def test_the_card_serves_both_generations_and_the_security_scheme(tmp_path: Path) -> None:
    async with (
        serving(make_host(echo_target, tmp_path)) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http,
    ):
        card = (await http.get("/.well-known/agent-card.json")).json()
        legacy = (await http.get("/.well-known/agent.json")).json()
    assert card == legacy
    assert card["name"] == "test agent"
    interfaces = {(i["protocolBinding"], i["protocolVersion"]) for i in card["supportedInterfaces"]}
    assert interfaces == {("JSONRPC", "1.0"), ("HTTP+JSON", "1.0"), ("JSONRPC", "0.3")}
    assert all(i["url"] == f"{base_url}/a2a" for i in card["supportedInterfaces"])
    assert card["url"] == f"{base_url}/a2a" and card["protocolVersion"] == "0.3"
    assert card["capabilities"]["streaming"] is True
    assert card["capabilities"]["pushNotifications"] is True
    scheme = card["securitySchemes"]["bearer"]
    assert scheme["httpAuthSecurityScheme"]["scheme"] == "Bearer"  # v1.0
    assert scheme["type"] == "http"  # v0.3
    assert card["skills"][0]["id"] == "chat"


BAD_REQUESTS = [
    pytest.param(b"{not json", -32700, id="invalid-json"),
    pytest.param(json.dumps([rpc("GetTask", {"id": "x"})]).encode(), -32600, id="batch"),
    pytest.param(json.dumps({"id": 1, "method": "GetTask"}).encode(), -32600, id="no-jsonrpc"),
    pytest.param(json.dumps(rpc("tasks/explode", {})).encode(), -32601, id="unknown-method"),
    pytest.param(
        json.dumps(rpc("GetTask", {"id": 5, "historyLength": "x"})).encode(),
        -32602,
        id="bad-params-v10",
    ),
    pytest.param(
        json.dumps(rpc("message/send", {"message": {"parts": 3}})).encode(),
        -32602,
        id="bad-params-v03",
    ),
    pytest.param(
        json.dumps(rpc("GetTask", {"id": "tsk_nope"})).encode(), -32001, id="unknown-task"
    ),
    pytest.param(
        json.dumps(rpc("tasks/cancel", {"id": "tsk_nope"})).encode(), -32001, id="cancel-unknown"
    ),
    pytest.param(json.dumps(rpc("GetExtendedAgentCard", {})).encode(), -32007, id="extended-card"),
    pytest.param(
        json.dumps(
            rpc(
                "SendMessage",
                {
                    "message": v10_message([{"text": "hi"}]),
                    "configuration": {"acceptedOutputModes": ["image/png"]},
                },
            )
        ).encode(),
        -32005,
        id="output-mode",
    ),
    pytest.param(
        json.dumps(
            rpc(
                "SendMessage",
                {
                    "message": v10_message(
                        [{"url": "https://example.com/a.zip", "mediaType": "application/zip"}]
                    )
                },
            )
        ).encode(),
        -32005,
        id="input-media-type",
    ),
    pytest.param(
        json.dumps(
            rpc(
                "SendMessage",
                {
                    "message": v10_message(
                        [{"raw": base64.b64encode(b"x" * 2048).decode(), "mediaType": "image/png"}]
                    )
                },
            )
        ).encode(),
        -32602,
        id="file-too-large",
    ),
    pytest.param(
        json.dumps(rpc("SendMessage", {"message": v10_message([])})).encode(), -32602, id="no-parts"
    ),
    pytest.param(
        json.dumps(
            rpc("SendMessage", {"message": {**v10_message([{"text": "x"}]), "role": "ROLE_AGENT"}})
        ).encode(),
        -32602,
        id="agent-role",
    ),
]


@pytest.mark.parametrize(("body", "code"), BAD_REQUESTS)
async def test_bad_requests_get_a2a_error_codes(tmp_path: Path, body: bytes, code: int) -> None:
    channel = make_channel(max_file_bytes=1024)
    async with (
        serving(make_host(echo_target, tmp_path, channel=channel)) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        answer = await http.post("/a2a", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200
    error = answer.json()["error"]
    assert error["code"] == code
    assert "Traceback" not in error["message"] and "Error(" not in error["message"]


async def test_version_auth_size_and_continuation_errors(tmp_path: Path) -> None:
    channel = make_channel(max_body_bytes=4096, push_notifications=False)
    async with (
        serving(make_host(echo_target, tmp_path, channel=channel)) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        get = rpc("GetTask", {"id": "tsk_nope"})
        version = await http.post("/a2a", json=get, headers={"a2a-version": "2.0"})
        nobody = await http.post("/a2a", json=get, headers={"authorization": "Bearer wrong"})
        huge = await http.post("/a2a", json=rpc("SendMessage", {"x": "y" * 10_000}))
        done = (
            await http.post("/a2a", json=rpc("message/send", {"message": v03_message("hi")}))
        ).json()
        task_id = done["result"]["id"]
        follow_up = await http.post(
            "/a2a",
            json=rpc("message/send", {"message": v03_message("more", "m-2", taskId=task_id)}),
        )
        cancel = await http.post("/a2a", json=rpc("CancelTask", {"id": task_id}))
        resubscribe = await http.post("/a2a", json=rpc("tasks/resubscribe", {"id": task_id}))
        push = await http.post(
            "/a2a",
            json=rpc(
                "CreateTaskPushNotificationConfig",
                {"taskId": task_id, "url": "https://example.com/h"},
            ),
        )
        rest_missing = await http.get("/a2a/tasks/tsk_nope")
        rest_bad_route = await http.get("/a2a/tasks/x/y/z")
    assert version.json()["error"]["code"] == -32009
    assert nobody.status_code == 401 and nobody.headers["www-authenticate"] == "Bearer"
    assert huge.status_code == 413
    assert follow_up.json()["error"]["code"] == -32004
    assert cancel.json()["error"]["code"] == -32002
    assert resubscribe.json()["error"]["code"] == -32004
    assert push.json()["error"]["code"] == -32003
    assert rest_missing.status_code == 404
    detail = rest_missing.json()["error"]["details"][0]
    assert detail["reason"] == "TASK_NOT_FOUND"
    assert rest_bad_route.status_code == 404


async def test_a_failing_target_fails_the_task_without_its_exception_text(tmp_path: Path) -> None:
    async def broken(messages: list[Any]) -> str:
        raise RuntimeError("database password is hunter2")

    async with (
        serving(make_host(broken, tmp_path, background_max_attempts=1)) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        with anyio.fail_after(TIMEOUT):
            answer = await http.post(
                "/a2a", json=rpc("SendMessage", {"message": v10_message([{"text": "hi"}])})
            )
    task = answer.json()["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_FAILED"
    assert "hunter2" not in answer.text and "RuntimeError" not in answer.text
    assert (
        task["status"]["message"]["parts"][0]["text"] == "The agent could not complete this task."
    )


async def test_finished_tasks_expire_after_the_ttl(tmp_path: Path) -> None:
    channel = make_channel(task_ttl_seconds=0.5)
    async with (
        serving(make_host(echo_target, tmp_path, channel=channel)) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        sent = await http.post("/a2a", json=rpc("message/send", {"message": v03_message("hi")}))
        task_id = sent.json()["result"]["id"]
        fresh = await http.post("/a2a", json=rpc("tasks/get", {"id": task_id}))
        await anyio.sleep(0.7)
        expired = await http.post("/a2a", json=rpc("tasks/get", {"id": task_id}))
        listed = await http.post("/a2a", json=rpc("ListTasks", {}))
    assert fresh.json()["result"]["id"] == task_id
    assert expired.json()["error"]["code"] == -32001
    assert listed.json()["result"]["tasks"] == []


async def test_rest_query_and_path_errors_keep_the_rest_error_shape(tmp_path: Path) -> None:
    async with (
        serving(make_host(echo_target, tmp_path)) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=TIMEOUT) as http,
    ):
        bad_size = await http.get("/a2a/tasks", params={"pageSize": "lots"})
        too_big = await http.get("/a2a/tasks", params={"pageSize": "1000"})
        bad_history = await http.get("/a2a/tasks/tsk_x", params={"historyLength": "x"})
        bad_body = await http.post(
            "/a2a/message:send", content=b"[1]", headers={"content-type": "application/json"}
        )
    for answer, reason in (
        (bad_size, "INVALID_PARAMS"),
        (too_big, "INVALID_PARAMS"),
        (bad_history, "INVALID_PARAMS"),
        (bad_body, "INVALID_PARAMS"),
    ):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["details"][0]["reason"] == reason
