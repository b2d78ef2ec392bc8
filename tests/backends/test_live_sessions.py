"""An Agent Framework agent's session is continued from the object the last turn here ended
with, and only while the store still holds what that turn saved: another replica's turn, a
failed turn and a fork from an earlier response all restore from the store.

Real HTTP to the real Hypercorn on loopback, the demo agent (a real Agent Framework agent on
a local model) behind a thin wrapper that notes which session object each run was given.
The demo agent numbers the user's messages it sees ("message N of this conversation"), so
an answer tells how much history the run had.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from agenthost import Host
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.responses import ResponsesChannel
from agenthost.demo import build_agent
from agenthost.stores.sqlite import SQLiteStore
from tests.served import served

pytestmark = pytest.mark.anyio

INVOKE = "/invocations/invoke"
RESPONSES = "/responses/v1/responses"
TIMEOUT = 30.0


class Watched:
    """The demo agent, noting the session object of every run. Input ``boom`` marks the
    session's state and then fails, as a run that breaks half-way through would."""

    def __init__(self) -> None:
        self.agent = build_agent()
        self.sessions: list[Any] = []

    def create_session(self, **options: Any) -> Any:
        return self.agent.create_session(**options)

    async def run(self, messages: Any, *, session: Any = None, **options: Any) -> Any:
        self.sessions.append(session)
        if messages[-1].text == "boom":
            session.state["half_done"] = True
            raise RuntimeError("the model went away")
        return await self.agent.run(messages, session=session, **options)


def make_host(target: Any, path: Path, state_dir: Path) -> Host:
    return Host(
        target,
        channels=[InvocationsChannel(), ResponsesChannel()],
        store=SQLiteStore(path),
        state_dir=state_dir,
    )


@asynccontextmanager
async def client_for(host: Host) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        served(host.app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client,
    ):
        yield client


async def ask(client: httpx.AsyncClient, text: str, session_id: str) -> int:
    """Send ``text`` in ``session_id``; the number of user messages the agent saw."""
    response = await client.post(INVOKE, json={"input": text, "session_id": session_id})
    assert response.status_code == 200, response.text
    return seen(response.json()["output"])


def seen(answer: str) -> int:
    found = re.search(r"message (\d+) of this conversation", answer)
    assert found is not None, answer
    return int(found[1])


async def test_a_session_another_replica_continued_is_restored_from_the_store(
    tmp_path: Path,
) -> None:
    # Two hosts on one file, as two replicas: each keeps the session its last turn ended
    # with, and the one that did not run the newest turn must not continue its old copy.
    here, there = Watched(), Watched()
    path = tmp_path / "state.db"
    with anyio.fail_after(TIMEOUT):
        async with (
            client_for(make_host(here, path, tmp_path / "a")) as a,
            client_for(make_host(there, path, tmp_path / "b")) as b,
        ):
            assert await ask(a, "one", "chat") == 1
            assert await ask(a, "two", "chat") == 2
            assert here.sessions[1] is here.sessions[0]  # continued, not restored
            assert await ask(b, "three", "chat") == 3
            assert await ask(a, "four", "chat") == 4  # its own copy had seen two
            assert here.sessions[2] is not here.sessions[1]
            assert await ask(a, "five", "chat") == 5
            assert here.sessions[3] is here.sessions[2]


async def test_a_failed_turn_leaves_nothing_of_its_session_behind(tmp_path: Path) -> None:
    agent = Watched()
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(agent, tmp_path / "state.db", tmp_path)) as client:
            assert await ask(client, "one", "chat") == 1
            failed = await client.post(INVOKE, json={"input": "boom", "session_id": "chat"})
            assert failed.status_code == 500, failed.text
            assert await ask(client, "two", "chat") == 2
    # The failed run had marked the object it was given: the next turn did not get it.
    assert agent.sessions[1] is agent.sessions[0]
    assert agent.sessions[2] is not agent.sessions[1]
    assert "half_done" not in agent.sessions[2].state


async def test_a_fork_from_an_earlier_response_gets_that_responses_history(
    tmp_path: Path,
) -> None:
    # Each Responses turn saves into a session of its own, copied from the one it continues:
    # the copies keep the framework's session id, so only the saved state tells them apart.
    agent = Watched()

    async def respond(client: httpx.AsyncClient, text: str, previous: str | None) -> Any:
        body: dict[str, Any] = {"model": "demo", "input": text}
        if previous is not None:
            body["previous_response_id"] = previous
        response = await client.post(RESPONSES, json=body, headers={"authorization": "Bearer k"})
        assert response.status_code == 200, response.text
        return response.json()

    def told(response: Any) -> int:
        return seen(response["output"][0]["content"][0]["text"])

    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(agent, tmp_path / "state.db", tmp_path)) as client:
            first = await respond(client, "one", None)
            second = await respond(client, "two", first["id"])
            assert (told(first), told(second)) == (1, 2)
            assert agent.sessions[1] is agent.sessions[0]
            branch = await respond(client, "again", first["id"])
            assert told(branch) == 2  # the first response's history, not the second's
            onward = await respond(client, "three", second["id"])
            assert told(onward) == 3
