"""The Responses channel end to end: the official ``openai`` client against the real server.

Every test serves ``host.app`` with Hypercorn on 127.0.0.1 inside the test's own event loop
(asyncio or trio, chosen by ``AGENTHOST_TEST_BACKEND``) and talks to it with
``openai.AsyncOpenAI(base_url=.../responses/v1)``, as an application would talk to OpenAI;
raw ``httpx`` is used only to check the wire itself (error bodies, headers). The target is
the demo agent (a real Agent Framework agent with tools), a workflow, or a gated callable
whose pace the test controls.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Never

import anyio
import httpx
import openai
import pytest
from agent_framework import (
    AgentResponse,
    AgentResponseUpdate,
    Content,
    WorkflowBuilder,
    WorkflowContext,
    executor,
)
from openai.types.responses.response_output_item import McpCall

from agenthost import ChannelRequest, HostMessage, SessionMode
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.responses import ResponsesChannel
from agenthost.demo import build_agent
from tests.channels.responses.conftest import (
    TIMEOUT,
    Gated,
    make_host,
    sdk_client,
    serving,
)

pytestmark = pytest.mark.anyio


async def collect(stream: Any) -> list[Any]:
    events = []
    async for event in stream:
        events.append(event)
    return events


def assert_contiguous(events: list[Any], start: int = 0) -> None:
    assert [e.sequence_number for e in events] == list(range(start, start + len(events)))


async def settled(client: openai.AsyncOpenAI, response_id: str) -> Any:
    """Poll ``retrieve`` until the response leaves queued/in_progress (bounded)."""
    with anyio.fail_after(TIMEOUT):
        while True:
            response = await client.responses.retrieve(response_id)
            if response.status not in ("queued", "in_progress"):
                return response
            await anyio.sleep(0.05)


# --- plain and tool-calling responses --------------------------------------------------


async def test_create_answers_with_messages_and_never_a_phantom_tool_call(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            plain = await client.responses.create(model="demo", input="hello there")
            assert plain.object == "response"
            assert plain.status == "completed"
            assert plain.id.startswith("resp_")
            assert plain.model == "demo"
            assert plain.output_text == ('You said: "hello there" (message 1 of this conversation)')
            [message] = plain.output
            assert message.type == "message" and message.role == "assistant"
            assert message.status == "completed"
            assert message.content[0].type == "output_text"

            # The agent ran its own ``add`` tool: that is not a call for the client to run.
            tooled = await client.responses.create(model="demo", input="what is 2 + 3")
            assert [item.type for item in tooled.output] == ["message"]
            assert tooled.output_text == "The answer is 5."

            # What was stored is what was answered.
            again = await client.responses.retrieve(tooled.id)
            assert again.model_dump() == tooled.model_dump()


async def test_the_agents_tool_calls_shown_as_mcp_calls_when_asked(tmp_path: Path) -> None:
    channel = ResponsesChannel(server_tool_calls="mcp_call")
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path, channels=[channel])) as base_url,
            sdk_client(base_url) as client,
        ):
            tooled = await client.responses.create(model="demo", input="what is 2 + 3")
            call, answer = tooled.output
            assert isinstance(call, McpCall)  # the SDK's own type for a server-run tool call
            assert call.name == "add" and json.loads(call.arguments) == {"a": 2, "b": 3}
            assert call.output == "5.0" and call.status == "completed" and call.error is None
            assert call.server_label == "agenthost"
            assert answer.type == "message" and tooled.output_text == "The answer is 5."

            stream = await client.responses.create(model="demo", input="what is 2 + 3", stream=True)
            events = await collect(stream)
            assert_contiguous(events)
            final = events[-1].response
            assert [item.type for item in final.output] == ["mcp_call", "message"]
            kinds = [event.type for event in events]
            assert kinds.index("response.mcp_call.completed") < kinds.index(
                "response.output_text.delta"
            )
            indexes = [e.output_index for e in events if e.type == "response.output_item.added"]
            assert indexes == [0, 1]

            # Streamed or not, the same items (ids aside).
            def shape(items: list[Any]) -> list[dict[str, Any]]:
                return [{k: v for k, v in i.model_dump().items() if k != "id"} for i in items]

            assert shape(final.output) == shape(tooled.output)

            # A background run renders its events the same way.
            queued = await client.responses.create(
                model="demo", input="what is 2 + 3", background=True
            )
            done = await settled(client, queued.id)
            assert shape(done.output) == shape(tooled.output)


async def test_streaming_sends_every_event_in_order(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            stream = await client.responses.create(model="demo", input="what is 2 + 3", stream=True)
            events = await collect(stream)
    assert_contiguous(events)
    kinds = [event.type for event in events]
    for kind in (
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ):
        assert kind in kinds, kind
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert not any("function_call" in kind or "mcp_call" in kind for kind in kinds)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "The answer is 5."
    assert len([e for e in events if e.type == "response.output_text.delta"]) > 1
    [done_text] = [e for e in events if e.type == "response.output_text.done"]
    assert done_text.text == "The answer is 5."
    assert [item.type for item in events[-1].response.output] == ["message"]

    final = events[-1].response
    assert final.status == "completed" and final.output_text == "The answer is 5."
    added = [e.item.id for e in events if e.type == "response.output_item.added"]
    done = [e.item.id for e in events if e.type == "response.output_item.done"]
    assert added == done == [item.id for item in final.output]


async def test_streaming_writes_events_as_the_target_produces_them(tmp_path: Path) -> None:
    """The target waits for the client to have seen its first words: a server that buffered
    the stream to the end would never let it finish."""
    gated = Gated()
    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(gated, tmp_path)) as base_url, sdk_client(base_url) as client:
            stream = await client.responses.create(model="m", input="go", stream=True)
            kinds = []
            async for event in stream:
                kinds.append(event.type)
                if event.type == "response.output_text.delta" and not gated.release.is_set():
                    assert event.delta == "one "
                    gated.release.set()
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 3


async def test_the_sdks_stream_helper_accumulates_our_events(tmp_path: Path) -> None:
    """``client.responses.stream()`` rebuilds the response from the events and checks them."""
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            async with client.responses.stream(model="demo", input="what is 2 + 3") as stream:
                final = await stream.get_final_response()
            assert final.output_text == "The answer is 5."
            assert [item.type for item in final.output] == ["message"]
            queued = await client.responses.create(model="demo", input="hi", background=True)
            async with client.responses.stream(response_id=queued.id) as stream:
                resumed = await stream.get_final_response()
            assert resumed.output_text == 'You said: "hi" (message 1 of this conversation)'


# --- sessions --------------------------------------------------------------------------


async def test_two_turns_by_previous_response_id_and_branching(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            first = await client.responses.create(model="demo", input="my name is Ada")
            second = await client.responses.create(
                model="demo", input="what did I say first?", previous_response_id=first.id
            )
            assert second.output_text == 'You first said: "my name is Ada"'
            assert second.previous_response_id == first.id

            third = await client.responses.create(
                model="demo", input="and now?", previous_response_id=second.id
            )
            assert third.output_text == 'You said: "and now?" (message 3 of this conversation)'
            # Each response is a snapshot: continuing from the first again branches.
            branch = await client.responses.create(
                model="demo", input="a new branch", previous_response_id=first.id
            )
            assert branch.output_text == (
                'You said: "a new branch" (message 2 of this conversation)'
            )
            # A streamed turn chains like any other.
            stream = await client.responses.create(
                model="demo",
                input="what did I say first?",
                previous_response_id=branch.id,
                stream=True,
            )
            events = await collect(stream)
            assert events[-1].response.output_text == 'You first said: "my name is Ada"'

            # No previous response of that id: 404, in the OpenAI shape.
            with pytest.raises(openai.NotFoundError) as missing:
                await client.responses.create(
                    model="demo", input="x", previous_response_id="resp_" + "0" * 32
                )
            assert missing.value.code == "previous_response_not_found"
            assert missing.value.param == "previous_response_id"


async def test_a_conversation_over_two_turns(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            conversation = await client.conversations.create(metadata={"topic": "names"})
            assert conversation.object == "conversation"
            assert conversation.metadata == {"topic": "names"}
            assert (await client.conversations.retrieve(conversation.id)).id == (conversation.id)

            first = await client.responses.create(
                model="demo", input="my name is Ada", conversation=conversation.id
            )
            assert first.conversation is not None
            assert first.conversation.id == conversation.id
            second = await client.responses.create(
                model="demo", input="what did I say first?", conversation=conversation.id
            )
            assert second.output_text == 'You first said: "my name is Ada"'

            items = await client.conversations.items.list(conversation.id, order="asc")
            assert [(item.type, item.role) for item in items.data] == [
                ("message", "user"),
                ("message", "assistant"),
                ("message", "user"),
                ("message", "assistant"),
            ]
            assert items.data[0].content[0].text == "my name is Ada"
            assert items.data[3].content[0].text == 'You first said: "my name is Ada"'
            newest = await client.conversations.items.list(conversation.id, limit=1)
            assert newest.data[0].id == items.data[3].id and newest.has_more
            older = await client.conversations.items.list(
                conversation.id, limit=2, after=newest.data[0].id
            )
            assert [i.id for i in older.data] == [items.data[2].id, items.data[1].id]
            one = await client.conversations.items.retrieve(
                items.data[0].id, conversation_id=conversation.id
            )
            assert one.id == items.data[0].id

            # Not both ways of continuing at once.
            with pytest.raises(openai.BadRequestError) as both:
                await client.responses.create(
                    model="demo",
                    input="x",
                    conversation=conversation.id,
                    previous_response_id=first.id,
                )
            assert both.value.param == "conversation"
            with pytest.raises(openai.NotFoundError):
                await client.responses.create(
                    model="demo", input="x", conversation="conv_" + "0" * 32
                )

            deleted = await client.conversations.delete(conversation.id)
            assert deleted.deleted
            with pytest.raises(openai.NotFoundError):
                await client.conversations.retrieve(conversation.id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.create(model="demo", input="x", conversation=conversation.id)


async def test_items_added_to_a_conversation_reach_the_agent(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            conversation = await client.conversations.create(
                items=[{"type": "message", "role": "user", "content": "my name is Bob"}]
            )
            await client.conversations.items.create(
                conversation.id,
                items=[{"type": "message", "role": "user", "content": "I like tea"}],
            )
            answer = await client.responses.create(
                model="demo", input="what did I say first?", conversation=conversation.id
            )
            assert answer.output_text == 'You first said: "my name is Bob"'
            # Seen once: the next turn does not hand them to the agent again.
            later = await client.responses.create(
                model="demo", input="count", conversation=conversation.id
            )
            assert later.output_text == 'You said: "count" (message 4 of this conversation)'
            items = await client.conversations.items.list(conversation.id, order="asc")
            assert len(items.data) == 6


async def test_a_background_turn_in_a_conversation(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            conversation = await client.conversations.create(
                items=[{"type": "message", "role": "user", "content": "my name is Cy"}]
            )
            queued = await client.responses.create(
                model="demo", input="hello", conversation=conversation.id, background=True
            )
            done = await settled(client, queued.id)
            assert done.output_text == 'You said: "hello" (message 2 of this conversation)'
            recalled = await client.responses.create(
                model="demo", input="what did I say first?", conversation=conversation.id
            )
            assert recalled.output_text == 'You first said: "my name is Cy"'
            items = await client.conversations.items.list(conversation.id, order="asc")
            assert [i.content[0].text for i in items.data] == [
                "my name is Cy",
                "hello",
                'You said: "hello" (message 2 of this conversation)',
                "what did I say first?",
                'You first said: "my name is Cy"',
            ]


async def test_store_false_is_not_retrievable_but_can_be_continued(tmp_path: Path) -> None:
    seen: list[ChannelRequest] = []

    def note(request: ChannelRequest, *, target: Any, protocol_request: Any) -> None:
        seen.append(request)

    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path, run_hook=note)) as base_url,
            sdk_client(base_url) as client,
        ):
            first = await client.responses.create(model="demo", input="my name is Ada", store=False)
            assert first.store is False
            assert seen[-1].attributes["store"] is False
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(first.id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.input_items.list(first.id)
            second = await client.responses.create(
                model="demo", input="what did I say first?", previous_response_id=first.id
            )
            assert second.output_text == 'You first said: "my name is Ada"'


async def test_a_run_hook_can_make_unstored_responses_stateless(tmp_path: Path) -> None:
    def stateless_unless_stored(
        request: ChannelRequest, *, target: Any, protocol_request: Any
    ) -> ChannelRequest:
        if request.attributes["store"]:
            return request
        import attrs

        return attrs.evolve(request, session_mode=SessionMode.DISABLED)

    host = make_host(build_agent(), tmp_path, run_hook=stateless_unless_stored)
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url) as client:
            first = await client.responses.create(model="demo", input="my name is Ada", store=False)
            with pytest.raises(openai.NotFoundError):
                await client.responses.create(
                    model="demo", input="what did I say first?", previous_response_id=first.id
                )


# --- background runs ---------------------------------------------------------------------


async def test_background_create_poll_and_complete(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            queued = await client.responses.create(
                model="demo", input="what is 4 * 5", background=True
            )
            assert queued.status in ("queued", "in_progress")
            assert queued.background is True
            done = await settled(client, queued.id)
            assert done.status == "completed"
            assert [item.type for item in done.output] == ["message"]
            assert done.output_text == "The answer is 20."
            # A background turn continues like any other.
            chained = await client.responses.create(
                model="demo", input="what did I say first?", previous_response_id=done.id
            )
            assert chained.output_text == 'You first said: "what is 4 * 5"'
            # Cancelling a finished response changes nothing and answers its final state.
            after = await client.responses.cancel(done.id)
            assert after.status == "completed"


async def test_background_cancel_is_idempotent_and_stops_the_target(tmp_path: Path) -> None:
    gated = Gated()
    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(gated, tmp_path)) as base_url, sdk_client(base_url) as client:
            response = await client.responses.create(model="m", input="slow", background=True)
            await gated.started.wait()
            running = await settled_or_running(client, response.id)
            assert running.status == "in_progress"
            # A response that has not finished cannot be continued yet.
            with pytest.raises(openai.BadRequestError):
                await client.responses.create(
                    model="m", input="next", previous_response_id=response.id
                )

            cancelled = await client.responses.cancel(response.id)
            assert cancelled.status == "cancelled"
            await gated.cancelled.wait()  # the target itself was cancelled
            again = await client.responses.cancel(response.id)
            assert again.status == "cancelled"
            for _ in range(3):
                assert (await client.responses.retrieve(response.id)).status == "cancelled"
            # The stream of a cancelled response ends (no terminal event for cancellation).
            events = await collect(await client.responses.retrieve(response.id, stream=True))
            assert [e.type for e in events[:3]] == [
                "response.created",
                "response.queued",
                "response.in_progress",
            ]
            assert_contiguous(events)

            # Only background responses can be cancelled.
            gated.release.set()
            foreground = await client.responses.create(model="m", input="x")
            assert foreground.output_text == "one two three"
            with pytest.raises(openai.BadRequestError):
                await client.responses.cancel(foreground.id)


async def settled_or_running(client: openai.AsyncOpenAI, response_id: str) -> Any:
    with anyio.fail_after(TIMEOUT):
        while True:
            response = await client.responses.retrieve(response_id)
            if response.status != "queued":
                return response
            await anyio.sleep(0.02)


async def test_a_dropped_background_stream_resumes_exactly(tmp_path: Path) -> None:
    gated = Gated(first="alpha ", rest=("beta ", "gamma ", "delta"))
    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(gated, tmp_path)) as base_url, sdk_client(base_url) as client:
            stream = await client.responses.create(
                model="m", input="go", background=True, stream=True
            )
            before = []
            async for event in stream:
                before.append(event)
                if event.type == "response.output_text.delta":
                    break
            await stream.close()  # the deliberate disconnect, mid-response
            response_id = before[0].response.id
            gated.release.set()

            last = before[-1].sequence_number
            rest = await collect(
                await client.responses.retrieve(response_id, stream=True, starting_after=last)
            )
            everything = await collect(await client.responses.retrieve(response_id, stream=True))

    assert [e.type for e in before[:3]] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]
    assert_contiguous(before)
    assert_contiguous(rest, start=last + 1)
    assert [e.model_dump() for e in before + rest] == [e.model_dump() for e in everything]
    assert rest[-1].type == "response.completed"
    assert rest[-1].response.output_text == "alpha beta gamma delta"
    deltas = [e.delta for e in everything if e.type == "response.output_text.delta"]
    assert deltas == ["alpha ", "beta ", "gamma ", "delta"]


async def test_a_background_response_survives_a_restart(tmp_path: Path) -> None:
    gated = Gated(first="interrupted ")

    async def finisher(messages: list[HostMessage]) -> str:
        return f"finished: {messages[-1].text}"

    with anyio.fail_after(TIMEOUT):
        first_host = make_host(gated, tmp_path, shutdown_grace_seconds=0.2)
        async with serving(first_host) as base_url, sdk_client(base_url) as client:
            response = await client.responses.create(model="m", input="job", background=True)
            await gated.started.wait()
        # The first host stopped mid-run: the run went back to the queue.
        assert gated.cancelled.is_set()

        async with (
            serving(make_host(finisher, tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            done = await settled(client, response.id)
            assert done.status == "completed"
            assert done.output_text == "finished: job"
            events = await collect(await client.responses.retrieve(response.id, stream=True))
    assert_contiguous(events)
    kinds = [e.type for e in events]
    # Both runs are in the log, one after the other; the numbers never restart.
    assert kinds.count("response.in_progress") == 2
    assert kinds[-1] == "response.completed"
    assert events[-1].response.output_text == "finished: job"


# --- input items, deletion ---------------------------------------------------------------


async def test_input_items_are_listed_and_paged(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            response = await client.responses.create(
                model="demo",
                input=[{"role": "user", "content": f"message {n}"} for n in range(5)],
            )
            listed = await client.responses.input_items.list(response.id)
            texts = [item.content[0].text for item in listed.data]
            assert texts == [f"message {n}" for n in reversed(range(5))]
            assert listed.has_more is False
            assert listed.first_id == listed.data[0].id

            page = await client.responses.input_items.list(response.id, order="asc", limit=2)
            assert [i.content[0].text for i in page.data] == ["message 0", "message 1"]
            assert page.has_more
            page = await client.responses.input_items.list(
                response.id, order="asc", limit=2, after=page.last_id
            )
            assert [i.content[0].text for i in page.data] == ["message 2", "message 3"]
            with pytest.raises(openai.BadRequestError):
                await client.responses.input_items.list(response.id, after="msg_nope")

            await client.responses.delete(response.id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(response.id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.input_items.list(response.id)


async def test_item_references_resolve_to_the_callers_earlier_items(tmp_path: Path) -> None:
    received: list[list[tuple[str, str]]] = []

    async def echo(messages: list[HostMessage]) -> str:
        received.append([(m.role, m.text) for m in messages])
        return f"echo: {messages[-1].text}"

    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(echo, tmp_path)) as base_url,
            sdk_client(base_url, "key-a") as alice,
            sdk_client(base_url, "key-b") as bob,
        ):
            first = await alice.responses.create(model="m", input="alpha")
            reference = {"type": "item_reference", "id": first.output[0].id}
            await alice.responses.create(
                model="m", input=[reference, {"role": "user", "content": "beta"}]
            )
            assert received[-1][-2:] == [("assistant", "echo: alpha"), ("user", "beta")]
            with pytest.raises(openai.NotFoundError):
                await bob.responses.create(model="m", input=[reference])
            with pytest.raises(openai.NotFoundError):
                await alice.responses.create(
                    model="m", input=[{"type": "item_reference", "id": "msg_missing"}]
                )


# --- targets -------------------------------------------------------------------------------


@executor(id="upper")
async def upper(text: str, ctx: WorkflowContext[str]) -> None:
    await ctx.send_message(text.upper())


@executor(id="exclaim")
async def exclaim(text: str, ctx: WorkflowContext[Never, str]) -> None:
    await ctx.yield_output(text + "!")


async def test_a_workflow_targets_outputs_are_messages(tmp_path: Path) -> None:
    workflow = WorkflowBuilder(start_executor=upper).add_edge(upper, exclaim).build()
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(workflow, tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            response = await client.responses.create(model="wf", input="hi")
            assert [item.type for item in response.output] == ["message"]
            assert response.output_text == "HI!"
            events = await collect(
                await client.responses.create(model="wf", input="again", stream=True)
            )
            assert events[-1].type == "response.completed"
            assert events[-1].response.output_text == "AGAIN!"


class RichAgent:
    """An agent (anything with ``run(messages, session=, stream=)``) whose answer has
    reasoning, a cited text and token usage, as a model-backed agent's would."""

    def updates(self) -> list[AgentResponseUpdate]:
        citation = {
            "type": "citation",
            "title": "Docs",
            "url": "https://example.test/docs",
            "annotated_regions": [{"type": "text_span", "start_index": 0, "end_index": 3}],
        }
        usage = {"input_token_count": 12, "output_token_count": 7, "total_token_count": 19}
        return [
            AgentResponseUpdate(
                contents=[Content.from_text_reasoning(text="Let me think.")],
                role="assistant",
                message_id="r1",
            ),
            AgentResponseUpdate(
                contents=[Content.from_text("See ", annotations=[citation])],
                role="assistant",
                message_id="m1",
            ),
            AgentResponseUpdate(
                contents=[Content.from_text("the docs.")], role="assistant", message_id="m1"
            ),
            AgentResponseUpdate(
                contents=[Content.from_usage(usage_details=usage)],
                role="assistant",
                message_id="m1",
            ),
        ]

    def run(self, messages: Any, *, session: Any = None, stream: bool = False, **_: Any) -> Any:
        updates = self.updates()
        final = AgentResponse.from_updates(updates)
        if not stream:

            async def once() -> AgentResponse:
                return final

            return once()
        return _UpdateStream(updates, final)


