"""The host the Telegram replica tests run as several replicas: one bot against the test's
fake Bot API, on the store ``AGENTHOST_STORE`` names (PostgreSQL, or one SQLite file);
polling, or webhooks with a shared secret when ``REPLICA_TEST_WEBHOOK_SECRET`` is set.

The target answers ``"<replica>: <text>"`` and appends each call to a shared log, so the
test sees which replica handled an update and that none was handled twice. The replica
``REPLICA_TEST_STALLS`` names hangs on the text "stall" (a test kills it meanwhile).
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from agenthost import Host, HostMessage
from agenthost.channels.telegram import Pacing, TelegramChannel
from tests.channels.telegram.telegram_updates import BOT_TOKEN

FAST = Pacing(
    global_per_second=1000,
    global_burst=1000,
    private_per_second=1000,
    private_burst=1000,
    group_per_minute=60_000,
    group_burst=1000,
)


def build_host() -> Host:
    shared = Path(os.environ["REPLICA_TEST_DIR"])
    name = os.environ["REPLICA_NAME"]

    stalls = os.environ.get("REPLICA_TEST_STALLS")  # this replica never answers "stall"

    async def answer(messages: list[HostMessage]) -> str:
        text = messages[-1].text
        with (shared / "handled.log").open("a") as log:
            log.write(f"{name} {text}\n")
        if text == "stall" and stalls == name:
            await anyio.sleep(3600)  # killed while handling
        return f"{name}: {text}"

    public = f"http://127.0.0.1:{os.environ['REPLICA_PORT']}"
    webhook = os.environ.get("REPLICA_TEST_WEBHOOK_SECRET")
    channel = TelegramChannel(
        BOT_TOKEN,
        mode="webhook" if webhook else "polling",
        api_base_url=os.environ["REPLICA_TEST_BOT_API"],
        public_url=public,
        # Webhook mode: every replica shares the secret (Telegram sends one to all).
        webhook_url=f"{public}/telegram/webhook" if webhook else None,
        secret_token=webhook,
        poll_timeout=1,
        pacing=FAST,
        register_commands=False,
    )
    return Host(answer, channels=[channel], state_dir=shared / name)
