"""The A2A codec and task lifecycle, pure: payloads shaped like the specification's
examples in, host messages and tasks out, with no server."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from a2a.types import a2a_pb2 as pb
from a2a.utils import errors
from google.protobuf import json_format

from agenthost.channels.a2a import codec, tasks
from agenthost.sansio_core.types import TextPart, UriPart

LIMITS = codec.InputLimits(("text/plain", "application/json", "image/*"), ("text/plain",), 16)

# v0.3 ``message/send`` as the v0.3 specification shows it: text, a file by URI, a data part.
V03_SEND = {
    "jsonrpc": "2.0",
    "id": "req-7",
    "method": "message/send",
    "params": {
        "message": {
            "kind": "message",
            "role": "user",
            "messageId": "9229e770-767c-417b-a0b0-f0741243c589",
            "contextId": "c295ea44-7543-4f78-b524-7a38915ad6e4",
            "parts": [
                {"kind": "text", "text": "Analyze this image and these numbers"},
                {
                    "kind": "file",
                    "file": {"uri": "https://example.com/chart.png", "mimeType": "image/png"},
                },
                {"kind": "data", "data": {"values": [1, 2, 3]}},
            ],
        },
        "configuration": {"blocking": False, "historyLength": 0},
    },
}

# v1.0 ``SendMessage``: ProtoJSON, enum names, parts without ``kind``, raw bytes in base64.
V10_SEND = {
    "jsonrpc": "2.0",
    "id": 3,
    "method": "SendMessage",
    "params": {
        "message": {
            "messageId": "m-10",
            "role": "ROLE_USER",
            "parts": [
                {"text": "What is in the picture?"},
                {"raw": base64.b64encode(b"\x89PNG").decode(), "mediaType": "image/png"},
            ],
        },
        "configuration": {"returnImmediately": True, "historyLength": 1},
    },
}


def parse(body: dict[str, Any]) -> codec.Call:
    return codec.parse_jsonrpc(json.dumps(body).encode())


def test_v03_message_send_becomes_v10_parameters_and_host_messages() -> None:
    call = parse(V03_SEND)
    assert (call.operation, call.generation, call.request_id) == ("send", "0.3", "req-7")
    params = call.params
    assert params.message.context_id == "c295ea44-7543-4f78-b524-7a38915ad6e4"
    assert params.configuration.return_immediately is True  # blocking: false
    assert not params.configuration.HasField("history_length")  # v0.3's 0 means "all"
    [message] = codec.host_messages(params.message, LIMITS)
    assert message.role == "user"
    assert message.parts == (
        TextPart("Analyze this image and these numbers"),
        UriPart("https://example.com/chart.png", "image/png"),
        TextPart('{"values":[1,2,3]}'),
    )


def test_v10_send_with_file_bytes_becomes_a_data_uri() -> None:
    call = parse(V10_SEND)
    assert (call.operation, call.generation) == ("send", "1.0")
    assert call.params.configuration.history_length == 1
    [message] = codec.host_messages(call.params.message, LIMITS)
    assert message.parts[1] == UriPart(
        "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode(), "image/png"
    )


@pytest.mark.parametrize(
    ("part", "error"),
    [
        ({"raw": base64.b64encode(b"x" * 17).decode(), "mediaType": "image/png"}, "InvalidParams"),
        (
            {"url": "https://example.com/a.exe", "mediaType": "application/x-msdownload"},
            "ContentType",
        ),
        ({"url": "file:///etc/passwd", "mediaType": "image/png"}, "InvalidParams"),
        ({"metadata": {"a": 1}}, "InvalidParams"),
    ],
)
def test_parts_the_agent_cannot_take_are_refused(part: dict[str, Any], error: str) -> None:
    body = json.loads(json.dumps(V10_SEND))
    body["params"]["message"]["parts"] = [part]
    call = parse(body)
    with pytest.raises(errors.A2AError) as raised:
        codec.host_messages(call.params.message, LIMITS)
    assert type(raised.value).__name__.startswith(error)


def test_both_generations_name_the_same_operations() -> None:
    assert set(codec.METHODS_V10.values()) == set(codec.METHODS_V03.values())
    for method, operation in codec.METHODS_V03.items():
        params: dict[str, Any] = {"id": "t"} if operation in ("get", "cancel", "subscribe") else {}
        if operation in ("push_get", "push_list", "push_delete"):
            params = {"id": "t", "pushNotificationConfigId": "c"}
        if operation == "push_set":
            params = {"taskId": "t", "pushNotificationConfig": {"url": "https://e.com/h"}}
        if operation in ("send", "stream"):
            params = V03_SEND["params"]
        call = parse({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        assert (call.operation, call.generation) == (operation, "0.3")


def test_errors_render_with_their_codes_and_only_our_messages() -> None:
    rendered = codec.jsonrpc_error(4, errors.TaskNotFoundError("No task has that id."))
    assert rendered == {
        "jsonrpc": "2.0",
        "id": 4,
        "error": {"code": -32001, "message": "No task has that id."},
    }
    status, body = codec.rest_error(errors.TaskNotCancelableError("no"))
    assert status == 400
    assert body["error"]["details"][0]["reason"] == "TASK_NOT_CANCELABLE"
    with pytest.raises(errors.VersionNotSupportedError):
        codec.check_version("2.0")
    codec.check_version("0.3.0")
    codec.check_version("1.0")
    codec.check_version(None)


def test_the_task_lifecycle_follows_its_table() -> None:
    message = parse(V10_SEND).params.message
    task = tasks.new_task("tsk_1", "ctx_1", message, now=100.0)
    assert task.status.state == pb.TASK_STATE_SUBMITTED
    assert task.history[0].task_id == "tsk_1" and task.history[0].context_id == "ctx_1"
    running = tasks.working(task, now=101.0)
    assert running.status.state == pb.TASK_STATE_WORKING
    assert tasks.working(running, now=102.0) is running  # no working -> working step
    done = tasks.finished(running, tasks.COMPLETED, reply_text="a cat", now=103.0)
    assert done.status.state == pb.TASK_STATE_COMPLETED
    assert [p.text for p in done.artifacts[0].parts] == ["a cat"]
    assert [m.role for m in done.history] == [pb.ROLE_USER, pb.ROLE_AGENT]
    # Terminal is final: a late cancel (or a late completion) changes nothing.
    assert tasks.finished(done, tasks.CANCELED, reply_text=None, now=104.0) is done
    cancelled = tasks.finished(running, tasks.CANCELED, reply_text=None, now=104.0)
    assert cancelled.status.message.parts[0].text == tasks.CANCELED_TEXT
    assert not cancelled.artifacts
    assert [m.role for m in tasks.with_history(done, 1).history] == [pb.ROLE_AGENT]
    assert len(tasks.with_history(done, 0).history) == 0
    assert tasks.with_history(done, None) is done


def test_v03_renders_final_status_events_and_tasks_with_kinds() -> None:
    message = parse(V10_SEND).params.message
    done = tasks.finished(
        tasks.new_task("tsk_1", "ctx_1", message, now=1.0),
        tasks.COMPLETED,
        reply_text="ok",
        now=2.0,
    )
    legacy_task = codec.render_task(done, "0.3")
    assert legacy_task["kind"] == "task" and legacy_task["status"]["state"] == "completed"
    event = codec.render_event(tasks.status_event(done), "0.3")
    assert event["kind"] == "status-update" and event["final"] is True
    assert (
        codec.render_event(tasks.status_event(done), "1.0")["statusUpdate"]["status"]["state"]
        == "TASK_STATE_COMPLETED"
    )


def test_the_documented_task_states_are_the_code_s_table() -> None:
    page = (Path(__file__).resolve().parents[3] / "docs" / "channels" / "a2a.md").read_text()
    [block] = re.findall(r"```mermaid\n(.*?)```", page, flags=re.DOTALL)
    drawn = {
        tuple(part.strip() for part in line.split("-->"))
        for line in block.splitlines()
        if "-->" in line and "[*]" not in line
    }
    table = {
        tuple(pb.TaskState.Name(state).removeprefix("TASK_STATE_").lower() for state in edge)
        for edge in tasks.TRANSITIONS
    }
    assert drawn == table


def test_a_question_waits_for_input_and_an_answer_resumes_the_task() -> None:
    message = parse(V10_SEND).params.message
    running = tasks.working(tasks.new_task("tsk_1", "ctx_1", message, now=1.0), now=2.0)
    requests = [{"requestId": "r1", "text": "Which city?", "data": {"prompt": "Which city?"}}]
    waiting = tasks.asking(running, "Which city?", requests, now=3.0)
    assert waiting.status.state == pb.TASK_STATE_INPUT_REQUIRED
    text, data = waiting.status.message.parts
    assert text.text == "Which city?"
    assert json_format.MessageToDict(data.data) == {"inputRequests": requests}
    assert [m.role for m in waiting.history] == [pb.ROLE_USER]  # the question is the status
    assert not codec.is_terminal(waiting) and codec.is_settled(waiting)

    answer = pb.Message(role=pb.ROLE_USER, message_id="m2")
    answer.parts.add().text = "Oslo"
    resumed = tasks.resumed(waiting, answer, now=4.0)
    assert resumed.status.state == pb.TASK_STATE_WORKING
    assert not resumed.status.HasField("message")
    assert [(m.role, m.parts[0].text) for m in resumed.history][1:] == [
        (pb.ROLE_AGENT, "Which city?"),
        (pb.ROLE_USER, "Oslo"),
    ]
    assert resumed.history[2].task_id == "tsk_1" and resumed.history[2].context_id == "ctx_1"
    assert tasks.resumed(resumed, answer, now=5.0) is resumed  # only a waiting task resumes
    done = tasks.finished(resumed, tasks.COMPLETED, reply_text="Oslo it is", now=6.0)
    assert len({m.message_id for m in done.history}) == len(done.history) == 4
    # A finished task asks nothing more; a waiting one may be canceled.
    assert tasks.asking(done, "again?", [], now=7.0) is done
    canceled = tasks.finished(waiting, tasks.CANCELED, reply_text=None, now=8.0)
    assert canceled.status.state == pb.TASK_STATE_CANCELED

    legacy = codec.render_event(tasks.status_event(waiting), "0.3")
    assert legacy["status"]["state"] == "input-required" and legacy["final"] is True
    working_event = codec.render_event(tasks.status_event(resumed), "0.3")
    assert working_event["final"] is False
    assert codec.render_task(waiting, "0.3")["status"]["state"] == "input-required"


def test_a_failed_answer_asks_the_last_question_again() -> None:
    message = parse(V10_SEND).params.message
    task = tasks.new_task("tsk_1", "ctx_1", message, now=1.0)
    assert tasks.asked_again(tasks.working(task, now=2.0), now=3.0) is None  # nothing asked
    waiting = tasks.asking(
        task, "Which city?", [{"requestId": "r1", "text": "Which city?"}], now=2.0
    )
    answer = pb.Message(role=pb.ROLE_USER, message_id="m2")
    answer.parts.add().text = "nowhere"
    again = tasks.asked_again(tasks.resumed(waiting, answer, now=3.0), now=4.0)
    assert again is not None and again.status.state == pb.TASK_STATE_INPUT_REQUIRED
    assert list(again.status.message.parts) == list(waiting.status.message.parts)
    assert again.status.message.message_id != waiting.status.message.message_id


@pytest.mark.parametrize(
    ("task_id", "context_id", "text", "append"),
    [
        ("tsk_1", "ctx_1", "word ", True),
        ("tsk_1", "ctx_1", "first", False),
        ("tsk_1", "ctx_1", "", True),
        ("tsk_1", "", "héllo \u2603 \U0001f600", True),
        ("", "ctx_1", 'quote " and \\ and \n', False),
    ],
)
def test_a_chunk_s_stored_form_is_what_protobuf_writes(
    task_id: str, context_id: str, text: str, append: bool
) -> None:
    event = tasks.chunk(task_id, context_id, text, append=append)
    value = tasks.chunk_value(task_id, context_id, text, append=append)
    assert value == codec.to_dict(event)
    assert json.dumps(value) == json.dumps(codec.to_dict(event))  # the same key order too
    assert codec.stream_response_from_dict(value) == event


def test_a_chunk_with_text_protobuf_refuses_is_refused_in_both_forms() -> None:
    with pytest.raises(UnicodeEncodeError):
        tasks.chunk("tsk_1", "ctx_1", "lone \ud800", append=True)
    with pytest.raises(UnicodeEncodeError):
        tasks.chunk_value("tsk_1", "ctx_1", "lone \ud800", append=True)
