"""SQLite store writes per second, on a temporary file, under anyio's asyncio backend.

Each row is one kind of write transaction as a turn performs it, awaited one at a time (a
single request's view; concurrent requests share the store's one worker thread):

- ``issue_isolation_key`` for an identity never seen before;
- ``create_session`` for a new alias;
- a lease cycle on an existing session: ``Arrive`` (granted, the session loaded in the same
  transaction), then ``finish_run`` saving the session and releasing the lease — the two
  transactions every stateful turn commits.

The file uses the store's own settings (WAL, ``synchronous=NORMAL``), so a commit is not an
fsync; the numbers say what the store costs, not what the disk can do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

from agenthost.sansio_core import leases, sessions
from agenthost.sansio_core.types import ChannelIdentity, MultitaskStrategy
from agenthost.stores.base import Store
from benchmarks.report import BenchmarkPending, Row
from benchmarks.timing import time_async_calls

BUDGET_SECONDS = 1.0  # per row; three rows
LEASE_TTL = 30.0


def run() -> list[Row]:
    try:
        from agenthost.stores.sqlite import SQLiteStore
    except ImportError as missing:
        raise BenchmarkPending(f"agenthost.stores.sqlite is not importable ({missing})") from None

    with tempfile.TemporaryDirectory(prefix="agenthost-bench-") as directory:
        store = SQLiteStore(Path(directory) / "state.db")
        return anyio.run(_measure, store, backend="asyncio")


async def _measure(store: Store) -> list[Row]:
    await store.open()
    try:
        return await _rows(store)
    finally:
        await store.close()


async def _rows(store: Store) -> list[Row]:
    clock = _Clock()

    async def issue_key(i: int) -> None:
        identity = ChannelIdentity("telegram", f"user-{i}")
        await store.issue_isolation_key(identity, f"ik_{i}", clock.tick())

    session_ids: list[str] = []

    async def create_session(i: int) -> None:
        alias = sessions.SessionAlias(
            f"ik_{i}", sessions.DIRECT, f"s_{i}", generation=1, created_at=clock.tick()
        )
        won = await store.create_session(alias, alias.created_at)
        session_ids.append(won.session_id)

    async def lease_cycle(i: int) -> None:
        session_id = session_ids[i % len(session_ids)]
        run_id = f"run-{i}"
        now = clock.tick()
        arrive = leases.Arrive(run_id, MultitaskStrategy.ENQUEUE, now, LEASE_TTL)
        answer = await store.apply_lease_event(session_id, arrive)
        if not isinstance(answer.decision, leases.Granted) or answer.session is None:
            raise AssertionError(f"expected a free session {session_id}, got {answer!r}")
        saved = sessions.after_successful_run(answer.session, {"turn": i}, now)
        if not await store.finish_run(session_id, run_id, saved, now):
            raise AssertionError(f"finish_run did not save session {session_id}")

    return [
        await time_async_calls(
            "sqlite issue_isolation_key (new)", issue_key, budget=BUDGET_SECONDS
        ),
        await time_async_calls("sqlite create_session", create_session, budget=BUDGET_SECONDS),
        await time_async_calls(
            "sqlite Arrive + finish_run (save)",
            lease_cycle,
            budget=BUDGET_SECONDS,
            extra={"tx/op": "2"},
        ),
    ]


class _Clock:
    """Event time for the store: strictly increasing, unrelated to the wall clock."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def tick(self) -> float:
        self.now += 0.001
        return self.now