class _UpdateStream:
    def __init__(self, updates: list[AgentResponseUpdate], final: AgentResponse) -> None:
        self._updates = updates
        self._final = final

    async def __aiter__(self) -> Any:
        for update in self._updates:
            yield update

    async def get_final_response(self) -> AgentResponse:
        return self._final


async def test_reasoning_citations_and_usage_reach_the_client(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(RichAgent(), tmp_path)) as base_url,
            sdk_client(base_url) as client,
        ):
            plain = await client.responses.create(model="m", input="docs?")
            events = await collect(await client.responses.create(model="m", input="x", stream=True))
    streamed = events[-1].response
    for response in (plain, streamed):
        reasoning, message = response.output
        assert reasoning.type == "reasoning"
        assert reasoning.content[0].text == "Let me think."
        assert message.content[0].text == "See the docs."
        [citation] = message.content[0].annotations
        assert citation.type == "url_citation" and citation.url == "https://example.test/docs"
        assert (citation.start_index, citation.end_index) == (0, 3)
        assert response.usage is not None
        assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
        assert response.usage.total_tokens == 19
    kinds = [e.type for e in events]
    assert "response.reasoning_text.delta" in kinds
    assert "response.output_text.annotation.added" in kinds


async def test_a_failing_run_is_a_failed_response(tmp_path: Path) -> None:
    async def fails(messages: list[HostMessage]) -> str:
        raise RuntimeError("secret internals")

    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(fails, tmp_path)) as base_url, sdk_client(base_url) as client:
            response = await client.responses.create(model="m", input="boom")
            assert response.status == "failed"
            assert response.error is not None and response.error.code == "server_error"
            assert "secret" not in response.model_dump_json()
            events = await collect(await client.responses.create(model="m", input="x", stream=True))
            assert events[-1].type == "response.failed"
            assert events[-1].response.error.code == "server_error"


