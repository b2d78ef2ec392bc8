"""A turn whose new session only it can name (``opening`` rule 5) opens on a read: on the
PostgreSQL store that read takes no lock and runs outside a transaction, so it goes on
while another replica holds the identity's lock, where the locking opening would wait."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from agenthost.sansio_core import opening
from agenthost.stores.postgres import PostgresStore
from tests.postgres_fixture import postgres_schema
from tests.stores.test_store_contract import (
    ALICE,
    known,
    opened_privately_and_saved,
    private_fork_for,
)

pytestmark = pytest.mark.anyio


async def test_a_private_opening_reads_while_another_replica_holds_the_identity_lock() -> None:
    with postgres_schema() as (dsn, schema):
        store = PostgresStore(dsn, schema=schema)
        await store.open()
        other = psycopg.connect(dsn, autocommit=True)
        try:
            await known(store, ALICE)
            other.execute("BEGIN")
            # The lock the locking path takes first (postgres_queries.lock_identity).
            name = "\x1f".join(("identity", ALICE.channel, ALICE.native_id))
            other.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))
            outcome: list[opening.Outcome] = []

            async def open_private() -> None:
                outcome.append(await store.open_turn(private_fork_for(ALICE, "r1", "resp_1")))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(open_private)
                with anyio.move_on_after(2.0):
                    while not outcome:
                        await anyio.sleep(0.01)
                opened_while_locked = bool(outcome)
                other.execute("ROLLBACK")  # a locking opening would wait until now
            assert opened_while_locked
            [opened] = outcome
            await opened_privately_and_saved(store, opened)
        finally:
            other.close()
            await store.close()
