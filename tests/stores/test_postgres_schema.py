"""The PostgreSQL store's schema: versioned migrations, ``agenthost migrate``, refusals, and
choosing a store by URL (``--store`` / ``AGENTHOST_STORE``)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import psycopg
import pytest

from agenthost import cli
from agenthost.sansio_core.sessions import SessionRecord
from agenthost.stores import selection
from agenthost.stores.base import SCHEMA_VERSION, StoreError, StoreSchemaError
from agenthost.stores.memory import MemoryStore
from agenthost.stores.sqlite import SQLiteStore
from tests.postgres_fixture import postgres_schema

pytestmark = pytest.mark.anyio


def _version(dsn: str, schema: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f'SELECT value FROM "{schema}".meta WHERE key = %s',
            ("schema_version",),
        ).fetchone()
        assert row is not None
        return str(row[0])


def _execute(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


async def test_migrate_creates_the_schema_once_and_then_reports_it_current(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with postgres_schema() as (dsn, schema):
        url = f"{dsn}?schema={schema}"
        assert await anyio.to_thread.run_sync(cli.migrate_store, url, ".agenthost") == 0
        first = json.loads(capsys.readouterr().out)
        assert (first["from_version"], first["to_version"]) == (0, SCHEMA_VERSION)
        assert first["status"] == "migrated"
        assert _version(dsn, schema) == str(SCHEMA_VERSION)
        assert await anyio.to_thread.run_sync(cli.migrate_store, url, ".agenthost") == 0
        second = json.loads(capsys.readouterr().out)
        assert (second["from_version"], second["status"]) == (SCHEMA_VERSION, "up to date")


async def test_a_newer_schema_is_refused_by_the_store_and_by_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agenthost.stores.postgres import PostgresStore

    # ``serve --store`` hands the URL to Host() through the environment; run in this
    # process, it must not outlive the test (later tests' hosts and subprocesses read it).
    # (setenv, not delenv: only a variable monkeypatch set is taken away again at the end.)
    monkeypatch.setenv(selection.ENVIRONMENT, "memory:")

    with postgres_schema() as (dsn, schema):
        store = PostgresStore(dsn, schema=schema)
        await store.migrate()
        await store.close()
        _execute(dsn, f"UPDATE \"{schema}\".meta SET value = '{SCHEMA_VERSION + 1}'")
        again = PostgresStore(dsn, schema=schema)
        with pytest.raises(StoreSchemaError, match="upgrade agenthost"):
            await again.open()
        await again.close()

        def serve() -> None:
            cli.main(["demo", "--store", f"{dsn}?schema={schema}", "--port", "0"])

        with pytest.raises(SystemExit) as stopped:
            await anyio.to_thread.run_sync(serve)
        assert "upgrade agenthost" in str(stopped.value.code)


async def test_without_auto_migration_an_unmigrated_schema_asks_for_migrate() -> None:
    from agenthost.stores.postgres import PostgresStore

    with postgres_schema() as (dsn, schema):
        _execute(dsn, f'CREATE SCHEMA "{schema}"')
        store = PostgresStore(dsn, schema=schema, auto_migrate=False)
        with pytest.raises(StoreSchemaError, match="agenthost migrate"):
            await store.open()
        await store.close()


async def test_a_schema_holding_other_tables_is_not_taken_over() -> None:
    from agenthost.stores.postgres import PostgresStore

    with postgres_schema() as (dsn, schema):
        _execute(dsn, f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".orders (id int)')
        store = PostgresStore(dsn, schema=schema)
        with pytest.raises(StoreSchemaError, match="no agenthost meta table"):
            await store.open()
        await store.close()


async def test_replicas_starting_together_migrate_the_database_once() -> None:
    from agenthost.stores.postgres import PostgresStore

    with postgres_schema() as (dsn, schema):
        replicas = [PostgresStore(dsn, schema=schema) for _ in range(4)]
        async with anyio.create_task_group() as tg:
            for replica in replicas:
                tg.start_soon(replica.open)
        assert _version(dsn, schema) == str(SCHEMA_VERSION)
        for replica in replicas:
            await replica.close()


async def test_a_version_one_schema_learns_which_states_expire_and_keeps_its_sessions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agenthost.stores import postgres_schema as schema_module
    from agenthost.stores.postgres import PostgresStore

    with postgres_schema() as (dsn, schema):
        with monkeypatch.context() as patch:  # as agenthost made it before any migration
            patch.setattr(schema_module, "SCHEMA_VERSION", 1)
            patch.setattr(schema_module, "MIGRATIONS", {})
            first = PostgresStore(dsn, schema=schema)
            await first.migrate()
            await first.close()
        assert _version(dsn, schema) == "1"
        _execute(
            dsn,
            f'INSERT INTO "{schema}".sessions (session_id, owner, qualifier, generation,'
            " created_at, updated_at, turns, state) VALUES"
            " ('s1', 'ik', 'direct', 1, 1.0, 2.0, 1, '{\"workflow\": {}}')",
        )
        store = PostgresStore(dsn, schema=schema)
        try:
            await store.open()
            assert _version(dsn, schema) == str(SCHEMA_VERSION)
            record = await store.load_session("s1")
            assert record == SessionRecord("s1", "ik", "direct", 1, 1.0, 2.0, {"workflow": {}}, 1)
            assert not record.state_expires_when_idle
            # Saved before the upgrade, so not marked: kept until a turn saves it again.
            assert await store.expire_idle_states(1e9, 1.0, 10) == 0
        finally:
            await store.close()


def test_store_urls_name_each_store(tmp_path: Path) -> None:
    from agenthost.stores.postgres import PostgresStore

    made = selection.store_from_url("postgresql://u:secret@db:5432/app?schema=tenant_a")
    assert isinstance(made, PostgresStore)
    assert (made.dsn, made.schema) == ("postgresql://u:secret@db:5432/app", "tenant_a")
    absolute = selection.store_from_url(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(absolute, SQLiteStore) and absolute.path == tmp_path / "x.db"
    assert isinstance(selection.store_from_url("memory:"), MemoryStore)
    for bad in ("mysql://db/x", "sqlite://", "postgresql://db/x?schema=Robert'); DROP"):
        with pytest.raises(StoreError):
            selection.store_from_url(bad)
    assert selection.describe("postgresql://u:secret@db/app") == "postgresql://u:***@db/app"
    tuned = selection.store_from_url("postgresql://db/app?schema=s&options=-c%20a%3Db")
    assert isinstance(tuned, PostgresStore)
    assert tuned.dsn == "postgresql://db/app?options=-c%20a%3Db"
    sized = selection.store_from_url("postgresql://db/app?pool_size=2&sslmode=require")
    assert isinstance(sized, PostgresStore)
    assert (sized.dsn, sized.pool_size) == ("postgresql://db/app?sslmode=require", 2)
    for bad_size in ("0", "x", "65"):
        with pytest.raises(StoreError, match="pool_size"):
            selection.store_from_url(f"postgresql://db/app?pool_size={bad_size}")


def test_a_host_built_without_a_store_takes_agenthost_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agenthost.backends.host import Host
    from agenthost.channels.invocations import InvocationsChannel

    async def echo(messages: object) -> str:
        return "ok"

    monkeypatch.setenv(selection.ENVIRONMENT, "memory:")
    chosen = Host(echo, channels=[InvocationsChannel()], state_dir=tmp_path)
    assert isinstance(chosen.store, MemoryStore)
    assert selection.made_from(chosen.store) == "memory:"
    own = SQLiteStore(tmp_path / "own.db")
    kept = Host(echo, channels=[InvocationsChannel()], store=own, state_dir=tmp_path)
    assert kept.store is own and selection.made_from(own) is None
    monkeypatch.delenv(selection.ENVIRONMENT)
    default = Host(echo, channels=[InvocationsChannel()], state_dir=tmp_path)
    assert isinstance(default.store, SQLiteStore)


async def test_deliveries_cli_reads_the_outbox_of_a_store_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agenthost.stores.postgres import PostgresStore
    from tests.stores.test_delivery_contract import make_delivery

    with postgres_schema() as (dsn, schema):
        store = PostgresStore(dsn, schema=schema)
        await store.schedule_deliveries(
            [make_delivery("d1", created_at=1.0), make_delivery("d2", created_at=2.0)]
        )
        await store.close()

        def listing() -> None:
            with pytest.raises(SystemExit) as done:
                cli.main(["deliveries", "list", "--store", f"{dsn}?schema={schema}"])
            assert done.value.code == 0

        await anyio.to_thread.run_sync(listing)
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [entry["delivery_id"] for entry in listed] == ["d2", "d1"]  # newest first


def test_options_in_the_url_are_kept_beside_the_stores_own() -> None:
    from agenthost.stores.postgres_writer import connect
    from tests.postgres_fixture import postgres_dsn

    dsn = postgres_dsn()
    separator = "&" if "?" in dsn else "?"
    conn = connect(f"{dsn}{separator}options=-c%20synchronous_commit%3Doff", "some_schema")
    try:
        shown = [
            conn.execute(f"SHOW {name}").fetchone()  # type: ignore[call-overload]
            for name in ("synchronous_commit", "lock_timeout", "search_path")
        ]
    finally:
        conn.close()
    assert shown == [("off",), ("30s",), ("some_schema",)]
