"""The event state machine on recorded update shapes, with no server and no event loop.

The updates below are the ``to_dict()`` form of what the demo agent (a real Agent
Framework agent) streamed for "what is 2 + 3", and for a call to a tool the client
declared (the framework streams the model's call, then repeats it marked
``user_input_request`` as it pauses for the caller); the machine reads framework objects
and their dicts alike, and the last tests feed real framework objects.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from agent_framework import AgentResponse, AgentResponseUpdate, Content, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.channels.responses import codec
from agenthost.channels.responses.events import (
    SERVER_TOOL_CALLS,
    TERMINAL_EVENTS,
    NewId,
    ResponseEvents,
    feed_result,
    render_by_machine,
    render_result,
)
from agenthost.sansio_core.commands import CommandReply

TOOL_CALL_UPDATES: list[dict[str, Any]] = [
    {
        "type": "agent_response_update",
        "contents": [
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "add",
                "arguments": {"a": 2.0, "b": 3.0},
                "hosted": False,
                "id": "af-call-1",
                "additional_properties": {},
            }
        ],
        "role": "assistant",
        "author_name": "demo",
    },
    {
        "type": "agent_response_update",
        "contents": [
            {
                "type": "function_result",
                "call_id": "call_1",
                "result": "5.0",
                "items": [{"type": "text", "text": "5.0", "additional_properties": {}}],
                "id": "af-call-1",
                "additional_properties": {},
            }
        ],
        "role": "tool",
        "author_name": "demo",
    },
    *(
        {
            "type": "agent_response_update",
            "contents": [{"type": "text", "text": piece, "additional_properties": {}}],
            "role": "assistant",
            "author_name": "demo",
        }
        for piece in ("The ", "answer ", "is ", "5.")
    ),
]


# A call to the client's ``get_weather``, as the demo agent streamed it (its to_dict form).
CLIENT_CALL_UPDATES: list[dict[str, Any]] = [
    {
        "type": "agent_response_update",
        "contents": [{"type": "text", "text": "Let me look.", "additional_properties": {}}],
        "role": "assistant",
        "message_id": "m1",
    },
    {
        "type": "agent_response_update",
        "contents": [
            {
                "type": "function_call",
                "call_id": "call_w",
                "name": "get_weather",
                "arguments": {"city": "Paris"},
                "additional_properties": {},
            }
        ],
        "role": "assistant",
        "message_id": "m1",
    },
    {
        "type": "agent_response_update",
        "contents": [
            {
                "type": "function_call",
                "call_id": "call_w",
                "name": "get_weather",
                "arguments": {"city": "Paris"},
                "user_input_request": True,
                "id": "af-call-1",
                "additional_properties": {},
            }
        ],
        "role": "assistant",
    },
]
WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def counter_ids() -> Callable[[str], str]:
    numbers = itertools.count()
    return lambda prefix: f"{prefix}_{next(numbers)}"


def base(tools: tuple[dict[str, Any], ...] = (), **changes: Any) -> dict[str, Any]:
    create = codec.parse_create({"input": "what is 2 + 3", "tools": list(tools)})
    response = codec.base_response(create, response_id="resp_1", created_at=100, model="demo")
    return {**response, **changes}


def run(
    updates: list[Any], *, tools: tuple[dict[str, Any], ...] = (), **options: Any
) -> tuple[list[dict[str, Any]], ResponseEvents]:
    machine = ResponseEvents(base(tools), new_id=counter_ids(), **options)
    events = machine.created() + machine.in_progress()
    for update in updates:
        events += machine.feed(update)
    events += machine.complete(completed_at=101)
    return events, machine


def assert_well_formed(events: list[dict[str, Any]], start: int = 0) -> None:
    """Sequence numbers count up by one; items open before they close; one terminal event."""
    assert [e["sequence_number"] for e in events] == list(range(start, start + len(events)))
    assert all(e["type"] not in TERMINAL_EVENTS for e in events[:-1])
    opened: dict[int, str] = {}
    for event in events:
        if event["type"] == "response.output_item.added":
            assert event["output_index"] not in opened
            opened[event["output_index"]] = event["item"]["id"]
        elif "item_id" in event:
            assert opened[event["output_index"]] == event["item_id"]
        elif event["type"] == "response.output_item.done":
            assert opened[event["output_index"]] == event["item"]["id"]
    final = events[-1]["response"]
    # The final response's items are the items the stream announced, in order.
    assert [item["id"] for item in final["output"]] == [opened[i] for i in sorted(opened)]
    done = {
        e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"
    }
    assert [done[i] for i in sorted(done)] == final["output"]


def test_the_agents_own_tool_call_is_left_out_by_default() -> None:
    events, machine = run(TOOL_CALL_UPDATES)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # message
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert_well_formed(events)
    [message] = machine.response["output"]
    assert message["id"] == "msg_0"
    assert message["role"] == "assistant" and message["status"] == "completed"
    assert message["content"] == [
        {"type": "output_text", "text": "The answer is 5.", "annotations": [], "logprobs": []}
    ]
    assert events[8]["text"] == "The answer is 5."
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == (
        "The answer is 5."
    )
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["completed_at"] == 101
    assert final["usage"] is None and final["error"] is None


def test_the_agents_own_tool_call_shown_is_one_finished_mcp_call() -> None:
    events, machine = run(TOOL_CALL_UPDATES, server_tool_calls="mcp_call")
    assert [e["type"] for e in events[:9]] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # mcp_call, once its result is in
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.output_item.done",
        "response.output_item.added",  # message
    ]
    assert events[-1]["type"] == "response.completed"
    assert_well_formed(events)
    call, message = machine.response["output"]
    assert call == {
        "id": "mcp_0",
        "type": "mcp_call",
        "server_label": "agenthost",
        "name": "add",
        "arguments": '{"a":2.0,"b":3.0}',
        "output": "5.0",
        "error": None,
        "approval_request_id": None,
        "status": "completed",
    }
    assert events[2]["item"]["status"] == "in_progress" and events[2]["item"]["output"] is None
    assert json.loads(events[5]["arguments"]) == {"a": 2.0, "b": 3.0}
    assert message["content"][0]["text"] == "The answer is 5."


def test_events_are_snapshots_not_live_views() -> None:
    events, _ = run(TOOL_CALL_UPDATES)
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert added[0]["item"]["status"] == "in_progress"
    assert added[0]["item"]["content"] == []
    assert (
        events[0]["response"]["output"] == [] and events[0]["response"]["status"] == "in_progress"
    )


def test_a_call_to_a_client_tool_ends_the_response_as_a_function_call() -> None:
    events, machine = run(CLIENT_CALL_UPDATES, tools=(WEATHER_TOOL,))
    assert_well_formed(events)
    message, call = machine.response["output"]
    assert message["content"][0]["text"] == "Let me look."
    # The framework's "waiting for the caller" copy of the call is not a second item.
    assert call == {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_w",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
        "status": "completed",
    }
    assert [
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    ] == ['{"city":"Paris"}']
    assert events[-1]["response"]["status"] == "completed"


def test_parallel_client_calls_are_one_item_each_and_their_pause_copies_none() -> None:
    def call(call_id: str, city: str, **marks: Any) -> dict[str, Any]:
        arguments = {"city": city}
        return {"type": "function_call", "call_id": call_id, "name": "get_weather",
                "arguments": arguments, **marks}  # fmt: skip

    updates = [
        {"role": "assistant", "contents": [call("c1", "Paris")]},
        {"role": "assistant", "contents": [call("c2", "Rome")]},
        {
            "role": "assistant",
            "contents": [
                call("c1", "Paris", user_input_request=True),
                call("c2", "Rome", user_input_request=True),
            ],
        },
    ]
    events, streamed = run(updates, tools=(WEATHER_TOOL,))
    assert_well_formed(events)
    calls = [(item["call_id"], item["arguments"]) for item in streamed.response["output"]]
    assert calls == [("c1", '{"city":"Paris"}'), ("c2", '{"city":"Rome"}')]
    finished = render_result(
        base((WEATHER_TOOL,)),
        {"messages": [updates[2]]},
        new_id=counter_ids(),
        completed_at=101,
    )
    assert finished["output"] == streamed.response["output"]


def test_a_client_call_after_the_agents_own_tool_renders_alike_streamed_or_finished() -> None:
    updates = [*TOOL_CALL_UPDATES[:2], *CLIENT_CALL_UPDATES[1:]]
    for shown in ("omit", "mcp_call"):
        events, streamed = run(updates, tools=(WEATHER_TOOL,), server_tool_calls=shown)
        assert_well_formed(events)
        # The finished result holds only the paused copy of the client's call.
        result = {
            "messages": [
                {"role": "assistant", "contents": TOOL_CALL_UPDATES[0]["contents"]},
                {"role": "tool", "contents": TOOL_CALL_UPDATES[1]["contents"]},
                {"role": "assistant", "contents": CLIENT_CALL_UPDATES[2]["contents"]},
            ]
        }
        rendered = render_result(
            base((WEATHER_TOOL,)),
            result,
            new_id=counter_ids(),
            completed_at=101,
            server_tool_calls=shown,
        )
        assert rendered["output"] == streamed.response["output"]
        kinds = [item["type"] for item in rendered["output"]]
        assert kinds == (["function_call"] if shown == "omit" else ["mcp_call", "function_call"])


def test_a_failed_or_unanswered_tool_call_of_the_agents_own() -> None:
    updates = [
        {"contents": [{"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"}]},
        {"contents": [{"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"}]},
        {
            "role": "tool",
            "contents": [
                {
                    "type": "function_result",
                    "call_id": "a",
                    "result": "Error: Function failed. Exception: secret path /etc/x",
                    "exception": "secret path /etc/x",
                }
            ],
        },
    ]
    events, machine = run(updates, server_tool_calls="mcp_call")
    assert_well_formed(events)
    failed, unanswered = machine.response["output"]
    assert failed["name"] == "f" and failed["status"] == "failed"
    assert failed["output"] is None
    assert "secret" not in json.dumps(events)  # the exception's text never reaches the caller
    assert failed["error"]["type"] == "mcp_tool_execution_error"
    assert "response.mcp_call.failed" in [e["type"] for e in events]
    assert unanswered["name"] == "g" and unanswered["status"] == "incomplete"
    # Hidden, neither leaves a trace.
    events, machine = run(updates)
    assert machine.response["output"] == []
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]


def test_plain_text_chunks_and_a_queued_start() -> None:
    machine = ResponseEvents(base(status="queued"), new_id=counter_ids(), next_sequence=0)
    events = machine.created()
    assert [e["type"] for e in events] == ["response.created", "response.queued"]
    assert events[0]["response"]["status"] == "queued"
    events += machine.in_progress()
    for chunk in ("one ", "", "two"):
        events += machine.feed_text(chunk)
    events += machine.complete(completed_at=5)
    assert_well_formed(events)
    assert machine.response["output"][0]["content"][0]["text"] == "one two"
    assert events[-1]["response"]["status"] == "completed"


def test_a_stream_can_continue_the_numbers_of_an_earlier_one() -> None:
    machine = ResponseEvents(base(), new_id=counter_ids(), next_sequence=42)
    events = machine.in_progress() + machine.feed_text("hi") + machine.complete(completed_at=1)
    assert_well_formed(events, start=42)
    assert machine.next_sequence == 42 + len(events)


def test_function_call_arguments_streamed_in_pieces_make_one_item() -> None:
    updates = [
        {"contents": [{"type": "function_call", "call_id": "c9", "name": "f", "arguments": ""}]},
        {"contents": [{"type": "function_call", "call_id": "", "arguments": '{"x":'}]},
        {"contents": [{"type": "function_call", "call_id": "c9", "arguments": "1}"}]},
        {"contents": [{"type": "function_call", "call_id": "c10", "name": "g", "arguments": "{}"}]},
    ]
    tools = tuple({"type": "function", "name": name} for name in ("f", "g"))
    events, machine = run(updates, tools=tools)
    assert_well_formed(events)
    first, second = machine.response["output"]
    assert first["arguments"] == '{"x":1}' and first["name"] == "f"
    assert second["call_id"] == "c10" and second["arguments"] == "{}"
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ['{"x":', "1}", "{}"]


def test_reasoning_annotations_and_usage() -> None:
    citation = {
        "type": "citation",
        "title": "Docs",
        "url": "https://example.test",
        "annotated_regions": [{"type": "text_span", "start_index": 0, "end_index": 4}],
    }
    updates = [
        {"contents": [{"type": "text_reasoning", "text": "think ", "protected_data": "enc"}]},
        {"contents": [{"type": "text_reasoning", "text": "hard"}]},
        {"contents": [{"type": "text", "text": "Yes.", "annotations": [citation]}]},
        {
            "contents": [
                {
                    "type": "usage",
                    "usage_details": {"input_token_count": 3, "output_token_count": 4},
                }
            ]
        },
    ]
    events, machine = run(updates)
    assert_well_formed(events)
    kinds = [e["type"] for e in events]
    assert kinds.count("response.reasoning_text.delta") == 2
    assert "response.reasoning_text.done" in kinds
    assert "response.output_text.annotation.added" in kinds
    reasoning, message = machine.response["output"]
    assert reasoning["type"] == "reasoning" and reasoning["encrypted_content"] == "enc"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "think hard"}]
    assert message["content"][0]["annotations"] == [
        {
            "type": "url_citation",
            "url": "https://example.test",
            "title": "Docs",
            "start_index": 0,
            "end_index": 4,
        }
    ]
    assert machine.response["usage"]["total_tokens"] == 7


def test_a_new_message_id_starts_a_new_item() -> None:
    updates = [
        {"message_id": "m1", "role": "assistant", "contents": [{"type": "text", "text": "a"}]},
        {"message_id": "m1", "role": "assistant", "contents": [{"type": "text", "text": "b"}]},
        {"message_id": "m2", "role": "assistant", "contents": [{"type": "text", "text": "c"}]},
    ]
    _, machine = run(updates)
    texts = [item["content"][0]["text"] for item in machine.response["output"]]
    assert texts == ["ab", "c"]


def test_an_update_that_names_no_message_continues_the_open_item() -> None:
    updates = [
        {"message_id": "m1", "role": "assistant", "contents": [{"type": "text", "text": "a"}]},
        {"contents": [{"type": "usage", "usage_details": {"input_token_count": 1}}]},
        {"message_id": "m1", "role": "assistant", "contents": [{"type": "text", "text": "b"}]},
    ]
    _, machine = run(updates)
    assert [item["content"][0]["text"] for item in machine.response["output"]] == ["ab"]


def test_a_length_finish_is_incomplete() -> None:
    machine = ResponseEvents(base(), new_id=counter_ids())
    events = machine.in_progress() + machine.feed(
        {"contents": [{"type": "text", "text": "cut"}], "finish_reason": "length"}
    )
    events += machine.complete(completed_at=3)
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def test_a_failure_mid_item_closes_it_incomplete() -> None:
    machine = ResponseEvents(base(), new_id=counter_ids())
    events = machine.in_progress() + machine.feed_text("partial")
    events += machine.fail(code="server_error", message="no", completed_at=9)
    assert_well_formed(events)
    assert events[-1]["type"] == "response.failed"
    response = events[-1]["response"]
    assert response["status"] == "failed"
    assert response["error"] == {"code": "server_error", "message": "no"}
    assert response["output"][0]["status"] == "incomplete"
    with pytest.raises(RuntimeError):
        machine.feed_text("more")


def test_a_stopped_response_takes_no_more_updates() -> None:
    machine = ResponseEvents(base(), new_id=counter_ids())
    machine.in_progress()
    machine.feed_text("x")
    machine.stop("cancelled", completed_at=4)
    assert machine.response["status"] == "cancelled"
    assert machine.response["output"][0]["status"] == "incomplete"
    with pytest.raises(RuntimeError):
        machine.complete(completed_at=5)


def test_an_error_event_has_the_stream_error_fields() -> None:
    machine = ResponseEvents(base(), new_id=counter_ids(), stream_id="lane-1")
    [error] = machine.error(message="gone", code="previous_response_not_found", param="p")
    assert error == {
        "type": "error",
        "sequence_number": 0,
        "code": "previous_response_not_found",
        "message": "gone",
        "param": "p",
        "stream_id": "lane-1",
    }


# --- framework objects and finished results -------------------------------------------


def framework_updates() -> list[AgentResponseUpdate]:
    call = Content.from_function_call(call_id="call_1", name="add", arguments={"a": 2, "b": 3})
    return [
        AgentResponseUpdate(contents=[call], role="assistant"),
        AgentResponseUpdate(
            contents=[Content.from_function_result(call_id="call_1", result="5")], role="tool"
        ),
        AgentResponseUpdate(contents=[Content.from_text("The answer ")], role="assistant"),
        AgentResponseUpdate(contents=[Content.from_text("is 5.")], role="assistant"),
    ]


def test_framework_objects_and_their_dicts_render_alike() -> None:
    updates = framework_updates()
    from_objects, _ = run(list(updates))
    from_dicts, _ = run([update.to_dict() for update in updates])
    assert from_objects == from_dicts


def test_a_finished_result_renders_the_items_its_stream_would() -> None:
    updates = framework_updates()
    _, streamed = run(list(updates))
    response = AgentResponse.from_updates(updates)
    response.usage_details = {"input_token_count": 1, "output_token_count": 2}
    rendered = render_result(base(), response, new_id=counter_ids(), completed_at=101)
    assert rendered["output"] == streamed.response["output"]
    assert rendered["usage"]["total_tokens"] == 3
    assert rendered["status"] == "completed"
    # The stored (``to_dict``) form renders the same.
    from_dict = render_result(base(), response.to_dict(), new_id=counter_ids(), completed_at=101)
    assert from_dict == rendered


def test_workflow_outputs_and_strings_become_messages() -> None:
    outputs = [
        "HI!",
        {"sum": 3},
        AgentResponse(messages=[Message(role="assistant", contents=["ok"])]),
    ]
    rendered = render_result(base(), outputs, new_id=counter_ids(), completed_at=1)
    assert [item["type"] for item in rendered["output"]] == ["message"] * 3
    texts = [item["content"][0]["text"] for item in rendered["output"]]
    assert texts == ["HI!", '{"sum": 3}', "ok"]
    assert (
        render_result(base(), "plain", new_id=counter_ids(), completed_at=1)["output"][0][
            "content"
        ][0]["text"]
        == "plain"
    )
    assert render_result(base(), None, new_id=counter_ids(), completed_at=1)["output"] == []


def test_feeding_a_result_after_a_start_streams_its_events() -> None:
    machine = ResponseEvents(base(), new_id=counter_ids())
    events = machine.in_progress() + feed_result(machine, ["a", "b"])
    events += machine.complete(completed_at=1)
    assert_well_formed(events)
    assert len(machine.response["output"]) == 2


# --- plain text results: built directly, exactly as the machine builds them -------------

texts = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1),  # any unicode, \n and \r too
    st.builds(lambda piece, times: piece * times, st.text(min_size=1), st.integers(50, 2000)),
)
plain_results = st.one_of(texts, st.builds(CommandReply, st.sampled_from(["link", "help"]), texts))
create_bodies = st.fixed_dictionaries(
    {"input": st.just("hi")},
    optional={
        "tools": st.just([WEATHER_TOOL]),
        "tool_choice": st.sampled_from(["none", "auto", "required"]),
        "instructions": st.text(max_size=20),
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        "background": st.booleans(),
        "temperature": st.floats(0, 2),
        "max_output_tokens": st.integers(1, 100),
        "text": st.just({"format": {"type": "json_object"}}),
    },
)
EARLIER_ITEM = {"id": "msg_earlier", "type": "message", "role": "assistant", "content": []}


@st.composite
def base_responses(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(create_bodies)
    session = draw(st.sampled_from([{}, {"previous_response_id": "resp_0"}, {"conversation": "c"}]))
    create = codec.parse_create({**body, **session})
    status = "queued" if create.background else "in_progress"
    response = codec.base_response(
        create, response_id="resp_1", created_at=100, model="demo", status=status
    )
    if draw(st.booleans()):
        response["output"] = [EARLIER_ITEM]
    # Any mapping the caller hands in: keys the renderer sets may be missing from it.
    for name in draw(st.sets(st.sampled_from(["output", "status", "completed_at", "usage"]))):
        del response[name]
    return response


@settings(max_examples=300, deadline=None)
@given(
    response=base_responses(),
    result=plain_results,
    server_tool_calls=st.sampled_from(SERVER_TOOL_CALLS),
)
def test_a_plain_text_renders_as_the_machine_renders_it(
    response: dict[str, Any], result: Any, server_tool_calls: Any
) -> None:
    given_response = json.dumps(response)
    rendered = []
    for render in (render_result, render_by_machine):
        asked: list[str] = []
        ids = counter_ids()

        def new_id(prefix: str, asked: list[str] = asked, ids: NewId = ids) -> str:
            asked.append(prefix)
            return ids(prefix)

        out = render(
            response,
            result,
            new_id=new_id,
            completed_at=101,
            server_tool_calls=server_tool_calls,
        )
        rendered.append((json.dumps(out, ensure_ascii=False), asked))
    # The same object, key order and all, from the same ids asked in the same order.
    assert rendered[0] == rendered[1]
    assert json.dumps(response) == given_response  # neither path changed its input
