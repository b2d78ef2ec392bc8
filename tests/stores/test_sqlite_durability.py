"""What only the SQLite store promises: its file survives restarts, knows its schema version,
migrates forward, refuses what it does not know, and serves hot paths from indexes."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import anyio
import attrs
import pytest

from agenthost.sansio_core import background, leases, opening
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    HostMessage,
    MultitaskStrategy,
    RunStatus,
)
from agenthost.stores import sqlite as sqlite_store
from agenthost.stores.base import SCHEMA_VERSION, StoreSchemaError
from agenthost.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

ALICE = ChannelIdentity("telegram", "111")
DIRECT = ScopeKey(None, "direct")
ENQUEUE = MultitaskStrategy.ENQUEUE


def read_meta_version(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return str(row[0])


def execute(path: Path, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql)


def make_run(token: str) -> background.RunRecord:
    request = ChannelRequest("invocations", ALICE, (HostMessage.user("hi"),), background=True)
    return background.new_run(
        token=token,
        request=request,
        isolation_key="key-alice",
        session_id="s1",
        session_key=None,
        now=100.0,
        max_attempts=3,
    )


async def create_v1_store(path: Path) -> None:
    """A store file at schema version 1, as agenthost wrote it before any migration."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite_store, "SCHEMA_VERSION", 1)
        patch.setattr(sqlite_store, "MIGRATIONS", {})
        store = SQLiteStore(path)
        await store.open()
        await store.issue_isolation_key(ALICE, "key-alice", now=1.0)
        await store.close()


