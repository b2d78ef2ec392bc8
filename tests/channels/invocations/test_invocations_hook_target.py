"""An Invocations request whose run_hook sends the reply elsewhere is answered 202 + poll URL.

Design §7: for a non-originating target the originating wire answers with the continuation
token; the reply is pushed (here to a signed webhook) and the poll route returns it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

from agenthost import ChannelRequest, Host, ResponseTarget
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.webhook import WebhookChannel
from agenthost.stores.sqlite import SQLiteStore
from tests.delivery.receiver import SECRET, Receiver
from tests.served import served

pytestmark = pytest.mark.anyio


def route_reports(request: ChannelRequest, *, target: Any, protocol_request: Any) -> ChannelRequest:
    text = " ".join(m.text for m in request.input) if isinstance(request.input, tuple) else ""
    if text.startswith("report"):
        return attrs.evolve(request, response_target=ResponseTarget.channel("webhook"))
    return request


async def echo(messages: list[Any]) -> str:
    return f"answer to: {messages[-1].text}"


async def test_a_hook_chosen_target_answers_202_and_pushes(tmp_path: Path) -> None:
    receiver = Receiver()
    with anyio.fail_after(20):
        async with served(receiver.app) as receiver_url:
            host = Host(
                echo,
                channels=[
                    InvocationsChannel(),
                    WebhookChannel(url=f"{receiver_url}/hook/app", secret=SECRET),
                ],
                store=SQLiteStore(tmp_path / "state.db"),
                state_dir=tmp_path,
                run_hook=route_reports,
            )
            async with served(host.app) as url, httpx.AsyncClient(base_url=url) as client:
                plain = await client.post("/invocations/invoke", json={"input": "hello"})
                assert plain.status_code == 200
                assert plain.json()["output"] == "answer to: hello"

                routed = await client.post("/invocations/invoke", json={"input": "report now"})
                assert routed.status_code == 202, routed.text
                poll_url = routed.json()["poll_url"]
                assert routed.headers["location"] == poll_url
                while True:
                    body = (await client.get(poll_url)).json()
                    if body["status"] in ("completed", "failed", "cancelled"):
                        break
                    await anyio.sleep(0.02)
                assert body["status"] == "completed"
                assert body["output"] == "answer to: report now"
                while not receiver.accepted("app"):
                    await anyio.sleep(0.02)
    [pushed] = [r for r in receiver.to("app") if not r.duplicate]
    assert pushed.body["text"] == "answer to: report now"
