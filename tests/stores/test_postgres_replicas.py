"""What the PostgreSQL store guarantees across replicas: several ``PostgresStore`` objects
(each its own connections, as separate processes would have) on one database schema.

The process-level tests (``tests/replicas``) show the same through real ``agenthost serve``
processes; these pin each guarantee down at the store, where a race is easy to provoke.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import attrs
import psycopg
import pytest

from agenthost.sansio_core import leases, link_codes, opening
from agenthost.sansio_core.delivery import DeliveryStatus
from agenthost.sansio_core.linking import LinkReason, LinkResult
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores import postgres_queries as q
from agenthost.stores.base import ChannelRecord
from agenthost.stores.postgres import PostgresStore
from tests.postgres_fixture import postgres_schema
from tests.stores.test_delivery_contract import make_delivery
from tests.stores.test_idle_state_contract import CHECKPOINT, IDLE_TTL, save, state_of
from tests.stores.test_linking_contract import ALICE, BOB, LIMITS, OPEN, attempt, issue, known
from tests.stores.test_store_contract import REJECT, opening_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def replicas(anyio_backend: str) -> AsyncIterator[list[PostgresStore]]:
    with postgres_schema() as (dsn, schema):
        made = [PostgresStore(dsn, schema=schema, pool_size=2) for _ in range(3)]
        for replica in made:
            await replica.open()
        try:
            yield made
        finally:
            for replica in made:
                await replica.close()


async def test_one_holder_of_a_singleton_and_takeover_after_expiry(
    replicas: list[PostgresStore],
) -> None:
    a, b, c = replicas
    assert await a.acquire_singleton("telegram:1", "a", now=100.0, ttl=5.0)
    assert not await b.acquire_singleton("telegram:1", "b", now=101.0, ttl=5.0)
    assert await a.acquire_singleton("telegram:1", "a", now=104.0, ttl=5.0)  # renewed
    assert not await c.acquire_singleton("telegram:1", "c", now=108.0, ttl=5.0)
    assert await b.acquire_singleton("telegram:1", "b", now=109.5, ttl=5.0)  # a died
    assert not await a.acquire_singleton("telegram:1", "a", now=110.0, ttl=5.0)  # a is out
    await a.release_singleton("telegram:1", "a")  # not a's: nothing happens
    assert not await c.acquire_singleton("telegram:1", "c", now=111.0, ttl=5.0)
    await b.release_singleton("telegram:1", "b")
    assert await c.acquire_singleton("telegram:1", "c", now=111.0, ttl=5.0)


async def test_contenders_on_every_replica_elect_exactly_one(
    replicas: list[PostgresStore],
) -> None:
    winners: list[str] = []

    async def contend(n: int) -> None:
        if await replicas[n % 3].acquire_singleton("poller", f"h{n}", now=1.0, ttl=10.0):
            winners.append(f"h{n}")

    async with anyio.create_task_group() as tasks:
        for n in range(12):
            tasks.start_soon(contend, n)
    assert len(winners) == 1


async def test_turns_arriving_on_every_replica_get_one_lease(
    replicas: list[PostgresStore],
) -> None:
    await replicas[0].open_turn(opening_for(ALICE, "r0"))
    await replicas[0].finish_run("s_r0", "r0", None, 11.0)
    answers: list[opening.Outcome] = []

    async def arrive(n: int) -> None:
        plan = opening_for(ALICE, f"r{n + 1}", now=12.0, strategy=REJECT)
        answers.append(await replicas[n % 3].open_turn(plan))

    async with anyio.create_task_group() as tasks:
        for n in range(9):
            tasks.start_soon(arrive, n)
    decisions = [a.lease for a in answers if isinstance(a, opening.Opened)]
    assert sum(isinstance(d, leases.Granted) for d in decisions) == 1
    assert sum(isinstance(d, leases.Rejected) for d in decisions) == 8


async def test_a_replica_whose_lease_expired_cannot_save(replicas: list[PostgresStore]) -> None:
    a, b, _ = replicas
    first = await a.open_turn(opening_for(ALICE, "r1", now=10.0))
    assert isinstance(first, opening.Opened) and first.session is not None
    # r1's replica stalls past its lease; another replica's turn takes the session over.
    second = await b.open_turn(opening_for(ALICE, "r2", now=10.0 + 3600))
    assert isinstance(second, opening.Opened) and isinstance(second.lease, leases.Granted)
    stale = attrs.evolve(first.session, state={"history": ["from the stalled replica"]})
    assert not await a.finish_run("s_r1", "r1", stale, 10.0 + 3601)
    saved = await b.load_session("s_r1")
    assert saved is not None and saved.state is None


async def test_a_code_raced_on_every_replica_links_once(replicas: list[PostgresStore]) -> None:
    completers = [ChannelIdentity("chat", f"user-{n}") for n in range(9)]
    await known(replicas[0], ALICE, *completers)
    code = await issue(replicas[0], ALICE)
    results: list[LinkResult] = []

    async def complete(n: int) -> None:
        results.append(await attempt(replicas[n % 3], completers[n], code))

    async with anyio.create_task_group() as tasks:
        for n in range(len(completers)):
            tasks.start_soon(complete, n)
    assert sorted(r.reason.value for r in results) == ["code_used"] * 8 + ["linked"]


async def test_guesses_spread_over_replicas_meet_one_attempt_limit(
    replicas: list[PostgresStore],
) -> None:
    await known(replicas[0], BOB)
    results: list[LinkResult] = []

    async def guess(n: int) -> None:
        results.append(
            await replicas[n % 3].attempt_link_code(
                BOB, f"ZZ{n:02d}", "ZZZZZZZZ", now=20.0, limits=LIMITS, rules=OPEN
            )
        )

    async with anyio.create_task_group() as tasks:
        for n in range(12):
            tasks.start_soon(guess, n)
    limit = LIMITS.per_identity.max_failures
    refused = [r for r in results if r.reason is LinkReason.RATE_LIMITED]
    assert len(refused) == 12 - limit
    counter = await replicas[2].get_attempt_counter(link_codes.identity_scope(BOB))
    assert counter.is_locked(20.0)


async def test_replicas_claiming_the_outbox_never_claim_one_delivery_twice(
    replicas: list[PostgresStore],
) -> None:
    await replicas[0].schedule_deliveries([make_delivery(f"d{n:03d}") for n in range(60)])
    claimed: list[str] = []

    async def claim(replica: PostgresStore, owner: str) -> None:
        for _ in range(20):
            got = await replica.claim_due_deliveries(owner, 50.0, 30.0, limit=4)
            claimed.extend(d.delivery_id for d in got)

    async with anyio.create_task_group() as tasks:
        for n, replica in enumerate(replicas):
            tasks.start_soon(claim, replica, f"host_{n}")
    assert sorted(claimed) == [f"d{n:03d}" for n in range(60)]
    sending = await replicas[1].list_deliveries([DeliveryStatus.SENDING], limit=100)
    assert len({d.owner for d in sending}) > 1


async def test_deliveries_scheduled_on_one_replica_wake_the_others(
    replicas: list[PostgresStore],
) -> None:
    a, b, c = replicas
    woken = {"b": anyio.Event(), "c": anyio.Event()}
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(b.watch_deliveries, woken["b"].set)
        tasks.start_soon(c.watch_deliveries, woken["c"].set)
        await anyio.sleep(0.5)
        assert not woken["b"].is_set() and not woken["c"].is_set()  # nothing happened yet
        # Scheduled again until both heard (a listener still connecting misses a notice).
        with anyio.fail_after(10):
            for n in range(1000):
                await a.schedule_deliveries([make_delivery(f"d{n}")])
                with anyio.move_on_after(0.3):
                    await woken["b"].wait()
                    await woken["c"].wait()
                if woken["b"].is_set() and woken["c"].is_set():
                    break
        tasks.cancel_scope.cancel()


async def test_the_store_reconnects_after_the_server_dropped_its_connections(
    replicas: list[PostgresStore],
) -> None:
    import psycopg

    from agenthost.stores.postgres_writer import APPLICATION

    store = replicas[0]
    await store.put_channel_records([make_channel_record("before")])
    with psycopg.connect(replicas[0].dsn, autocommit=True) as admin:
        dropped = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (APPLICATION,),
        ).fetchone()
    assert dropped is not None and dropped[0] >= 1
    # Every lane finds its connection dead at its next batch and opens another.
    for n in range(8):
        await store.put_channel_records([make_channel_record(f"after-{n}")])
    keys = [r.key for r in await store.list_channel_records("test", "marks")]
    assert keys == [f"after-{n}" for n in range(8)] + ["before"]


def make_channel_record(key: str) -> ChannelRecord:
    return ChannelRecord("test", "marks", key, {"k": key})


async def test_an_idle_state_sweep_skips_a_session_another_replica_is_changing(
    replicas: list[PostgresStore],
) -> None:
    a, b, _ = replicas
    for session_id in ("s1", "s2"):
        await save(a, session_id, at=10.0)
    # Another replica is inside a turn's transaction on s1 (opening or finishing it): it
    # holds s1's lease lock, taken the way the store takes it.
    options = f"-c search_path={a.schema}"
    with psycopg.connect(a.dsn, autocommit=True, options=options) as other, other.transaction():
        q.lock_lease(other, "s1")
        assert await b.expire_idle_states(10.0 + IDLE_TTL, IDLE_TTL, 10) == 1  # s2 only
        assert await state_of(b, "s1") == CHECKPOINT
        assert await state_of(b, "s2") is None
    assert await b.expire_idle_states(10.0 + IDLE_TTL, IDLE_TTL, 10) == 1  # s1, now free
    assert await state_of(a, "s1") is None
