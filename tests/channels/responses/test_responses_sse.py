"""SSE frames of a streamed response: the text-delta fast path sends the very bytes the
general path (an event dict, JSON-encoded) sends, on generated streams of every kind of
update, and through the real app.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from agenthost import Host, HostMessage
from agenthost.channels.responses import ResponsesChannel, codec, sse
from agenthost.channels.responses.events import ResponseEvents
from agenthost.sansio_core.json_encoders import compact_bytes_encoder
from agenthost.stores.memory import MemoryStore
from tests.conftest import BACKEND

# Any text: escapes, non-ASCII, astral characters and lone surrogates included.
texts = st.text(st.characters(exclude_categories=()), max_size=12)
CLIENT_TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}


def counter_ids() -> Callable[[str], str]:
    numbers = itertools.count()
    return lambda prefix: f"{prefix}_{next(numbers)}"


def machine(response_id: str) -> ResponseEvents:
    create = codec.parse_create({"input": "hi", "tools": [CLIENT_TOOL]})
    response = codec.base_response(create, response_id=response_id, created_at=1, model="m")
    return ResponseEvents(response, new_id=counter_ids(), server_tool_calls="mcp_call")


def contents() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda text: {"type": "text", "text": text}, texts),
        st.builds(lambda text: {"type": "text_reasoning", "text": text}, texts),
        st.builds(
            lambda name, arguments: {
                "type": "function_call",
                "call_id": f"call_{name}",
                "name": name,
                "arguments": arguments,
            },
            st.sampled_from(["lookup", "own_tool"]),
            texts,
        ),
        st.builds(
            lambda result: {
                "type": "function_result",
                "call_id": "call_own_tool",
                "result": result,
            },
            texts,
        ),
        st.just({"type": "usage", "usage_details": {"output_token_count": 3}}),
    )


updates = st.builds(
    lambda message_id, items: {"message_id": message_id, "contents": items},
    st.sampled_from([None, "m1", "m2"]),
    st.lists(contents(), max_size=3),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("text"), texts),
        st.tuples(st.just("text"), texts),  # plain text chunks twice as often
        st.tuples(st.just("update"), updates),
        st.tuples(st.just("break"), st.none()),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(response_id=texts, steps=steps, fails=st.booleans())
def test_text_delta_frames_are_the_general_paths_bytes(
    response_id: str, steps: list[tuple[str, Any]], fails: bool
) -> None:
    general, fast = machine(response_id), machine(response_id)
    deltas = sse.TextDeltaFrames()
    sent: tuple[list[bytes], list[bytes]] = ([], [])
    taken = 0
    sent[0].append(sse.frames(general.created() + general.in_progress()))
    sent[1].append(sse.frames(fast.started()))
    for kind, value in steps:
        if kind == "text":
            sent[0].append(sse.frames(general.feed_text(value)))
            delta = fast.continue_text(value)
            if delta is None:
                sent[1].append(sse.frames(fast.feed_text(value)))
            else:
                taken += 1
                sent[1].append(deltas.frame(*delta, value))
        else:
            for side, events in ((general, sent[0]), (fast, sent[1])):
                batch = side.feed(value) if kind == "update" else side.break_item()
                events.append(sse.frames(batch))
    for side, events in ((general, sent[0]), (fast, sent[1])):
        end = side.fail(code="e", message="m") if fails else side.complete(completed_at=2)
        events.append(sse.frames(end))
    # Frame for frame: the same bytes, sent at the same moments.
    assert sent[1] == sent[0]
    assert json.dumps(fast.response) == json.dumps(general.response)
    assert taken <= sum(1 for kind, value in steps if kind == "text" and value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


def compact(value: Any) -> bytes:
    return compact_bytes_encoder()(value)


@settings(max_examples=300, deadline=None)
@given(kind=st.text(max_size=30), fields=st.dictionaries(texts, json_values, max_size=6))
def test_frames_encode_each_event_whole(kind: str, fields: dict[str, Any]) -> None:
    event = {"type": kind, **fields}
    try:
        head = f"event: {kind}\ndata: ".encode()
    except UnicodeEncodeError:  # a lone surrogate in the event's name: never sent
        return
    sent = sse.frames([event, event])
    assert sent == (head + compact(event) + b"\n\n") * 2
    # And it reads back as the event (compared as the standard library writes both: NaN
    # and lone surrogates included).
    data = sent[len(head) : len(sent) // 2 - 2]
    assert json.dumps(json.loads(data)) == json.dumps(event)


@settings(max_examples=200, deadline=None)
@given(
    responses=st.lists(st.dictionaries(texts, json_values, max_size=6), min_size=1, max_size=3),
    picks=st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.integers(0, 2**53)), max_size=6),
)
def test_events_sharing_a_response_encode_as_each_event_whole(
    responses: list[dict[str, Any]], picks: list[tuple[int, bool, int]]
) -> None:
    batch: list[dict[str, Any]] = []
    for index, extra, sequence_number in picks:
        event = {"type": "response.x", "sequence_number": sequence_number}
        event["response"] = responses[index % len(responses)]  # shared objects
        if extra:
            event["stream_id"] = "lane"  # another shape: encoded whole
        batch.append(event)
    expected = b"".join(b"event: response.x\ndata: " + compact(event) + b"\n\n" for event in batch)
    sent = sse.frames(batch)
    assert sent == expected
    read_back = [json.loads(frame.split(b"data: ", 1)[1]) for frame in sent.split(b"\n\n")[:-1]]
    assert json.dumps(read_back) == json.dumps(batch)


@pytest.mark.parametrize("status", ["in_progress", "queued"])
def test_started_is_created_then_in_progress(status: str) -> None:
    apart, together = machine("resp_1"), machine("resp_1")
    apart.response["status"] = together.response["status"] = status
    expected = apart.created() + apart.in_progress()
    assert json.dumps(together.started()) == json.dumps(expected)
    assert json.dumps(together.response) == json.dumps(apart.response)


def test_a_text_delta_continues_only_an_open_message() -> None:
    events = machine("resp_1")
    events.created()
    assert events.continue_text("hi") is None  # nothing is open yet
    events.feed_text("hi")
    assert events.continue_text("") is None  # an empty chunk makes no event
    assert events.continue_text(" there") == (4, "msg_0", 0)
    events.feed({"contents": [{"type": "text_reasoning", "text": "hmm"}]})
    assert events.continue_text("more") is None  # a reasoning item is open
    events.complete(completed_at=2)
    assert events.continue_text("late") is None


# --- through the app ----------------------------------------------------------------


def frames_of(body: bytes) -> list[bytes]:
    return [frame + b"\n\n" for frame in body.split(b"\n\n") if frame]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chunks=st.lists(texts, max_size=8))
def test_a_streamed_answer_is_what_the_general_encoder_makes_of_its_events(
    tmp_path: Path, chunks: list[str]
) -> None:
    async def target(messages: list[HostMessage]) -> AsyncIterator[str]:
        for chunk in chunks:
            await anyio.lowlevel.checkpoint()
            yield chunk

    host = Host(
        target,
        channels=[ResponsesChannel(api_keys={"key-a": "alice"})],
        store=MemoryStore(),
        state_dir=tmp_path,
    )
    with TestClient(host.app, backend=BACKEND) as client:
        answer = client.post(
            "/responses/v1/responses",
            json={"input": "hi", "stream": True},
            headers={"authorization": "Bearer key-a"},
        )
    assert answer.status_code == 200
    sent = frames_of(answer.content)
    parsed = [json.loads(frame.split(b"\ndata: ", 1)[1]) for frame in sent]
    # Every frame, the fast ones too, is byte for byte the general encoding of its event.
    assert sent == [sse.frames([event]) for event in parsed]
    assert [event["sequence_number"] for event in parsed] == list(range(len(parsed)))
    text = "".join(chunks)
    deltas = [e["delta"] for e in parsed if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == text and all(deltas)
    assert parsed[-1]["type"] == "response.completed"
    output = parsed[-1]["response"]["output"]
    assert [part["text"] for item in output for part in item["content"]] == ([text] if text else [])
