"""Sample: a scheduler that sends proactive messages with ``host.deliver``.

Users of the Telegram bot send ``remind me`` to subscribe; every ``REMINDER_SECONDS``
(default 3600) the schedule pushes a reminder to each subscriber, through the durable
outbox, to wherever they were active last (``ResponseTarget.active()``). The message is
also written into their conversation, so the agent sees it in the history.

Serve it with ``python -m agenthost serve samples.scheduler.app:build_host``; settings:
``TELEGRAM_BOT_TOKEN`` (required), ``REMINDER_SECONDS``, ``AGENTHOST_STATE_DIR``,
``TELEGRAM_API_BASE_URL`` (the smoke test's fake).

Subscriptions are kept as the schedule's own records in the host's store, so they survive
a restart and every replica sees the same list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import anyio
from starlette.routing import BaseRoute

from agenthost import Host
from agenthost.backends.channel import Channel, HostServices
from agenthost.channels.telegram import TelegramChannel
from agenthost.demo import build_agent
from agenthost.sansio_core.types import ChannelRequest, ResponseTarget, TextPart
from agenthost.stores.base import ChannelRecord

SUBSCRIBE = "remind me"


class ReminderSchedule(Channel):
    """No routes: a task in the host's lifespan that wakes up and delivers reminders."""

    name = "reminders"
    offers_link_commands = False

    def __init__(self, every_seconds: float, text: str) -> None:
        self.every_seconds = every_seconds
        self.text = text
        self.host: Host | None = None

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        return ()

    async def startup(self, host: HostServices) -> None:
        host.start_task(self._every_period, name="reminders")

    async def subscribe(self, request: ChannelRequest, isolation_key: str) -> None:
        record = ChannelRecord(self.name, "subscriber", isolation_key, {"since": "now"})
        await self._host().store.put_channel_records([record])

    async def _every_period(self) -> None:
        while True:
            await anyio.sleep(self.every_seconds)
            host = self._host()
            for record in await host.store.list_channel_records(self.name, "subscriber"):
                await host.deliver(
                    isolation_key=record.key, message=self.text, target=ResponseTarget.active()
                )

    def _host(self) -> Host:
        assert self.host is not None, "build_host sets the schedule's host"
        return self.host


def build_host() -> Host:
    schedule = ReminderSchedule(
        float(os.environ.get("REMINDER_SECONDS", "3600")), "Reminder: drink some water."
    )
    telegram_options: dict[str, Any] = {}
    if "TELEGRAM_API_BASE_URL" in os.environ:
        telegram_options["api_base_url"] = os.environ["TELEGRAM_API_BASE_URL"]
    telegram = TelegramChannel(os.environ["TELEGRAM_BOT_TOKEN"], mode="polling",
                               **telegram_options)  # fmt: skip

    async def note_subscribers(
        request: ChannelRequest, *, target: Any, protocol_request: Any
    ) -> ChannelRequest:
        # The run hook sees who is asking: a subscription is recorded under their user.
        texts = [
            part.text
            for message in request.input
            for part in getattr(message, "parts", ())
            if isinstance(part, TextPart)
        ]
        if texts and texts[-1].strip().lower() == SUBSCRIBE:
            context = await host.store.load_context(request.identity, None)
            if context.isolation_key is not None:
                await schedule.subscribe(request, context.isolation_key)
        return request

    host = Host(
        build_agent(),
        channels=[telegram, schedule],
        run_hook=note_subscribers,
        state_dir=os.environ.get("AGENTHOST_STATE_DIR", ".agenthost"),
    )
    schedule.host = host
    return host
