"""The Responses codec on its own: create bodies in, validated fields and error fields out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.channels.responses import codec
from agenthost.channels.responses.codec import ResponsesError
from agenthost.sansio_core.types import FunctionCall, HostMessage, TextPart, UriPart


def rejected(body: Any, **kwargs: Any) -> ResponsesError:
    with pytest.raises(ResponsesError) as caught:
        codec.parse_create(body, **kwargs)
    return caught.value


def test_a_string_input_is_one_user_message() -> None:
    create = codec.parse_create({"model": "m", "input": "hello"})
    assert create.items == (
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hello"}],
            "status": "completed",
        },
    )
    assert codec.host_messages(create.items) == (HostMessage.user("hello"),)
    assert create.store is True and create.stream is False and create.background is False
    assert create.previous_response_id is None and create.conversation_id is None
    assert create.options == {}


def test_item_lists_with_every_supported_part_and_item() -> None:
    body = {
        "input": [
            {"role": "developer", "content": "be brief"},  # an EasyInputMessage, no type
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look: "},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    {"type": "input_file", "file_url": "https://example.test/a.pdf"},
                    {"type": "input_file", "file_data": "QUJD", "filename": "a.txt"},
                ],
            },
            {"type": "message", "role": "assistant", "content": "earlier answer", "id": "msg_1"},
            {"type": "function_call", "call_id": "c1", "name": "add", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "5"},
            {"type": "item_reference", "id": "msg_abc"},
            {"id": "rs_abc"},  # a reference without its type
            {"type": "reasoning", "summary": [], "id": "rs_1"},
        ]
    }
    create = codec.parse_create(body)
    kinds = [item["type"] for item in create.items]
    assert kinds == [
        "message",
        "message",
        "message",
        "function_call",
        "function_call_output",
        "item_reference",
        "item_reference",
        "reasoning",
    ]
    assert create.references == ["msg_abc", "rs_abc"]
    assert create.items[2]["id"] == "msg_1"
    assert create.items[2]["content"] == [
        {"type": "output_text", "text": "earlier answer", "annotations": []}
    ]
    resolved = [item for item in create.items if item["type"] != "item_reference"]
    messages = codec.host_messages(resolved)
    assert [m.role for m in messages] == ["developer", "user", "assistant", "assistant", "tool"]
    assert messages[1].parts == (
        TextPart("look: "),
        UriPart("data:image/png;base64,AAAA", "image/png"),
        UriPart("https://example.test/a.pdf", None),
        UriPart("data:application/octet-stream;base64,QUJD", "application/octet-stream"),
    )
    # A client tool's call and output, sent back as history, stay paired by their call id.
    assert messages[3] == HostMessage(
        role="assistant", parts=(), function_calls=(FunctionCall("c1", "add", "{}"),)
    )
    assert messages[4] == HostMessage(role="tool", parts=(TextPart("5"),), tool_call_id="c1")


def test_options_are_forwarded_in_the_frameworks_names_and_echoed() -> None:
    create = codec.parse_create(
        {
            "input": "hi",
            "instructions": "be nice",
            "temperature": 0.5,
            "top_p": 0.9,
            "max_output_tokens": 64,
            "tools": [{"type": "function", "name": "f", "parameters": {}}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": False,
        }
    )
    assert create.options == {
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "tool_choice": {"mode": "required", "required_function_name": "f"},
        "allow_multiple_tool_calls": False,
        "instructions": "be nice",
    }
    response = codec.base_response(create, response_id="resp_1", created_at=7, model="agent")
    assert response["temperature"] == 0.5
    assert response["tool_choice"] == {"type": "function", "name": "f"}
    assert response["parallel_tool_calls"] is False
    assert response["max_output_tokens"] == 64
    assert response["instructions"] == "be nice"
    assert response["model"] == "agent"
    assert response["status"] == "in_progress" and response["output"] == []


def test_unknown_and_unmapped_fields_are_kept_for_a_run_hook() -> None:
    create = codec.parse_create(
        {"input": "hi", "model": "gpt-x", "reasoning": {"effort": "low"}, "my_field": [1, 2]}
    )
    assert create.extra == {"reasoning": {"effort": "low"}, "my_field": [1, 2]}
    assert create.model == "gpt-x"
    assert codec.base_response(create, response_id="r", created_at=0, model="m")["model"] == (
        "gpt-x"
    )


# Each echoed setting sent as its default: the checks then run, and must agree with the
# short cut a body naming none of them takes.
EXPLICIT_DEFAULTS = {
    "text": {"format": {"type": "text"}},
    "truncation": "disabled",
    "reasoning": None,
    "max_tool_calls": None,
    "top_logprobs": None,
    "service_tier": None,
    "prompt_cache_key": None,
}


@settings(max_examples=100, deadline=None)
@given(named=st.sets(st.sampled_from(sorted(EXPLICIT_DEFAULTS))))
def test_settings_left_out_echo_as_their_defaults_sent(named: set[str]) -> None:
    body = {"input": "hi", **{name: EXPLICIT_DEFAULTS[name] for name in sorted(named)}}
    create = codec.parse_create(body)
    assert list(create.echoed.items()) == list(codec.parse_create({"input": "hi"}).echoed.items())
    assert create.echoed == {
        **EXPLICIT_DEFAULTS,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_output_tokens": None,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
    }


body_fields = st.sampled_from(["input", "model", "stream", "store", "type", "my_field", "x", "z"])


@settings(max_examples=100, deadline=None)
@given(names=st.lists(body_fields, unique=True), value=st.integers() | st.text())
def test_extra_fields_are_every_unread_field_in_the_bodys_order(
    names: list[str], value: Any
) -> None:
    known = {"input": "hi", "model": "m", "stream": False, "store": True, "type": "t"}
    body = {name: known.get(name, value) for name in [*names, "input"]}
    extra = codec.parse_create(body).extra
    assert list(extra.items()) == [(k, v) for k, v in body.items() if k not in known]


def test_identity_hints_and_session_fields() -> None:
    create = codec.parse_create(
        {
            "input": "hi",
            "safety_identifier": "user-hash",
            "user": "legacy",
            "conversation": {"id": "conv_1"},
            "store": False,
            "metadata": {"k": "v"},
        }
    )
    assert create.safety_identifier == "user-hash" and create.user == "legacy"
    assert create.conversation_id == "conv_1"
    assert create.store is False
    assert create.metadata == {"k": "v"}
    assert codec.parse_create({"input": "x", "conversation": "conv_2"}).conversation_id == "conv_2"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": 3}, "input"),
        ({"input": [3]}, "input[0]"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "message", "role": "user", "content": [{"type": "x"}]}]}, None),
        ({"input": [{"type": "input_image"}]}, None),
        ({"input": [{"type": "function_call_output", "output": "5"}]}, "input[0].call_id"),
        ({"input": [{"type": "item_reference"}]}, "input[0].id"),
        ({"input": [{"role": "user", "content": "x", "id": "bad id!"}]}, "input[0].id"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "top_p": True}, "top_p"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "tools": [{"name": "no type"}]}, "tools"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "parallel_tool_calls": 1}, "parallel_tool_calls"),
        ({"input": "x", "instructions": 5}, "instructions"),
        ({"input": "x", "previous_response_id": "has space"}, "previous_response_id"),
        ({"input": "x", "conversation": 5}, "conversation"),
        ({"input": "x", "safety_identifier": "s" * 129}, "safety_identifier"),
        ({"input": "x", "background": True, "store": False}, "store"),
        ({"input": "x", "previous_response_id": "resp_1", "conversation": "c"}, "conversation"),
    ],
)
def test_bad_create_bodies_name_the_parameter(body: Any, param: str | None) -> None:
    error = rejected(body)
    assert error.status == 400
    assert error.type == "invalid_request_error"
    if param is not None:
        assert error.param == param
    assert error.message


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert rejected(["input"]).status == 400
    with pytest.raises(ResponsesError) as caught:
        codec.parse_json(b"{not json")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 5},
        ["k", "v"],
    ],
)
def test_metadata_limits_are_enforced(metadata: Any) -> None:
    error = rejected({"input": "x", "metadata": metadata})
    assert error.status == 400
    assert error.param is not None and error.param.startswith("metadata")


def test_metadata_at_the_limits_is_accepted() -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert codec.parse_create({"input": "x", "metadata": metadata}).metadata == metadata


def test_websocket_messages_never_stream_or_run_in_the_background() -> None:
    create = codec.parse_create({"input": "x", "stream": True, "background": True}, websocket=True)
    assert create.stream is False and create.background is False


def test_error_bodies_have_the_openai_shape() -> None:
    error = codec.previous_response_not_found("resp_x")
    assert error.status == 404
    assert error.body() == {
        "error": {
            "message": "Previous response with id 'resp_x' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    }


def test_usage_in_responses_terms() -> None:
    assert codec.usage(None) is None
    assert codec.usage({}) is None
    assert codec.usage(
        {
            "input_token_count": 10,
            "output_token_count": 5,
            "cache_read_input_token_count": 2,
            "reasoning_output_token_count": 1,
        }
    ) == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 15,
    }


def test_list_queries_and_pages() -> None:
    items = [{"id": f"i{n}"} for n in range(5)]
    query = codec.parse_list_query({})
    assert query == codec.ListQuery(after=None, limit=20, descending=True)
    page, more = codec.page_of(items, query)
    assert [i["id"] for i in page] == ["i4", "i3", "i2", "i1", "i0"] and not more

    query = codec.parse_list_query({"order": "asc", "limit": "2"})
    page, more = codec.page_of(items, query)
    assert [i["id"] for i in page] == ["i0", "i1"] and more
    page, more = codec.page_of(items, codec.parse_list_query({"order": "asc", "after": "i3"}))
    assert [i["id"] for i in page] == ["i4"] and not more
    assert codec.list_page(page, has_more=False) == {
        "object": "list",
        "data": [{"id": "i4"}],
        "first_id": "i4",
        "last_id": "i4",
        "has_more": False,
    }
    for bad in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"order": "up"}):
        with pytest.raises(ResponsesError):
            codec.parse_list_query(bad)
    with pytest.raises(ResponsesError):
        codec.page_of(items, codec.parse_list_query({"after": "missing"}))


def test_conversation_bodies() -> None:
    created = codec.parse_conversation_create(
        {"items": [{"role": "user", "content": "hi"}], "metadata": {"topic": "x"}}
    )
    assert [item["role"] for item in created.items] == ["user"]
    assert created.metadata == {"topic": "x"}
    assert codec.parse_conversation_create(None).items == ()
    with pytest.raises(ResponsesError):
        codec.parse_conversation_items([{"role": "user", "content": "x"}] * 21)
    with pytest.raises(ResponsesError):
        codec.parse_conversation_items([{"type": "item_reference", "id": "msg_1"}])