# --- callers -------------------------------------------------------------------------------


async def test_two_api_keys_cannot_continue_each_others_responses(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path)) as base_url,
            sdk_client(base_url, "key-a") as alice,
            sdk_client(base_url, "key-b") as bob,
        ):
            mine = await alice.responses.create(model="demo", input="my name is Ada")
            background = await alice.responses.create(model="demo", input="hello", background=True)
            conversation = await alice.conversations.create()

            with pytest.raises(openai.NotFoundError) as chained:
                await bob.responses.create(
                    model="demo", input="what did I say first?", previous_response_id=mine.id
                )
            # The same answer as for an id that never existed: no oracle.
            assert chained.value.code == "previous_response_not_found"
            for call in (
                lambda: bob.responses.retrieve(mine.id),
                lambda: bob.responses.input_items.list(mine.id),
                lambda: bob.responses.cancel(background.id),
                lambda: bob.responses.delete(mine.id),
                lambda: bob.responses.retrieve(background.id, stream=True),
                lambda: bob.conversations.retrieve(conversation.id),
                lambda: bob.conversations.items.list(conversation.id),
                lambda: bob.responses.create(model="demo", input="x", conversation=conversation.id),
            ):
                with pytest.raises(openai.NotFoundError):
                    await call()
            # Alice's things are untouched.
            assert (await alice.responses.retrieve(mine.id)).status == "completed"
            ok = await alice.responses.create(
                model="demo", input="what did I say first?", previous_response_id=mine.id
            )
            assert ok.output_text == 'You first said: "my name is Ada"'
            await settled(alice, background.id)


