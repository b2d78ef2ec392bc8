"""A Responses create costs one read and one write transaction when its response id is first
shown in its reply: the opening reads, and the save creates the session together with the
stored response and its items (``opening`` rule 5). Streamed, the id is shown before the run
ends, so the opening writes the session first: two write transactions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import attrs
import openai
import pytest

from agenthost import Host, HostMessage
from agenthost.stores.base import ChannelRecord
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.responses.conftest import TIMEOUT, make_host, sdk_client, serving

pytestmark = pytest.mark.anyio


async def echo(messages: list[HostMessage]) -> str:
    return f"echo: {messages[-1].text}"


@contextlib.contextmanager
def traced(host: Host) -> Iterator[list[str]]:
    """The SQL statements the host's SQLite store runs inside the block."""
    assert isinstance(host.store, SQLiteStore)
    conn = host.store._conn
    assert conn is not None  # opened by an earlier request
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        conn.set_trace_callback(None)


@contextlib.asynccontextmanager
async def warmed(tmp_path: Path) -> AsyncIterator[tuple[Host, openai.AsyncOpenAI]]:
    """The echo host on SQLite served on loopback, its store opened by a first create, and
    a client: what a traced create needs first."""
    host = make_host(echo, tmp_path)
    assert isinstance(host.store, SQLiteStore)
    async with serving(host) as base_url, sdk_client(base_url) as client:
        await client.responses.create(model="demo", input="warm up")  # opens the store
        yield host, client


