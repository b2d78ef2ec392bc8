"""The Invocations channel end to end: real HTTP to Hypercorn on loopback, real targets.

Every test serves ``host.app`` with the real server in the test's own event loop (asyncio or
trio, chosen by ``AGENTHOST_TEST_BACKEND``) and talks to it with ``httpx``. Targets are the
demo Agent Framework agent (a real tool-calling agent with a local model), Agent Framework
workflows, or small async callables that record what the host hands them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Never
from urllib.parse import urlsplit

import anyio
import attrs
import h11
import httpx
import pytest
from agent_framework import WorkflowBuilder, WorkflowContext, executor

from agenthost import ChannelRequest, Host, HostMessage, MultitaskStrategy
from agenthost.channels.invocations import InvocationsChannel
from agenthost.demo import build_agent
from agenthost.stores.sqlite import SQLiteStore
from tests.served import served

pytestmark = pytest.mark.anyio

INVOKE = "/invocations/invoke"
TIMEOUT = 30.0


def make_host(target: Any, tmp_path: Path, **channel_options: Any) -> Host:
    return Host(
        target,
        channels=[InvocationsChannel(**channel_options)],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
    )


@asynccontextmanager
async def client_for(host: Host) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        served(host.app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client,
    ):
        yield client


async def ask(client: httpx.AsyncClient, text: str, session_id: str, **headers: str) -> str:
    response = await client.post(
        INVOKE, json={"input": text, "session_id": session_id}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed"
    assert body["session_id"] == session_id
    assert isinstance(body["output"], str)
    return body["output"]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


def user_texts(messages: list[HostMessage]) -> list[str]:
    return [m.text for m in messages if m.role == "user"]


class Recorder:
    """A callable target that answers with the user's words so far and records each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, messages: list[HostMessage]) -> str:
        self.calls.append([m.text for m in messages])
        return " | ".join(user_texts(messages))


# --- 1. a real Agent Framework agent -------------------------------------------------


async def test_agent_keeps_each_session_and_survives_a_restart(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(build_agent(), tmp_path)) as client:
            first = await ask(client, "my name is Ada", "conversation-1")
            assert first == 'You said: "my name is Ada" (message 1 of this conversation)'
            recalled = await ask(client, "what did I say first?", "conversation-1")
            assert recalled == 'You first said: "my name is Ada"'

            # Another session id is another conversation.
            elsewhere = await ask(client, "what did I say first?", "conversation-2")
            assert elsewhere == "This is the first thing you said."

            # A real tool call through the framework's function-invocation loop.
            assert await ask(client, "what is 2 + 3", "conversation-1") == "The answer is 5."

        # A second host on the same SQLite file continues the conversation.
        async with client_for(make_host(build_agent(), tmp_path)) as client:
            recalled = await ask(client, "what did I say first?", "conversation-1")
            assert recalled == 'You first said: "my name is Ada"'
            counted = await ask(client, "still there?", "conversation-1")
            assert counted == 'You said: "still there?" (message 5 of this conversation)'
            assert await ask(client, "what did I say first?", "conversation-2") == (
                'You first said: "what did I say first?"'
            )


# --- 2. streaming --------------------------------------------------------------------


async def stream_events(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    async with client.stream("POST", INVOKE, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                events.append((fields["event"], json.loads(fields["data"])))
                fields = {}
    assert not fields, "the stream ended inside an event"
    return events


def deltas_and_done(events: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], dict[str, Any]]:
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done", events
    assert set(kinds[:-1]) == {"delta"}, events
    return [data["text"] for _, data in events[:-1]], events[-1][1]


async def test_streaming_sends_deltas_that_add_up_to_the_answer(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(build_agent(), tmp_path)) as client:
            events = await stream_events(
                client, {"input": "hello there streaming world", "session_id": "streamed"}
            )
            deltas, done = deltas_and_done(events)
            assert len(deltas) > 1
            assert "".join(deltas) == done["output"]
            assert done["output"] == (
                'You said: "hello there streaming world" (message 1 of this conversation)'
            )
            assert done["session_id"] == "streamed"

            # A streamed tool call, then proof the streamed turns were saved to the session.
            deltas, done = deltas_and_done(
                await stream_events(client, {"input": "what is 2 + 3", "session_id": "streamed"})
            )
            assert len(deltas) > 1
            assert "".join(deltas) == done["output"] == "The answer is 5."
            assert await ask(client, "what did I say first?", "streamed") == (
                'You first said: "hello there streaming world"'
            )


# --- 3. workflows --------------------------------------------------------------------


@executor(id="upper")
async def upper(text: str, ctx: WorkflowContext[str]) -> None:
    await ctx.send_message(text.upper())


@executor(id="exclaim")
async def exclaim(text: str, ctx: WorkflowContext[Never, str]) -> None:
    await ctx.yield_output(text + "!")


@dataclasses.dataclass
class Pair:
    a: int
    b: int


@executor(id="add_pair")
async def add_pair(pair: Pair, ctx: WorkflowContext[Never, str]) -> None:
    await ctx.yield_output(f"{pair.a} + {pair.b} = {pair.a + pair.b}")


async def test_workflow_target_answers(tmp_path: Path) -> None:
    workflow = WorkflowBuilder(start_executor=upper).add_edge(upper, exclaim).build()
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(workflow, tmp_path)) as client:
            assert await ask(client, "hi", "wf-1") == "HI!"
            assert await ask(client, "again", "wf-1") == "AGAIN!"


