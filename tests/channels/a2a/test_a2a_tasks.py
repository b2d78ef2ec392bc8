"""Tasks over time with the real ``a2a-sdk`` client: cancel, resubscribe, a restart on the
same SQLite file, callers kept apart, and a retried message that runs once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from a2a.types import a2a_pb2 as pb
from a2a.utils import errors

from tests.channels.a2a.support import (
    TIMEOUT,
    Gated,
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


async def submit(
    base_url: str, generation: str, text: str = "work", binding: str = "JSONRPC"
) -> Any:
    """Send without waiting for the end (``returnImmediately`` / ``blocking: false``)."""

    async def scenario() -> Any:
        async with sdk_client(
            base_url, generation=generation, binding=binding, streaming=False, polling=True
        ) as client:
            [answer] = await collect(client.send_message(send_request(text)))
            return answer.task

    return await in_client(scenario)


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_cancel_stops_the_run_and_a_finished_task_is_not_cancelable(
    tmp_path: Path, generation: str, binding: str
) -> None:
    gated = Gated()
    async with serving(make_host(gated, tmp_path)) as base_url:
        with anyio.fail_after(TIMEOUT):
            task = await submit(base_url, generation, binding=binding)
            assert task.status.state in (pb.TASK_STATE_SUBMITTED, pb.TASK_STATE_WORKING)
            await gated.started.wait()

            async def cancel_twice() -> tuple[Any, Any, Exception | None]:
                async with sdk_client(base_url, generation=generation, binding=binding) as client:
                    cancelled = await client.cancel_task(pb.CancelTaskRequest(id=task.id))
                    fetched = await client.get_task(pb.GetTaskRequest(id=task.id))
                    try:
                        await client.cancel_task(pb.CancelTaskRequest(id=task.id))
                    except errors.TaskNotCancelableError as refused:
                        return cancelled, fetched, refused
                    return cancelled, fetched, None

            cancelled, fetched, refused = await in_client(cancel_twice)
            await gated.cancelled.wait()
    assert cancelled.id == task.id
    assert cancelled.status.state == pb.TASK_STATE_CANCELED
    assert fetched.status.state == pb.TASK_STATE_CANCELED
    assert isinstance(refused, errors.TaskNotCancelableError)
    assert "Traceback" not in str(refused)


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_resubscribe_starts_with_the_current_task_and_follows_to_the_end(
    tmp_path: Path, generation: str, binding: str
) -> None:
    gated = Gated(first="one ", rest=("two ", "three"))
    async with serving(make_host(gated, tmp_path)) as base_url:
        with anyio.fail_after(TIMEOUT):
            task = await submit(base_url, generation, binding=binding)
            await gated.started.wait()
            seen: list[Any] = []
            subscribed = anyio.Event()

            async def follow() -> None:
                async def scenario() -> None:
                    async with sdk_client(
                        base_url, generation=generation, binding=binding
                    ) as client:
                        async for event in client.subscribe(pb.SubscribeToTaskRequest(id=task.id)):
                            seen.append(event)

                await in_client(scenario)
                subscribed.set()

            async with anyio.create_task_group() as group:
                group.start_soon(follow)
                while not seen:  # the current task arrives before the run goes on
                    await anyio.sleep(0.02)
                gated.release.set()
            await subscribed.wait()
    first = seen[0]
    assert first.WhichOneof("payload") == "task"
    assert first.task.id == task.id
    assert first.task.status.state == pb.TASK_STATE_WORKING
    later_text = "".join(
        e.artifact_update.artifact.parts[0].text for e in seen if e.HasField("artifact_update")
    )
    # The stored task is as of "working": the subscriber gets every chunk after it.
    assert later_text == "one two three"
    assert seen[-1].status_update.status.state == pb.TASK_STATE_COMPLETED


async def test_a_restarted_host_serves_finished_tasks_and_resumes_running_ones(
    tmp_path: Path,
) -> None:
    gated = Gated()
    with anyio.fail_after(TIMEOUT * 2):
        async with serving(make_host(echo_target, tmp_path)) as base_url:

            async def finish_one() -> Any:
                async with sdk_client(base_url, streaming=False) as client:
                    [answer] = await collect(client.send_message(send_request("remember me")))
                    return answer.task

            done = await in_client(finish_one)
        async with serving(make_host(gated, tmp_path)) as base_url:
            running = await submit(base_url, "1.0", "long job")
            await gated.started.wait()
        # The first host stopped mid-run: its run went back to the queue. A new host on the
        # same file picks it up, and a subscriber starts with the task as stored.
        resumed = Gated()
        async with serving(make_host(resumed, tmp_path)) as base_url:

            async def finished_after_restart() -> tuple[Any, Any]:
                async with sdk_client(base_url, generation="0.3") as legacy:
                    old = await legacy.get_task(pb.GetTaskRequest(id=done.id, history_length=1))
                async with sdk_client(base_url) as client:
                    listed = await client.list_tasks(pb.ListTasksRequest())
                return old, listed

            old, listed = await in_client(finished_after_restart)
            await resumed.started.wait()
            events: list[Any] = []

            async def subscribe() -> None:
                async with sdk_client(base_url) as client:
                    async for event in client.subscribe(pb.SubscribeToTaskRequest(id=running.id)):
                        events.append(event)

            async with anyio.create_task_group() as group:
                group.start_soon(in_client, subscribe)
                while not events:
                    await anyio.sleep(0.02)
                resumed.release.set()
    assert old.status.state == pb.TASK_STATE_COMPLETED
    assert artifact_text(old) == "echo remember me #1"
    assert [m.role for m in old.history] == [pb.ROLE_AGENT]
    assert {t.id for t in listed.tasks} == {done.id, running.id}
    assert events[0].WhichOneof("payload") == "task"
    assert events[0].task.id == running.id
    assert events[0].task.status.state == pb.TASK_STATE_WORKING
    assert events[-1].status_update.status.state == pb.TASK_STATE_COMPLETED
    # The re-run streamed its reply again from the start, replacing the first attempt's.
    chunks = [e.artifact_update for e in events if e.HasField("artifact_update")]
    assert chunks[0].append is False
    assert "".join(c.artifact.parts[0].text for c in chunks) == "one two three"


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_callers_never_see_each_others_tasks_or_contexts(
    tmp_path: Path, generation: str, binding: str
) -> None:
    def client(key: str, streaming: bool = False) -> Any:
        return sdk_client(
            base_url, generation=generation, binding=binding, key=key, streaming=streaming
        )

    async with serving(make_host(echo_target, tmp_path)) as base_url:

        async def scenario() -> dict[str, Any]:
            async with client("key-a") as alice:
                [mine] = await collect(alice.send_message(send_request("secret plan")))
            task_id, context = mine.task.id, mine.task.context_id
            refusals: list[str] = []
            async with client("key-b") as bob:
                for attempt in (
                    bob.get_task(pb.GetTaskRequest(id=task_id)),
                    bob.cancel_task(pb.CancelTaskRequest(id=task_id)),
                    bob.create_task_push_notification_config(
                        pb.TaskPushNotificationConfig(task_id=task_id, url="http://127.0.0.1:9/x")
                    ),
                ):
                    try:
                        await attempt
                    except errors.TaskNotFoundError:
                        refusals.append("not found")
                listed = None
                if generation == "1.0":  # the v0.3 client has no list over JSON-RPC
                    listed = await bob.list_tasks(pb.ListTasksRequest())
                [joined] = await collect(
                    bob.send_message(send_request("what was said?", context_id=context))
                )
            async with client("key-b", streaming=True) as streaming_bob:
                try:
                    await collect(streaming_bob.subscribe(pb.SubscribeToTaskRequest(id=task_id)))
                except errors.TaskNotFoundError:
                    refusals.append("not found")
            return {"refusals": refusals, "listed": listed, "joined": joined.task}

        with anyio.fail_after(TIMEOUT):
            seen = await in_client(scenario)
    assert seen["refusals"] == ["not found"] * 4
    assert seen["listed"] is None or list(seen["listed"].tasks) == []
    # Bob naming Alice's context gets a conversation of his own under that name.
    assert artifact_text(seen["joined"]) == "echo what was said? #1"


async def test_a_retried_message_id_runs_once_and_answers_the_same_task(tmp_path: Path) -> None:
    calls: list[str] = []

    async def counting(messages: list[Any]) -> str:
        calls.append(messages[-1].text)
        return "done"

    async with serving(make_host(counting, tmp_path)) as base_url:

        async def scenario() -> tuple[Any, Any]:
            async with sdk_client(base_url, streaming=False) as client:
                [first] = await collect(client.send_message(send_request("once", message_id="m-1")))
                [again] = await collect(client.send_message(send_request("once", message_id="m-1")))
                return first.task, again.task

        with anyio.fail_after(TIMEOUT):
            first, again = await in_client(scenario)
    assert first.id == again.id
    assert again.status.state == pb.TASK_STATE_COMPLETED
    assert calls == ["once"]
