"""Delivery through the host's API, without HTTP: hooks, wire-target trust, shutdown."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from agenthost import (
    ChannelIdentity,
    ChannelRequest,
    ContinuationToken,
    Host,
    HostMessage,
    RefusalReason,
    ResponseTarget,
    TurnCompleted,
    TurnRefused,
)
from agenthost.backends.outbox import DeliveryContext
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.types import RunStatus
from agenthost.stores.memory import MemoryStore
from tests.delivery.receiver import PushChat

pytestmark = pytest.mark.anyio

ALICE = ChannelIdentity("chat", "alice")


async def answer(messages: list[HostMessage]) -> str:
    return f"answer to {messages[-1].text}"


def said(text: str, **changes: Any) -> ChannelRequest:
    request = ChannelRequest(channel="chat", identity=ALICE, input=(HostMessage.user(text),))
    return attrs.evolve(request, **changes)


def make_host(tmp_path: Path, *channels: Any, **options: Any) -> Host:
    return Host(answer, channels=channels, store=MemoryStore(), state_dir=tmp_path, **options)


async def settled(host: Host, count: int) -> list[Any]:
    with anyio.fail_after(10):
        while True:
            found = await host.list_deliveries()
            done = [d for d in found if d.status in (DeliveryStatus.DELIVERED, DeliveryStatus.DEAD)]
            if len(done) >= count:
                return found
            await anyio.sleep(0.01)


async def test_the_response_hook_shapes_each_message_on_a_clone(tmp_path: Path) -> None:
    contexts: list[DeliveryContext] = []

    def hook(message: PushMessage, *, context: DeliveryContext) -> PushMessage:
        contexts.append(context)
        prefix = "[echo] " if context.is_echo else "[reply] "
        return attrs.evolve(message, text=prefix + message.text)

    chat, other = PushChat("chat"), PushChat("other")
    host = make_host(
        tmp_path,
        chat,
        other,
        response_hook=hook,
        trust_wire_targets=lambda request, identity: True,
    )
    async with host.running():
        assert isinstance(await host.run(said("first")), TurnCompleted)  # alice is seen
        alice_2 = ChannelIdentity("other", "alice-2")
        await host.link_identities(ALICE, alice_2)
        await host.run(said("there", channel="other", identity=alice_2))
        token = await host.run_in_background(
            said("ping", response_target=ResponseTarget.channel("other", echo_input=True))
        )
        assert not isinstance(token, TurnRefused)
        await settled(host, 1)
    assert other.texts() == ["[echo] You, via Chat: ping", "[reply] answer to ping"]
    assert chat.pushed == []
    assert [(c.is_echo, c.originating, c.channel) for c in contexts] == [
        (True, False, "other"),
        (False, False, "other"),
    ]


async def test_a_run_hook_may_choose_a_target_for_a_foreground_run(tmp_path: Path) -> None:
    def to_all(request: ChannelRequest, **_: Any) -> ChannelRequest:
        return attrs.evolve(request, response_target=ResponseTarget.all_linked())

    chat, other = PushChat("chat"), PushChat("other")
    host = make_host(tmp_path, chat, other, run_hook=to_all)
    async with host.running():
        alice_2 = ChannelIdentity("other", "alice-2")
        await host.run(said("there", channel="other", identity=alice_2))  # only its wire
        await host.link_identities(alice_2, ALICE)
        outcome = await host.run(said("hello"))
        assert isinstance(outcome, TurnCompleted)  # answered on its own wire...
        await settled(host, 1)
    # ...and pushed where the hook said, but not again to the wire that answered it
    assert other.texts() == ["answer to hello"]
    assert chat.texts() == []


async def test_run_or_continue_answers_a_token_when_the_hook_chooses_a_target(
    tmp_path: Path,
) -> None:
    def to_other(request: ChannelRequest, **_: Any) -> ChannelRequest:
        if request.input[-1].text == "stay":
            return request
        return attrs.evolve(request, response_target=ResponseTarget.channel("other"))

    chat, other = PushChat("chat"), PushChat("other")
    host = make_host(tmp_path, chat, other, run_hook=to_other)
    async with host.running():
        alice_2 = ChannelIdentity("other", "alice-2")
        await host.run(said("stay", channel="other", identity=alice_2))
        await host.link_identities(alice_2, ALICE)

        stayed = await host.run_or_continue(said("stay"))
        assert isinstance(stayed, TurnCompleted)
        assert stayed.result.text == "answer to stay"

        helped = await host.run_or_continue(said("/help"))  # a command: answered at once
        assert isinstance(helped, TurnCompleted)
        assert "/new" in helped.result.text

        token = await host.run_or_continue(said("hello"))
        assert isinstance(token, ContinuationToken)
        await settled(host, 1)
        polled = await host.get_continuation(token.token)
        assert polled is not None and polled.status is RunStatus.COMPLETED
        assert (polled.result or {})["text"] == "answer to hello"

        # A target on the wire still needs a trusted caller.
        refused = await host.run_or_continue(
            said("wired", response_target=ResponseTarget.all_linked())
        )
        assert isinstance(refused, TurnRefused)
        assert refused.reason is RefusalReason.TARGET_NOT_ALLOWED
    assert other.texts() == ["answer to hello"]
    assert chat.texts() == []


async def test_the_originating_destination_gets_the_reply_of_a_background_run(
    tmp_path: Path,
) -> None:
    contexts: list[DeliveryContext] = []

    def hook(message: PushMessage, *, context: DeliveryContext) -> None:
        contexts.append(context)

    chat = PushChat("chat")
    host = make_host(
        tmp_path, chat, response_hook=hook, trust_wire_targets=lambda request, identity: True
    )
    async with host.running():
        token = await host.run_in_background(
            said("hi", response_target=ResponseTarget.all_linked(echo_input=True))
        )
        assert not isinstance(token, TurnRefused)
        await settled(host, 1)
    assert chat.texts() == ["answer to hi"]  # no echo: the user wrote it there
    assert [(c.originating, c.is_echo) for c in contexts] == [(True, False)]


async def test_wire_targets_are_trusted_from_nobody_by_default(tmp_path: Path) -> None:
    chat = PushChat("chat")
    host = make_host(tmp_path, chat)
    async with host.running():
        pushed = said("x", response_target=ResponseTarget.active())
        for refused in (await host.run(pushed), await host.run_in_background(pushed)):
            assert isinstance(refused, TurnRefused)
            assert refused.reason is RefusalReason.TARGET_NOT_ALLOWED
        assert await host.list_deliveries() == []
        assert await host.store.list_last_seen("anyone") == []


async def test_a_foreground_run_cannot_push_without_going_background(tmp_path: Path) -> None:
    host = make_host(tmp_path, PushChat("chat"), trust_wire_targets=lambda r, i: True)
    async with host.running():
        with pytest.raises(ValueError, match="run_in_background"):
            await host.run(said("x", response_target=ResponseTarget.active()))


class Stuck(PushChat):
    """Its pushes never end (until cancelled)."""

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        self.pushed.append((destination, message))
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("idempotent", "status", "attempts"),
    [
        # the platform drops a repeated key: sending it again is harmless
        (True, DeliveryStatus.SCHEDULED, 0),
        # nobody knows whether the platform got it: never resent blindly
        (False, DeliveryStatus.UNKNOWN, 1),
    ],
)
async def test_a_shutdown_interrupting_a_send_in_flight(
    tmp_path: Path, idempotent: bool, status: DeliveryStatus, attempts: int
) -> None:
    stuck = Stuck("chat")
    stuck.push_is_idempotent = idempotent
    store = MemoryStore()
    host = Host(
        answer, channels=[stuck], store=store, state_dir=tmp_path, shutdown_grace_seconds=0.1
    )
    async with host.running():
        await host.run(said("hi"))
        key = (await store.load_context(ALICE, None)).isolation_key
        assert key is not None
        [scheduled] = await host.deliver(isolation_key=key, message="later")
        with anyio.fail_after(10):
            while not stuck.pushed:  # the send has begun
                await anyio.sleep(0.01)
        sending = await store.get_delivery(scheduled.delivery_id)
        assert sending is not None and sending.status is DeliveryStatus.SENDING
    after = await store.get_delivery(scheduled.delivery_id)
    assert after is not None
    assert after.status is status and after.attempts == attempts


async def test_dropped_destinations_are_logged_without_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chat = PushChat("chat")
    host = make_host(tmp_path, chat, trust_wire_targets=lambda r, i: True)
    caplog.set_level(logging.INFO, logger="agenthost.delivery")
    async with host.running():
        token = await host.run_in_background(
            said("secret words", response_target=ResponseTarget.channel("nowhere"))
        )
        assert not isinstance(token, TurnRefused)
        with anyio.fail_after(10):
            while (await host.get_continuation(token.token)).status.value != "completed":  # type: ignore[union-attr]
                await anyio.sleep(0.01)
    drops = [r for r in caplog.records if r.getMessage() == "delivery destination dropped"]
    assert [(r.channel, r.reason) for r in drops] == [("nowhere", "unknown_channel")]  # type: ignore[attr-defined]
    assert not any("secret words" in r.getMessage() + str(vars(r)) for r in caplog.records)
    assert await host.list_deliveries() == []  # fell back to the originating wire (polling)


class IdempotentChat(PushChat):
    push_is_idempotent = True


async def test_a_send_abandoned_by_a_dead_process_is_unknown_unless_idempotent(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    chat, idem = PushChat("chat"), IdempotentChat("idem")
    now = time.time()
    abandoned = [
        Delivery(
            delivery_id=f"run_dead:{name}:alice",
            isolation_key="k",
            channel=name,
            identity=ChannelIdentity(name, "alice"),
            conversation_id=None,
            reply={"text": "late reply"},
            echo=None,
            created_at=now - 10,
            next_attempt_at=now - 10,
        )
        for name in ("chat", "idem")
    ]
    await store.schedule_deliveries(abandoned)
    # a process claimed both, then died: its lease ran out long ago
    await store.claim_due_deliveries("host_dead", now - 5, 1.0, 10)
    host = Host(answer, channels=[chat, idem], store=store, state_dir=tmp_path)
    async with host.running():
        with anyio.fail_after(10):
            while not idem.pushed:
                await anyio.sleep(0.01)
        await settled(host, 1)
        unknown = await store.get_delivery("run_dead:chat:alice")
    assert idem.texts() == ["late reply"]  # the platform drops a repeat: sent again
    assert chat.pushed == []  # nobody knows whether it arrived: never resent blindly
    assert unknown is not None and unknown.status is DeliveryStatus.UNKNOWN
    assert [d.delivery_id for d in await store.list_deliveries([DeliveryStatus.UNKNOWN])] == [
        "run_dead:chat:alice"
    ]
