"""The Responses channel with the clients people build agents with, against the real server.

The OpenAI Agents SDK (``OpenAIResponsesModel``) and LangChain (``ChatOpenAI`` with
``use_responses_api=True``) talk to the demo agent served by Hypercorn on loopback. Both
treat a ``function_call`` item as a call they must run, so these are the clients that broke
when the host showed its agent's own tool calls that way. Each test asks a plain question, a
streamed one, a multi-turn chain and a round trip through a function tool the client
declares and runs.

The clients run in a worker thread on their own asyncio loop (the Agents SDK is
asyncio-only; LangChain is used through its synchronous API), so the host can run on either
backend the suite is run with, as it would for a client in another process.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import openai
import pytest
from agents import (
    Agent,
    ItemHelpers,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    ToolCallItem,
    function_tool,
)
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai.types.responses.response_output_item import McpCall

from agenthost.channels.responses import ResponsesChannel
from agenthost.demo import build_agent
from tests.channels.responses.conftest import TIMEOUT, make_host, serving

pytestmark = pytest.mark.anyio

T = TypeVar("T")
ASK = 'call get_weather {"city": "Paris"}'
NO_TRACING = RunConfig(tracing_disabled=True)  # nothing may leave loopback


async def in_client_thread(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)


SdkBody = Callable[[OpenAIResponsesModel, openai.AsyncOpenAI], Awaitable[T]]


def with_agents_sdk(base_url: str, body: SdkBody[T]) -> T:
    """Run ``body`` with a Responses model pointed at the host (and the ``openai`` client
    under it, to look at what was stored), on a fresh asyncio loop."""

    async def run() -> T:
        async with openai.AsyncOpenAI(
            api_key="key-a", base_url=f"{base_url}/responses/v1", max_retries=0, timeout=TIMEOUT
        ) as client:
            return await body(OpenAIResponsesModel(model="demo", openai_client=client), client)

    return anyio.run(run, backend="asyncio")


def weather_tool(calls: list[str]) -> Any:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    return get_weather


# --- the OpenAI Agents SDK ---------------------------------------------------------------


async def test_agents_sdk_plain_tool_using_and_streamed_questions(tmp_path: Path) -> None:
    async def body(model: OpenAIResponsesModel, client: openai.AsyncOpenAI) -> dict[str, Any]:
        agent = Agent(name="asker", model=model)
        plain = await Runner.run(agent, "hello there", run_config=NO_TRACING)
        # The question that used to end in "Tool add not found in agent".
        tooled = await Runner.run(agent, "what is 2 + 3", run_config=NO_TRACING)
        streamed = Runner.run_streamed(agent, "what is 4 * 5", run_config=NO_TRACING)
        deltas = []
        async for event in streamed.stream_events():
            if event.type == "raw_response_event" and event.data.type == (
                "response.output_text.delta"
            ):
                deltas.append(event.data.delta)
        return {
            "plain": plain.final_output,
            "tooled": tooled.final_output,
            "tooled_items": [item.type for item in tooled.new_items],
            "streamed": streamed.final_output,
            "deltas": deltas,
        }

    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path)) as base_url:
            seen = await in_client_thread(lambda: with_agents_sdk(base_url, body))
    assert seen["plain"] == 'You said: "hello there" (message 1 of this conversation)'
    assert seen["tooled"] == "The answer is 5."
    assert seen["tooled_items"] == ["message_output_item"]
    assert seen["streamed"] == "The answer is 20."
    assert "".join(seen["deltas"]) == "The answer is 20." and len(seen["deltas"]) > 1


async def test_agents_sdk_multi_turn_by_history_and_by_previous_response_id(
    tmp_path: Path,
) -> None:
    async def body(model: OpenAIResponsesModel, client: openai.AsyncOpenAI) -> list[str]:
        agent = Agent(name="asker", model=model)
        first = await Runner.run(agent, "my name is Ada", run_config=NO_TRACING)
        # The SDK's default: the whole history goes back with each turn.
        by_history = await Runner.run(
            agent,
            [*first.to_input_list(), {"role": "user", "content": "what did I say first?"}],
            run_config=NO_TRACING,
        )
        # Or the host keeps it: chain on the last response's id.
        by_id = await Runner.run(
            agent,
            "what did I say first?",
            previous_response_id=first.last_response_id,
            run_config=NO_TRACING,
        )
        return [by_history.final_output, by_id.final_output]

    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path)) as base_url:
            answers = await in_client_thread(lambda: with_agents_sdk(base_url, body))
    assert answers == ['You first said: "my name is Ada"'] * 2


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
@pytest.mark.parametrize("chained", [False, True], ids=["history", "previous_response_id"])
async def test_agents_sdk_runs_its_own_function_tool(
    tmp_path: Path, chained: bool, streamed: bool
) -> None:
    calls: list[str] = []

    async def body(model: OpenAIResponsesModel, client: openai.AsyncOpenAI) -> dict[str, Any]:
        agent = Agent(name="asker", model=model, tools=[weather_tool(calls)])
        if streamed:
            result: Any = Runner.run_streamed(
                agent, ASK, auto_previous_response_id=chained, run_config=NO_TRACING
            )
            async for _ in result.stream_events():
                pass
        else:
            result = await Runner.run(
                agent, ASK, auto_previous_response_id=chained, run_config=NO_TRACING
            )
        last = await client.responses.retrieve(result.last_response_id)
        return {
            "final": result.final_output,
            "items": [item.type for item in result.new_items],
            "arguments": [
                json.loads(item.raw_item.arguments)
                for item in result.new_items
                if isinstance(item, ToolCallItem)
            ],
            # The second request continued the first by id, or sent the whole history.
            "continued_by_id": last.previous_response_id is not None,
        }

    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path)) as base_url:
            seen = await in_client_thread(lambda: with_agents_sdk(base_url, body))
    assert calls == ["Paris"]  # the client ran its tool, once
    assert seen["items"] == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert seen["arguments"] == [{"city": "Paris"}]
    assert seen["final"] == "The answer is sunny in Paris."
    assert seen["continued_by_id"] is chained


async def test_agents_sdk_takes_the_agents_own_calls_shown_as_mcp_calls(
    tmp_path: Path,
) -> None:
    async def body(model: OpenAIResponsesModel, client: openai.AsyncOpenAI) -> dict[str, Any]:
        agent = Agent(name="asker", model=model)
        tooled = await Runner.run(agent, "what is 2 + 3", run_config=NO_TRACING)
        # The mcp_call goes back as history with the next turn, and is taken as such.
        later = await Runner.run(
            agent,
            [*tooled.to_input_list(), {"role": "user", "content": "what did I say first?"}],
            run_config=NO_TRACING,
        )
        return {
            "raw": [type(item.raw_item).__name__ for item in tooled.new_items],
            "final": tooled.final_output,
            "text": ItemHelpers.text_message_outputs(tooled.new_items),
            "later": later.final_output,
        }

    channel = ResponsesChannel(server_tool_calls="mcp_call")
    host = make_host(build_agent(), tmp_path, channels=[channel])
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url:
            seen = await in_client_thread(lambda: with_agents_sdk(base_url, body))
    assert seen["raw"] == [McpCall.__name__, "ResponseOutputMessage"]
    assert seen["final"] == seen["text"] == "The answer is 5."
    assert seen["later"] == 'You first said: "what is 2 + 3"'


# --- LangChain ---------------------------------------------------------------------------


def chat_model(base_url: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="demo",
        base_url=f"{base_url}/responses/v1",
        api_key="key-a",  # type: ignore[arg-type]
        use_responses_api=True,
        max_retries=0,
        timeout=TIMEOUT,
        **options,
    )


async def test_langchain_plain_tool_using_and_streamed_questions(tmp_path: Path) -> None:
    def ask(base_url: str) -> dict[str, Any]:
        llm = chat_model(base_url)
        plain = llm.invoke("hello there")
        tooled = llm.invoke("what is 2 + 3")
        chunks = list(llm.stream("what is 4 * 5"))
        return {
            "plain": plain.text,
            "tooled": tooled,
            "streamed": "".join(chunk.text for chunk in chunks),
            "chunk_calls": [c for chunk in chunks for c in chunk.tool_call_chunks],
            "pieces": sum(1 for chunk in chunks if chunk.text),
        }

    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path)) as base_url:
            seen = await in_client_thread(lambda: ask(base_url))
    assert seen["plain"] == 'You said: "hello there" (message 1 of this conversation)'
    tooled: AIMessage = seen["tooled"]
    assert tooled.tool_calls == []  # nothing for an agent loop to dispatch
    assert tooled.text == "The answer is 5."
    assert seen["streamed"] == "The answer is 20." and seen["pieces"] > 1
    assert seen["chunk_calls"] == []


async def test_langchain_multi_turn_by_history_and_by_previous_response_id(
    tmp_path: Path,
) -> None:
    def converse(base_url: str) -> list[str]:
        llm = chat_model(base_url)
        first = llm.invoke("my name is Ada")
        by_history = llm.invoke(
            [HumanMessage("my name is Ada"), first, HumanMessage("what did I say first?")]
        )
        chained = chat_model(base_url, use_previous_response_id=True)
        opening = chained.invoke("my name is Ada")
        by_id = chained.invoke(
            [HumanMessage("my name is Ada"), opening, HumanMessage("what did I say first?")]
        )
        return [by_history.text, by_id.text]

    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path)) as base_url:
            answers = await in_client_thread(lambda: converse(base_url))
    assert answers == ['You first said: "my name is Ada"'] * 2


@pytest.mark.parametrize("chained", [False, True], ids=["history", "previous_response_id"])
async def test_langchain_round_trip_through_its_own_tool(tmp_path: Path, chained: bool) -> None:
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    def round_trip(base_url: str) -> dict[str, Any]:
        llm = chat_model(base_url, use_previous_response_id=chained).bind_tools([get_weather])
        question = HumanMessage(ASK)
        asked = llm.invoke([question])
        [call] = asked.tool_calls
        answer = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
        final = llm.invoke([question, asked, answer])
        with openai.OpenAI(
            api_key="key-a", base_url=f"{base_url}/responses/v1", max_retries=0, timeout=TIMEOUT
        ) as client:
            stored = client.responses.retrieve(final.response_metadata["id"])
        return {
            "call": call,
            "final": final,
            "previous": stored.previous_response_id,
            "call_response": asked.response_metadata["id"],
        }

    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(build_agent(), tmp_path)) as base_url:
            seen = await in_client_thread(lambda: round_trip(base_url))
    assert seen["call"]["name"] == "get_weather"
    assert seen["call"]["args"] == {"city": "Paris"}
    final: AIMessage = seen["final"]
    assert final.text == "The answer is sunny in Paris."
    assert final.tool_calls == []
    # Chained, only the tool's output went back, after the response that asked for it.
    assert seen["previous"] == (seen["call_response"] if chained else None)


async def test_langchain_keeps_the_agents_own_calls_shown_as_mcp_calls_apart(
    tmp_path: Path,
) -> None:
    def ask(base_url: str) -> tuple[AIMessage, AIMessage]:
        llm = chat_model(base_url)
        first = llm.invoke("what is 2 + 3")
        # The mcp_call block goes back with the history, as an item the host takes.
        later = llm.invoke(
            [HumanMessage("what is 2 + 3"), first, HumanMessage("what did I say first?")]
        )
        return first, later

    channel = ResponsesChannel(server_tool_calls="mcp_call")
    host = make_host(build_agent(), tmp_path, channels=[channel])
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url:
            message, later = await in_client_thread(lambda: ask(base_url))
    assert later.text == 'You first said: "what is 2 + 3"'
    assert message.tool_calls == []
    assert message.text == "The answer is 5."
    blocks = [block for block in message.content if isinstance(block, dict)]
    [shown] = [block for block in blocks if block.get("type") == "mcp_call"]
    assert shown["name"] == "add" and shown["output"] == "5.0"
