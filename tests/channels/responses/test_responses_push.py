"""A Responses request whose reply goes elsewhere, end to end with the official client.

When a ``run_hook`` sends the reply to a push channel, the Responses wire answers with
a background-shaped response (``queued``, ``background: true``) at once; ``retrieve``
shows it completed once the run is done, and the push channel received the reply. Also:
every ``RefusalReason`` renders as an OpenAI-shaped error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import openai
import pytest

from agenthost import ChannelIdentity, ChannelRequest, HostMessage, ResponseTarget
from agenthost.channels.responses import ResponsesChannel
from agenthost.channels.responses.codec import CreateRequest
from agenthost.channels.responses.transport import _refusal_error
from agenthost.sansio_core.authorization import Denied, LinkRequired
from agenthost.sansio_core.turns import RefusalReason, TurnRefused
from tests.channels.responses.conftest import TIMEOUT, make_host, sdk_client, serving
from tests.delivery.receiver import PushChat

pytestmark = pytest.mark.anyio

ADA_CHAT = ChannelIdentity("chat", "ada-chat")
ADA_RESPONSES = ChannelIdentity("responses", "ada")


class Target:
    """Answers at once, except to "slow", which waits until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = anyio.Event()

    async def __call__(self, messages: list[HostMessage]) -> str:
        text = messages[-1].text
        self.calls.append(text)
        if text == "slow":
            await self.release.wait()
        return f"answer to {text}"


def to_the_chat(request: ChannelRequest, **_: Any) -> ChannelRequest:
    """The run hook: replies to Responses requests are pushed to the user's other channels."""
    if request.channel != "responses":
        return request
    return attrs.evolve(request, response_target=ResponseTarget.all_linked())


async def settled(client: openai.AsyncOpenAI, response_id: str) -> Any:
    while True:
        response = await client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        await anyio.sleep(0.02)


async def test_a_hook_routed_reply_answers_a_background_response(tmp_path: Path) -> None:
    target = Target()
    chat = PushChat("chat")
    host = make_host(
        target,
        tmp_path,
        channels=[ResponsesChannel(api_keys={"key-a": "ada"}), chat],
        run_hook=to_the_chat,
    )
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(host) as base_url,
            httpx.AsyncClient(base_url=base_url) as http,
            sdk_client(base_url, "key-a") as client,
        ):
            # The user is seen on the chat, then linked with their Responses caller.
            said = await http.post("/chat/send", json={"user": "ada-chat", "text": "hi"})
            assert said.json() == {"output": "answer to hi"}
            assert (await host.link_identities(ADA_CHAT, ADA_RESPONSES)).linked

            created = await client.responses.create(model="demo", input="slow")
            assert created.status in ("queued", "in_progress")
            assert created.background is True
            assert created.output == []
            polled = await client.responses.retrieve(created.id)
            assert polled.status in ("queued", "in_progress")
            assert chat.texts() == []

            target.release.set()
            done = await settled(client, created.id)
            assert done.id == created.id
            assert done.status == "completed"
            assert done.background is True
            assert done.output_text == "answer to slow"
            while chat.texts() != ["answer to slow"]:
                await anyio.sleep(0.02)
            ((destination, _),) = chat.pushed
            assert destination.identity == ADA_CHAT
            assert target.calls == ["hi", "slow"]  # the hook ran twice, the target once

            # A reply the hook leaves on its wire is answered there, as before.
            quiet = await http.post("/chat/send", json={"user": "ada-chat", "text": "again"})
            assert quiet.json() == {"output": "answer to again"}
            assert chat.texts() == ["answer to slow"]


async def test_without_a_linked_channel_the_reply_stays_retrievable(tmp_path: Path) -> None:
    """No destination is left: the run still completes and ``retrieve`` has the reply."""
    target = Target()
    target.release.set()
    chat = PushChat("chat")
    host = make_host(
        target,
        tmp_path,
        channels=[ResponsesChannel(api_keys={"key-a": "ada"}), chat],
        run_hook=to_the_chat,
    )
    with anyio.fail_after(TIMEOUT):
        async with serving(host) as base_url, sdk_client(base_url, "key-a") as client:
            created = await client.responses.create(model="demo", input="alone")
            assert created.background is True
            done = await settled(client, created.id)
            assert done.output_text == "answer to alone"
            assert chat.pushed == []


def _refused(reason: RefusalReason) -> TurnRefused:
    if reason is RefusalReason.DENIED:
        return TurnRefused(reason, "denied", Denied("not_allowlisted", "Not allowed."))
    if reason is RefusalReason.LINK_REQUIRED:
        return TurnRefused(reason, "link first", LinkRequired("Send /link first."))
    return TurnRefused(reason, "refused")


@pytest.mark.parametrize("reason", list(RefusalReason))
def test_every_refusal_renders(reason: RefusalReason) -> None:
    error = _refusal_error(_refused(reason), CreateRequest(items=()))
    assert error.status in (403, 404, 409)
    assert error.message
    expected = {
        RefusalReason.DENIED: "forbidden",
        RefusalReason.IDENTITY_REFUSED: "forbidden",
        RefusalReason.LINK_REQUIRED: "link_required",
        RefusalReason.TARGET_NOT_ALLOWED: "target_not_allowed",
        RefusalReason.SESSION_NOT_FOUND: "not_found",
        RefusalReason.SESSION_BUSY: "conversation_busy",
    }
    assert error.code == expected[reason]