async def test_a_create_writes_once_and_its_response_reads_back(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with warmed(tmp_path) as (host, client):
            with traced(host) as statements:
                first = await client.responses.create(model="demo", input="hello")
            again = await client.responses.retrieve(first.id)
            items = await client.responses.input_items.list(first.id)
            chained = await client.responses.create(
                model="demo", input="more", previous_response_id=first.id
            )
    assert statements.count("BEGIN IMMEDIATE") == 1  # the save: the only write
    assert statements.count("BEGIN") == 1  # the opening's read
    assert first.output_text == again.output_text == "echo: hello"
    assert [item.content[0].text for item in items.data] == ["hello"]  # type: ignore[union-attr]
    assert chained.output_text == "echo: more"


async def test_a_streamed_create_writes_twice_and_its_response_reads_back(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with warmed(tmp_path) as (host, client):
            with traced(host) as statements:
                stream = await client.responses.create(model="demo", input="hello", stream=True)
                streamed = [event async for event in stream]
            # Stored with the turn, before the terminal event: a chain at once finds it.
            kinds = [event.type for event in streamed]
            done = await client.responses.retrieve(streamed[0].response.id)  # type: ignore[union-attr]
            chained = await client.responses.create(
                model="demo", input="more", previous_response_id=done.id
            )
    assert statements.count("BEGIN IMMEDIATE") == 2 and statements.count("COMMIT") == 2
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert done.output_text == "echo: hello"
    assert chained.output_text == "echo: more"


async def test_a_run_longer_than_its_lease_in_a_session_not_yet_written_goes_on(
    tmp_path: Path,
) -> None:
    """The session the save creates has no stored lease while the target runs: renewing
    one would find it lost and stop the run. The run goes on and is saved."""

    async def slow(messages: list[HostMessage]) -> str:
        await anyio.sleep(1.0)  # the lease is renewed every 0.2 s meanwhile
        return f"slow: {messages[-1].text}"

    host = make_host(slow, tmp_path, lease_seconds=0.6)
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url) as client:
            first = await client.responses.create(model="demo", input="hello")
            chained = await client.responses.create(
                model="demo", input="more", previous_response_id=first.id
            )
    assert first.output_text == "slow: hello"
    assert chained.output_text == "slow: more"


THREE_ITEMS = [
    {"role": "user", "content": "one"},
    {"role": "assistant", "content": "two"},
    {"role": "user", "content": "three"},
]


def _texts(page: object) -> list[str]:
    return [item.content[0].text for item in page.data]  # type: ignore[attr-defined]


async def test_a_create_keeps_its_input_items_in_its_response_record(tmp_path: Path) -> None:
    # A client that sends the whole conversation each time (no previous_response_id) must
    # not cost a record written per input item: the response's record holds them.
    with anyio.fail_after(TIMEOUT):
        async with warmed(tmp_path) as (host, client):
            with traced(host) as statements:
                created = await client.responses.create(model="demo", input=THREE_ITEMS)  # type: ignore[arg-type]
            listed = await client.responses.input_items.list(created.id, order="asc")
    written = [s for s in statements if s.startswith("INSERT OR REPLACE INTO channel_records")]
    assert len(written) == 1, written  # the response, with its input and output items
    assert _texts(listed) == ["one", "two", "three"]


async def test_input_items_stored_one_record_each_by_an_earlier_version_are_listed(
    tmp_path: Path,
) -> None:
    host = make_host(echo, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url) as client:
            created = await client.responses.create(model="demo", input=THREE_ITEMS)  # type: ignore[arg-type]
            record = await host.store.get_channel_record("responses", "response", created.id)
            assert record is not None and "input_items" in record.value
            # The layout earlier versions wrote: the items under "{response id}:{index:06d}",
            # the response's record without them.
            value = {k: v for k, v in record.value.items() if k != "input_items"}
            old = [
                ChannelRecord(
                    "responses",
                    "input_item",
                    f"{created.id}:{index:06d}",
                    {"item": item},
                    record.owner,
                    record.created_at,
                    record.expires_at,
                )
                for index, item in enumerate(record.value["input_items"])
            ]
            await host.store.put_channel_records([attrs.evolve(record, value=value), *old])
            listed = await client.responses.input_items.list(created.id, order="asc")
            await client.responses.delete(created.id)
            left = await host.store.list_channel_records("responses", "input_item", prefix="")
    assert _texts(listed) == ["one", "two", "three"]
    assert left == []  # deleted with the response


async def test_output_items_resolve_from_their_responses_however_created(
    tmp_path: Path,
) -> None:
    # An output item's id names its response: a reference to it reads that response's
    # record, whether the response was answered at once, streamed or run in the background.
    received: list[str] = []

    async def noting(messages: list[HostMessage]) -> str:
        received.append(" | ".join(m.text for m in messages))
        return f"echo: {messages[-1].text}"

    host = make_host(noting, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url) as client:
            plain = await client.responses.create(model="demo", input="plain")
            stream = await client.responses.create(model="demo", input="streamed", stream=True)
            streamed = [event async for event in stream][-1].response  # type: ignore[union-attr]
            queued = await client.responses.create(model="demo", input="later", background=True)
            background = await client.responses.retrieve(queued.id)
            for _ in range(200):
                if background.status == "completed":
                    break
                await anyio.sleep(0.05)
                background = await client.responses.retrieve(queued.id)
            references = [
                {"type": "item_reference", "id": response.output[0].id}
                for response in (plain, streamed, background)
            ]
            await client.responses.create(model="demo", input=references)  # type: ignore[arg-type]
            items = await host.store.list_channel_records("responses", "item", prefix="")
    assert received[-1] == "echo: plain | echo: streamed | echo: later"
    assert items == []  # no record of their own


async def test_output_items_stored_one_record_each_by_an_earlier_version_resolve(
    tmp_path: Path,
) -> None:
    host = make_host(echo, tmp_path)
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url) as client:
            created = await client.responses.create(model="demo", input="hello")
            record = await host.store.get_channel_record("responses", "response", created.id)
            assert record is not None
            # The layout earlier versions wrote: a random item id, and the item's own record.
            item = {**record.value["response"]["output"][0], "id": "msg_0123456789abcdef"}
            response = {**record.value["response"], "output": [item]}
            old_item = ChannelRecord(
                "responses",
                "item",
                item["id"],
                {"item": item},
                record.owner,
                record.created_at,
                record.expires_at,
            )
            changed = attrs.evolve(record, value={**record.value, "response": response})
            await host.store.put_channel_records([changed, old_item])
            reference = {"type": "item_reference", "id": item["id"]}
            answered = await client.responses.create(model="demo", input=[reference])  # type: ignore[list-item]
            await client.responses.delete(created.id)
            left = await host.store.list_channel_records("responses", "item", prefix="")
    assert answered.output_text == "echo: echo: hello"
    assert left == []  # deleted with the response