async def test_configured_api_keys_decide_the_caller(tmp_path: Path) -> None:
    seen: list[ChannelRequest] = []

    def note(request: ChannelRequest, *, target: Any, protocol_request: Any) -> None:
        seen.append(request)

    channel = ResponsesChannel(api_keys={"sk-alice": "alice", "sk-alice-2": "alice"})
    host = make_host(build_agent(), tmp_path, channels=[channel], run_hook=note)
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(host) as base_url,
            sdk_client(base_url, "sk-alice") as one,
            sdk_client(base_url, "sk-alice-2") as two,
            sdk_client(base_url, "sk-mallory") as mallory,
        ):
            first = await one.responses.create(
                model="demo",
                input="my name is Ada",
                safety_identifier="someone-else",
                user="legacy-user",
                temperature=0.25,
                extra_body={"my_field": {"x": 1}},
            )
            # Two keys of one caller share that caller's responses.
            second = await two.responses.create(
                model="demo", input="what did I say first?", previous_response_id=first.id
            )
            assert second.output_text == 'You first said: "my name is Ada"'
            with pytest.raises(openai.AuthenticationError) as refused:
                await mallory.responses.create(model="demo", input="hi")
            assert refused.value.code == "invalid_api_key"

    request = seen[0]
    assert request.identity.native_id == "alice"  # hints never change who the caller is
    assert request.identity.attributes == {
        "safety_identifier": "someone-else",
        "user": "legacy-user",
    }
    assert request.options["temperature"] == 0.25
    assert request.attributes["extra_fields"] == {"my_field": {"x": 1}}
    assert request.attributes["response_id"] == first.id


