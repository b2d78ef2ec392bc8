"""The Host itself: configuration errors, the lifespan, readiness and session resets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from agenthost import (
    ChannelIdentity,
    ChannelRequest,
    ConfigurationError,
    Host,
    HostMessage,
    HostNotRunning,
    TurnCompleted,
)
from agenthost.channels.invocations import InvocationsChannel
from agenthost.stores.memory import MemoryStore
from agenthost.stores.sqlite import SQLiteStore
from tests.served import served


async def echo(messages: list[HostMessage]) -> str:
    return messages[-1].text


def request(text: str) -> ChannelRequest:
    return ChannelRequest(
        channel="app",
        identity=ChannelIdentity("app", "user-1"),
        input=(HostMessage.user(text),),
    )


# --- configuration errors are raised at construction ---------------------------------


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"channels": [InvocationsChannel(), InvocationsChannel()]}, ["invocations"]),
        ({"channels": [InvocationsChannel(name="Bad Name")]}, ["Bad Name"]),
        ({"channels": [InvocationsChannel(name="")]}, ["''"]),
        ({"channels": [InvocationsChannel(name="x" * 33)]}, ["x" * 33]),
        ({"channels": [object()]}, ["not a Channel"]),
        ({"lease_seconds": 0}, ["lease_seconds"]),
        ({"lease_seconds": -1.0}, ["lease_seconds"]),
        ({"background_ttl_seconds": 0}, ["background_ttl_seconds"]),
        ({"workflow_checkpoint_ttl_seconds": 0}, ["workflow_checkpoint_ttl_seconds"]),
        ({"shutdown_grace_seconds": -5}, ["shutdown_grace_seconds"]),
        ({"background_max_attempts": 0}, ["background_max_attempts"]),
        ({"max_concurrent_background_runs": 0}, ["max_concurrent_background_runs"]),
    ],
)
def test_misconfiguration_raises_configuration_error(
    options: dict[str, Any], names: list[str], tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Host(echo, store=MemoryStore(), state_dir=tmp_path, **options)
    for name in names:
        assert name in str(raised.value)


def test_two_channels_with_distinct_names_are_fine(tmp_path: Path) -> None:
    host = Host(
        echo,
        channels=[InvocationsChannel(), InvocationsChannel(name="second", mount="/second")],
        store=MemoryStore(),
        state_dir=tmp_path,
    )
    assert [channel.name for channel in host.channels] == ["invocations", "second"]


def test_an_unhostable_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot host"):
        Host(42, store=MemoryStore(), state_dir=tmp_path)


# --- the lifespan --------------------------------------------------------------------


@pytest.mark.anyio
async def test_running_is_required_and_readiness_follows_the_lifespan(tmp_path: Path) -> None:
    host = Host(
        echo,
        channels=[InvocationsChannel()],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
    )
    with pytest.raises(HostNotRunning, match="not running"):
        await host.run(request("too early"))
    with pytest.raises(HostNotRunning, match="not running"):
        await host.run_in_background(request("too early"))
    with pytest.raises(HostNotRunning):
        _ = host.http

    # Without its lifespan (an ASGI transport that never starts it) the app is not ready.
    transport = httpx.ASGITransport(app=host.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.get("/readiness")
        assert response.status_code == 503
        assert response.json() == {"status": "starting"}

    with anyio.fail_after(30):
        async with served(host.app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get("/readiness")
            assert response.status_code == 200
            assert response.json() == {"status": "healthy"}
            answer = await client.post("/invocations/invoke", json={"input": "hi"})
            assert answer.status_code == 200
            assert answer.json()["output"] == "hi"

    # Stopped again: runs are refused, and the host can be started once more.
    with pytest.raises(HostNotRunning):
        await host.run(request("too late"))
    with anyio.fail_after(30):
        async with host.running():
            outcome = await host.run(request("back again"))
            assert isinstance(outcome, TurnCompleted)
            assert outcome.result.text == "back again"


@pytest.mark.anyio
async def test_a_running_host_cannot_be_started_twice(tmp_path: Path) -> None:
    host = Host(echo, channels=[InvocationsChannel()], store=MemoryStore(), state_dir=tmp_path)
    with anyio.fail_after(30):
        async with host.running():
            with pytest.raises(HostNotRunning, match="already running"):
                async with host.running():
                    pass
            outcome = await host.run(request("still fine"))
            assert isinstance(outcome, TurnCompleted)


# --- resetting a session -------------------------------------------------------------


@pytest.mark.anyio
async def test_reset_session_starts_fresh_and_keeps_the_old_history(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    async def recorder(messages: list[HostMessage]) -> str:
        seen.append([m.text for m in messages])
        return f"reply {len(seen)}"

    store = SQLiteStore(tmp_path / "state.db")
    host = Host(recorder, channels=[InvocationsChannel()], store=store, state_dir=tmp_path)
    with anyio.fail_after(30):
        async with host.running():
            first = await host.run(request("first"))
            second = await host.run(request("second"))
            assert isinstance(first, TurnCompleted) and isinstance(second, TurnCompleted)
            assert seen[-1] == ["first", "reply 1", "second"]
            isolation_key = second.result.session.isolation_key
            old_session = second.result.session.session_id
            assert old_session is not None
            assert first.result.session.session_id == old_session

            new_session = await host.reset_session(isolation_key)
            assert new_session != old_session

            third = await host.run(request("third"))
            assert isinstance(third, TurnCompleted)
            assert seen[-1] == ["third"]
            assert third.result.session.session_id == new_session
            assert third.result.session.isolation_key == isolation_key

            records = await store.list_sessions(isolation_key)
            stored = {record.session_id: record for record in records}
            assert set(stored) == {old_session, new_session}
            old, new = stored[old_session], stored[new_session]
            assert old.generation < new.generation
            assert old.turns == 2 and new.turns == 1
            assert old.state is not None and new.state is not None
            assert texts_of(old.state) == ["first", "reply 1", "second", "reply 2"]
            assert texts_of(new.state) == ["third", "reply 3"]

            fourth = await host.run(request("fourth"))
            assert isinstance(fourth, TurnCompleted)
            assert seen[-1] == ["third", "reply 3", "fourth"]


def texts_of(state: Any) -> list[str]:
    return ["".join(part["text"] for part in m["parts"]) for m in state["messages"]]
