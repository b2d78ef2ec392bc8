"""The delivery worker's store traffic (issue 9): the steps of sends that finish together
commit in one store call, one call renews the lease of every send in flight, a send whose
renewal is refused (the delivery is another worker's now) stops quietly, and due work is
asked for when some may be due, not each time a send finishes."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from agenthost import ChannelIdentity, ChannelRequest, Host, HostMessage
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import Delivery, DeliveryEvent, DeliveryStatus, RetryPolicy
from agenthost.sansio_core.routing import Destination
from agenthost.stores.base import DeliveryStepAnswer
from agenthost.stores.memory import MemoryStore
from tests.delivery.receiver import PushChat

pytestmark = pytest.mark.anyio


async def answer(messages: list[HostMessage]) -> str:
    return "unused"


class GatedChat(PushChat):
    """Every push waits at one gate the test opens, then succeeds."""

    push_is_idempotent = True

    def __init__(self, name: str = "chat") -> None:
        super().__init__(name)
        self.gate = anyio.Event()
        self.cancelled = 0

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        self.pushed.append((destination, message))
        try:
            await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        return PushOutcome.ok()


class StepCountingStore(MemoryStore):
    """The memory store, noting the kinds of delivery steps each call asked it to record."""

    def __init__(self) -> None:
        super().__init__()
        self.step_calls: list[list[str]] = []
        self.claims = 0
        self.due_reads = 0

    async def claim_due_deliveries(
        self, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        self.claims += 1
        return await super().claim_due_deliveries(owner, now, lease_seconds, limit)

    async def next_delivery_due(self) -> float | None:
        self.due_reads += 1
        return await super().next_delivery_due()

    async def apply_delivery_event(self, delivery_id: str, event: DeliveryEvent) -> Delivery:
        self.step_calls.append([type(event).__name__])
        return await super().apply_delivery_event(delivery_id, event)

    async def apply_delivery_events(
        self, steps: Sequence[tuple[str, DeliveryEvent]]
    ) -> list[DeliveryStepAnswer]:
        self.step_calls.append([type(event).__name__ for _, event in steps])
        return await super().apply_delivery_events(steps)

    def calls_with(self, kind: str) -> list[list[str]]:
        return [call for call in self.step_calls if kind in call]


def due_deliveries(count: int, channel: str = "chat") -> list[Delivery]:
    now = time.time()
    return [
        Delivery(
            delivery_id=f"msg_1:{channel}:user-{i}",
            isolation_key=f"k{i}",
            channel=channel,
            identity=ChannelIdentity(channel, f"user-{i}"),
            conversation_id=None,
            reply={"text": "hello"},
            echo=None,
            created_at=now,
            next_attempt_at=now,
        )
        for i in range(count)
    ]


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)


async def test_sends_that_finish_together_record_their_outcomes_in_one_call(
    tmp_path: Path,
) -> None:
    store, chat = StepCountingStore(), GatedChat()
    await store.schedule_deliveries(due_deliveries(8))
    host = Host(answer, channels=[chat], store=store, state_dir=tmp_path)
    async with host.running():
        await until(lambda: len(chat.pushed) == 8)  # every send began
        chat.gate.set()  # every push answers in the same turn of the event loop
        await until(lambda: sum(map(len, store.calls_with("Sent"))) == 8)
        delivered = await store.list_deliveries([DeliveryStatus.DELIVERED])
    assert len(delivered) == 8
    assert store.calls_with("Sent") == [["Sent"] * 8]  # one transaction for all eight


async def test_one_call_renews_the_lease_of_every_send_in_flight(tmp_path: Path) -> None:
    store, chat = StepCountingStore(), GatedChat()
    await store.schedule_deliveries(due_deliveries(5))
    # A 0.6 s lease is renewed every 0.2 s.
    host = Host(
        answer, channels=[chat], store=store, state_dir=tmp_path, delivery_lease_seconds=0.6
    )
    async with host.running():
        await until(lambda: len(chat.pushed) == 5)  # every send began
        claimed = await store.list_deliveries([DeliveryStatus.SENDING])
        await until(lambda: len(store.calls_with("Renew")) >= 2)  # two renewal rounds
        renewed = await store.list_deliveries([DeliveryStatus.SENDING])
        chat.gate.set()
    assert all(call == ["Renew"] * 5 for call in store.calls_with("Renew"))
    assert len(renewed) == 5
    for before, after in zip(claimed, renewed, strict=True):
        assert after.lease_expires_at > before.lease_expires_at  # type: ignore[operator]


async def test_a_send_whose_delivery_another_worker_took_stops_quietly(tmp_path: Path) -> None:
    store, chat = StepCountingStore(), GatedChat()
    [scheduled] = due_deliveries(1)
    await store.schedule_deliveries([scheduled])
    host = Host(
        answer, channels=[chat], store=store, state_dir=tmp_path, delivery_lease_seconds=0.6
    )
    async with host.running():
        await until(lambda: len(chat.pushed) == 1)  # the send began
        # Another worker, whose clock runs far ahead, finds the lease expired and takes it.
        later = time.time() + 1000
        recovered = await store.apply_delivery_event(
            scheduled.delivery_id, delivery.Recover(later, idempotent_push=True)
        )
        assert recovered.status is DeliveryStatus.SCHEDULED
        [taken] = await store.claim_due_deliveries("another-worker", later, 60.0, 1)
        await until(lambda: chat.cancelled == 1)  # the renewal loop stopped the send
        after = await store.get_delivery(scheduled.delivery_id)
    assert after == taken  # the stopped send recorded nothing over the new owner's claim
    assert store.calls_with("Interrupted") == [] and store.calls_with("Sent") == []


async def test_finished_sends_do_not_each_ask_the_store_for_due_work(tmp_path: Path) -> None:
    store, chat = StepCountingStore(), GatedChat()
    await store.schedule_deliveries(due_deliveries(5))
    host = Host(answer, channels=[chat], store=store, state_dir=tmp_path)
    async with host.running():
        await until(lambda: len(chat.pushed) == 5)
        chat.gate.set()
        await until(lambda: sum(map(len, store.calls_with("Sent"))) == 5)
        await anyio.sleep(0.1)  # a claim per finished send would have been asked by now
        # one claim found all five and fewer than it asked for; one read said none is next
        assert (store.claims, store.due_reads) == (1, 1)
        # work scheduled later is announced, and claimed at once
        alice = ChannelIdentity("chat", "alice")
        hello = ChannelRequest(channel="chat", identity=alice, input=(HostMessage.user("hi"),))
        await host.run(hello)
        key = (await store.load_context(alice, None)).isolation_key
        assert key is not None
        [scheduled] = await host.deliver(isolation_key=key, message="again")
        await until(lambda: len(chat.pushed) == 6)
    assert store.claims == 2 and chat.pushed[-1][1].delivery_id == scheduled.delivery_id


async def test_a_retry_is_claimed_when_it_falls_due_not_at_the_next_sweep(
    tmp_path: Path,
) -> None:
    store, chat = StepCountingStore(), PushChat()
    chat.outcomes.append(PushOutcome.transient("http 503"))
    await store.schedule_deliveries(due_deliveries(1))
    # The default lease sweeps every 5 s; the retry falls due within 0.05 s.
    host = Host(
        answer,
        channels=[chat],
        store=store,
        state_dir=tmp_path,
        delivery_retry=RetryPolicy(base_seconds=0.05),
    )
    async with host.running():
        with anyio.fail_after(2):
            while not await store.list_deliveries([DeliveryStatus.DELIVERED]):
                await anyio.sleep(0.01)
    assert len(chat.pushed) == 2


class StaggeredChat(PushChat):
    """Every push waits at one gate the test opens, then answers a few event-loop turns
    after the one before it: more apart than the recorder's gathering turns, well within
    its gathering time."""

    push_is_idempotent = True

    def __init__(self) -> None:
        super().__init__("chat")
        self.gate = anyio.Event()

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        place = len(self.pushed)
        self.pushed.append((destination, message))
        await self.gate.wait()
        for _ in range(place * 6):
            await anyio.lowlevel.checkpoint()
        return PushOutcome.ok()


async def test_sends_that_finish_a_moment_apart_still_share_their_commits(
    tmp_path: Path,
) -> None:
    # Without the wait for the sends still in flight, each of these Sent steps was its own
    # transaction (a store that writes in no event-loop time never has a write under way).
    store, chat = StepCountingStore(), StaggeredChat()
    await store.schedule_deliveries(due_deliveries(8))
    host = Host(answer, channels=[chat], store=store, state_dir=tmp_path)
    async with host.running():
        await until(lambda: len(chat.pushed) == 8)
        chat.gate.set()
        await until(lambda: sum(map(len, store.calls_with("Sent"))) == 8)
    assert len(await store.list_deliveries([DeliveryStatus.DELIVERED])) == 8
    assert len(store.calls_with("Sent")) < 8


class SlowSentStore(StepCountingStore):
    """Holds every ``Sent`` until the test lets it through."""

    def __init__(self) -> None:
        super().__init__()
        self.let_sent_through = anyio.Event()

    async def apply_delivery_events(
        self, steps: Sequence[tuple[str, DeliveryEvent]]
    ) -> list[DeliveryStepAnswer]:
        if any(isinstance(event, delivery.Sent) for _, event in steps):
            await self.let_sent_through.wait()
        return await super().apply_delivery_events(steps)


async def test_a_send_gives_back_its_place_once_its_push_is_answered(tmp_path: Path) -> None:
    # One send at a time: the second push begins while the first's Sent is still being
    # written, not after it (recording an outcome pushes nothing).
    store, chat = SlowSentStore(), PushChat()
    await store.schedule_deliveries(due_deliveries(2))
    host = Host(
        answer, channels=[chat], store=store, state_dir=tmp_path, max_concurrent_deliveries=1
    )
    async with host.running():
        try:
            await until(lambda: len(chat.pushed) == 2)
            assert store.calls_with("Sent") == []  # neither Sent is committed yet
        finally:
            store.let_sent_through.set()  # else the shutdown would wait for it forever
        await until(lambda: sum(map(len, store.calls_with("Sent"))) == 2)
    assert len(await store.list_deliveries([DeliveryStatus.DELIVERED])) == 2