async def test_a_demo_caller_is_the_hash_of_its_key(tmp_path: Path) -> None:
    seen: list[ChannelRequest] = []

    def note(request: ChannelRequest, *, target: Any, protocol_request: Any) -> None:
        seen.append(request)

    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(build_agent(), tmp_path, run_hook=note)) as base_url,
            sdk_client(base_url, "my-demo-key") as client,
        ):
            await client.responses.create(model="demo", input="hi")
    assert seen[0].identity.native_id == hashlib.sha256(b"my-demo-key").hexdigest()
    stored = (tmp_path / "state.db").read_bytes()
    assert b"my-demo-key" not in stored


async def test_an_authenticate_function_replaces_keys(tmp_path: Path) -> None:
    def by_header(connection: Any) -> str | None:
        return connection.headers.get("x-caller")

    host = make_host(build_agent(), tmp_path, channels=[ResponsesChannel(authenticate=by_header)])
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.responses.create(model="demo", input="hi")
            answer = await client.responses.create(
                model="demo", input="hi", extra_headers={"x-caller": "carol"}
            )
            assert answer.status == "completed"
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(answer.id, extra_headers={"x-caller": "dave"})


async def test_a_responses_caller_cannot_reach_another_channels_session(tmp_path: Path) -> None:
    host = make_host(build_agent(), tmp_path, channels=[InvocationsChannel(), ResponsesChannel()])
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(host) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http,
        ):
            invoked = await http.post(
                "/invocations/invoke", json={"input": "my name is Ada", "session_id": "abc"}
            )
            assert invoked.status_code == 200, invoked.text
            async with sdk_client(base_url) as client:
                with pytest.raises(openai.NotFoundError):
                    await client.responses.create(
                        model="demo", input="what did I say first?", previous_response_id="abc"
                    )
                with pytest.raises(openai.NotFoundError):
                    await client.responses.create(
                        model="demo", input="what did I say first?", conversation="abc"
                    )
                fresh = await client.responses.create(model="demo", input="what did I say first?")
                assert fresh.output_text == "This is the first thing you said."
            # And the other way: a response id is no Invocations session.
            async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http:
                other = await http.post(
                    "/invocations/invoke",
                    json={"input": "what did I say first?", "session_id": fresh.id},
                )
                assert other.json()["output"] == "This is the first thing you said."


