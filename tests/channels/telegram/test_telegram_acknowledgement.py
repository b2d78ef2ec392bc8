"""A Telegram message whose reply the run_hook sends elsewhere gets a short acknowledgement.

The design's rule for a non-originating target: the originating wire answers with the
continuation (on a chat channel, a short acknowledgement) and the reply is pushed where it
was sent, here a signed webhook. Runs in webhook and polling mode, under asyncio or trio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from agenthost import ChannelRequest, Host, ResponseTarget
from agenthost.backends.serving import bound_socket
from agenthost.channels.webhook import WebhookChannel
from agenthost.sansio_core.delivery import RetryPolicy
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.telegram.conftest import TIMEOUT, fake_bot_api, make_channel, serve_on
from tests.channels.telegram.telegram_updates import message, private_chat
from tests.delivery.receiver import SECRET, Receiver
from tests.served import served

pytestmark = pytest.mark.anyio

USER = 930_000_001


def send_elsewhere(
    request: ChannelRequest, *, target: Any, protocol_request: Any
) -> ChannelRequest:
    text = " ".join(m.text for m in request.input) if isinstance(request.input, tuple) else ""
    if "elsewhere" in text:
        return attrs.evolve(request, response_target=ResponseTarget.channel("webhook"))
    return request


async def echo(messages: list[Any]) -> str:
    return f"answer to: {messages[-1].text}"


async def test_a_reply_sent_elsewhere_is_acknowledged_in_the_chat(
    tmp_path: Path, mode: str
) -> None:
    receiver = Receiver()
    with anyio.fail_after(TIMEOUT * 2):
        async with served(receiver.app) as receiver_url, fake_bot_api() as (fake, api_url):
            sock = bound_socket("127.0.0.1")
            channel = make_channel(mode, api_url, sock.getsockname()[1])
            host = Host(
                echo,
                channels=[channel, WebhookChannel(url=f"{receiver_url}/hook/app", secret=SECRET)],
                store=SQLiteStore(tmp_path / "state.db"),
                state_dir=tmp_path,
                run_hook=send_elsewhere,
                delivery_retry=RetryPolicy(max_attempts=3, base_seconds=0.05, cap_seconds=0.2),
            )
            async with serve_on(sock, host.app):
                if mode == "webhook":
                    await fake.wait_until(lambda: bool(fake.webhook_url))
                else:
                    await fake.wait_until(lambda: bool(fake.called("getUpdates")))

                async def say(text: str) -> str:
                    before = len(fake.sent_to(USER))
                    update = message(
                        fake.next_update_id(), user_id=USER, chat=private_chat(USER), text=text
                    )
                    if mode == "webhook":
                        assert (await fake.deliver(update)).status_code == 200
                    else:
                        fake.enqueue(update)
                    await fake.wait_until(lambda: len(fake.sent_to(USER)) > before)
                    return fake.sent_to(USER)[before].text

                # An ordinary message is answered in the chat, and nothing is pushed.
                assert await say("hello") == "answer to: hello"
                assert receiver.to("app") == []

                # The hook sends this one elsewhere: the chat only hears that it is on its way.
                acknowledgement = await say("please answer elsewhere")
                assert "answer will be delivered" in acknowledgement
                assert "answer to" not in acknowledgement
                with anyio.fail_after(TIMEOUT):
                    while not receiver.accepted("app"):
                        await anyio.sleep(0.02)
                [pushed] = [r for r in receiver.to("app") if not r.duplicate]
                assert pushed.body["text"] == "answer to: please answer elsewhere"
                assert not pushed.body["is_echo"]
                await fake.settle()
                assert [m.text for m in fake.sent_to(USER)] == ["answer to: hello", acknowledgement]
