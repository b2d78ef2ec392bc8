"""WebSocket mode end to end, with the official client's ``responses.connect()``.

The SDK's async WebSocket client is built on ``websockets.asyncio``, so under trio the
test drives the SDK's synchronous client (the same ``responses.connect()``) in a worker
thread; under asyncio it uses ``AsyncOpenAI`` directly. The server is the real Hypercorn on
loopback either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import openai
import pytest
import websockets.exceptions

from agenthost.demo import build_agent
from tests.channels.responses.conftest import TIMEOUT, Gated, make_host, sdk_client, serving
from tests.conftest import BACKEND

pytestmark = [
    pytest.mark.anyio,
    # Raised inside the SDK's synchronous client by websockets 14+, not by this code.
    pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager"),
]

Turn = dict[str, Any]  # the fields of one response.create
NextTurn = Callable[[str | None], Turn]  # previous response id -> the next create


async def converse(base_url: str, key: str, turns: list[NextTurn]) -> list[list[dict[str, Any]]]:
    """Run each turn on one connection, after the one before finished; every event, as sent."""
    if BACKEND == "asyncio":
        results = []
        async with (
            sdk_client(base_url, key) as client,
            client.responses.connect() as connection,
        ):
            previous = None
            for turn in turns:
                await connection.response.create(**turn(previous))
                events = []
                while not events or events[-1]["type"] not in _ENDS:
                    events.append(json.loads(await connection.recv_bytes()))
                previous = _response_id(events)
                results.append(events)
        return results

    def in_thread() -> list[list[dict[str, Any]]]:
        client = openai.OpenAI(
            api_key=key, base_url=f"{base_url}/responses/v1", max_retries=0, timeout=TIMEOUT
        )
        results = []
        with client, client.responses.connect() as connection:
            previous = None
            for turn in turns:
                connection.response.create(**turn(previous))
                events: list[dict[str, Any]] = []
                while not events or events[-1]["type"] not in _ENDS:
                    events.append(json.loads(connection.recv_bytes()))
                previous = _response_id(events)
                results.append(events)
        return results

    return await anyio.to_thread.run_sync(in_thread, abandon_on_cancel=True)


_ENDS = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})


def _response_id(events: list[dict[str, Any]]) -> str | None:
    response = events[-1].get("response")
    return response["id"] if response else None


async def test_two_chained_turns_over_one_connection(tmp_path: Path) -> None:
    turns: list[NextTurn] = [
        lambda _: {"model": "demo", "input": "my name is Ada"},
        lambda previous: {
            "model": "demo",
            "input": "what did I say first?",
            "previous_response_id": previous,
        },
        lambda previous: {
            "model": "demo",
            "input": "what is 2 + 3",
            "previous_response_id": previous,
            "stream_id": "lane-7",
        },
    ]
    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path)) as base_url:
            first, second, third = await converse(base_url, "key-a", turns)
            async with sdk_client(base_url) as client:
                stored = await client.responses.retrieve(_response_id(second) or "")
                assert stored.output_text == 'You first said: "my name is Ada"'

    for events in (first, second, third):
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert events[0]["type"] == "response.created"
        assert events[1]["type"] == "response.in_progress"
        assert events[-1]["type"] == "response.completed"
    assert _text(first) == 'You said: "my name is Ada" (message 1 of this conversation)'
    assert _text(second) == 'You first said: "my name is Ada"'
    assert second[-1]["response"]["previous_response_id"] == _response_id(first)
    # The same events as SSE, in the lane that was asked for; the agent's own tool call is
    # not the client's to run, so no function-call event is sent.
    kinds = {e["type"] for e in third}
    assert not any("function_call" in kind for kind in kinds)
    assert {
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    } <= kinds
    assert all(e["stream_id"] == "lane-7" for e in third)
    assert _text(third) == "The answer is 5."


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


async def test_errors_arrive_as_error_events_and_the_connection_stays_usable(
    tmp_path: Path,
) -> None:
    turns: list[NextTurn] = [
        lambda _: {"model": "demo", "input": "x", "previous_response_id": "resp_unknown"},
        lambda _: {"model": "demo", "input": "still here?"},
    ]
    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path)) as base_url:
            refused, answered = await converse(base_url, "key-a", turns)
    [error] = refused
    assert error["type"] == "error" and error["status"] == 404
    assert error["error"]["code"] == "previous_response_not_found"
    assert error["error"]["param"] == "previous_response_id"
    assert answered[-1]["type"] == "response.completed"


async def test_another_callers_response_cannot_be_continued(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path)) as base_url:
            [mine] = await converse(base_url, "key-a", [lambda _: {"model": "d", "input": "hi"}])
            theirs = _response_id(mine)
            [refused] = await converse(
                base_url,
                "key-b",
                [lambda _: {"model": "d", "input": "x", "previous_response_id": theirs}],
            )
    assert refused[0]["type"] == "error" and refused[0]["status"] == 404


async def test_one_response_at_a_time_per_connection(tmp_path: Path) -> None:
    gated = Gated()
    host = make_host(gated, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url:

            def in_thread() -> tuple[list[dict[str, Any]], dict[str, Any]]:
                client = openai.OpenAI(
                    api_key="key-a", base_url=f"{base_url}/responses/v1", max_retries=0
                )
                with client, client.responses.connect() as connection:
                    connection.response.create(model="m", input="first")
                    events = []
                    while not events or events[-1]["type"] != "response.output_text.delta":
                        events.append(json.loads(connection.recv_bytes()))
                    connection.response.create(model="m", input="second")
                    busy = json.loads(connection.recv_bytes())
                    anyio.from_thread.run_sync(gated.release.set)
                    while events[-1]["type"] != "response.completed":
                        events.append(json.loads(connection.recv_bytes()))
                    return events, busy

            events, busy = await anyio.to_thread.run_sync(in_thread, abandon_on_cancel=True)
    assert busy["type"] == "error" and busy["error"]["code"] == "response_in_progress"
    assert _text(events) == "one two three"
    assert len(gated.calls) == 1


async def test_an_unknown_key_is_refused_at_the_upgrade(tmp_path: Path) -> None:
    from agenthost.channels.responses import ResponsesChannel

    channel = ResponsesChannel(api_keys={"sk-good": "alice"})
    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path, channels=[channel])) as base_url:

            def in_thread() -> None:
                client = openai.OpenAI(
                    api_key="sk-bad", base_url=f"{base_url}/responses/v1", max_retries=0
                )
                with client, client.responses.connect():
                    raise AssertionError("the upgrade should have been refused")

            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                await anyio.to_thread.run_sync(in_thread, abandon_on_cancel=True)
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_api_key"


async def test_closing_the_connection_stops_its_response(tmp_path: Path) -> None:
    gated = Gated()
    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(gated, tmp_path)) as base_url:

            def in_thread() -> None:
                client = openai.OpenAI(
                    api_key="key-a", base_url=f"{base_url}/responses/v1", max_retries=0
                )
                with client, client.responses.connect() as connection:
                    connection.response.create(model="m", input="long")
                    while json.loads(connection.recv_bytes())["type"] != (
                        "response.output_text.delta"
                    ):
                        pass
                # Closed mid-response, without waiting for the end.

            await anyio.to_thread.run_sync(in_thread, abandon_on_cancel=True)
            await gated.cancelled.wait()
