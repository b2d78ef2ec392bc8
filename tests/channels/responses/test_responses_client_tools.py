"""Client-declared function tools, with the official ``openai`` client against the real server.

The target is the demo agent (a real Agent Framework agent whose local "model" calls a tool
it is offered when a message says ``call NAME {arguments}``). A function tool the client
declares reaches it as a declaration-only tool: the response ends with a ``function_call``
for the client, and the client's next request, carrying the ``function_call_output``,
continues the run. The agent's own tools keep running on the host, out of the client's way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
from agent_framework import Agent
from openai.types.responses import ResponseFunctionToolCall

from agenthost import ChannelIdentity, ChannelRequest, Host, HostMessage, demo
from agenthost.backends.targets import (
    CallableTarget,
    FunctionToolsUnsupported,
    TargetCall,
)
from agenthost.channels.responses import ResponsesChannel
from agenthost.demo import build_agent
from agenthost.sansio_core.types import SessionRef
from tests.channels.responses.conftest import TIMEOUT, make_host, sdk_client, serving

pytestmark = pytest.mark.anyio

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
ASK = 'call get_weather {"city": "Paris"}'


def output_of(call: ResponseFunctionToolCall, text: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call.call_id, "output": text}


def without_ids(items: list[Any]) -> list[dict[str, Any]]:
    # ``parsed_arguments``: what the SDK's stream helper adds to the items it rebuilds.
    return [
        {k: v for k, v in item.model_dump().items() if k not in ("id", "parsed_arguments")}
        for item in items
    ]


async def test_a_client_tool_round_trip_by_previous_response_id(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            asked = await client.responses.create(model="demo", input=ASK, tools=[WEATHER])
            assert asked.status == "completed"
            [call] = asked.output
            assert isinstance(call, ResponseFunctionToolCall)
            assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
            assert call.status == "completed" and call.call_id
            assert asked.tools[0].name == "get_weather"  # type: ignore[union-attr]

            answered = await client.responses.create(
                model="demo",
                input=[output_of(call, "sunny")],
                previous_response_id=asked.id,
                tools=[WEATHER],
            )
            assert answered.output_text == "The answer is sunny."
            assert [item.type for item in answered.output] == ["message"]
            # The run continued in the same session: it still knows how it started.
            recall = await client.responses.create(
                model="demo", input="what did I say first?", previous_response_id=answered.id
            )
            assert recall.output_text == f'You first said: "{ASK}"'


async def test_streamed_and_plain_tool_calls_are_the_same_items(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            plain = await client.responses.create(model="demo", input=ASK, tools=[WEATHER])
            stream = await client.responses.create(
                model="demo", input=ASK, tools=[WEATHER], stream=True
            )
            events = [event async for event in stream]
            assert [e.sequence_number for e in events] == list(range(len(events)))
            streamed = events[-1].response
            assert events[-1].type == "response.completed"
            assert without_ids(streamed.output) == without_ids(plain.output)
            added = [e for e in events if e.type == "response.output_item.added"]
            assert [e.output_index for e in added] == [0]
            deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
            assert json.loads("".join(deltas)) == {"city": "Paris"}

            # The SDK's stream helper rebuilds the same call from the events.
            async with client.responses.stream(model="demo", input=ASK, tools=[WEATHER]) as helper:
                rebuilt = await helper.get_final_response()
            assert without_ids(rebuilt.output) == without_ids(plain.output)


async def test_a_client_tool_round_trip_in_a_conversation(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            conversation = await client.conversations.create()
            asked = await client.responses.create(
                model="demo", input=ASK, tools=[WEATHER], conversation=conversation.id
            )
            [call] = asked.output
            assert isinstance(call, ResponseFunctionToolCall)
            answered = await client.responses.create(
                model="demo",
                input=[output_of(call, "rainy")],
                tools=[WEATHER],
                conversation=conversation.id,
            )
            assert answered.output_text == "The answer is rainy."
            items = await client.conversations.items.list(conversation.id, order="asc")
            kinds = [item.type for item in items.data]
            assert kinds == ["message", "function_call", "function_call_output", "message"]


async def test_the_whole_history_sent_back_continues_without_a_session(tmp_path: Path) -> None:
    """A client that keeps the history itself (store=false, no previous_response_id)."""
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            asked = await client.responses.create(
                model="demo", input=ASK, tools=[WEATHER], store=False
            )
            [call] = asked.output
            assert isinstance(call, ResponseFunctionToolCall)
            history: list[Any] = [
                {"role": "user", "content": ASK},
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                },
                output_of(call, "foggy"),
            ]
            answered = await client.responses.create(
                model="demo", input=history, tools=[WEATHER], store=False
            )
            assert answered.output_text == "The answer is foggy."


async def test_the_agents_own_tools_still_run_next_to_the_clients(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            own = await client.responses.create(
                model="demo", input="what is 2 + 3", tools=[WEATHER]
            )
            assert [item.type for item in own.output] == ["message"]
            assert own.output_text == "The answer is 5."


async def test_a_client_tool_named_like_one_of_the_agents_is_refused(tmp_path: Path) -> None:
    """Its calls could not be told apart: the agent's own call would reach the client."""
    add = {"type": "function", "name": "add", "parameters": {"type": "object"}}
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            clash = await client.responses.create(model="demo", input="what is 2 + 3", tools=[add])
            assert clash.status == "failed" and clash.output == []
            assert clash.error is not None and clash.error.code == "server_error"


