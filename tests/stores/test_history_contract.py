"""Long session histories, saved a turn at a time, read back as saved: every store (see
``conftest.py``), whatever layout it stores them in."""

from __future__ import annotations

from typing import Any

import pytest

from agenthost.sansio_core import leases, sessions
from agenthost.sansio_core.sessions import SessionAlias, SessionRecord
from agenthost.sansio_core.types import MultitaskStrategy
from agenthost.stores.base import Store

pytestmark = pytest.mark.anyio

ENQUEUE = MultitaskStrategy.ENQUEUE
TTL = 30.0


def message(n: int) -> dict[str, Any]:
    return {
        "role": "user" if n % 2 else "assistant",
        "parts": [{"type": "text", "text": f"m{n} ✓"}],
    }


async def turn(store: Store, session_id: str, at: float, state: dict[str, Any]) -> SessionRecord:
    """One successful turn in ``session_id`` saving ``state``."""
    run_id = f"run-{session_id}-{at}"
    granted = await store.apply_lease_event(session_id, leases.Arrive(run_id, ENQUEUE, at, TTL))
    assert isinstance(granted.decision, leases.Granted) and granted.session is not None
    saved = sessions.after_successful_run(granted.session, state, at, expires_when_idle=False)
    assert await store.finish_run(session_id, run_id, saved, now=at)
    return saved


async def test_a_history_growing_each_turn_reads_back_as_saved(store: Store) -> None:
    await store.create_session(SessionAlias("ik", "direct", "s1", 1, 1.0), now=1.0)
    history: list[dict[str, Any]] = []
    nested: list[dict[str, Any]] = []
    saved = None
    for n in range(90):  # past any store's limit on appended parts
        history = [*history, message(2 * n), message(2 * n + 1)]
        if n % 3 == 0:
            nested = [*nested, message(n)]
        state = {"messages": history, "turn": n, "agent": {"memory": {"messages": nested}}}
        saved = await turn(store, "s1", 2.0 + n, state)
        assert await store.load_session("s1") == saved
    assert saved is not None and await store.list_sessions("ik") == [saved]


async def test_a_history_replaced_or_cut_reads_back_as_the_new_one(store: Store) -> None:
    await store.create_session(SessionAlias("ik", "direct", "s1", 1, 1.0), now=1.0)
    long = [message(n) for n in range(40)]
    await turn(store, "s1", 2.0, {"messages": long})
    await turn(store, "s1", 3.0, {"messages": [*long, message(40)]})
    for at, state in enumerate(
        (
            {"messages": long[:5]},  # cut (a compacted conversation)
            {"messages": [message(99), *long[1:]]},  # an earlier message rewritten
            {"messages": "not a list any more"},
            {"summary": "gone"},
        ),
        start=4,
    ):
        saved = await turn(store, "s1", float(at), state)
        assert await store.load_session("s1") == saved


async def test_a_fork_of_a_long_history_grows_apart_from_its_source(store: Store) -> None:
    await store.create_session(SessionAlias("ik", "direct", "s1", 1, 1.0), now=1.0)
    history = [message(n) for n in range(30)]
    for n in range(3):
        history = [*history, message(100 + n)]
        await turn(store, "s1", 2.0 + n, {"messages": history})
    await store.fork_session("s1", SessionAlias("ik", "fork", "s2", 1, 9.0), now=9.0)
    mine = await turn(store, "s2", 10.0, {"messages": [*history, message(200)]})
    source = await turn(store, "s1", 11.0, {"messages": [*history, message(300)]})
    assert await store.load_session("s2") == mine
    assert await store.load_session("s1") == source
