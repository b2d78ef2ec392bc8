"""Workflows as targets, end to end over HTTP: parallel sessions, streamed events, a
question answered across a restart, structured outputs and cancellation.

Each test serves a real host with the real Hypercorn on loopback and talks to it the way a
client would (httpx for Invocations, the official ``openai`` client for Responses).
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

from agenthost import Host
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.responses import ResponsesChannel
from agenthost.stores.sqlite import SQLiteStore
from tests.backends.workflow_fixtures import (
    Overlap,
    TwoParts,
    approver_factory,
    greeter_factory,
    invoicer_factory,
    sleeper_builder,
    sleeper_factory,
    two_questions_factory,
)
from tests.host_process import free_port, host_process
from tests.served import served, wait_ready

pytestmark = pytest.mark.anyio

INVOKE = "/invocations/invoke"
TIMEOUT = 30.0


def make_host(target: Any, tmp_path: Path, **options: Any) -> Host:
    return Host(
        target,
        channels=[InvocationsChannel(typed_input=True), ResponsesChannel()],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        **options,
    )


@asynccontextmanager
async def client_for(host: Host) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        served(host.app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client,
    ):
        yield client


async def invoke(client: httpx.AsyncClient, text: str, session_id: str) -> dict[str, Any]:
    response = await client.post(INVOKE, json={"input": text, "session_id": session_id})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- parallel runs across sessions ---------------------------------------------------


@pytest.mark.parametrize("form", ["factory", "builder"])
async def test_four_sessions_run_their_workflows_at_once(tmp_path: Path, form: str) -> None:
    overlap = Overlap()
    target = sleeper_factory(overlap, 1.0) if form == "factory" else sleeper_builder(overlap, 1.0)
    bodies: dict[str, dict[str, Any]] = {}
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(target, tmp_path)) as client:

            async def one(n: int) -> None:
                bodies[f"s{n}"] = await invoke(client, f"job {n}", f"s{n}")

            started = anyio.current_time()
            async with anyio.create_task_group() as tasks:
                for n in range(4):
                    tasks.start_soon(one, n)
            elapsed = anyio.current_time() - started
    assert {k: b["output"] for k, b in bodies.items()} == {
        f"s{n}": f"done: job {n}" for n in range(4)
    }
    assert overlap.most == 4  # every run had its own executor, all four at once
    assert elapsed < 2.0, f"four 1-second runs took {elapsed:.2f} s"


async def test_a_built_workflow_still_works_one_run_at_a_time(tmp_path: Path) -> None:
    overlap = Overlap()
    workflow = sleeper_builder(overlap, 0.2).build()
    bodies: list[str] = []
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(workflow, tmp_path)) as client:

            async def one(n: int) -> None:
                bodies.append((await invoke(client, f"job {n}", f"s{n}"))["output"])

            async with anyio.create_task_group() as tasks:
                for n in range(3):
                    tasks.start_soon(one, n)
    assert sorted(bodies) == [f"done: job {n}" for n in range(3)]
    assert overlap.most == 1  # one instance: the framework allows one run of it at a time


# --- streaming -------------------------------------------------------------------------


async def test_a_streamed_workflow_shows_its_first_output_before_it_ends(
    tmp_path: Path,
) -> None:
    seen_first = threading.Event()

    def build() -> Any:
        from agent_framework import WorkflowBuilder

        return WorkflowBuilder(start_executor=TwoParts(seen_first), name="two-parts").build()

    events: list[tuple[str, dict[str, Any]]] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            client_for(make_host(build, tmp_path)) as client,
            client.stream(
                "POST", INVOKE, json={"input": "the plan", "session_id": "s", "stream": True}
            ) as response,
        ):
            assert response.status_code == 200
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line.removeprefix("data: "))))
                    if kind == "delta":
                        # The workflow is still waiting for this: nothing has ended yet.
                        assert all(k == "delta" for k, _ in events)
                        seen_first.set()
    assert events[0] == ("delta", {"text": "first part of the plan"})
    assert events[1] == ("delta", {"text": "\nsecond part"})
    assert events[-1][0] == "done"
    assert events[-1][1]["output"] == "first part of the plan\nsecond part"


async def test_an_agent_inside_a_workflow_streams_its_words(tmp_path: Path) -> None:
    from agent_framework import WorkflowBuilder

    from agenthost.demo import build_agent

    def build() -> Any:
        return WorkflowBuilder(start_executor=build_agent(), name="agent-flow").build()

    with anyio.fail_after(TIMEOUT):
        async with served(make_host(build, tmp_path).app) as base_url:
            client = openai.AsyncOpenAI(base_url=f"{base_url}/responses/v1", api_key="k")
            stream = await client.responses.create(
                model="wf", input="hello there workflow", stream=True
            )
            deltas: list[str] = []
            final: Any = None
            async for event in stream:
                if event.type == "response.output_text.delta":
                    assert final is None
                    deltas.append(event.delta)
                elif event.type == "response.completed":
                    final = event.response
            await client.close()
    assert len(deltas) > 3  # word by word, as the agent produced them
    assert final is not None
    assert final.output_text == "".join(deltas)
    assert "hello there workflow" in final.output_text


# --- human in the loop -----------------------------------------------------------------


async def test_a_question_is_answered_after_a_restart(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(greeter_factory, tmp_path)) as client:
            asked = await invoke(client, "the party", "guest")
            other = await invoke(client, "the meeting", "someone-else")
        assert asked["status"] == "input_required"
        assert asked["output"] == "Who should I greet for 'the party'?"
        [question] = asked["input_requests"]
        assert question["text"] == asked["output"]
        assert question["data"] == {"prompt": asked["output"], "asked_for": "the party"}
        assert other["status"] == "input_required"

        # A new process on the same database file: the question and checkpoint are there.
        async with client_for(make_host(greeter_factory, tmp_path)) as client:
            answered = await invoke(client, "Ann", "guest")
            again = await invoke(client, "the dinner", "guest")
            answered_again = await invoke(client, "Bob", "guest")
    assert answered["status"] == "completed"
    assert answered["output"] == "Hello Ann (re: the party), greeting #1"
    assert "input_requests" not in answered
    # The session's workflow continued from its checkpoint: its executor state came along.
    assert again["status"] == "input_required"
    assert answered_again["output"] == "Hello Bob (re: the dinner), greeting #2"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
async def test_a_question_survives_a_killed_process(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {"WORKFLOW_TEST_STATE_DIR": str(tmp_path)}
    target = "tests.backends.workflow_app:build_host"
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        with host_process(target, port, env) as first:
            await wait_ready(base_url, timeout=30)
            asked = await invoke(client, "the race", "runner")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        with host_process(target, port, env):
            await wait_ready(base_url, timeout=30)
            answered = await invoke(client, "Fay", "runner")
    assert asked["status"] == "input_required"
    assert answered["output"] == "Hello Fay (re: the race), greeting #1"


async def test_responses_shows_a_question_as_an_incomplete_response(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with served(make_host(greeter_factory, tmp_path).app) as base_url:
            client = openai.AsyncOpenAI(base_url=f"{base_url}/responses/v1", api_key="k")
            asked = await client.responses.create(model="wf", input="the launch")
            answered = await client.responses.create(
                model="wf", input="Cleo", previous_response_id=asked.id
            )
            streamed = [
                event
                async for event in await client.responses.create(
                    model="wf", input="the parade", stream=True
                )
            ]
            await client.close()
    assert streamed[-1].type == "response.incomplete"
    assert streamed[-1].response.output_text == "Who should I greet for 'the parade'?"
    assert [e.delta for e in streamed if e.type == "response.output_text.delta"] == [
        "Who should I greet for 'the parade'?"
    ]
    assert asked.status == "incomplete"
    assert asked.incomplete_details is not None
    assert asked.incomplete_details.reason == "input_required"
    assert asked.output_text == "Who should I greet for 'the launch'?"
    assert answered.status == "completed"
    assert answered.output_text == "Hello Cleo (re: the launch), greeting #1"


# --- structured outputs ----------------------------------------------------------------


async def test_structured_outputs_are_json_data_and_text(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(invoicer_factory, tmp_path)) as client:
            body = await invoke(client, "tea,cake", "s")
    invoice = {"number": 7, "total": 12.5, "lines": ["tea", "cake"]}
    assert body["data"] == [invoice]
    assert json.loads(body["output"]) == invoice


# --- background runs and cancellation --------------------------------------------------


async def test_cancelling_a_background_workflow_stops_its_executor(tmp_path: Path) -> None:
    overlap = Overlap()
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(sleeper_factory(overlap, 60.0), tmp_path)) as client:
            accepted = await client.post(
                INVOKE, json={"input": "long", "session_id": "s", "background": True}
            )
            assert accepted.status_code == 202, accepted.text
            poll_url = accepted.json()["poll_url"]
            await anyio.to_thread.run_sync(overlap.started.wait, 10.0)
            assert overlap.started.is_set()
            cancelled = await client.post(f"{poll_url}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            final = await poll_until_final(client, poll_url)
            await anyio.to_thread.run_sync(overlap.cancelled.wait, 10.0)
    assert final["status"] == "cancelled"
    assert overlap.cancelled.is_set()  # the executor itself was cancelled, not left running
    assert overlap.running == 0


async def test_a_background_workflow_finishes_with_its_data(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(greeter_factory, tmp_path)) as client:
            accepted = await client.post(
                INVOKE, json={"input": "the picnic", "session_id": "bg", "background": True}
            )
            assert accepted.status_code == 202, accepted.text
            final = await poll_until_final(client, accepted.json()["poll_url"])
            answered = await invoke(client, "Dee", "bg")
    assert final["status"] == "input_required"
    assert final["output"] == "Who should I greet for 'the picnic'?"
    assert final["input_requests"][0]["data"]["asked_for"] == "the picnic"
    assert answered["output"] == "Hello Dee (re: the picnic), greeting #1"


async def poll_until_final(client: httpx.AsyncClient, poll_url: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        for _ in range(1000):
            response = await client.get(poll_url)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] not in ("queued", "running"):
                return body
            await anyio.sleep(0.02)
    raise AssertionError("the background run did not finish")


async def test_two_questions_are_answered_in_turn_and_a_wrong_answer_is_asked_again(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(two_questions_factory, tmp_path)) as client:
            asked = await invoke(client, "the gala", "s")
            wrong = await client.post(INVOKE, json={"input": "lots", "session_id": "s"})
            still = await invoke(client, "41", "s")
            done = await invoke(client, "the ballroom", "s")
    assert asked["status"] == "input_required"
    assert [r["text"] for r in asked["input_requests"]] == [
        "How many guests for the gala?",
        "Which room for the gala?",
    ]
    # "lots" is no int: the run fails, and the session still waits for the same answer.
    assert wrong.status_code == 500
    assert wrong.json()["error"]["code"] == "run_failed"
    assert "lots" not in wrong.text
    assert still["status"] == "input_required"
    assert [r["text"] for r in still["input_requests"]] == ["Which room for the gala?"]
    assert done == {**done, "status": "completed", "output": "42 seats in the ballroom"}


async def test_telegram_shows_the_question_as_a_message(tmp_path: Path) -> None:
    from tests.channels.telegram.conftest import fake_bot_api, telegram_host
    from tests.channels.telegram.telegram_updates import message, private_chat

    user = 930_000_001
    with anyio.fail_after(TIMEOUT):
        async with (
            fake_bot_api() as (fake, api_url),
            telegram_host(greeter_factory, tmp_path, "webhook", fake, api_url) as bot,
        ):
            chat = private_chat(user)
            start = message(fake.next_update_id(), user_id=user, chat=chat, text="the fair")
            assert await bot.exchange(start, user) == ["Who should I greet for 'the fair'?"]
            name = message(fake.next_update_id(), user_id=user, chat=chat, text="Eve")
            assert await bot.exchange(name, user) == ["Hello Eve (re: the fair), greeting #1"]


async def test_a_background_response_that_asks_is_incomplete(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with served(make_host(greeter_factory, tmp_path).app) as base_url:
            client = openai.AsyncOpenAI(base_url=f"{base_url}/responses/v1", api_key="k")
            queued = await client.responses.create(model="wf", input="the trip", background=True)
            asked = queued
            for _ in range(500):
                asked = await client.responses.retrieve(queued.id)
                if asked.status not in ("queued", "in_progress"):
                    break
                await anyio.sleep(0.02)
            answered = await client.responses.create(
                model="wf", input="Gus", previous_response_id=asked.id
            )
            await client.close()
    assert asked.status == "incomplete"
    assert asked.incomplete_details is not None
    assert asked.incomplete_details.reason == "input_required"
    assert asked.output_text == "Who should I greet for 'the trip'?"
    assert answered.output_text == "Hello Gus (re: the trip), greeting #1"


async def test_a_changed_workflow_starts_the_session_over(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(greeter_factory, tmp_path)) as client:
            asked = await invoke(client, "the show", "s")
        # A new deployment whose graph differs: the stored checkpoint cannot be restored.
        async with client_for(make_host(invoicer_factory, tmp_path)) as client:
            fresh = await invoke(client, "pens,ink", "s")
    assert asked["status"] == "input_required"
    assert fresh["status"] == "completed"
    assert fresh["data"] == [{"number": 7, "total": 12.5, "lines": ["pens", "ink"]}]


def test_a_factory_that_builds_no_workflow_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="returned str, not a Workflow"):
        make_host(lambda: "not a workflow", tmp_path)


async def test_two_agents_in_a_row_stream_as_two_answers(tmp_path: Path) -> None:
    from agent_framework import Agent, WorkflowBuilder

    from agenthost.demo import LocalChatClient

    def build() -> Any:
        first = Agent(client=LocalChatClient(), name="first")
        second = Agent(client=LocalChatClient(), name="second")
        return WorkflowBuilder(start_executor=first, name="relay").add_edge(first, second).build()

    deltas: list[str] = []
    done: dict[str, Any] = {}
    with anyio.fail_after(TIMEOUT):
        async with (
            client_for(make_host(build, tmp_path)) as client,
            client.stream(
                "POST", INVOKE, json={"input": "hi there", "session_id": "s", "stream": True}
            ) as response,
        ):
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind == "delta":
                    deltas.append(json.loads(line.removeprefix("data: "))["text"])
                elif line.startswith("data: ") and kind == "done":
                    done = json.loads(line.removeprefix("data: "))
    first, second = done["output"].split("\n")
    assert first == 'You said: "hi there" (message 1 of this conversation)'
    assert second.startswith('You said: "You said: ')
    assert "".join(deltas) == done["output"]  # the deltas were the whole answer, in order
    assert len(deltas) > 10


async def test_a_typed_answer_arrives_as_json_from_a_client_or_as_text_from_a_person(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(approver_factory, tmp_path)) as client:
            asked = await invoke(client, "the memo", "api")
            as_object = await client.post(
                INVOKE, json={"input": {"approved": True, "note": "fine"}, "session_id": "api"}
            )
            await invoke(client, "the draft", "chat")
            as_text = await invoke(client, '{"approved": false, "note": "typos"}', "chat")
    assert asked["input_requests"][0]["text"] == "Publish 'the memo'?"
    assert as_object.status_code == 200, as_object.text
    assert as_object.json()["output"] == "published (fine)"
    assert as_text["output"] == "held back (typos)"
