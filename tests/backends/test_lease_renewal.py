"""The host renews the lease of every running target (one task for the process): a run
longer than the lease keeps its session, and the run queued behind it waits its turn."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agenthost import ChannelIdentity, ChannelRequest, Host, HostMessage, TurnCompleted
from agenthost.channels.invocations import InvocationsChannel
from agenthost.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

LEASE = 0.6  # seconds; the first run takes several of these


def request(text: str) -> ChannelRequest:
    return ChannelRequest(
        channel="invocations",
        identity=ChannelIdentity("invocations", "user-1"),
        input=(HostMessage.user(text),),
    )


async def test_a_run_longer_than_its_lease_keeps_the_session(tmp_path: Path) -> None:
    order: list[str] = []

    async def slow_then_fast(messages: list[HostMessage]) -> str:
        text = messages[-1].text
        order.append(f"start {text}")
        if text == "slow":
            await anyio.sleep(LEASE * 4)
        order.append(f"end {text}")
        return f"{text} after {len(messages)} messages"

    host = Host(
        slow_then_fast,
        channels=[InvocationsChannel()],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        lease_seconds=LEASE,
    )
    outcomes: dict[str, object] = {}

    async def turn(text: str) -> None:
        outcomes[text] = await host.run(request(text))

    with anyio.fail_after(30):
        async with host.running(), anyio.create_task_group() as tasks:
            tasks.start_soon(turn, "slow")
            with anyio.fail_after(5):
                while order != ["start slow"]:
                    await anyio.sleep(0.01)
            tasks.start_soon(turn, "fast")
    slow, fast = outcomes["slow"], outcomes["fast"]
    assert isinstance(slow, TurnCompleted) and slow.saved  # the lease never lapsed
    assert order == ["start slow", "end slow", "start fast", "end fast"]
    assert isinstance(fast, TurnCompleted)
    assert fast.result.text == "fast after 3 messages"  # it ran on the slow turn's save
