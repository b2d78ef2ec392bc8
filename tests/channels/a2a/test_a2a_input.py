"""A workflow that asks for human input, over A2A with the real ``a2a-sdk`` client: the
task stops ``input-required`` with the question, and the caller's next message on that
task answers it as the next turn of the same session (across a restart too). Finished
tasks take no more messages; another caller cannot answer someone else's question."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from a2a.types import a2a_pb2 as pb
from a2a.utils import errors
from google.protobuf import json_format

from tests.backends.workflow_fixtures import greeter_factory, two_questions_factory
from tests.channels.a2a.support import (
    TIMEOUT,
    PushReceiver,
    artifact_text,
    collect,
    in_client,
    make_host,
    sdk_client,
    send_request,
    serving,
)
from tests.served import served

pytestmark = pytest.mark.anyio

GENERATIONS = [
    pytest.param("1.0", "JSONRPC", id="v1.0-jsonrpc"),
    pytest.param("1.0", "HTTP+JSON", id="v1.0-rest"),
    pytest.param("0.3", "JSONRPC", id="v0.3-jsonrpc"),
]
QUESTION = "Who should I greet for 'the party'?"


def question_of(task: Any) -> tuple[str, list[dict[str, Any]]]:
    """The status message's text and the open requests its data part lists."""
    parts = task.status.message.parts
    text = "".join(part.text for part in parts if part.WhichOneof("content") == "text")
    data = [
        json_format.MessageToDict(part.data)
        for part in parts
        if part.WhichOneof("content") == "data"
    ]
    return text, [request for value in data for request in value["inputRequests"]]


def answer_request(task: Any, text: str, **options: Any) -> Any:
    return send_request(text, task_id=task.id, context_id=task.context_id, **options)


async def ask(base_url: str, generation: str, binding: str, *, streaming: bool) -> Any:
    """Send the first message; answer the task it ended as (input-required)."""

    async def scenario() -> Any:
        async with sdk_client(
            base_url, generation=generation, binding=binding, streaming=streaming
        ) as client:
            events = await collect(client.send_message(send_request("the party")))
            first = events[0].task
            return await client.get_task(pb.GetTaskRequest(id=first.id))

    return await in_client(scenario)


