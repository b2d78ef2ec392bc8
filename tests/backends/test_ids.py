"""The ids the host mints are in minting order (so a store's indexes take new rows at their
end) and as unguessable as before."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agenthost import HostMessage
from agenthost.backends.ids import ordered_hex
from agenthost.channels.invocations import InvocationsChannel
from tests.channels.responses.conftest import TIMEOUT, make_host, sdk_client, serving

HEX_44 = re.compile(r"[0-9a-f]{44}")
MINTED = 6  # ids minted one after another: random ids come out sorted once in 720 runs
APART = 0.003  # seconds between two mints: more than the millisecond the ids resolve

# From 1970 to the year 10889: 12 hex digits of milliseconds.
instants = st.floats(min_value=0, max_value=(16**12 - 1) / 1000, allow_nan=False)


@given(instants, instants)
def test_ids_sort_as_their_instants_do(first: float, second: float) -> None:
    earlier, later = ordered_hex(first), ordered_hex(second)
    assert HEX_44.fullmatch(earlier) and HEX_44.fullmatch(later)
    if int(first * 1000) < int(second * 1000):
        assert earlier < later
    elif int(first * 1000) > int(second * 1000):
        assert earlier > later


def test_ids_of_one_instant_differ_in_128_random_bits() -> None:
    minted = {ordered_hex(1_800_000_000.0) for _ in range(1000)}
    assert len(minted) == 1000
    assert {identifier[:12] for identifier in minted} == {f"{1_800_000_000_000:012x}"}
    # Every bit of the random part varies across a thousand ids.
    varied = 0
    for identifier in minted:
        varied |= int(identifier[12:], 16) ^ int(next(iter(minted))[12:], 16)
    assert varied == 2**128 - 1


async def echo(messages: list[HostMessage]) -> str:
    return f"echo: {messages[-1].text}"


@pytest.mark.anyio
async def test_responses_and_sessions_are_minted_in_order(tmp_path: Path) -> None:
    host = make_host(echo, tmp_path)
    response_ids = []
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url) as client:
            for n in range(MINTED):
                response = await client.responses.create(model="demo", input=f"hello {n}")
                response_ids.append(response.id)
                await anyio.sleep(APART)
    assert response_ids == sorted(response_ids)
    with sqlite3.connect(tmp_path / "state.db") as db:
        session_ids = [row[0] for row in db.execute("SELECT session_id FROM sessions")]
        by_creation = db.execute("SELECT session_id FROM sessions ORDER BY rowid").fetchall()
    assert len(session_ids) == MINTED
    assert [row[0] for row in by_creation] == sorted(session_ids)


@pytest.mark.anyio
async def test_new_invocation_sessions_are_minted_in_order(tmp_path: Path) -> None:
    host = make_host(echo, tmp_path, channels=[InvocationsChannel()])
    session_ids = []
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, httpx.AsyncClient(base_url=base_url) as http:
            for n in range(MINTED):
                answer = await http.post("/invocations/invoke", json={"input": f"hello {n}"})
                assert answer.status_code == 200, answer.text
                session_ids.append(answer.json()["session_id"])
                await anyio.sleep(APART)
    assert session_ids == sorted(session_ids)
