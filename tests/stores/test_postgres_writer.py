"""The PostgreSQL lanes: a batch is one transaction with a savepoint per call; a call's
failure undoes its own writes only; a deadlock or serialization failure runs the call
again (real connections, real errors raised by the server)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import psycopg.errors
import pytest

from agenthost.stores.group_commit import WorkItem
from agenthost.stores.postgres_writer import Conn, Lane, connect
from tests.postgres_fixture import postgres_schema


@pytest.fixture
def lane() -> Any:
    with postgres_schema() as (dsn, schema):
        setup = psycopg.connect(dsn, autocommit=True)
        setup.execute(f'CREATE SCHEMA "{schema}"')
        setup.execute(f'CREATE TABLE "{schema}".marks (name text PRIMARY KEY)')
        setup.close()
        made = Lane(lambda: connect(dsn, schema))
        try:
            yield made
        finally:
            made.close_sync()


def mark(name: str) -> Any:
    def work(conn: Conn) -> str:
        conn.execute("INSERT INTO marks VALUES (%s)", (name,))
        return name

    return work


def marks(lane: Lane) -> list[str]:
    rows = lane.run_alone(lambda conn: conn.execute("SELECT name FROM marks ORDER BY 1").fetchall())
    return [row[0] for row in rows]


def test_a_failing_call_undoes_only_its_own_writes(lane: Lane) -> None:
    def fails(conn: Conn) -> None:
        conn.execute("INSERT INTO marks VALUES ('doomed')")
        raise ValueError("refused")

    batch: list[WorkItem[Conn]] = [WorkItem(mark("a")), WorkItem(fails), WorkItem(mark("b"))]
    lane._run_batch(batch)
    assert [item.finished for item in batch] == [True, True, True]
    assert [item.result for item in batch] == ["a", None, "b"]
    assert isinstance(batch[1].error, ValueError)
    assert marks(lane) == ["a", "b"]


def test_a_constraint_violation_fails_its_call_and_the_batch_commits(lane: Lane) -> None:
    batch: list[WorkItem[Conn]] = [WorkItem(mark("a")), WorkItem(mark("a")), WorkItem(mark("c"))]
    lane._run_batch(batch)
    assert isinstance(batch[1].error, psycopg.errors.UniqueViolation)
    assert marks(lane) == ["a", "c"]


@pytest.mark.parametrize("size", [1, 3], ids=["alone", "in-a-batch"])
def test_a_deadlock_victim_runs_again_and_only_its_last_attempt_counts(
    lane: Lane, size: int
) -> None:
    attempts: list[int] = []

    def loses_once(conn: Conn) -> str:
        attempts.append(len(attempts))
        conn.execute("INSERT INTO marks VALUES (%s)", (f"attempt-{len(attempts)}",))
        if len(attempts) == 1:
            # What PostgreSQL raises in the victim of a deadlock, from the server itself.
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = '40P01'; END $$")
        return "won"

    batch: list[WorkItem[Conn]] = [WorkItem(loses_once)]
    batch += [WorkItem(mark(f"other-{n}")) for n in range(size - 1)]
    lane._run_batch(batch)
    assert batch[0].error is None and batch[0].result == "won"
    assert len(attempts) == 2
    assert marks(lane) == ["attempt-2", *(f"other-{n}" for n in range(size - 1))]


def test_two_batches_that_deadlock_both_commit_every_call() -> None:
    # Batch A writes x then y, batch B y then x, each write its own call: the cycle runs
    # through the first call's lock, which rolling back to the second call's savepoint
    # keeps (that retried into the same deadlock until the retries ran out).
    with postgres_schema() as (dsn, schema):
        setup = psycopg.connect(dsn, autocommit=True)
        setup.execute(f'CREATE SCHEMA "{schema}"')
        setup.execute(f'CREATE TABLE "{schema}".marks (name text PRIMARY KEY)')
        setup.close()
        both_hold_one = threading.Barrier(2, timeout=10)

        def write(name: str, *, then_wait: bool) -> Any:
            waited: list[bool] = []

            def work(conn: Conn) -> str:
                conn.execute("INSERT INTO marks VALUES (%s) ON CONFLICT DO NOTHING", (name,))
                if then_wait and not waited:  # the first attempt only
                    waited.append(True)
                    both_hold_one.wait()
                return name

            return work

        batches: list[list[WorkItem[Conn]]] = [
            [WorkItem(write("x", then_wait=True)), WorkItem(write("y", then_wait=False))],
            [WorkItem(write("y", then_wait=True)), WorkItem(write("x", then_wait=False))],
        ]
        lanes = [Lane(lambda: _fast_deadlocks(connect(dsn, schema))) for _ in batches]
        try:
            threads = [
                threading.Thread(target=lane._run_batch, args=(batch,))
                for lane, batch in zip(lanes, batches, strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert not any(thread.is_alive() for thread in threads)
            assert [[item.error for item in batch] for batch in batches] == [[None] * 2] * 2
            assert [[item.result for item in batch] for batch in batches] == [
                ["x", "y"],
                ["y", "x"],
            ]
            assert marks(lanes[0]) == ["x", "y"]
        finally:
            for lane in lanes:
                lane.close_sync()


def _fast_deadlocks(conn: Conn) -> Conn:
    conn.execute("SET deadlock_timeout = '100ms'")  # the detector looks sooner (default 1 s)
    return conn


def test_locks_taken_inside_queries_are_the_ones_their_writers_take() -> None:
    # open_turn takes the alias's and the lease's locks inside its reads; rotate_session
    # and finish_run take them by name. Both spellings must be one lock, or they would
    # not exclude each other.
    from agenthost.sansio_core.sessions import ScopeKey
    from agenthost.sansio_core.types import ChannelIdentity
    from agenthost.stores import postgres_queries as q
    from agenthost.stores.postgres_schema import migrate

    alice = ChannelIdentity("chat", "alice")
    with postgres_schema() as (dsn, schema):
        with connect(dsn, schema) as setup:
            setup.execute(f'CREATE SCHEMA "{schema}"')
            migrate(setup)
            setup.execute(
                "INSERT INTO identities VALUES ('chat', 'alice', 'k1', 1.0);"
                " INSERT INTO session_aliases VALUES ('k1', 'direct', 's1', 1, 1.0)"
            )
        holder, contender = connect(dsn, schema), connect(dsn, schema)
        try:
            contender.execute("SET lock_timeout = '200ms'")
            cases: list[tuple[Any, Any]] = [
                (
                    lambda c: q.lock_alias(c, "k1", "direct"),
                    lambda c: q.lock_scope_alias(c, alice, ScopeKey(None, "direct")),
                ),
                (
                    lambda c: q.lock_lease(c, "s1"),
                    lambda c: q.load_context(
                        c, alice, ScopeKey(None, "direct"), False, lock_lease=True
                    ),
                ),
            ]
            for by_name, inside_a_query in cases:
                with holder.transaction():
                    by_name(holder)
                    with (
                        pytest.raises(psycopg.errors.LockNotAvailable),
                        contender.transaction(),
                    ):
                        inside_a_query(contender)
        finally:
            holder.close()
            contender.close()


def test_a_call_failing_inside_a_pipeline_undoes_only_its_own_writes(lane: Lane) -> None:
    def fails_pipelined(conn: Conn) -> None:
        with conn.pipeline():
            conn.execute("INSERT INTO marks VALUES ('doomed')")
            conn.execute("SELECT 1 / 0").fetchone()

    batch: list[WorkItem[Conn]] = [
        WorkItem(mark("a")),
        WorkItem(fails_pipelined),
        WorkItem(mark("b")),
    ]
    lane._run_batch(batch)
    assert isinstance(batch[1].error, psycopg.errors.DivisionByZero)
    assert batch[0].error is None and batch[2].error is None
    assert marks(lane) == ["a", "b"]