@pytest.mark.parametrize("streaming", [False, True], ids=["send", "stream"])
@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_a_question_makes_the_task_input_required_and_the_answer_completes_it(
    tmp_path: Path, generation: str, binding: str, streaming: bool
) -> None:
    async with serving(make_host(greeter_factory, tmp_path)) as base_url:

        async def scenario() -> tuple[list[Any], list[Any], Any]:
            async with sdk_client(
                base_url, generation=generation, binding=binding, streaming=streaming
            ) as client:
                asked = await collect(client.send_message(send_request("the party")))
                task = asked[-1].task if asked[-1].HasField("task") else asked[0].task
                answered = await collect(client.send_message(answer_request(task, "Ann")))
                fetched = await client.get_task(pb.GetTaskRequest(id=task.id))
                return asked, answered, fetched

        with anyio.fail_after(TIMEOUT):
            asked, answered, fetched = await in_client(scenario)

    if streaming:
        # The first turn's stream ends at the question; the answer's at the reply.
        assert asked[-1].status_update.status.state == pb.TASK_STATE_INPUT_REQUIRED
        assert question_of(asked[-1].status_update)[0] == QUESTION
        assert answered[0].task.status.state == pb.TASK_STATE_WORKING
        assert answered[-1].status_update.status.state == pb.TASK_STATE_COMPLETED
        assert {e.status_update.task_id for e in answered[1:] if e.HasField("status_update")} == {
            fetched.id
        }
    else:
        [asked_task] = [event.task for event in asked]
        [done] = [event.task for event in answered]
        assert asked_task.status.state == pb.TASK_STATE_INPUT_REQUIRED
        text, requests = question_of(asked_task)
        assert text == QUESTION
        [request] = requests
        assert request["text"] == QUESTION and request["requestId"]
        assert request["data"] == {"prompt": QUESTION, "asked_for": "the party"}
        assert done.id == asked_task.id
        assert done.status.state == pb.TASK_STATE_COMPLETED

    assert fetched.status.state == pb.TASK_STATE_COMPLETED
    assert artifact_text(fetched) == "Hello Ann (re: the party), greeting #1"
    # The history grew by the question and its answer, then the reply.
    history = [(m.role, "".join(p.text for p in m.parts)) for m in fetched.history]
    assert history == [
        (pb.ROLE_USER, "the party"),
        (pb.ROLE_AGENT, QUESTION),
        (pb.ROLE_USER, "Ann"),
        (pb.ROLE_AGENT, "Hello Ann (re: the party), greeting #1"),
    ]
    assert len({m.message_id for m in fetched.history}) == 4


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_a_question_is_answered_on_the_same_task_after_a_restart(
    tmp_path: Path, generation: str, binding: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(make_host(greeter_factory, tmp_path)) as base_url:
            asked = await ask(base_url, generation, binding, streaming=False)
        assert asked.status.state == pb.TASK_STATE_INPUT_REQUIRED

        # A new host on the same SQLite file: the task and the workflow's checkpoint are there.
        async with serving(make_host(greeter_factory, tmp_path)) as base_url:

            async def answer_twice() -> tuple[Any, Any, Any]:
                async with sdk_client(
                    base_url, generation=generation, binding=binding, streaming=False
                ) as client:
                    [done] = await collect(client.send_message(answer_request(asked, "Bea")))
                    # The session goes on: a new task asks again, and its executor's
                    # state (how many it greeted) came through the checkpoint.
                    again_request = send_request("the dinner", context_id=asked.context_id)
                    [again] = await collect(client.send_message(again_request))
                    [second] = await collect(client.send_message(answer_request(again.task, "Cy")))
                    return done.task, again.task, second.task

            done, again, second = await in_client(answer_twice)
    assert done.id == asked.id
    assert done.status.state == pb.TASK_STATE_COMPLETED
    assert artifact_text(done) == "Hello Bea (re: the party), greeting #1"
    assert again.status.state == pb.TASK_STATE_INPUT_REQUIRED
    assert again.id != asked.id
    assert artifact_text(second) == "Hello Cy (re: the dinner), greeting #2"


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_finished_tasks_refuse_messages_and_other_callers_cannot_answer(
    tmp_path: Path, generation: str, binding: str
) -> None:
    async with serving(make_host(greeter_factory, tmp_path)) as base_url:

        async def scenario() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            async with (
                sdk_client(
                    base_url, generation=generation, binding=binding, streaming=False
                ) as owner,
                sdk_client(
                    base_url, generation=generation, binding=binding, streaming=False, key="key-b"
                ) as stranger,
            ):
                [asked] = await collect(owner.send_message(send_request("the party")))
                task = asked.task
                try:
                    await collect(stranger.send_message(answer_request(task, "Mallory")))
                except errors.TaskNotFoundError as refused:
                    seen["stranger"] = refused
                seen["still"] = await owner.get_task(pb.GetTaskRequest(id=task.id))
                elsewhere = send_request("Eve", task_id=task.id, context_id="ctx-elsewhere")
                try:
                    await collect(owner.send_message(elsewhere))
                except errors.InvalidParamsError as refused:
                    seen["elsewhere"] = refused
                # A new task on the waiting context would be taken for the answer: refused.
                sideways = send_request("Zed", context_id=task.context_id)
                try:
                    await collect(owner.send_message(sideways))
                except errors.InvalidParamsError as refused:
                    seen["sideways"] = refused
                answer = answer_request(task, "Ann")
                [done] = await collect(owner.send_message(answer))
                seen["done"] = done.task
                # A retry of the same answer (same messageId) finds the task; it runs once.
                [retried] = await collect(owner.send_message(answer))
                seen["retried"] = retried.task
                try:
                    await collect(owner.send_message(answer_request(task, "Bob")))
                except errors.UnsupportedOperationError as refused:
                    seen["finished"] = refused
                seen["after"] = await owner.get_task(pb.GetTaskRequest(id=task.id))
            return seen

        with anyio.fail_after(TIMEOUT):
            seen = await in_client(scenario)
    assert isinstance(seen.get("stranger"), errors.TaskNotFoundError)
    # The stranger's message changed nothing: the owner's answer is the one that counts.
    assert seen["still"].status.state == pb.TASK_STATE_INPUT_REQUIRED
    assert isinstance(seen.get("elsewhere"), errors.InvalidParamsError)
    assert isinstance(seen.get("sideways"), errors.InvalidParamsError)
    assert artifact_text(seen["done"]) == "Hello Ann (re: the party), greeting #1"
    assert seen["retried"].id == seen["done"].id
    assert artifact_text(seen["retried"]) == "Hello Ann (re: the party), greeting #1"
    assert isinstance(seen.get("finished"), errors.UnsupportedOperationError)
    assert "Traceback" not in str(seen["finished"])
    assert seen["after"].status.state == pb.TASK_STATE_COMPLETED
    assert len(seen["after"].history) == 4


async def test_a_task_waiting_for_input_can_be_canceled(tmp_path: Path) -> None:
    async with serving(make_host(greeter_factory, tmp_path)) as base_url:

        async def scenario() -> tuple[Any, Any, Exception | None]:
            async with sdk_client(base_url, streaming=False) as client:
                [asked] = await collect(client.send_message(send_request("the party")))
                canceled = await client.cancel_task(pb.CancelTaskRequest(id=asked.task.id))
                try:
                    await collect(client.send_message(answer_request(asked.task, "Ann")))
                except errors.UnsupportedOperationError as refused:
                    return asked.task, canceled, refused
                return asked.task, canceled, None

        with anyio.fail_after(TIMEOUT):
            asked, canceled, refused = await in_client(scenario)
    assert asked.status.state == pb.TASK_STATE_INPUT_REQUIRED
    assert canceled.status.state == pb.TASK_STATE_CANCELED
    assert isinstance(refused, errors.UnsupportedOperationError)


@pytest.mark.parametrize("generation", ["1.0", "0.3"])
async def test_two_questions_keep_the_task_waiting_until_both_are_answered_and_push_each_stop(
    tmp_path: Path, generation: str
) -> None:
    receiver = PushReceiver()
    async with (
        served(receiver.app) as receiver_url,
        serving(make_host(two_questions_factory, tmp_path)) as base_url,
    ):

        async def scenario() -> tuple[Any, Any, Any]:
            async with sdk_client(base_url, generation=generation, streaming=False) as client:
                request = send_request("the gala")
                request.configuration.task_push_notification_config.url = f"{receiver_url}/push"
                [asked] = await collect(client.send_message(request))
                [still] = await collect(client.send_message(answer_request(asked.task, "41")))
                [done] = await collect(
                    client.send_message(answer_request(still.task, "the ballroom"))
                )
                return asked.task, still.task, done.task

        with anyio.fail_after(TIMEOUT):
            asked, still, done = await in_client(scenario)
            await receiver.wait_for(
                lambda got: sum(_pushed_state(body) == "completed" for _, body in got) == 1
            )
    assert asked.status.state == pb.TASK_STATE_INPUT_REQUIRED
    assert [r["text"] for r in question_of(asked)[1]] == [
        "How many guests for the gala?",
        "Which room for the gala?",
    ]
    # The first answer went to the first question; the task asks the second one next.
    assert still.id == asked.id
    assert still.status.state == pb.TASK_STATE_INPUT_REQUIRED
    assert [r["text"] for r in question_of(still)[1]] == ["Which room for the gala?"]
    assert done.status.state == pb.TASK_STATE_COMPLETED
    assert artifact_text(done) == "42 seats in the ballroom"
    assert [m.role for m in done.history] == [pb.ROLE_USER, pb.ROLE_AGENT] * 3
    pushed = [_pushed_state(body) for _, body in receiver.received]
    assert pushed.count("input_required") == 2
    assert pushed.count("working") >= 2  # the first turn's start and each answer's


def _pushed_state(body: dict[str, Any]) -> str:
    """A notification's task state, either generation's shape, as ``input_required`` etc."""
    task = body.get("task", body)
    state = str(task["status"]["state"])
    return state.removeprefix("TASK_STATE_").lower().replace("-", "_")


async def test_a_push_config_sent_with_the_answer_notifies_the_rest_of_the_task(
    tmp_path: Path,
) -> None:
    receiver = PushReceiver()
    async with (
        served(receiver.app) as receiver_url,
        serving(make_host(greeter_factory, tmp_path)) as base_url,
    ):

        async def scenario() -> tuple[Any, list[Any]]:
            async with sdk_client(base_url, streaming=False) as client:
                [asked] = await collect(client.send_message(send_request("the party")))
                answer = answer_request(asked.task, "Ann")
                answer.configuration.task_push_notification_config.url = f"{receiver_url}/push"
                [done] = await collect(client.send_message(answer))
                listed = await client.list_task_push_notification_configs(
                    pb.ListTaskPushNotificationConfigsRequest(task_id=asked.task.id)
                )
                return done.task, list(listed.configs)

        with anyio.fail_after(TIMEOUT):
            done, configs = await in_client(scenario)
            await receiver.wait_for(
                lambda got: any(_pushed_state(body) == "completed" for _, body in got)
            )
    assert artifact_text(done) == "Hello Ann (re: the party), greeting #1"
    assert [config.url for config in configs] == [f"{receiver_url}/push"]
    pushed = [_pushed_state(body) for _, body in receiver.received]
    assert "input_required" not in pushed  # the config came after the question
    assert "completed" in pushed and "working" in pushed


@pytest.mark.parametrize(("generation", "binding"), GENERATIONS)
async def test_an_answer_the_workflow_cannot_take_leaves_the_question_open(
    tmp_path: Path, generation: str, binding: str
) -> None:
    async with serving(make_host(two_questions_factory, tmp_path)) as base_url:

        async def scenario() -> tuple[Any, Any, Any]:
            async with sdk_client(
                base_url, generation=generation, binding=binding, streaming=False
            ) as client:
                [asked] = await collect(client.send_message(send_request("the gala")))
                # "lots" is no int: the turn fails, and the workflow still waits.
                [wrong] = await collect(client.send_message(answer_request(asked.task, "lots")))
                [still] = await collect(client.send_message(answer_request(wrong.task, "41")))
                [done] = await collect(
                    client.send_message(answer_request(still.task, "the ballroom"))
                )
                return wrong.task, still.task, done.task

        with anyio.fail_after(TIMEOUT):
            wrong, still, done = await in_client(scenario)
    assert wrong.status.state == pb.TASK_STATE_INPUT_REQUIRED
    assert [r["text"] for r in question_of(wrong)[1]] == [
        "How many guests for the gala?",
        "Which room for the gala?",
    ]
    assert "lots" not in str(wrong.status.message)
    assert [r["text"] for r in question_of(still)[1]] == ["Which room for the gala?"]
    assert artifact_text(done) == "42 seats in the ballroom"
    assert len({m.message_id for m in done.history}) == len(done.history) == 8


async def test_a_replica_reads_the_task_another_replica_answered(tmp_path: Path) -> None:
    """Two hosts on one store: the task one of them last read (waiting for input) is
    answered and finished by the other; the first then reads the stored task, not the
    one it read before."""
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(make_host(greeter_factory, tmp_path)) as first_url,
            serving(make_host(greeter_factory, tmp_path)) as second_url,
        ):

            async def scenario() -> tuple[Any, Any]:
                async with (
                    sdk_client(first_url, streaming=False) as first,
                    sdk_client(second_url, streaming=False) as second,
                ):
                    [asked] = await collect(first.send_message(send_request("the party")))
                    waiting = await first.get_task(pb.GetTaskRequest(id=asked.task.id))
                    await collect(second.send_message(answer_request(waiting, "Ann")))
                    return waiting, await first.get_task(pb.GetTaskRequest(id=waiting.id))

            waiting, fetched = await in_client(scenario)

    assert waiting.status.state == pb.TASK_STATE_INPUT_REQUIRED
    assert fetched.status.state == pb.TASK_STATE_COMPLETED
    assert artifact_text(fetched) == "Hello Ann (re: the party), greeting #1"
