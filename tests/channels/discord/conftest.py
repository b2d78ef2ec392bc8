"""The Discord end-to-end harness: a fake Discord API and a host, both served on loopback.

The fake signs interactions with the test's own Ed25519 key (``signer.Signer``) and posts
them to the host's endpoint; the channel talks back to the fake's REST API. Every test
runs under the event loop ``make test`` chose (``AGENTHOST_TEST_BACKEND``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx

from agenthost import Host, HostMessage
from agenthost.channels.discord import DiscordChannel
from agenthost.stores.base import Store
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.discord.fake_discord_api import API, Delivered, FakeDiscordApi
from tests.channels.discord.interactions import APPLICATION_ID, BOT_TOKEN, GENERAL
from tests.channels.discord.signer import Signer
from tests.served import served

TIMEOUT = 30.0


@asynccontextmanager
async def fake_discord() -> AsyncIterator[tuple[FakeDiscordApi, str]]:
    """The fake API, served; yields it and the base URL the channel should use."""
    fake = FakeDiscordApi(application_id=APPLICATION_ID, bot_token=BOT_TOKEN, signer=Signer())
    fake.channels.add(GENERAL)
    async with served(fake.app) as base_url:
        yield fake, f"{base_url}{API}"


def make_channel(fake: FakeDiscordApi, api_url: str, **options: Any) -> DiscordChannel:
    settings: dict[str, Any] = {
        "application_id": APPLICATION_ID,
        "public_key": fake.signer.public_key_hex,
        "bot_token": BOT_TOKEN,
        "api_base_url": api_url,
        "stream_interval": 0.05,
    }
    settings.update(options)
    return DiscordChannel(**settings)


@attrs.define
class Harness:
    host: Host
    channel: DiscordChannel
    fake: FakeDiscordApi
    base_url: str

    async def send(self, payload: Mapping[str, Any], **options: Any) -> httpx.Response:
        return await self.fake.deliver(payload, **options)

    async def idle(self) -> None:
        """Until every recorded interaction is handled."""
        with anyio.fail_after(TIMEOUT):
            await self.channel.wait_idle()

    async def answered(self, payload: Mapping[str, Any]) -> Delivered:
        """Deliver an interaction, wait until it is handled, and return what it became."""
        response = await self.send(payload)
        assert response.status_code == 200, response.text
        await self.idle()
        return self.fake.delivered[str(payload["id"])]


@asynccontextmanager
async def discord_host(
    target: Any,
    tmp_path: Path,
    fake: FakeDiscordApi,
    api_url: str,
    *,
    store: Store | None = None,
    host_options: Mapping[str, Any] | None = None,
    **channel_options: Any,
) -> AsyncIterator[Harness]:
    channel = make_channel(fake, api_url, **channel_options)
    host = Host(
        target,
        channels=[channel],
        store=store or SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        **dict(host_options or {}),
    )
    async with served(host.app) as base_url:
        fake.endpoint = f"{base_url}{channel.path}"
        yield Harness(host, channel, fake, base_url)


class Recorder:
    """A callable target answering ``reply(text)`` (default: ``You said: <text>``) and
    recording each call's last user text."""

    def __init__(self, reply: Any = None) -> None:
        self.calls: list[str] = []
        self._reply = reply

    async def __call__(self, messages: list[HostMessage]) -> str:
        text = messages[-1].text
        self.calls.append(text)
        if self._reply is not None:
            return str(self._reply(text))
        return f"You said: {text}"
