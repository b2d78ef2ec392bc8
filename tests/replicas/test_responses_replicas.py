"""The Responses channel's conversations on two hosts sharing one PostgreSQL database: items
appended through both at once are all kept, each under its own number, in one order.

(The append is a store-level change of the conversation's counter: before, striped locks
inside one process left two replicas free to read the same counter and overwrite each
other's items.) Uses the official ``openai`` client, as users do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from agenthost import Host, HostMessage
from agenthost.channels.responses import ResponsesChannel
from agenthost.stores.postgres import PostgresStore
from tests.channels.responses.conftest import sdk_client
from tests.postgres_fixture import postgres_schema
from tests.served import served

pytestmark = pytest.mark.anyio


async def answer(messages: list[HostMessage]) -> str:
    return "noted"


@asynccontextmanager
async def two_replicas(tmp_path: Path) -> AsyncIterator[list[str]]:
    with postgres_schema() as (dsn, schema):
        async with AsyncExitStack() as stack:
            urls = []
            for n in range(2):
                host = Host(
                    answer,
                    channels=[ResponsesChannel()],
                    store=PostgresStore(dsn, schema=schema, pool_size=2),
                    state_dir=tmp_path / f"r{n}",
                )
                urls.append(await stack.enter_async_context(served(host.app)))
            yield urls


async def test_items_added_through_two_replicas_at_once_are_all_kept(tmp_path: Path) -> None:
    async with two_replicas(tmp_path) as urls:
        clients = [sdk_client(url) for url in urls]
        conversation = await clients[0].conversations.create()

        async def add(n: int) -> None:
            await clients[n % 2].conversations.items.create(
                conversation.id,
                items=[{"type": "message", "role": "user", "content": f"note {n}"}],
            )

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                for n in range(24):
                    tasks.start_soon(add, n)
        listed = await clients[1].conversations.items.list(conversation.id, limit=100)
        for client in clients:
            await client.close()
    texts = sorted(item.content[0].text for item in listed.data)  # type: ignore[union-attr]
    assert texts == sorted(f"note {n}" for n in range(24))
    assert len({item.id for item in listed.data}) == 24