async def test_a_version_1_file_gains_the_singletons_table_and_keeps_its_records(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    await create_v1_store(path)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert read_meta_version(path) == str(SCHEMA_VERSION)
        assert (await store.load_context(ALICE, None)).isolation_key == "key-alice"
        assert await store.acquire_singleton("poller", "a", now=1.0, ttl=5.0)
    finally:
        await store.close()
    # The lease is in the file: another process's store on it sees the holder.
    other = SQLiteStore(path)
    try:
        assert not await other.acquire_singleton("poller", "b", now=2.0, ttl=5.0)
        assert await other.acquire_singleton("poller", "b", now=6.0, ttl=5.0)
    finally:
        await other.close()


async def test_reopening_the_file_keeps_every_record(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SQLiteStore(path)
    await first.open()
    await first.issue_isolation_key(ALICE, "key-alice", now=1.0)
    alias = await first.create_session(SessionAlias("key-alice", "direct", "s1", 1, 2.0), now=2.0)
    await first.apply_lease_event("s1", leases.Arrive("run-1", ENQUEUE, 3.0, 60.0))
    saved = SessionRecord("s1", "key-alice", "direct", 1, 2.0, 4.0, {"messages": ["hi", 2]}, 1)
    assert await first.finish_run("s1", "run-1", saved, now=4.0)
    await first.apply_lease_event("s1", leases.Arrive("run-2", ENQUEUE, 5.0, 60.0))
    await first.apply_lease_event("s1", leases.Arrive("run-3", ENQUEUE, 5.0, 60.0))
    await first.create_run(make_run("t1"))
    run = await first.apply_run_event("t1", background.Start("w1", 101.0, 30.0))
    await first.close()

    second = SQLiteStore(path)
    await second.open()
    try:
        context = await second.load_context(ALICE, DIRECT)
        assert (context.isolation_key, context.alias) == ("key-alice", alias)
        assert await second.load_session("s1") == saved
        assert await second.list_sessions("key-alice") == [saved]
        # The lease kept its holder, its queue and its fencing counter.
        renewed = await second.apply_lease_event("s1", leases.Renew("run-2", 6.0, 60.0))
        assert renewed.decision == leases.Renewed(interrupt_requested=False)
        waiting = await second.apply_lease_event("s1", leases.Poll("run-3", 6.0, 60.0))
        assert waiting.decision == leases.Waiting(position=0)
        assert await second.finish_run("s1", "run-2", None, now=7.0) is False
        granted = await second.apply_lease_event("s1", leases.Poll("run-3", 8.0, 60.0))
        assert granted.decision == leases.Granted(fence=3)
        assert granted.session == saved
        assert await second.get_run("t1") == run
        assert [r.token for r in await second.list_runs([RunStatus.RUNNING])] == ["t1"]
    finally:
        await second.close()


async def test_a_closed_store_can_be_opened_again(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    await store.open()  # idempotent
    await store.issue_isolation_key(ALICE, "key-alice", now=1.0)
    await store.close()
    await store.close()  # idempotent
    await store.open()
    assert (await store.load_context(ALICE, None)).isolation_key == "key-alice"
    await store.close()
    # A method called on a closed store opens it again on its own.
    assert (await store.load_context(ALICE, None)).isolation_key == "key-alice"
    await store.close()


async def test_the_parent_directory_is_created_and_wal_is_on(tmp_path: Path) -> None:
    path = tmp_path / "nested" / ".agenthost" / "state.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        assert path.exists()
        assert read_meta_version(path) == str(SCHEMA_VERSION)
        with contextlib.closing(sqlite3.connect(path)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        await store.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await create_v1_store(path)
    execute(path, "UPDATE meta SET value = '999' WHERE key = 'schema_version'")

    store = SQLiteStore(path)
    with pytest.raises(StoreSchemaError) as raised:
        await store.open()
    message = str(raised.value)
    assert "999" in message
    assert str(path) in message
    assert "upgrade agenthost" in message.lower()
    # Every other entry point refuses it too, and the file is left as it was.
    with pytest.raises(StoreSchemaError, match="999"):
        await store.load_context(ALICE, None)
    assert read_meta_version(path) == "999"
    await store.close()


async def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    execute(path, "CREATE TABLE notes (body TEXT)")
    with pytest.raises(StoreSchemaError, match="not an agenthost store"):
        await SQLiteStore(path).open()


async def test_a_registered_migration_is_applied_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    await create_v1_store(path)
    applied: list[int] = []

    def add_session_titles(conn: sqlite3.Connection) -> None:
        assert conn.in_transaction  # migrations run inside the open transaction
        applied.append(1)
        conn.execute("ALTER TABLE sessions ADD COLUMN title TEXT")

    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", {1: add_session_titles})

    store = SQLiteStore(path)
    await store.open()
    await store.close()
    assert applied == [1]
    assert read_meta_version(path) == "2"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(sessions)")]
    assert "title" in columns

    # The data survived, and a second open does not migrate again.
    again = SQLiteStore(path)
    assert (await again.load_context(ALICE, None)).isolation_key == "key-alice"
    await again.close()
    assert applied == [1]


async def test_migrations_run_in_order_from_version_one_on_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[int] = []

    def step(version: int) -> sqlite_store.Migration:
        def migrate(conn: sqlite3.Connection) -> None:
            applied.append(version)
            conn.execute(f"CREATE TABLE added_by_{version} (x)")

        return migrate

    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", {2: step(2), 1: step(1)})
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    assert applied == [1, 2]
    assert read_meta_version(path) == "3"


async def test_a_missing_migration_is_refused_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    await create_v1_store(path)

    def first_step(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE added_by_1 (x)")

    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", {1: first_step})
    with pytest.raises(StoreSchemaError, match="no migration from version 2") as raised:
        await SQLiteStore(path).open()
    assert "schema version 1" in str(raised.value)
    # Nothing was half-applied: the first step did not run on its own.
    assert read_meta_version(path) == "1"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "added_by_1" not in tables


async def test_a_failing_migration_rolls_the_whole_upgrade_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    await create_v1_store(path)

    def first_step(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE added_by_1 (x)")

    def broken_step(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE no_such_table ADD COLUMN y")

    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", {1: first_step, 2: broken_step})
    with pytest.raises(StoreSchemaError, match="from schema version 2 to 3") as raised:
        await SQLiteStore(path).open()
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert read_meta_version(path) == "1"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "added_by_1" not in tables

    # Once the migration is fixed the same file upgrades.
    monkeypatch.setitem(sqlite_store.MIGRATIONS, 2, lambda conn: None)
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    assert read_meta_version(path) == "3"


async def test_a_version_one_file_learns_which_states_expire_and_keeps_its_sessions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    await create_v1_store(path)
    execute(
        path,
        "INSERT INTO sessions (session_id, owner, qualifier, generation, created_at, updated_at,"
        " turns, state) VALUES ('s1', 'key-alice', 'direct', 1, 1.0, 2.0, 1, '{\"workflow\": {}}')",
    )
    store = SQLiteStore(path)
    await store.open()
    try:
        assert read_meta_version(path) == str(SCHEMA_VERSION)
        record = await store.load_session("s1")
        assert record == SessionRecord(
            "s1", "key-alice", "direct", 1, 1.0, 2.0, {"workflow": {}}, 1
        )
        assert not record.state_expires_when_idle
        # Saved before the upgrade, so not marked: kept until a turn saves it again.
        assert await store.expire_idle_states(1e9, 1.0, 10) == 0
        assert (await store.load_session("s1")) == record
    finally:
        await store.close()


async def test_hot_paths_are_single_indexed_queries(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    conn = store._conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        await store.load_context(ALICE, DIRECT)
        control = ("BEGIN", "SAVEPOINT", "RELEASE", "COMMIT", "PRAGMA")  # the batch's own
        assert len([s for s in statements if not s.startswith(control)]) == 1  # one query
        await store.load_context(ALICE, ScopeKey("conversation:telegram:1", "shared"))
        await store.load_alias(ScopeKey("key-alice", "direct"))
        await store.load_session("s1")
        await store.list_sessions("key-alice")
        await store.get_run("t1")
        await store.list_runs([RunStatus.QUEUED, RunStatus.RUNNING])
        await store.delete_expired_runs(now=1.0)
        await store.expire_idle_states(now=1.0, ttl=1.0, limit=10)
        await store.apply_lease_event("s1", leases.Arrive("run-1", ENQUEUE, 0.0, 30.0))
    finally:
        conn.set_trace_callback(None)
    queries = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "DELETE"))]
    assert len(queries) >= 10
    for query in queries:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}")]
        scans = [step for step in plan if step.startswith("SCAN")]
        assert not scans, f"{query.strip()} scans: {plan}"
    await store.close()


async def test_two_stores_on_one_file_grant_one_lease(tmp_path: Path) -> None:
    # Two replicas (two connections) on one file: BEGIN IMMEDIATE keeps the lease exclusive.
    path = tmp_path / "state.db"
    stores = [SQLiteStore(path), SQLiteStore(path)]
    for store in stores:
        await store.open()
    decisions: list[leases.LeaseDecision] = []

    async def come(n: int) -> None:
        event = leases.Arrive(f"run-{n}", ENQUEUE, 1.0, 30.0)
        decisions.append((await stores[n % 2].apply_lease_event("s1", event)).decision)

    try:
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(come, n)
    finally:
        for store in stores:
            await store.close()
    assert sum(isinstance(d, leases.Granted) for d in decisions) == 1
    positions = sorted(d.position for d in decisions if isinstance(d, leases.Waiting))
    assert positions == list(range(19))


async def test_a_saved_session_and_its_lease_are_updated_in_place(tmp_path: Path) -> None:
    # Saved on every turn: an update in place keeps the row (and its index entries) where a
    # delete-and-insert would rewrite them, dirtying more pages for each commit to write.
    store = SQLiteStore(tmp_path / "state.db")
    alias = SessionAlias("key-alice", "direct", "s1", 0, 1.0)
    await store.create_session(alias, now=1.0)
    granted = await store.apply_lease_event("s1", leases.Arrive("run-1", ENQUEUE, 2.0, 30.0))
    assert isinstance(granted.decision, leases.Granted) and granted.session is not None

    def rowids() -> tuple[int, int]:
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            session = conn.execute("SELECT rowid FROM sessions WHERE session_id = 's1'")
            lease = conn.execute("SELECT rowid FROM session_leases WHERE session_id = 's1'")
            return session.fetchone()[0], lease.fetchone()[0]

    before = rowids()
    saved = SessionRecord("s1", "key-alice", "direct", 0, 1.0, 3.0, {"turn": 1}, turns=1)
    assert await store.finish_run("s1", "run-1", saved, now=3.0)
    assert rowids() == before
    assert await store.load_session("s1") == saved
    await store.close()


async def test_a_returning_turn_opens_with_one_indexed_query(tmp_path: Path) -> None:
    from tests.stores.test_store_contract import opening_for

    store = SQLiteStore(tmp_path / "state.db")
    first = await store.open_turn(opening_for(ALICE, "r1"))
    assert isinstance(first, opening.Opened) and first.session is not None
    saved = attrs.evolve(first.session, state={"history": ["hi"]}, turns=1)
    assert await store.finish_run("s_r1", "r1", saved, 11.0)
    conn = store._conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        again = await store.open_turn(opening_for(ALICE, "r2", now=12.0))
    finally:
        conn.set_trace_callback(None)
    assert isinstance(again, opening.Opened) and isinstance(again.lease, leases.Granted)
    assert again.session is not None and again.session.state == {"history": ["hi"]}
    # The identity, alias, lease and session in one statement (the rest are writes).
    queries = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 1, queries
    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {queries[0]}")]
    assert not [step for step in plan if step.startswith("SCAN")], plan
    await store.close()


async def test_a_turn_releases_its_own_grant_without_reading_the_lease_again(
    tmp_path: Path,
) -> None:
    # The lease as the turn's opening wrote it is released by one conditional update.
    from tests.stores.test_store_contract import opening_for

    store = SQLiteStore(tmp_path / "state.db")
    opened = await store.open_turn(opening_for(ALICE, "r1"))
    assert isinstance(opened, opening.Opened) and opened.session is not None
    conn = store._conn
    assert conn is not None
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        saved = attrs.evolve(opened.session, state={"history": ["hi"]}, turns=1)
        assert await store.finish_run("s_r1", "r1", saved, 11.0)
    finally:
        conn.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert reads == [], reads
    again = await store.apply_lease_event("s_r1", leases.Arrive("r2", ENQUEUE, 12.0, 30.0))
    assert isinstance(again.decision, leases.Granted)
    assert again.session is not None and again.session.state == {"history": ["hi"]}
    await store.close()


async def test_a_lease_changed_by_another_connection_is_released_from_what_is_stored(
    tmp_path: Path,
) -> None:
    # The first connection keeps the lease text it wrote at the grant; a run that arrives
    # through a second connection changes the stored lease (it waits). The release must
    # start from what is stored, or the waiter would be dropped and never run.
    from tests.stores.test_store_contract import opening_for

    path = tmp_path / "state.db"
    first, second = SQLiteStore(path), SQLiteStore(path)
    try:
        opened = await first.open_turn(opening_for(ALICE, "r1"))
        assert isinstance(opened, opening.Opened)
        assert isinstance(opened.lease, leases.Granted)
        waiting = await second.apply_lease_event("s_r1", leases.Arrive("r2", ENQUEUE, 2.0, 30.0))
        assert isinstance(waiting.decision, leases.Waiting)
        assert opened.session is not None
        assert await first.finish_run("s_r1", "r1", opened.session, 3.0)
        polled = await second.apply_lease_event("s_r1", leases.Poll("r2", 4.0, 30.0))
        assert isinstance(polled.decision, leases.Granted)
        # and the first connection, asked again, sees r2 holding (no stale kept state)
        late = await first.apply_lease_event("s_r1", leases.Arrive("r3", ENQUEUE, 5.0, 30.0))
        assert isinstance(late.decision, leases.Waiting)
    finally:
        await first.close()
        await second.close()
