"""The A2A channel end to end: the real ``a2a-sdk`` client against the served host.

Each test serves ``host.app`` with Hypercorn on 127.0.0.1 in the test's own loop (asyncio
or trio) and drives it with the SDK's client for protocol v1.0 (JSON-RPC and HTTP+JSON)
and v0.3 (JSON-RPC), picked from the host's own agent card. Client code runs on an
asyncio loop in a worker thread (``support.in_client``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from a2a.types import a2a_pb2 as pb

from agenthost.demo import build_agent
from tests.channels.a2a.support import (
    TIMEOUT,
    artifact_text,
    collect,
    echo_target,
    in_client,
    make_host,
    sdk_client,
    send_request,
    serving,
)

pytestmark = pytest.mark.anyio

GENERATIONS = [
    pytest.param("1.0", "JSONRPC", id="v1.0-jsonrpc"),
    pytest.param("1.0", "HTTP+JSON", id="v1.0-rest"),
    pytest.param("0.3", "JSONRPC", id="v0.3-jsonrpc"),
]


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_send_answers_with_a_completed_task_and_keeps_the_context(
    tmp_path: Path, generation: str, binding: str
) -> None:
    async with serving(make_host(echo_target, tmp_path)) as base_url:

        async def scenario() -> tuple[Any, Any, Any]:
            async with sdk_client(
                base_url, generation=generation, binding=binding, streaming=False
            ) as client:
                [first] = await collect(client.send_message(send_request("hello")))
                context = first.task.context_id
                [second] = await collect(
                    client.send_message(send_request("again", context_id=context))
                )
                [other] = await collect(client.send_message(send_request("elsewhere")))
                return first.task, second.task, other.task

        with anyio.fail_after(TIMEOUT):
            first, second, other = await in_client(scenario)
    assert first.status.state == pb.TASK_STATE_COMPLETED
    assert artifact_text(first) == "echo hello #1"
    assert first.context_id
    assert second.context_id == first.context_id
    assert artifact_text(second) == "echo again #2"  # the same session: it saw "hello"
    assert other.context_id != first.context_id
    assert artifact_text(other) == "echo elsewhere #1"
    assert [m.role for m in first.history] == [pb.ROLE_USER, pb.ROLE_AGENT]
    assert first.id != second.id


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_stream_sends_the_task_then_ordered_updates_then_the_final_status(
    tmp_path: Path, generation: str, binding: str
) -> None:
    async def pieces(messages: list[Any]) -> Any:
        for piece in ("alpha ", "beta ", "gamma"):
            yield piece

    async with serving(make_host(pieces, tmp_path)) as base_url:

        async def scenario() -> list[Any]:
            async with sdk_client(base_url, generation=generation, binding=binding) as client:
                return await collect(client.send_message(send_request("go")))

        with anyio.fail_after(TIMEOUT):
            events = await in_client(scenario)
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds == [
        "task",
        "status_update",
        "artifact_update",
        "artifact_update",
        "artifact_update",
        "status_update",
    ]
    assert events[0].task.status.state == pb.TASK_STATE_SUBMITTED
    assert events[1].status_update.status.state == pb.TASK_STATE_WORKING
    chunks = [e.artifact_update for e in events[2:5]]
    assert [c.artifact.parts[0].text for c in chunks] == ["alpha ", "beta ", "gamma"]
    assert [c.append for c in chunks] == [False, True, True]
    assert events[-1].status_update.status.state == pb.TASK_STATE_COMPLETED
    task_ids = {events[0].task.id, *(e.status_update.task_id for e in (events[1], events[-1]))}
    assert len(task_ids) == 1


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_get_with_history_length_and_list_by_context(
    tmp_path: Path, generation: str, binding: str
) -> None:
    async with serving(make_host(echo_target, tmp_path)) as base_url:

        async def scenario() -> dict[str, Any]:
            async with sdk_client(
                base_url, generation=generation, binding=binding, streaming=False
            ) as client:
                [a] = await collect(client.send_message(send_request("one")))
                ctx = a.task.context_id
                [b] = await collect(client.send_message(send_request("two", context_id=ctx)))
                await collect(client.send_message(send_request("three")))
                full = await client.get_task(pb.GetTaskRequest(id=b.task.id))
                last = await client.get_task(pb.GetTaskRequest(id=b.task.id, history_length=1))
                listed = None
                if generation == "1.0":
                    listed = await client.list_tasks(pb.ListTasksRequest(context_id=ctx))
                return {"a": a.task, "b": b.task, "full": full, "last": last, "listed": listed}

        with anyio.fail_after(TIMEOUT):
            seen = await in_client(scenario)
    assert seen["full"].id == seen["b"].id
    assert seen["full"].status.state == pb.TASK_STATE_COMPLETED
    assert artifact_text(seen["full"]) == "echo two #2"
    assert len(seen["full"].history) == 2
    assert [m.role for m in seen["last"].history] == [pb.ROLE_AGENT]
    if seen["listed"] is not None:
        # Newest first, only the context asked for, artifacts left out unless asked for.
        assert [t.id for t in seen["listed"].tasks] == [seen["b"].id, seen["a"].id]
        assert seen["listed"].total_size == 2
        assert all(not t.artifacts for t in seen["listed"].tasks)


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_an_agent_framework_agent_answers_and_remembers_its_context(
    tmp_path: Path, generation: str, binding: str
) -> None:
    async with serving(make_host(build_agent(), tmp_path)) as base_url:

        async def scenario() -> tuple[Any, list[Any], list[Any]]:
            async with sdk_client(base_url, generation=generation, binding=binding) as client:
                first = await collect(client.send_message(send_request("hello there")))
                context = first[0].task.context_id
                tooled = await collect(
                    client.send_message(send_request("what is 2 + 3", context_id=context))
                )
                done = await client.get_task(pb.GetTaskRequest(id=tooled[0].task.id))
                again = await collect(
                    client.send_message(send_request("still here", context_id=context))
                )
                return done, first, again

        with anyio.fail_after(TIMEOUT):
            done, first, again = await in_client(scenario)

    def streamed(events: list[Any]) -> str:
        return "".join(
            e.artifact_update.artifact.parts[0].text
            for e in events
            if e.HasField("artifact_update")
        )

    assert streamed(first) == 'You said: "hello there" (message 1 of this conversation)'
    assert done.status.state == pb.TASK_STATE_COMPLETED
    assert artifact_text(done) == "The answer is 5."
    # The agent's session is the context: it has seen the two messages before.
    assert streamed(again) == 'You said: "still here" (message 3 of this conversation)'