async def test_typed_workflow_input_through_a_run_hook(tmp_path: Path) -> None:
    workflow = WorkflowBuilder(start_executor=add_pair).build()
    hooked: list[Any] = []

    def to_pair(request: ChannelRequest, *, target: Any, protocol_request: Any) -> ChannelRequest:
        assert target is workflow
        hooked.append(protocol_request.headers.get("x-test"))
        return attrs.evolve(request, input=Pair(**request.input))

    host = Host(
        workflow,
        channels=[InvocationsChannel(typed_input=True)],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        run_hook=to_pair,
    )
    with anyio.fail_after(TIMEOUT):
        async with client_for(host) as client:
            response = await client.post(
                INVOKE, json={"input": {"a": 2, "b": 5}}, headers={"x-test": "typed"}
            )
            assert response.status_code == 200, response.text
            assert response.json()["output"] == "2 + 5 = 7"
    assert hooked == ["typed"]


async def test_typed_workflow_input_in_the_background(tmp_path: Path) -> None:
    workflow = WorkflowBuilder(start_executor=add_pair).build()

    def to_pair(request: ChannelRequest, *, target: Any, protocol_request: Any) -> ChannelRequest:
        return attrs.evolve(request, input=Pair(**request.input))

    host = Host(
        workflow,
        channels=[InvocationsChannel(typed_input=True)],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        run_hook=to_pair,
    )
    with anyio.fail_after(TIMEOUT):
        async with client_for(host) as client:
            response = await client.post(
                INVOKE, json={"input": {"a": 2, "b": 5}, "background": True}
            )
            assert response.status_code == 202, response.text
            finished = await poll_until_final(client, response.json()["poll_url"])
            assert finished["status"] == "completed"
            assert finished["output"] == "2 + 5 = 7"


# --- 4. background runs --------------------------------------------------------------


async def poll_until_final(client: httpx.AsyncClient, poll_url: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        for _ in range(1000):
            response = await client.get(poll_url)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            assert body["status"] in ("queued", "running", "completed", "failed", "cancelled")
            if body["status"] in ("completed", "failed", "cancelled"):
                return body
            await anyio.sleep(0.02)
    raise AssertionError("the background run did not finish")


async def test_background_run_is_polled_to_completion(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(build_agent(), tmp_path)) as client:
            response = await client.post(
                INVOKE,
                json={"input": "what is 2 + 3", "session_id": "bg-1", "background": True},
            )
            assert response.status_code == 202, response.text
            accepted = response.json()
            token = accepted["token"]
            assert accepted["status"] in ("queued", "running")
            assert accepted["poll_url"] == f"/invocations/{token}"
            assert response.headers["location"] == accepted["poll_url"]

            finished = await poll_until_final(client, accepted["poll_url"])
            assert finished["status"] == "completed"
            assert finished["output"] == "The answer is 5."
            assert finished["token"] == token
            assert finished["completed_at"] is not None

            # The background turn was saved to the session like a foreground one.
            assert await ask(client, "what did I say first?", "bg-1") == (
                'You first said: "what is 2 + 3"'
            )


async def test_cancelling_a_background_run(tmp_path: Path) -> None:
    started = anyio.Event()
    cancelled = anyio.Event()
    recorder = Recorder()

    async def slow_on_request(messages: list[HostMessage]) -> str:
        if messages[-1].text != "slow job":
            return await recorder(messages)
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(slow_on_request, tmp_path)) as client:
            assert await ask(client, "before", "bg-2") == "before"
            response = await client.post(
                INVOKE, json={"input": "slow job", "session_id": "bg-2", "background": True}
            )
            assert response.status_code == 202, response.text
            poll_url = response.json()["poll_url"]
            with anyio.fail_after(10):
                await started.wait()
            running = await client.get(poll_url)
            assert running.json()["status"] == "running"

            first = await client.post(f"{poll_url}/cancel")
            assert first.status_code == 200, first.text
            assert first.json()["status"] == "cancelled"
            with anyio.fail_after(10):
                await cancelled.wait()  # the target itself was cancelled, not just the record

            again = await client.post(f"{poll_url}/cancel")
            assert again.status_code == 200
            assert again.json()["status"] == "cancelled"
            for _ in range(3):
                polled = await client.get(poll_url)
                assert polled.status_code == 200
                assert polled.json()["status"] == "cancelled"
                assert "output" not in polled.json()

            # The session's lease was released, and the cancelled input was not saved.
            assert await ask(client, "after", "bg-2") == "before | after"
            assert recorder.calls[-1] == ["before", "before", "after"]


