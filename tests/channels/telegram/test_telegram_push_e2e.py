"""Pushing to Telegram end to end: Invocations asks, the answer arrives in the Telegram chat.

One host serves ``InvocationsChannel`` (host-tracked sessions; wire targets trusted from
callers sending ``x-test-trusted: yes``) and ``TelegramChannel`` (against the fake Bot
API, in webhook and in polling mode), with ``OneTimeCodeLinker``. The user talks to the
bot first (so the host knows the private chat), then links the two identities with
``/link`` on Telegram and ``/link CODE`` on Invocations. Deliveries go through the SQLite
outbox; every test runs under asyncio or trio (``AGENTHOST_TEST_BACKEND``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

from agenthost import ChannelIdentity, Host
from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.backends.serving import bound_socket
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.telegram import TelegramChannel
from agenthost.demo import build_agent
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, RetryPolicy
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.telegram.conftest import TIMEOUT, fake_bot_api, make_channel, serve_on
from tests.channels.telegram.fake_bot_api import FakeBotApi, SentMessage
from tests.channels.telegram.telegram_updates import message, private_chat

pytestmark = pytest.mark.anyio

CODE = re.compile(r"/link ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})")
TO_TELEGRAM = {"kind": "channel", "channels": ["telegram"]}

_users = itertools.count(920_000_001)


def trusted(request: Any, identity: ChannelIdentity) -> bool:
    return bool(request is not None and request.headers.get("x-test-trusted") == "yes")


@attrs.define
class World:
    host: Host
    channel: TelegramChannel
    fake: FakeBotApi
    client: httpx.AsyncClient
    mode: str
    user: int  # the Telegram user (and private chat) id
    caller: str  # the same user's Invocations id

    @property
    def headers(self) -> dict[str, str]:
        return {"x-agent-user-id": self.caller, "x-test-trusted": "yes"}

    def sent(self) -> list[SentMessage]:
        return self.fake.sent_to(self.user)

    async def on_telegram(self, text: str) -> str:
        """Say ``text`` in the private chat; the bot's one answer."""
        update = message(
            self.fake.next_update_id(), user_id=self.user, chat=private_chat(self.user), text=text
        )
        before = len(self.sent())
        if self.mode == "webhook":
            response = await self.fake.deliver(update)
            assert response.status_code == 200, response.text
        else:
            self.fake.enqueue(update)
        await self.fake.wait_until(lambda: len(self.sent()) > before)
        with anyio.fail_after(TIMEOUT):
            await self.channel.wait_idle()
        return self.sent()[before].text

    async def on_invocations(self, text: str) -> str:
        response = await self.client.post(
            "/invocations/invoke", json={"input": text}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "completed", body
        output: str = body["output"]
        return output

    async def in_background(self, text: str, target: Any) -> dict[str, Any]:
        """Ask on Invocations with a push target; the finished run's status body."""
        response = await self.client.post(
            "/invocations/invoke",
            json={"input": text, "response_target": target},
            headers=self.headers,
        )
        assert response.status_code == 202, response.text
        poll_url = response.json()["poll_url"]
        with anyio.fail_after(TIMEOUT):
            while True:
                polled = await self.client.get(poll_url, headers=self.headers)
                body: dict[str, Any] = polled.json()
                if body["status"] in ("completed", "failed", "cancelled"):
                    return body
                await anyio.sleep(0.02)

    async def settled(self, count: int) -> list[Delivery]:
        """Until ``count`` deliveries exist and none is still on its way."""
        moving = {DeliveryStatus.SCHEDULED, DeliveryStatus.SENDING, DeliveryStatus.FAILED}
        with anyio.fail_after(TIMEOUT):
            while True:
                found = await self.host.list_deliveries()
                if len(found) >= count and not any(d.status in moving for d in found):
                    return found
                await anyio.sleep(0.02)


@asynccontextmanager
async def linked_world(tmp_path: Path, mode: str) -> AsyncIterator[World]:
    """The served host, after the user said hello on Telegram and linked Invocations."""
    user = next(_users)
    with anyio.fail_after(TIMEOUT * 2):
        async with fake_bot_api() as (fake, api_url):
            sock = bound_socket("127.0.0.1")
            channel = make_channel(mode, api_url, sock.getsockname()[1])
            host = Host(
                build_agent(),
                channels=[
                    InvocationsChannel(trust_platform_headers=True, session_keys="host"),
                    channel,
                ],
                store=SQLiteStore(tmp_path / "state.db"),
                state_dir=tmp_path,
                linker=OneTimeCodeLinker(),
                trust_wire_targets=trusted,
                delivery_retry=RetryPolicy(max_attempts=4, base_seconds=0.05, cap_seconds=0.2),
            )
            async with serve_on(sock, host.app) as base_url:
                if mode == "webhook":
                    await fake.wait_until(lambda: bool(fake.webhook_url))
                else:
                    await fake.wait_until(lambda: bool(fake.called("getUpdates")))
                async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
                    w = World(host, channel, fake, client, mode, user, f"inv-{user}")
                    assert await w.on_telegram("hello from telegram") == (
                        'You said: "hello from telegram" (message 1 of this conversation)'
                    )
                    shown = await w.on_telegram("/link")
                    code = CODE.search(shown)
                    assert code is not None, shown
                    linked = await w.on_invocations(f"/link {code[1]}")
                    assert linked.startswith("Linked"), linked
                    yield w


async def test_a_link_through_link_codes_shares_the_conversation(tmp_path: Path, mode: str) -> None:
    async with linked_world(tmp_path, mode) as w:
        # Invocations continues the conversation the user began on Telegram.
        assert await w.on_invocations("what did I say first?") == (
            'You first said: "hello from telegram"'
        )
        assert await w.on_telegram("and now?") == (
            'You said: "and now?" (message 3 of this conversation)'
        )


async def test_a_background_answer_is_pushed_to_telegram_after_a_silent_echo(
    tmp_path: Path, mode: str
) -> None:
    async with linked_world(tmp_path, mode) as w:
        before = len(w.sent())
        finished = await w.in_background("ping", {**TO_TELEGRAM, "echo_input": True})
        assert finished["status"] == "completed", finished
        [delivery] = await w.settled(1)
        assert delivery.status is DeliveryStatus.DELIVERED
        await w.fake.wait_until(lambda: len(w.sent()) >= before + 2)
        echo, answer = w.sent()[before:]
        assert echo.text == "You, via Invocations: ping"
        assert answer.text.startswith('You said: "ping"'), answer.text
        assert echo.chat_id == answer.chat_id == w.user  # the private chat
        calls = [c for c in w.fake.called("sendMessage") if c.params.get("chat_id") == w.user][-2:]
        assert [c.params["text"] for c in calls] == [echo.raw, answer.raw]
        assert calls[0].params["text"] == "You, via Invocations: ping"
        assert calls[0].params.get("disable_notification") is True  # the echo is silent
        assert not calls[1].params.get("disable_notification")  # the answer notifies
        await w.fake.settle()
        assert len(w.sent()) == before + 2  # each sent once


async def test_a_push_to_a_user_who_blocked_the_bot_is_dead_at_once(
    tmp_path: Path, mode: str
) -> None:
    async with linked_world(tmp_path, mode) as w:
        w.fake.blocked.add(w.user)
        await w.in_background("are you there?", TO_TELEGRAM)
        [dead] = await w.settled(1)
        assert dead.status is DeliveryStatus.DEAD
        assert dead.attempts == 1
        assert dead.last_error is not None and "blocked" in dead.last_error
        dead_ids = [d.delivery_id for d in await w.host.list_deliveries([DeliveryStatus.DEAD])]
        assert dead_ids == [dead.delivery_id]

        # Unblocked, a replay delivers it.
        w.fake.blocked.discard(w.user)
        await w.host.replay_delivery(dead.delivery_id)
        [again] = await w.settled(1)
        assert again.status is DeliveryStatus.DELIVERED
        assert w.sent()[-1].text.startswith('You said: "are you there?"')


async def test_a_rate_limited_push_is_retried_after_retry_after(tmp_path: Path, mode: str) -> None:
    async with linked_world(tmp_path, mode) as w:
        w.fake.rate_limit("sendMessage", chat_id=w.user, times=1, retry_after=1)
        await w.in_background("busy?", TO_TELEGRAM)
        [delivered] = await w.settled(1)
        assert delivered.status is DeliveryStatus.DELIVERED
        assert delivered.attempts == 2
        limited, sent = [
            c for c in w.fake.called("sendMessage") if c.params.get("chat_id") == w.user
        ][-2:]
        assert limited.status == 429 and sent.status == 200
        assert sent.at - limited.at >= 0.95  # the backoff alone would be under 0.2 s
        assert w.sent()[-1].text.startswith('You said: "busy?"')
