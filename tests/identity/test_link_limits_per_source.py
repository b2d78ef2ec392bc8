"""Failed link codes are limited per source as well as per identity, so a client that
mints a new caller per attempt (a fresh bearer key each time) is stopped, and cannot trip
the host-wide breaker that would stop linking for everybody."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from agenthost import Host, HostMessage, OneTimeCodeLinker
from agenthost.channels.responses import ResponsesChannel
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.wire_fuzz import LINK_CODE

pytestmark = pytest.mark.anyio

WRONG = "ABCD-EFGH-JKMN"


async def echo(messages: list[HostMessage]) -> str:
    return messages[-1].text


def reply_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return "".join(
        part["text"] for item in body["output"] if item["type"] == "message"
        for part in item["content"]
    )  # fmt: skip


async def say(client: httpx.AsyncClient, key: str, text: str) -> str:
    answer = await client.post(
        "/responses/v1/responses",
        json={"input": text},
        headers={"authorization": f"Bearer {key}"},
    )
    return reply_text(answer)


async def test_rotating_keys_from_one_source_is_stopped_and_others_still_link(
    tmp_path: Path,
) -> None:
    host = Host(
        echo,
        channels=[ResponsesChannel()],  # no api_keys: every bearer key is its own caller
        linker=OneTimeCodeLinker(),
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
    )

    def client_from(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=host.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://agenthost")

    with anyio.fail_after(60):
        async with (
            host.running(),
            client_from("203.0.113.66") as attacker,
            client_from("198.51.100.7") as ada,
        ):
            issued = LINK_CODE.search(await say(ada, "ada-phone", "/link"))
            assert issued is not None

            answers = [await say(attacker, f"key-{n}", f"/link {WRONG}") for n in range(110)]
            assert "not valid" in answers[0]
            assert all("Too many" in answer for answer in answers[25:])

            # The attacker's own source stays locked, even with the right code...
            assert "Too many" in await say(attacker, "key-fresh", f"/link {issued.group()}")
            # ...while everybody else still links.
            linked = await say(ada, "ada-laptop", f"/link {issued.group()}")
            assert linked.startswith("Linked"), linked
