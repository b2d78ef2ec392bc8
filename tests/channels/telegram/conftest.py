"""The Telegram end-to-end harness: a fake Bot API and a host, both really served on loopback.

Every end-to-end test runs once with the channel in webhook mode and once in polling mode
(``mode`` fixture), under the event loop ``make test`` chose. The host's socket is bound
before the channel is built, because the webhook URL must name its port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

from agenthost import Host, HostMessage
from agenthost.backends.serving import bound_socket
from agenthost.channels.telegram import Pacing, TelegramChannel
from agenthost.stores.base import Store
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.telegram.fake_bot_api import FakeBotApi
from tests.channels.telegram.telegram_updates import BOT_TOKEN, BOT_USERNAME
from tests.served import served

TIMEOUT = 30.0
FAST = Pacing(
    global_per_second=1000,
    global_burst=1000,
    private_per_second=1000,
    private_burst=1000,
    group_per_minute=60_000,
    group_burst=1000,
)


@pytest.fixture(params=["webhook", "polling"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def serve_on(sock: Any, app: Any) -> AbstractAsyncContextManager[str]:
    """Serve ``app`` on an already bound socket (its URL was needed before start-up)."""
    return served(app, sock=sock)


@asynccontextmanager
async def fake_bot_api() -> AsyncIterator[tuple[FakeBotApi, str]]:
    fake = FakeBotApi(BOT_TOKEN, username=BOT_USERNAME)
    async with serve_on(bound_socket("127.0.0.1"), fake.app) as base_url:
        yield fake, base_url


@attrs.define
class Harness:
    host: Host
    channel: TelegramChannel
    fake: FakeBotApi
    base_url: str
    mode: str

    async def send(self, update: Mapping[str, Any]) -> None:
        """Hand an update to the bot the way the mode receives it, and wait until it was
        taken (recorded, or acknowledged as not for the bot)."""
        if self.mode == "webhook":
            response = await self.fake.deliver(update)
            assert response.status_code == 200, response.text
        else:
            self.fake.enqueue(update)
            await self.fake.wait_until(
                lambda: all(u["update_id"] != update["update_id"] for u in self.fake._queue)
            )

    async def idle(self) -> None:
        """Until every recorded update is handled."""
        with anyio.fail_after(TIMEOUT):
            await self.channel.wait_idle()

    async def exchange(self, update: Mapping[str, Any], chat_id: int, count: int = 1) -> list[str]:
        """Send an update and return the texts of the ``count`` messages it produced."""
        before = len(self.fake.sent_to(chat_id))
        await self.send(update)
        await self.fake.wait_until(lambda: len(self.fake.sent_to(chat_id)) >= before + count)
        await self.idle()
        return [m.text for m in self.fake.sent_to(chat_id)[before:]]


def make_channel(mode: str, api_url: str, port: int, **options: Any) -> TelegramChannel:
    settings: dict[str, Any] = {
        "mode": mode,
        "api_base_url": api_url,
        "public_url": f"http://127.0.0.1:{port}",
        "poll_timeout": 1,
        "pacing": FAST,
        "stream_interval": 0.05,
    }
    if mode == "webhook":
        settings["webhook_url"] = f"http://127.0.0.1:{port}/telegram/webhook"
    settings.update(options)
    return TelegramChannel(BOT_TOKEN, **settings)


@asynccontextmanager
async def telegram_host(
    target: Any,
    tmp_path: Path,
    mode: str,
    fake: FakeBotApi,
    api_url: str,
    *,
    store: Store | None = None,
    host_options: Mapping[str, Any] | None = None,
    **channel_options: Any,
) -> AsyncIterator[Harness]:
    sock = bound_socket("127.0.0.1")
    port = sock.getsockname()[1]
    channel = make_channel(mode, api_url, port, **channel_options)
    host = Host(
        target,
        channels=[channel],
        store=store or SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        **dict(host_options or {}),
    )
    async with serve_on(sock, host.app) as base_url:
        if mode == "webhook":
            await fake.wait_until(lambda: bool(fake.webhook_url))
        else:
            await fake.wait_until(lambda: bool(fake.called("getUpdates")))
        yield Harness(host, channel, fake, base_url, mode)


class Recorder:
    """A callable target answering ``reply(text)`` (default: the user's words so far), and
    recording each call's message texts."""

    def __init__(self, reply: Any = None, *, thinks: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.inputs: list[list[HostMessage]] = []
        self._reply = reply
        self._thinks = thinks  # seconds each answer takes (so "typing..." shows)

    async def __call__(self, messages: list[HostMessage]) -> str:
        self.calls.append([m.text for m in messages])
        self.inputs.append(list(messages))
        await anyio.sleep(self._thinks)
        if self._reply is not None:
            return str(self._reply(messages[-1].text))
        return " | ".join(m.text for m in messages if m.role == "user")


async def http_get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.get(url)
