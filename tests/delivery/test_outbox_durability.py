"""The outbox under load and misconfiguration (issue 16): a slow send keeps its lease
against a second host on the same store, leases shorter than a push are refused, the
retry policy is per channel, and ``active`` finds a channel that can push."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from agenthost import (
    Channel,
    ChannelIdentity,
    ChannelRequest,
    ConfigurationError,
    Host,
    HostMessage,
    HostServices,
    ResponseTarget,
    TurnCompleted,
)
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.sansio_core.delivery import DeliveryStatus, RetryPolicy
from agenthost.sansio_core.routing import Destination
from agenthost.stores.memory import MemoryStore
from agenthost.stores.sqlite import SQLiteStore
from tests.delivery.receiver import PushChat

pytestmark = pytest.mark.anyio

ALICE = ChannelIdentity("chat", "alice")


async def answer(messages: list[HostMessage]) -> str:
    return f"answer to {messages[-1].text}"


def said(text: str, **changes: Any) -> ChannelRequest:
    request = ChannelRequest(channel="chat", identity=ALICE, input=(HostMessage.user(text),))
    return attrs.evolve(request, **changes)


class SlowPartsChat(PushChat):
    """Pushes a reply in three parts, each taking ``part_seconds`` (well within its
    declared per-request timeout), reporting each part like a real multi-part channel."""

    PARTS = 3

    def __init__(self, name: str, part_seconds: float, log: list[tuple[str, int]]) -> None:
        super().__init__(name)
        self.part_seconds = part_seconds
        self.push_timeout_seconds = part_seconds * 1.2
        self.log = log  # (which host, part index), shared by both hosts' channels

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        for index in range(message.parts_sent, self.PARTS):
            await anyio.sleep(self.part_seconds)
            self.log.append((self.name, index))
            if message.on_part_sent is not None:
                await message.on_part_sent(index + 1)
        return PushOutcome.ok()


async def test_a_slow_send_keeps_its_lease_against_another_host(tmp_path: Path) -> None:
    # The send takes 1.35 s; the lease is 0.6 s. Unrenewed, the second host's sweep would
    # take it for a dead send (unknown), and the first host's own Sent would be refused.
    db = tmp_path / "state.db"
    log: list[tuple[str, int]] = []
    first_chat = SlowPartsChat("chat", 0.45, log)
    second_chat = SlowPartsChat("chat", 0.45, log)
    options: dict[str, Any] = {"delivery_lease_seconds": 0.6, "state_dir": tmp_path}
    first = Host(answer, channels=[first_chat], store=SQLiteStore(db), **options)
    second = Host(answer, channels=[second_chat], store=SQLiteStore(db), **options)
    with anyio.fail_after(20):
        async with first.running(), second.running():
            assert isinstance(await first.run(said("hi")), TurnCompleted)
            key = (await first.store.load_context(ALICE, None)).isolation_key
            assert key is not None
            [scheduled] = await first.deliver(isolation_key=key, message="a long one")
            while True:
                found = await first.store.get_delivery(scheduled.delivery_id)
                assert found is not None
                if found.status not in (DeliveryStatus.SCHEDULED, DeliveryStatus.SENDING):
                    break
                await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # a late duplicate would show up by now
    assert found.status is DeliveryStatus.DELIVERED, found.last_error
    assert found.parts_sent == SlowPartsChat.PARTS
    assert sorted(index for _, index in log) == [0, 1, 2]  # every part once, in all


def test_a_lease_a_push_request_could_outlast_is_refused(tmp_path: Path) -> None:
    slow = SlowPartsChat("chat", 1.0, [])  # one request may take 1.2 s
    with pytest.raises(ConfigurationError, match="delivery_lease_seconds"):
        Host(
            answer,
            channels=[slow],
            store=MemoryStore(),
            state_dir=tmp_path,
            delivery_lease_seconds=1.0,
        )
    Host(
        answer, channels=[slow], store=MemoryStore(), state_dir=tmp_path, delivery_lease_seconds=2.0
    )


async def test_the_retry_policy_is_per_channel(tmp_path: Path) -> None:
    patient = RetryPolicy(budget_seconds=7200.0)
    chat, other = PushChat("chat"), PushChat("other")
    host = Host(
        answer,
        channels=[chat, other],
        store=MemoryStore(),
        state_dir=tmp_path,
        delivery_retry={"other": patient},
    )
    alice_2 = ChannelIdentity("other", "alice-2")
    async with host.running():
        await host.run(said("hi"))
        await host.link_identities(ALICE, alice_2)
        await host.run(said("there", channel="other", identity=alice_2))
        key = (await host.store.load_context(ALICE, None)).isolation_key
        assert key is not None
        planned = await host.deliver(
            isolation_key=key, message="x", target=ResponseTarget.all_linked()
        )
    policies = {d.channel: d.retry for d in planned}
    assert policies == {"chat": RetryPolicy(), "other": patient}
    with pytest.raises(ConfigurationError, match="nowhere"):
        Host(
            answer,
            channels=[chat],
            store=MemoryStore(),
            state_dir=tmp_path,
            delivery_retry={"nowhere": patient},
        )


class Api(Channel):
    """A request/response channel: it cannot push."""

    name = "api"

    def routes(self, host: HostServices) -> list[Any]:
        return []


async def test_active_reaches_a_user_last_seen_where_nothing_can_be_pushed(
    tmp_path: Path,
) -> None:
    chat = PushChat("chat")
    host = Host(answer, channels=[chat, Api()], store=MemoryStore(), state_dir=tmp_path)
    alice_api = ChannelIdentity("api", "alice@example.com")
    async with host.running():
        await host.run(said("from the chat"))
        await host.link_identities(ALICE, alice_api)
        await anyio.sleep(0.01)  # seen on the API strictly later
        await host.run(said("from the api", channel="api", identity=alice_api))
        key = (await host.store.load_context(ALICE, None)).isolation_key
        assert key is not None
        scheduled = await host.deliver(isolation_key=key, message="your report is ready")
        with anyio.fail_after(10):
            while not chat.pushed:
                await anyio.sleep(0.01)
    assert [d.channel for d in scheduled] == ["chat"]
    assert chat.texts() == ["your report is ready"]
