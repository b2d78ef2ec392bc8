"""Graceful shutdown drains, then cancels, and leaves unfinished work in the store."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agenthost import ChannelIdentity, ChannelRequest, ChannelSession, Host, HostMessage, RunStatus
from agenthost.channels.invocations import InvocationsChannel
from agenthost.stores.sqlite import SQLiteStore


def request(text: str) -> ChannelRequest:
    return ChannelRequest(
        channel="app",
        identity=ChannelIdentity("app", "user-1"),
        input=(HostMessage.user(text),),
        session=ChannelSession(key="conversation-1", caller_keyed=True),
    )


@pytest.mark.anyio
async def test_shutdown_suspends_a_run_that_outlives_the_grace_period(tmp_path: Path) -> None:
    started = anyio.Event()
    attempts: list[str] = []

    async def blocks_first_time(messages: list[HostMessage]) -> str:
        attempts.append(messages[-1].text)
        if len(attempts) == 1:
            started.set()
            await anyio.sleep_forever()
        return "done on the second host"

    db = tmp_path / "state.db"
    first = Host(
        blocks_first_time,
        channels=[InvocationsChannel()],
        store=SQLiteStore(db),
        state_dir=tmp_path,
        shutdown_grace_seconds=0.2,
    )
    with anyio.fail_after(10):
        async with first.running():
            token = await first.run_in_background(request("long job"))
            assert not isinstance(token, Exception)
            await started.wait()

    # The grace period ran out: the run went back to the queue without spending its attempt.
    store = SQLiteStore(db)
    record = await store.get_run(token.token)  # type: ignore[union-attr]
    await store.close()
    assert record is not None
    assert record.status is RunStatus.QUEUED
    assert record.attempts == 0
    assert record.owner is None

    second = Host(
        blocks_first_time,
        channels=[InvocationsChannel()],
        store=SQLiteStore(db),
        state_dir=tmp_path,
    )
    with anyio.fail_after(10):
        async with second.running():
            while True:
                continuation = await second.get_continuation(token.token)  # type: ignore[union-attr]
                assert continuation is not None
                if continuation.status.is_final:
                    break
                await anyio.sleep(0.05)
    assert continuation.status is RunStatus.COMPLETED
    assert continuation.result is not None
    assert continuation.result["text"] == "done on the second host"
    assert attempts == ["long job", "long job"]


@pytest.mark.anyio
async def test_shutdown_lets_a_short_run_finish_within_the_grace_period(tmp_path: Path) -> None:
    release = anyio.Event()

    async def quick(messages: list[HostMessage]) -> str:
        await release.wait()
        return "finished while draining"

    host = Host(quick, channels=[InvocationsChannel()], store=SQLiteStore(tmp_path / "state.db"),
                state_dir=tmp_path,
                shutdown_grace_seconds=5.0)  # fmt: skip
    with anyio.fail_after(10):
        async with host.running():
            token = await host.run_in_background(request("short job"))
            assert not isinstance(token, Exception)
            while (await host.get_continuation(token.token)).status is RunStatus.QUEUED:  # type: ignore[union-attr]
                await anyio.sleep(0.01)
            release.set()  # the run can finish only while the host is already shutting down
    store = SQLiteStore(tmp_path / "state.db")
    record = await store.get_run(token.token)  # type: ignore[union-attr]
    await store.close()
    assert record is not None and record.status is RunStatus.COMPLETED
