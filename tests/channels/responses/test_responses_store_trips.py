"""A Responses create costs two store commits: the one that opens the turn, and the one
that saves the session together with the stored response and its items."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agenthost import HostMessage
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.responses.conftest import TIMEOUT, make_host, sdk_client, serving

pytestmark = pytest.mark.anyio


async def echo(messages: list[HostMessage]) -> str:
    return f"echo: {messages[-1].text}"


async def test_a_create_commits_twice_and_its_response_reads_back(tmp_path: Path) -> None:
    host = make_host(echo, tmp_path)
    assert isinstance(host.store, SQLiteStore)
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url) as client:
            await client.responses.create(model="demo", input="warm up")  # opens the store
            conn = host.store._conn
            assert conn is not None
            statements: list[str] = []
            conn.set_trace_callback(statements.append)
            try:
                first = await client.responses.create(model="demo", input="hello")
            finally:
                conn.set_trace_callback(None)
            again = await client.responses.retrieve(first.id)
            items = await client.responses.input_items.list(first.id)
            chained = await client.responses.create(
                model="demo", input="more", previous_response_id=first.id
            )
    assert statements.count("COMMIT") == 2
    assert first.output_text == again.output_text == "echo: hello"
    assert [item.content[0].text for item in items.data] == ["hello"]  # type: ignore[union-attr]
    assert chained.output_text == "echo: more"


async def test_a_streamed_create_commits_twice_and_its_response_reads_back(
    tmp_path: Path,
) -> None:
    host = make_host(echo, tmp_path)
    assert isinstance(host.store, SQLiteStore)
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url) as client:
            await client.responses.create(model="demo", input="warm up")  # opens the store
            conn = host.store._conn
            assert conn is not None
            statements: list[str] = []
            conn.set_trace_callback(statements.append)
            try:
                stream = await client.responses.create(model="demo", input="hello", stream=True)
                streamed = [event async for event in stream]
            finally:
                conn.set_trace_callback(None)
            # Stored with the turn, before the terminal event: a chain at once finds it.
            kinds = [event.type for event in streamed]
            done = await client.responses.retrieve(streamed[0].response.id)  # type: ignore[union-attr]
            chained = await client.responses.create(
                model="demo", input="more", previous_response_id=done.id
            )
    assert statements.count("COMMIT") == 2
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert done.output_text == "echo: hello"
    assert chained.output_text == "echo: more"
