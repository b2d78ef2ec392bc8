"""A conversation's deliveries reach it in the order they were scheduled: the worker sends
the deliveries to one conversation it claimed together one at a time, while other
conversations' sends go on beside them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from agenthost import ChannelIdentity, Host, HostMessage
from agenthost.backends.destinations import DeliveryRouter
from agenthost.backends.outbox import DeliveryWorker, OutboxSettings
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, RetryPolicy
from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.routing import Destination
from agenthost.stores.memory import MemoryStore
from tests.delivery.receiver import PushChat
from tests.delivery.test_outbox_steps import GatedChat, StepCountingStore

pytestmark = pytest.mark.anyio


async def answer(messages: list[HostMessage]) -> str:
    return "unused"


class SlowFirstChat(PushChat):
    """A push takes longer the earlier its message was written (``"n"``: 0 is slowest), so
    sends made side by side would finish in reverse; notes which pushes overlapped."""

    push_is_idempotent = True

    def __init__(self) -> None:
        super().__init__("chat")
        self.finished: list[tuple[str | None, str]] = []
        self.under_way: dict[str | None, int] = {}
        self.most_at_once: dict[str | None, int] = {}

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        conversation = destination.conversation_id
        self.under_way[conversation] = self.under_way.get(conversation, 0) + 1
        self.most_at_once[conversation] = max(
            self.most_at_once.get(conversation, 0), self.under_way[conversation]
        )
        try:
            await anyio.sleep(0.02 * (5 - int(message.text)))
        finally:
            self.under_way[conversation] -= 1
        self.finished.append((conversation, message.text))
        return PushOutcome.ok()


def to_conversation(conversation: str, count: int, now: float) -> list[Delivery]:
    return [
        Delivery(
            delivery_id=f"{conversation}:{n:02d}",
            isolation_key="k",
            channel="chat",
            identity=ChannelIdentity("chat", "user-1"),
            conversation_id=conversation,
            reply={"text": str(n)},
            echo=None,
            created_at=now + n * 0.001,
            next_attempt_at=now,
        )
        for n in range(count)
    ]


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)


async def test_one_conversations_deliveries_arrive_in_order_others_go_beside(
    tmp_path: Path,
) -> None:
    store, chat = MemoryStore(), SlowFirstChat()
    now = time.time()
    # Scheduled newest first, so neither the store's order nor the claim's can hide a miss.
    scheduled = to_conversation("a", 5, now)[::-1] + to_conversation("b", 1, now)
    await store.schedule_deliveries(scheduled)
    host = Host(answer, channels=[chat], store=store, state_dir=tmp_path)
    async with host.running():
        await until(lambda: len(chat.finished) == 6)
        with anyio.fail_after(10):
            while len(delivered := await store.list_deliveries([DeliveryStatus.DELIVERED])) < 6:
                await anyio.sleep(0.01)
    assert [text for conversation, text in chat.finished if conversation == "a"] == [
        "0", "1", "2", "3", "4",
    ]  # fmt: skip
    assert chat.most_at_once["a"] == 1
    # Conversation b was not held behind a: its one push (the slowest kind) ended before
    # a's last.
    assert chat.finished.index(("b", "0")) < chat.finished.index(("a", "4"))
    assert len(delivered) == 6


class HeldChat(PushChat):
    """Not idempotent; every push waits until cancelled (a shutdown interrupts it)."""

    def __init__(self) -> None:
        super().__init__("chat")
        self.started = 0

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        self.started += 1
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def only_the_first_was_pushed(store: MemoryStore, chat: HeldChat) -> None:
    """The first was being pushed to a channel that is not idempotent: nobody knows
    whether it arrived. The two behind it never started: they are simply due again."""
    by_id = {d.delivery_id: d.status for d in await store.list_deliveries()}
    assert by_id == {
        "a:00": DeliveryStatus.UNKNOWN,
        "a:01": DeliveryStatus.SCHEDULED,
        "a:02": DeliveryStatus.SCHEDULED,
    }
    assert chat.started == 1


async def test_a_shutdown_leaves_the_sends_still_waiting_their_turn_scheduled(
    tmp_path: Path,
) -> None:
    store, chat = MemoryStore(), HeldChat()
    await store.schedule_deliveries(to_conversation("a", 3, time.time()))
    host = Host(
        answer, channels=[chat], store=store, state_dir=tmp_path, shutdown_grace_seconds=0.2
    )
    async with host.running():
        await until(lambda: chat.started == 1)
    await only_the_first_was_pushed(store, chat)


async def test_a_drain_hands_back_the_sends_waiting_their_turn_while_the_worker_runs_on() -> None:
    # The host cancels the worker after its drain; until then (other channels may still be
    # stopping) the chain goes on to the sends behind the interrupted one: they must be
    # handed back without being pushed, so a non-idempotent channel does not call them
    # ``unknown``.
    store, chat = MemoryStore(), HeldChat()
    await store.schedule_deliveries(to_conversation("a", 3, time.time()))
    router = DeliveryRouter(
        store=store, channels=[chat], link_rules=LinkRules(), retry=RetryPolicy()
    )
    worker = DeliveryWorker(
        store=store, router=router, clock=time.time, owner="w1", settings=OutboxSettings()
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            await tasks.start(worker.serve)
            await until(lambda: chat.started == 1)
            await worker.drain(0.1)  # interrupts the send under way; the worker runs on
            while await store.list_deliveries([DeliveryStatus.SENDING]):
                await anyio.sleep(0.01)
            tasks.cancel_scope.cancel()
    await only_the_first_was_pushed(store, chat)


async def test_a_send_taken_by_another_worker_while_waiting_its_turn_is_not_pushed(
    tmp_path: Path,
) -> None:
    store, chat = StepCountingStore(), GatedChat()
    first, second = to_conversation("a", 2, time.time())
    await store.schedule_deliveries([first, second])
    host = Host(
        answer, channels=[chat], store=store, state_dir=tmp_path, delivery_lease_seconds=0.6
    )
    async with host.running():
        await until(lambda: len(chat.pushed) == 1)  # the first is pushing, the second waits
        # Another worker, whose clock runs far ahead, finds the waiting one's lease expired
        # (as if this process had been frozen) and takes it.
        later = time.time() + 1000
        await store.apply_delivery_event(
            second.delivery_id, delivery.Recover(later, idempotent_push=True)
        )
        [taken] = await store.claim_due_deliveries("another-worker", later, 60.0, 1)
        renewals = len(store.calls_with("Renew"))
        # Two renewal rounds: the first was refused for the taken one, and handled.
        await until(lambda: len(store.calls_with("Renew")) >= renewals + 2)
        chat.gate.set()  # the first goes out; the chain comes to the taken one
        await until(lambda: bool(store.calls_with("Sent")))
        await anyio.sleep(0.1)  # room for a wrong push of the taken one to start
        after = await store.get_delivery(second.delivery_id)
    assert [message.text for _, message in chat.pushed] == ["0"]
    assert after == taken  # nothing recorded over the other worker's claim