# --- 5. bad input --------------------------------------------------------------------


async def post_chunked_without_end(
    base_url: str, path: str, chunks: list[bytes]
) -> tuple[int, bytes]:
    """POST a chunked body (no content-length), never finishing it, and read the answer."""
    address = urlsplit(base_url)
    assert address.hostname == "127.0.0.1" and address.port is not None
    connection = h11.Connection(h11.CLIENT)
    status = 0
    body = b""
    async with await anyio.connect_tcp("127.0.0.1", address.port) as stream:
        head = h11.Request(
            method="POST",
            target=path,
            headers=[
                ("host", address.netloc),
                ("content-type", "application/json"),
                ("transfer-encoding", "chunked"),
            ],
        )
        await stream.send(connection.send(head))
        for chunk in chunks:
            await stream.send(connection.send(h11.Data(data=chunk)))
        for _ in range(1000):
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive())
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body
        raise AssertionError("no complete response")


async def test_bad_requests_get_clear_json_errors(tmp_path: Path) -> None:
    host = make_host(Recorder(), tmp_path, max_body_bytes=1000)
    with anyio.fail_after(TIMEOUT):
        async with (
            served(host.app) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client,
        ):
            json_headers = {"content-type": "application/json"}
            response = await client.post(INVOKE, content=b'{"input": ', headers=json_headers)
            assert_error(response, 400, "invalid_json")
            response = await client.post(INVOKE, content=b"\xff\xfe", headers=json_headers)
            assert_error(response, 400, "invalid_json")
            assert_error(await client.post(INVOKE, json=["hello"]), 400, "invalid_request")
            assert_error(await client.post(INVOKE, json="hello"), 400, "invalid_request")
            assert_error(await client.post(INVOKE, json={"session_id": "a"}), 422, "missing_input")
            assert_error(await client.post(INVOKE, json={"input": None}), 422, "missing_input")
            assert_error(await client.post(INVOKE, json={"input": "  "}), 422, "invalid_input")
            response = await client.post(
                INVOKE, json={"input": "hi", "stream": True, "background": True}
            )
            assert_error(response, 422, "invalid_request")
            for bad_id in ("has spaces", "x" * 300, "../etc", 42):
                response = await client.post(INVOKE, json={"input": "hi", "session_id": bad_id})
                assert_error(response, 422, "invalid_session_id")
            response = await client.post(
                INVOKE, params={"agent_session_id": "no/slashes"}, json={"input": "hi"}
            )
            assert_error(response, 422, "invalid_session_id")

            response = await client.post(
                INVOKE,
                json={"input": "hi", "session_id": "never-seen", "session_mode": "required"},
            )
            assert_error(response, 409, "session_not_found")
            response = await client.post(
                INVOKE, json={"input": "hi", "session_id": "s", "session_mode": "sometimes"}
            )
            assert_error(response, 422, "invalid_request")

            assert_error(await client.get("/invocations/run_unknown"), 404, "not_found")
            response = await client.post("/invocations/run_unknown/cancel")
            assert_error(response, 404, "not_found")

            oversized = b'{"input": "' + b"x" * 5000 + b'"}'
            response = await client.post(INVOKE, content=oversized, headers=json_headers)
            assert_error(response, 413, "body_too_large")

            # A body without content-length is cut off at the limit: the answer comes
            # while the body is still open.
            status, raw = await post_chunked_without_end(
                base_url, INVOKE, [b'{"input": "' + b"x" * 489, b"x" * 500, b"x" * 500]
            )
            assert status == 413
            assert json.loads(raw)["error"]["code"] == "body_too_large"

            # None of that hurt the host: a good request is answered, and a required
            # session that exists is found.
            assert await ask(client, "still fine?", "after-errors") == "still fine?"
            response = await client.post(
                INVOKE,
                json={"input": "and now", "session_id": "after-errors", "session_mode": "required"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["output"] == "still fine? | and now"


# --- 6. a failing target -------------------------------------------------------------


async def test_a_failing_run_answers_500_and_does_not_poison_the_session(tmp_path: Path) -> None:
    recorder = Recorder()
    secret = "internal detail 4711 that must not leak"

    async def fails_on_boom(messages: list[HostMessage]) -> str:
        if "boom" in messages[-1].text:
            recorder.calls.append([m.text for m in messages])
            raise RuntimeError(secret)
        return await recorder(messages)

    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(fails_on_boom, tmp_path)) as client:
            assert await ask(client, "hello", "fragile") == "hello"
            response = await client.post(INVOKE, json={"input": "boom", "session_id": "fragile"})
            assert_error(response, 500, "run_failed")
            assert secret not in response.text
            assert "RuntimeError" not in response.text
            assert await ask(client, "what now?", "fragile") == "hello | what now?"

            # A streamed failure is an error event, with nothing leaked either.
            async with client.stream(
                "POST",
                INVOKE,
                json={"input": "boom again", "session_id": "fragile", "stream": True},
            ) as streamed:
                assert streamed.status_code == 200
                text = (await streamed.aread()).decode()
                events = [block for block in text.split("\n\n") if block.strip()]
            assert len(events) == 1 and events[0].startswith("event: error\n")
            assert '"code":"run_failed"' in events[0]
            assert secret not in text

            assert await ask(client, "and now?", "fragile") == "hello | what now? | and now?"

    assert recorder.calls == [
        ["hello"],
        ["hello", "hello", "boom"],
        ["hello", "hello", "what now?"],
        ["hello", "hello", "what now?", "hello | what now?", "boom again"],
        ["hello", "hello", "what now?", "hello | what now?", "and now?"],
    ]
    assert not any("boom" in said for said in recorder.calls[-1])


# --- 7. platform headers -------------------------------------------------------------


async def test_trusted_platform_headers_keep_callers_apart(tmp_path: Path) -> None:
    host = make_host(Recorder(), tmp_path, trust_platform_headers=True)
    with anyio.fail_after(TIMEOUT):
        async with client_for(host) as client:
            ada = {"x-agent-user-id": "user-ada"}
            bob = {"x-agent-user-id": "user-bob"}
            assert await ask(client, "ada one", "shared", **ada) == "ada one"
            assert await ask(client, "bob one", "shared", **bob) == "bob one"
            assert await ask(client, "ada two", "shared", **ada) == "ada one | ada two"
            # The older header generation names the same user.
            legacy = {"x-agent-user-isolation-key": "user-ada"}
            assert await ask(client, "ada three", "shared", **legacy) == (
                "ada one | ada two | ada three"
            )
            assert await ask(client, "bob two", "shared", **bob) == "bob one | bob two"

            response = await client.post(INVOKE, json={"input": "who?", "session_id": "shared"})
            assert_error(response, 401, "unauthenticated")
            response = await client.post(
                INVOKE,
                json={"input": "who?", "session_id": "shared"},
                headers={"x-agent-user-id": ""},
            )
            assert_error(response, 401, "unauthenticated")


async def test_untrusted_platform_headers_are_ignored(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(Recorder(), tmp_path)) as client:
            assert await ask(client, "one", "shared", **{"x-agent-user-id": "ada"}) == "one"
            assert await ask(client, "two", "shared", **{"x-agent-user-id": "bob"}) == "one | two"
            assert await ask(client, "three", "shared") == "one | two | three"


# --- 8. one run at a time per session ------------------------------------------------


class HeldTarget:
    """Holds a run that says "hold" until released; tracks how many runs overlap."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.active = 0
        self.max_active = 0
        self.calls: list[list[str]] = []

    async def __call__(self, messages: list[HostMessage]) -> str:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.calls.append([m.text for m in messages])
        try:
            if messages[-1].text == "hold":
                self.entered.set()
                await self.release.wait()
            return f"done {messages[-1].text}"
        finally:
            self.active -= 1


async def test_concurrent_requests_on_one_session_run_one_after_the_other(
    tmp_path: Path,
) -> None:
    target = HeldTarget()
    arrived = anyio.Event()

    def note_arrival(request: ChannelRequest, *, target: Any, protocol_request: Any) -> None:
        if request.input[-1].text == "next":
            arrived.set()

    host = Host(
        target,
        channels=[InvocationsChannel()],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        run_hook=note_arrival,
    )
    answers: dict[str, str] = {}

    async def send(client: httpx.AsyncClient, text: str) -> None:
        answers[text] = await ask(client, text, "one-session")

    with anyio.fail_after(TIMEOUT):
        async with client_for(host) as client, anyio.create_task_group() as tasks:
            tasks.start_soon(send, client, "hold")
            await target.entered.wait()
            tasks.start_soon(send, client, "next")
            await arrived.wait()
            # The second request is in the host; it must not reach the target meanwhile.
            await anyio.sleep(0.3)
            assert len(target.calls) == 1
            assert "hold" not in answers
            target.release.set()

    assert answers == {"hold": "done hold", "next": "done next"}
    assert target.max_active == 1
    # The second run started from the session the first one saved.
    assert target.calls == [["hold"], ["hold", "done hold", "next"]]


async def test_reject_strategy_answers_busy(tmp_path: Path) -> None:
    target = HeldTarget()
    host = make_host(target, tmp_path, multitask=MultitaskStrategy.REJECT)
    answers: dict[str, str] = {}

    async def hold(client: httpx.AsyncClient) -> None:
        answers["hold"] = await ask(client, "hold", "one-session")

    with anyio.fail_after(TIMEOUT):
        async with client_for(host) as client:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(hold, client)
                await target.entered.wait()
                response = await client.post(
                    INVOKE, json={"input": "too soon", "session_id": "one-session"}
                )
                assert_error(response, 409, "session_busy")
                target.release.set()
            assert answers == {"hold": "done hold"}
            assert await ask(client, "later", "one-session") == "done later"

    assert target.max_active == 1
    assert target.calls == [["hold"], ["hold", "done hold", "later"]]


# --- store trips -------------------------------------------------------------------------


async def test_a_new_session_is_written_once_with_its_first_reply(tmp_path: Path) -> None:
    """A request naming no session gets one whose id the reply shows first: the turn opens on
    a read and its save creates the session (``opening`` rule 5), one write transaction; a
    session the caller names is written when the turn opens, and again by the save."""

    async def counting(messages: list[HostMessage]) -> str:
        return f"{len(messages)} messages"

    host = make_host(counting, tmp_path)
    assert isinstance(host.store, SQLiteStore)
    with anyio.fail_after(TIMEOUT):
        async with client_for(host) as client:
            await ask(client, "warm up", "named")  # opens the store
            conn = host.store._conn
            assert conn is not None
            writes: dict[str, int] = {}
            for case, body in (
                ("new", {"input": "hi"}),
                ("new, streamed", {"input": "hi", "stream": True}),
                ("named", {"input": "hi", "session_id": "named-2"}),
            ):
                statements: list[str] = []
                conn.set_trace_callback(statements.append)
                try:
                    if body.get("stream"):
                        _, done = deltas_and_done(await stream_events(client, body))
                        session_id = done["session_id"]
                    else:
                        response = await client.post(INVOKE, json=body)
                        assert response.status_code == 200, response.text
                        session_id = response.json()["session_id"]
                finally:
                    conn.set_trace_callback(None)
                writes[case] = statements.count("BEGIN IMMEDIATE")
                # the session was saved with the turn: the next request continues it
                again = await client.post(INVOKE, json={"input": "again", "session_id": session_id})
                assert again.status_code == 200, again.text
                assert again.json()["output"] == "3 messages"
    assert writes == {"new": 1, "new, streamed": 1, "named": 2}
