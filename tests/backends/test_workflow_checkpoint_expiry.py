"""A finished workflow's checkpoint expires once its session idles; one waiting for an
answer does not, and neither does one whose session is in a turn.

A real host serves Invocations on loopback with SQLite; the test moves the host's clock
(``Host(clock=)``) past ``workflow_checkpoint_ttl_seconds`` and waits for the host's own
expiry task, reading the store's file to see what it holds.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from agenthost import Host
from agenthost.backends.state_expiry import IdleStateExpiry, StateExpirySettings
from agenthost.channels.invocations import InvocationsChannel
from agenthost.sansio_core import leases, sessions
from agenthost.sansio_core.sessions import SessionAlias
from agenthost.sansio_core.types import MultitaskStrategy
from agenthost.stores.memory import MemoryStore
from agenthost.stores.sqlite import SQLiteStore
from tests.backends.test_workflow_target import client_for, invoke
from tests.backends.workflow_fixtures import Gate, greeter_factory, tally_factory

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0
TTL = 2.0  # clock seconds; the host then looks every 0.2 s (a tenth of it)


class Clock:
    """The host's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_host(target: Any, tmp_path: Path, clock: Clock) -> Host:
    return Host(
        target,
        channels=[InvocationsChannel()],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        clock=clock,
        workflow_checkpoint_ttl_seconds=TTL,
    )


def stored_workflow(tmp_path: Path, session_key: str) -> dict[str, Any] | None:
    """The ``workflow`` entry of the Invocations session ``session_key`` as stored."""
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as conn:
        row = conn.execute(
            "SELECT state FROM sessions WHERE qualifier = ?", (f"invocations:key:{session_key}",)
        ).fetchone()
    assert row is not None, f"no session {session_key!r}"
    state = json.loads(row[0]) if row[0] is not None else {}
    workflow: dict[str, Any] | None = state.get("workflow")
    return workflow


async def expired(tmp_path: Path, session_key: str) -> None:
    """Wait (bounded) until the host's expiry task has dropped the session's checkpoint."""
    with anyio.fail_after(10):
        while stored_workflow(tmp_path, session_key) is not None:
            await anyio.sleep(0.05)


async def test_a_finished_checkpoint_expires_and_a_question_waits(tmp_path: Path) -> None:
    clock = Clock()
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(greeter_factory, tmp_path, clock)) as client:
            await invoke(client, "the party", "done")
            greeted = await invoke(client, "Ann", "done")
            asked = await invoke(client, "the show", "asking")
            assert greeted["output"] == "Hello Ann (re: the party), greeting #1"
            assert asked["status"] == "input_required"
            finished = stored_workflow(tmp_path, "done")
            assert finished is not None and finished["pending"] == []

            clock.advance(TTL + 1)
            await expired(tmp_path, "done")
            # The pass that dropped one left the question alone, and it is still answered.
            question = stored_workflow(tmp_path, "asking")
            assert question is not None and len(question["pending"]) == 1
            answered = await invoke(client, "Bob", "asking")

            # The expired session's next message starts the workflow afresh: its count
            # starts over (it would say #2 had the checkpoint been kept).
            await invoke(client, "the dinner", "done")
            again = await invoke(client, "Cy", "done")
    assert answered["output"] == "Hello Bob (re: the show), greeting #1"
    assert again["output"] == "Hello Cy (re: the dinner), greeting #1"


async def test_a_session_in_a_turn_keeps_its_checkpoint(tmp_path: Path) -> None:
    clock, gate = Clock(), Gate()
    outcome: dict[str, Any] = {}
    with anyio.fail_after(TIMEOUT):
        async with client_for(make_host(tally_factory(gate), tmp_path, clock)) as client:
            assert (await invoke(client, "a", "busy"))["output"] == "a #1"
            assert (await invoke(client, "b", "idle"))["output"] == "b #1"

            async def held_turn() -> None:
                outcome.update(await invoke(client, "wait", "busy"))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(held_turn)
                while not gate.entered.is_set():  # bounded by fail_after
                    await anyio.sleep(0.01)
                # Both checkpoints are now past the TTL; "busy" is in a turn.
                clock.advance(TTL + 1)
                await expired(tmp_path, "idle")
                busy = stored_workflow(tmp_path, "busy")
                assert busy is not None, "a session in a turn lost its checkpoint"
                gate.opened.set()
    assert outcome["output"] == "wait #2"
    saved = stored_workflow(tmp_path, "busy")
    assert saved is not None and saved["checkpoint_id"] != busy["checkpoint_id"]


# --- the task's passes ------------------------------------------------------------------


async def test_a_pass_is_bounded_and_the_next_one_goes_on() -> None:
    store = MemoryStore()
    for n in range(250):
        session_id = f"s{n:03}"
        await store.create_session(SessionAlias("ik", session_id, session_id, 1, 1.0), 1.0)
        arrive = leases.Arrive(session_id, MultitaskStrategy.ENQUEUE, 10.0, 30.0)
        await store.apply_lease_event(session_id, arrive)
        record = await store.load_session(session_id)
        assert record is not None
        marked = sessions.after_successful_run(record, {"x": 1}, 10.0, expires_when_idle=True)
        assert await store.finish_run(session_id, session_id, marked, 10.0)
    settings = StateExpirySettings(ttl_seconds=5.0, batch_size=100, max_batches=2)
    expiry = IdleStateExpiry(store=store, clock=lambda: 15.0, settings=settings)
    assert await expiry.sweep() == 200  # two batches, then it stops for this pass
    assert await expiry.sweep() == 50
    assert await expiry.sweep() == 0


def test_the_interval_is_a_tenth_of_the_ttl_within_bounds() -> None:
    assert StateExpirySettings.for_ttl(7 * 24 * 3600.0).interval_seconds == 600.0
    assert StateExpirySettings.for_ttl(60.0).interval_seconds == 6.0
    assert StateExpirySettings.for_ttl(0.5).interval_seconds == 0.2
