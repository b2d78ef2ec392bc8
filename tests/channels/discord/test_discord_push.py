"""``DiscordChannel`` as a ``ChannelPush``: where a delivery goes, how it is sent, and how
Discord's answers are classified for the delivery worker, against the fake Discord API.

The channel is started inside a served host (its pushes need the host's HTTP client and
store); the first half calls ``push`` directly, the second goes through the durable outbox
end to end (Invocations asks, the answer arrives in the user's Discord DM).
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

from agenthost import ChannelIdentity, Host, ResponseTarget
from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.backends.push import ChannelPush, PushMessage
from agenthost.channels.discord import DiscordChannel
from agenthost.channels.invocations import InvocationsChannel
from agenthost.sansio_core.delivery import Delivery, DeliveryStatus, FailureKind, RetryPolicy
from agenthost.sansio_core.routing import Destination
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.discord.conftest import (
    TIMEOUT,
    Harness,
    Recorder,
    discord_host,
    fake_discord,
    make_channel,
)
from tests.channels.discord.fake_discord_api import FakeDiscordApi
from tests.channels.discord.interactions import (
    APPLICATION_ID,
    BOT_TOKEN,
    GENERAL,
    GUILD,
    ask,
    dm_channel_of,
    new_user,
    slash,
)
from tests.served import served

pytestmark = pytest.mark.anyio

MESSAGES = "POST /channels/{channel}/messages"
OPEN_DM = "POST /users/@me/channels"
CODE = re.compile(r"/link ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})")
_deliveries = itertools.count(1)


def to(user: str, conversation: str | None = None) -> Destination:
    return Destination("discord", ChannelIdentity("discord", user), conversation)


def message(text: str, **options: Any) -> PushMessage:
    return PushMessage(f"dlv_{next(_deliveries)}:discord:x", text, **options)


@asynccontextmanager
async def pushing(tmp_path: Path, **options: Any) -> AsyncIterator[Harness]:
    async with (
        fake_discord() as (fake, api),
        discord_host(Recorder(), tmp_path, fake, api, **options) as h,
    ):
        yield h


def test_the_channel_is_a_non_idempotent_pusher() -> None:
    channel = DiscordChannel(
        application_id=APPLICATION_ID, public_key="ab" * 32, bot_token=BOT_TOKEN
    )
    assert isinstance(channel, ChannelPush)
    assert channel.push_is_idempotent is False


async def test_a_channel_not_started_answers_transient() -> None:
    channel = DiscordChannel(
        application_id=APPLICATION_ID, public_key="ab" * 32, bot_token=BOT_TOKEN
    )
    outcome = await channel.push(to(new_user()), message("hi"))
    assert outcome.failure is FailureKind.TRANSIENT


async def test_a_push_opens_the_dm_and_posts_there(tmp_path: Path) -> None:
    async with pushing(tmp_path) as h:
        user = new_user()
        outcome = await h.channel.push(to(user, f"{GUILD}:{GENERAL}"), message("hello @everyone"))
        assert outcome.delivered
        [opened] = h.fake.called(OPEN_DM)
        assert opened.body == {"recipient_id": user}
        [sent] = h.fake.dm_messages(user)
        assert sent.content == "hello @everyone"
        assert sent.allowed_mentions == {"parse": []}
        assert sent.flags == 0
        # The DM channel is remembered: a second push opens nothing.
        assert (await h.channel.push(to(user), message("again"))).delivered
        assert len(h.fake.called(OPEN_DM)) == 1
        assert [m.content for m in h.fake.dm_messages(user)] == ["hello @everyone", "again"]


async def test_an_echo_is_silent(tmp_path: Path) -> None:
    async with pushing(tmp_path) as h:
        user = new_user()
        echo = message("You, via Invocations: hi", is_echo=True, silent=True)
        assert (await h.channel.push(to(user), echo)).delivered
        [sent] = h.fake.dm_messages(user)
        assert sent.flags == 1 << 12  # SUPPRESS_NOTIFICATIONS


async def test_push_to_conversation_posts_in_the_guild_channel(tmp_path: Path) -> None:
    async with pushing(tmp_path, push_to="conversation") as h:
        user = new_user()
        assert (await h.channel.push(to(user, f"{GUILD}:{GENERAL}"), message("here"))).delivered
        assert [m.content for m in h.fake.in_channel(GENERAL)] == ["here"]
        # A DM or a private channel is never a guild channel: those go to the DM.
        for conversation in (f"dm:{dm_channel_of(user)}", "private:1200000000000000400", None):
            assert (await h.channel.push(to(user, conversation), message("dm"))).delivered
        assert len(h.fake.dm_messages(user)) == 3


async def test_a_long_push_is_split_and_kept_whole(tmp_path: Path) -> None:
    async with pushing(tmp_path) as h:
        user = new_user()
        text = " ".join(f"word{i}" for i in range(1200))  # about 8,000 characters
        assert (await h.channel.push(to(user), message(text))).delivered
        parts = [m.content for m in h.fake.dm_messages(user)]
        assert len(parts) >= 4 and all(len(p) <= 2000 for p in parts)
        assert " ".join(parts) == text


async def test_closed_dms_and_unknown_channels_are_permanent(tmp_path: Path) -> None:
    async with pushing(tmp_path, push_to="conversation") as h:
        user = new_user()
        h.fake.closed_dms.add(user)
        closed = await h.channel.push(to(user), message("hi"))
        assert closed.failure is FailureKind.PERMANENT
        assert closed.reason is not None and "Cannot send messages to this user" in closed.reason

        missing = await h.channel.push(to(user, f"{GUILD}:1187400000000009999"), message("hi"))
        assert missing.failure is FailureKind.PERMANENT
        assert missing.reason is not None and "10003" in missing.reason

        h.fake.forbidden_channels.add(GENERAL)
        forbidden = await h.channel.push(to(user, f"{GUILD}:{GENERAL}"), message("hi"))
        assert forbidden.failure is FailureKind.PERMANENT

        not_a_user = await h.channel.push(to("ada"), message("hi"))
        assert not_a_user.failure is FailureKind.PERMANENT


async def test_a_429_is_transient_with_discords_retry_after(tmp_path: Path) -> None:
    async with pushing(tmp_path) as h:
        user = new_user()
        h.fake.rate_limit(MESSAGES, retry_after=2.5)
        limited = await h.channel.push(to(user), message("hi"))
        assert limited.failure is FailureKind.TRANSIENT
        assert limited.retry_after == 2.5
        # The bucket is known to be exhausted now: the next push waits without calling.
        calls = len(h.fake.called(MESSAGES))
        again = await h.channel.push(to(user), message("hi"))
        assert again.failure is FailureKind.TRANSIENT
        assert again.retry_after is not None and 0.5 < again.retry_after <= 2.5
        assert len(h.fake.called(MESSAGES)) == calls


async def test_a_global_429_pauses_every_bot_call(tmp_path: Path) -> None:
    async with pushing(tmp_path) as h:
        h.fake.rate_limit(MESSAGES, retry_after=3.0, is_global=True)
        first = await h.channel.push(to(new_user()), message("hi"))
        assert first.failure is FailureKind.TRANSIENT and first.retry_after == 3.0
        before = len(h.fake.calls)
        other = await h.channel.push(to(new_user()), message("hi"))  # another user, other route
        assert other.failure is FailureKind.TRANSIENT
        assert len(h.fake.calls) == before  # not even the DM was opened


async def test_an_exhausted_bucket_is_honoured_before_discord_refuses(tmp_path: Path) -> None:
    async with pushing(tmp_path) as h:
        user = new_user()
        h.fake.set_bucket(MESSAGES, limit=2, window=1.0)
        text = "\n\n".join(["a" * 1500, "b" * 1500, "c" * 1500])
        pushed = message(text)
        first = await h.channel.push(to(user), pushed)
        # Two parts fit the bucket; its headers said it was empty, so the third waits.
        assert first.failure is FailureKind.TRANSIENT
        assert first.retry_after is not None and 0 < first.retry_after <= 1.0
        assert all(call.status != 429 for call in h.fake.calls)
        await anyio.sleep(first.retry_after)
        retried = await h.channel.push(to(user), pushed)  # what the outbox does later
        assert retried.delivered
        assert [m.content[0] for m in h.fake.dm_messages(user)] == ["a", "b", "c"]  # none twice


async def test_server_errors_are_transient(tmp_path: Path) -> None:
    async with pushing(tmp_path) as h:
        h.fake.server_errors = 2  # the DM and the message
        outcome = await h.channel.push(to(new_user()), message("hi"))
        assert outcome.failure is FailureKind.TRANSIENT


# --- through the outbox ---------------------------------------------------------------------


def trusted(request: Any, identity: ChannelIdentity) -> bool:
    return bool(request is not None and request.headers.get("x-test-trusted") == "yes")


@attrs.define
class World:
    host: Host
    harness: Harness
    client: httpx.AsyncClient
    user: str

    @property
    def fake(self) -> FakeDiscordApi:
        return self.harness.fake

    @property
    def headers(self) -> dict[str, str]:
        return {"x-agent-user-id": f"inv-{self.user}", "x-test-trusted": "yes"}

    def dms(self) -> list[str]:
        return [m.content for m in self.fake.dm_messages(self.user)]

    async def on_discord(self, interaction: dict[str, Any]) -> str:
        delivered = await self.harness.answered(interaction)
        assert delivered.original is not None
        return delivered.original.content

    async def in_background(self, text: str, target: dict[str, Any]) -> dict[str, Any]:
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
        moving = {DeliveryStatus.SCHEDULED, DeliveryStatus.SENDING, DeliveryStatus.FAILED}
        with anyio.fail_after(TIMEOUT):
            while True:
                found = await self.host.list_deliveries()
                if len(found) >= count and not any(d.status in moving for d in found):
                    return found
                await anyio.sleep(0.02)


@asynccontextmanager
async def linked_world(tmp_path: Path) -> AsyncIterator[World]:
    """The served host, after the user spoke on Discord and linked Invocations."""
    user = new_user()
    with anyio.fail_after(TIMEOUT * 2):
        async with fake_discord() as (fake, api):
            channel = make_channel(fake, api)
            host = Host(
                Recorder(),
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
            async with served(host.app) as base_url:
                fake.endpoint = f"{base_url}{channel.path}"
                harness = Harness(host, channel, fake, base_url)
                async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
                    w = World(host, harness, client, user)
                    assert await w.on_discord(ask("hello from discord", user=user)) == (
                        "You said: hello from discord"
                    )
                    shown = await w.on_discord(slash("link", user=user))
                    code = CODE.search(shown)
                    assert code is not None, shown
                    response = await client.post(
                        "/invocations/invoke",
                        json={"input": f"/link {code[1]}"},
                        headers=w.headers,
                    )
                    assert response.json()["output"].startswith("Linked"), response.text
                    yield w


async def test_a_background_answer_reaches_the_discord_dm_after_a_silent_echo(
    tmp_path: Path,
) -> None:
    async with linked_world(tmp_path) as w:
        finished = await w.in_background(
            "ping", {"kind": "channel", "channels": ["discord"], "echo_input": True}
        )
        assert finished["status"] == "completed", finished
        [delivery] = await w.settled(1)
        assert delivery.status is DeliveryStatus.DELIVERED
        await w.fake.wait_until(lambda: len(w.dms()) >= 2)
        assert w.dms() == ["You, via Invocations: ping", "You said: ping"]
        echo, answer = w.fake.dm_messages(w.user)
        assert echo.flags == 1 << 12 and answer.flags == 0  # the echo is silent


async def test_a_push_with_a_429_is_retried_after_retry_after(tmp_path: Path) -> None:
    async with linked_world(tmp_path) as w:
        w.fake.rate_limit(MESSAGES, times=1, retry_after=1.0)
        await w.in_background("busy?", {"kind": "channel", "channels": ["discord"]})
        [delivered] = await w.settled(1)
        assert delivered.status is DeliveryStatus.DELIVERED
        assert delivered.attempts == 2
        limited, sent = w.fake.called(MESSAGES)[-2:]
        assert limited.status == 429 and sent.status == 200
        assert sent.at - limited.at >= 0.95  # the backoff alone would be under 0.2 s
        assert w.dms()[-1] == "You said: busy?"
        assert w.dms().count("You said: busy?") == 1


async def test_a_push_to_closed_dms_is_dead_at_once_and_replayable(tmp_path: Path) -> None:
    async with linked_world(tmp_path) as w:
        w.fake.closed_dms.add(w.user)
        await w.in_background("are you there?", {"kind": "channel", "channels": ["discord"]})
        [dead] = await w.settled(1)
        assert dead.status is DeliveryStatus.DEAD
        assert dead.attempts == 1
        assert dead.last_error is not None and "Cannot send messages" in dead.last_error

        w.fake.closed_dms.discard(w.user)
        await w.host.replay_delivery(dead.delivery_id)
        [again] = await w.settled(1)
        assert again.status is DeliveryStatus.DELIVERED
        assert w.dms()[-1] == "You said: are you there?"


async def test_host_deliver_to_all_linked_reaches_discord(tmp_path: Path) -> None:
    async with linked_world(tmp_path) as w:
        context = await w.host.store.load_context(ChannelIdentity("discord", w.user), None)
        assert context.isolation_key is not None
        scheduled = await w.host.deliver(
            isolation_key=context.isolation_key,
            message="A reminder for you",
            target=ResponseTarget.all_linked(),
        )
        assert [d.channel for d in scheduled] == ["discord"]
        await w.settled(1)
        assert w.dms()[-1] == "A reminder for you"