class RecordingModel(demo.LocalChatClient):
    """The demo's model, noting the tool options each call to it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    def _inner_get_response(self, *, options: Mapping[str, Any], **kwargs: Any) -> Any:
        self.seen.append(
            {
                "tools": sorted(getattr(tool, "name", "") for tool in options.get("tools") or ()),
                "tool_choice": options.get("tool_choice"),
                "parallel": options.get("allow_multiple_tool_calls"),
            }
        )
        return super()._inner_get_response(options=options, **kwargs)


async def test_the_model_sees_the_declared_tools_and_choices(tmp_path: Path) -> None:
    model = RecordingModel()
    agent = Agent(client=model, tools=[demo.add, demo.multiply], name="demo")
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(agent, tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            await client.responses.create(
                model="demo",
                input=ASK,
                tools=[WEATHER],
                tool_choice={"type": "function", "name": "get_weather"},
                parallel_tool_calls=False,
            )
    assert model.seen[0] == {
        "tools": ["add", "get_weather", "multiply"],  # the client's next to the agent's own
        "tool_choice": {"mode": "required", "required_function_name": "get_weather"},
        "parallel": False,
    }


async def test_tool_choice_and_parallel_tool_calls_reach_the_agent(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            none = await client.responses.create(
                model="demo", input=ASK, tools=[WEATHER], tool_choice="none"
            )
            assert [item.type for item in none.output] == ["message"]
            assert none.tool_choice == "none"
            named = await client.responses.create(
                model="demo",
                input=ASK,
                tools=[WEATHER],
                tool_choice={"type": "function", "name": "get_weather"},
                parallel_tool_calls=False,
            )
            assert [item.type for item in named.output] == ["function_call"]
            assert named.parallel_tool_calls is False


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_tool_type"),
        ({"tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name", None),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name", None),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "tools": []}},
            "tool_choice",
            "unsupported_tool_choice",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}},
            "tool_choice.name",
            None,
        ),
        ({"tools": [{**WEATHER, "parameters": "{}"}]}, "tools[0].parameters", None),
    ],
)
async def test_tools_the_host_cannot_honour_are_refused(
    tmp_path: Path, body: dict[str, Any], param: str, code: str | None
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            httpx.AsyncClient(base_url=f"{base_url}/responses/v1") as http,
        ):
            answer = await http.post(
                "/responses",
                json={"model": "demo", "input": "hi", **body},
                headers={"authorization": "Bearer key-a"},
            )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code


async def plain_target(messages: list[HostMessage]) -> str:
    return f"echo: {messages[-1].text}"


async def test_a_plain_async_target_never_quietly_ignores_tools(tmp_path: Path) -> None:
    """The host knows its target cannot take tools: the openai client hears a 400, never
    an answer that pretends the tools were seen."""
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(plain_target, tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.responses.create(model="demo", input=ASK, tools=[WEATHER])
            assert refused.value.code == "tools_not_supported"
            with pytest.raises(openai.BadRequestError):
                await client.responses.create(model="demo", input="hi", tool_choice="required")
            fine = await client.responses.create(model="demo", input="hi", tool_choice="auto")
            assert fine.output_text == "echo: hi"


async def test_the_adapter_refuses_tools_where_no_host_says_so_first() -> None:
    """Below the channel, a plain target's adapter refuses a run with tools itself."""
    request = ChannelRequest(
        channel="responses",
        identity=ChannelIdentity("responses", "caller"),
        input=(HostMessage.user(ASK),),
        options={"tools": [WEATHER]},
    )
    with pytest.raises(FunctionToolsUnsupported):
        await CallableTarget(plain_target).run(
            TargetCall(request, SessionRef("k", None, None), None, None)
        )


async def test_a_host_that_knows_its_target_refuses_tools_with_a_400(tmp_path: Path) -> None:
    from agenthost.stores.sqlite import SQLiteStore

    def host(target: Any) -> Host:
        return Host(
            target,
            channels=[ResponsesChannel()],
            store=SQLiteStore(tmp_path / f"{id(target)}.db"),
            state_dir=tmp_path,
        )

    body = {"model": "demo", "input": ASK, "tools": [WEATHER]}
    headers = {"authorization": "Bearer key-a"}
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(host(plain_target)) as base_url,
            httpx.AsyncClient(base_url=f"{base_url}/responses/v1") as http,
        ):
            refused = await http.post("/responses", json=body, headers=headers)
            streamed = await http.post("/responses", json={**body, "stream": True}, headers=headers)
            required = await http.post(
                "/responses",
                json={"model": "demo", "input": "hi", "tool_choice": "required"},
                headers=headers,
            )
        async with (
            serving(host(build_agent())) as base_url,
            httpx.AsyncClient(base_url=f"{base_url}/responses/v1") as http,
        ):
            taken = await http.post("/responses", json=body, headers=headers)
    for answer in (refused, streamed):
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "tools"
        assert answer.json()["error"]["code"] == "tools_not_supported"
    assert required.status_code == 400
    assert required.json()["error"]["param"] == "tool_choice"
    assert taken.status_code == 200
    assert taken.json()["output"][0]["type"] == "function_call"
