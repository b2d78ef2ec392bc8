"""The host ``test_telegram_shutdown.py`` serves in a child process and stops with SIGTERM.

A Telegram bot (polling the test's fake Bot API) whose ``run_hook`` sends every answer
through the outbox (``active``: the chat the user wrote in), so the reply is a durable
delivery; the answer is two Telegram messages long. Settings come from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import attrs

from agenthost import ChannelRequest, Host, HostMessage, ResponseTarget
from agenthost.channels.telegram import Pacing, TelegramChannel
from tests.channels.telegram.telegram_updates import BOT_TOKEN

#: Two Telegram messages' worth of plain words.
LONG_ANSWER = " ".join(f"word{n}" for n in range(700))
UNHURRIED = Pacing(
    global_per_second=1000,
    global_burst=1000,
    private_per_second=1000,
    private_burst=1000,
    group_per_minute=60_000,
    group_burst=1000,
)


async def answer(messages: list[HostMessage]) -> str:
    await anyio.sleep(0.3)  # the chat's acknowledgement goes out first
    return LONG_ANSWER


def to_the_outbox(request: ChannelRequest, **_: Any) -> ChannelRequest:
    return attrs.evolve(request, response_target=ResponseTarget.active())


def build_host() -> Host:
    channel = TelegramChannel(
        BOT_TOKEN,
        mode="polling",
        api_base_url=os.environ["TG_SHUTDOWN_API"],
        poll_timeout=1,
        pacing=UNHURRIED,
        stream=False,
        register_commands=False,
    )
    return Host(
        answer,
        channels=[channel],
        state_dir=Path(os.environ["TG_SHUTDOWN_STATE_DIR"]),
        run_hook=to_the_outbox,
        shutdown_grace_seconds=0.5,
    )
