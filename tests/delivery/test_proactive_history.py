"""``Host.deliver``: a proactive message is pushed and recorded in the user's session, so a
later turn sees it in its history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from agent_framework import Agent

from agenthost import ChannelIdentity, ChannelRequest, Host, HostMessage, ResponseTarget
from agenthost import demo as demo_module
from agenthost.sansio_core.delivery import DeliveryStatus
from agenthost.sansio_core.sessions import DIRECT, ScopeKey
from agenthost.stores.base import Store
from agenthost.stores.memory import MemoryStore
from tests.delivery.receiver import PushChat

pytestmark = pytest.mark.anyio

ALICE = ChannelIdentity("chat", "alice")
REMINDER = "Reminder: standup at 10"


def said(text: str) -> ChannelRequest:
    return ChannelRequest(channel="chat", identity=ALICE, input=(HostMessage.user(text),))


async def delivered(host: Host, count: int) -> None:
    with anyio.fail_after(10):
        while True:
            found = await host.list_deliveries()
            if sum(d.status is DeliveryStatus.DELIVERED for d in found) >= count:
                return
            await anyio.sleep(0.01)


async def key_of(store: Store) -> str:
    key = (await store.load_context(ALICE, None)).isolation_key
    assert key is not None
    return key


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_a_callable_target_sees_a_delivered_message_in_its_history(
    tmp_path: Path, store_kind: str
) -> None:
    seen: list[list[tuple[str, str]]] = []

    async def remembering(messages: list[HostMessage]) -> str:
        seen.append([(m.role, m.text) for m in messages])
        return f"answer to {messages[-1].text}"

    chat = PushChat("chat")
    store = MemoryStore() if store_kind == "memory" else None
    host = Host(remembering, channels=[chat], store=store, state_dir=tmp_path)
    async with host.running():
        await host.run(said("hi"))
        key = await key_of(host.store)
        [scheduled] = await host.deliver(
            isolation_key=key, message=REMINDER, target=ResponseTarget.channel("chat")
        )
        assert scheduled.channel == "chat"
        await delivered(host, 1)
        assert chat.texts() == [REMINDER]
        await host.run(said("what was that?"))
    assert seen[-1] == [
        ("user", "hi"),
        ("assistant", "answer to hi"),
        ("assistant", REMINDER),
        ("user", "what was that?"),
    ]


async def test_a_message_that_cannot_be_delivered_is_not_recorded(tmp_path: Path) -> None:
    seen: list[list[tuple[str, str]]] = []

    async def remembering(messages: list[HostMessage]) -> str:
        seen.append([(m.role, m.text) for m in messages])
        return "ok"

    store = MemoryStore()
    host = Host(remembering, channels=[PushChat("chat")], store=store, state_dir=tmp_path)
    async with host.running():
        key = await store.issue_isolation_key(ALICE, "ik_alice", 0.0)  # known, never seen
        assert await host.deliver(isolation_key=key, message=REMINDER) == []  # nowhere to push
        assert await store.load_alias(ScopeKey(key, DIRECT)) is None  # no session was made
        await host.run(said("hello"))
    # the user never got it, so the target must not think they did
    assert seen == [[("user", "hello")]]


async def test_a_retried_call_with_the_same_key_delivers_once(tmp_path: Path) -> None:
    seen: list[list[tuple[str, str]]] = []

    async def remembering(messages: list[HostMessage]) -> str:
        seen.append([(m.role, m.text) for m in messages])
        return f"answer to {messages[-1].text}"

    chat = PushChat("chat")
    host = Host(remembering, channels=[chat], store=MemoryStore(), state_dir=tmp_path)
    async with host.running():
        await host.run(said("hi"))
        key = await key_of(host.store)
        first = await host.deliver(isolation_key=key, message=REMINDER, idempotency_key="job-7")
        await delivered(host, 1)
        again = await host.deliver(isolation_key=key, message=REMINDER, idempotency_key="job-7")
        other = await host.deliver(isolation_key=key, message="Lunch", idempotency_key="job-8")
        await delivered(host, 2)
        await anyio.sleep(0.1)
        await host.run(said("anything new?"))
    [scheduled] = first
    [stored] = again
    assert stored.delivery_id == scheduled.delivery_id
    assert stored.status is DeliveryStatus.DELIVERED  # what there is now, not a new plan
    assert [d.delivery_id for d in other] != [scheduled.delivery_id]
    assert chat.texts() == [REMINDER, "Lunch"]
    assert seen[-1] == [
        ("user", "hi"),
        ("assistant", "answer to hi"),
        ("assistant", REMINDER),
        ("assistant", "Lunch"),
        ("user", "anything new?"),
    ]


class RecordingModel(demo_module.LocalChatClient):
    """The demo's local model, remembering every conversation it was asked to answer."""

    def _inner_get_response(self, *, messages: Sequence[Any], **kwargs: Any) -> Any:
        SEEN_BY_MODEL.append([(str(m.role), m.text or "") for m in messages])
        return super()._inner_get_response(messages=messages, **kwargs)


SEEN_BY_MODEL: list[list[tuple[str, str]]] = []


async def test_the_demo_agent_sees_a_delivered_message_in_its_history(tmp_path: Path) -> None:
    SEEN_BY_MODEL.clear()
    seen = SEEN_BY_MODEL
    agent = Agent(client=RecordingModel(), tools=[demo_module.add], name="demo")
    chat = PushChat("chat")
    store = MemoryStore()
    host = Host(agent, channels=[chat], store=store, state_dir=tmp_path)
    async with host.running():
        await host.run(said("hi"))
        key = await key_of(store)
        await host.deliver(
            isolation_key=key, message=REMINDER, target=ResponseTarget.channel("chat")
        )
        await delivered(host, 1)
        assert chat.texts() == [REMINDER]

        alias = await store.load_alias(ScopeKey(key, DIRECT))
        assert alias is not None
        record = await store.load_session(alias.session_id)
        assert record is not None and record.state is not None
        assert REMINDER in str(record.state)
        assert record.turns == 2

        await host.run(said("and now?"))
    assert seen[-1] == [
        ("user", "hi"),
        ("assistant", 'You said: "hi" (message 1 of this conversation)'),
        ("assistant", REMINDER),
        ("user", "and now?"),
    ]


async def test_the_message_and_its_pushes_commit_together(tmp_path: Path) -> None:
    """The history save and the deliveries are one transaction: a crash between them could
    otherwise keep the message without its pushes, or the pushes without the message."""
    from agenthost.stores.sqlite import SQLiteStore

    async def echo(messages: list[HostMessage]) -> str:
        return messages[-1].text

    chat = PushChat("chat")
    host = Host(echo, channels=[chat], store=SQLiteStore(tmp_path / "s.db"), state_dir=tmp_path)
    async with host.running():
        await host.run(said("hi"))
        store = host.store
        assert isinstance(store, SQLiteStore) and store._conn is not None
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        try:
            await host.deliver(
                isolation_key=await key_of(store),
                message=REMINDER,
                target=ResponseTarget.channel("chat"),
            )
        finally:
            store._conn.set_trace_callback(None)
        await delivered(host, 1)
    transactions: list[list[str]] = [[]]
    for statement in statements:
        transactions[-1].append(statement)
        if statement == "COMMIT":
            transactions.append([])
    [together] = [t for t in transactions if any("INTO deliveries" in s for s in t)]
    # The session's save: a whole row, or an update of the stored one (session_states).
    assert any("INTO sessions" in s or "UPDATE sessions" in s for s in together)