# --- the wire itself ------------------------------------------------------------------------


def assert_openai_error(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text


async def test_errors_have_the_openai_shape_and_status(tmp_path: Path) -> None:
    channel = ResponsesChannel(max_body_bytes=2048)
    host = make_host(build_agent(), tmp_path, channels=[channel])
    auth = {"authorization": "Bearer key-a"}
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(host) as base_url,
            httpx.AsyncClient(base_url=f"{base_url}/responses/v1", timeout=TIMEOUT) as http,
        ):
            assert_openai_error(
                await http.post("/responses", json={"input": "x"}), 401, "invalid_api_key"
            )
            assert_openai_error(
                await http.post(
                    "/responses", json={"input": "x"}, headers={"authorization": "Basic a"}
                ),
                401,
                "invalid_api_key",
            )
            bad_json = await http.post("/responses", content=b"{nope", headers=auth)
            assert_openai_error(bad_json, 400, None)
            assert bad_json.json()["error"]["type"] == "invalid_request_error"
            missing = await http.post("/responses", json={"model": "m"}, headers=auth)
            assert_openai_error(missing, 400, "missing_required_parameter")
            assert missing.json()["error"]["param"] == "input"
            metadata = {f"k{n}": "v" for n in range(17)}
            too_many = await http.post(
                "/responses", json={"input": "x", "metadata": metadata}, headers=auth
            )
            assert_openai_error(too_many, 400, None)
            assert too_many.json()["error"]["param"] == "metadata"
            large = await http.post("/responses", json={"input": "x" * 4096}, headers=auth)
            assert_openai_error(large, 413, "request_too_large")
            for path in (
                "/responses/resp_unknown",
                "/responses/resp_unknown/input_items",
                "/conversations/conv_unknown",
            ):
                assert_openai_error(await http.get(path, headers=auth), 404, "not_found")
            assert_openai_error(
                await http.post("/responses/resp_unknown/cancel", headers=auth),
                404,
                "not_found",
            )
            assert_openai_error(
                await http.delete("/responses/resp_unknown", headers=auth), 404, "not_found"
            )
            ok = await http.post("/responses", json={"input": "hi"}, headers=auth)
            assert ok.status_code == 200
            assert ok.headers["x-request-id"].startswith("req_")
            not_background = await http.get(
                f"/responses/{ok.json()['id']}", params={"stream": "true"}, headers=auth
            )
            assert_openai_error(not_background, 400, None)
