"""Sample: a Discord bot over HTTP interactions, with the web console beside it.

Serve it with ``python -m agenthost serve samples.discord_bot.app:build_host`` and set the
application's Interactions Endpoint URL to ``https://<your host>/discord/interactions``.
Settings: ``DISCORD_APPLICATION_ID``, ``DISCORD_PUBLIC_KEY`` and ``DISCORD_BOT_TOKEN``
(from the developer portal; required), ``AGENTHOST_STATE_DIR``, ``DISCORD_API_BASE_URL``
(another API server: the smoke test's fake).

Users talk to the agent with ``/ask``; ``/link`` joins their Discord account to their
identity on another channel (here: the console, at ``/console`` on loopback).
"""

from __future__ import annotations

import os
from typing import Any

from agenthost import Host
from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.channels.console import ConsoleChannel
from agenthost.channels.discord import DiscordChannel
from agenthost.demo import build_agent


def build_host() -> Host:
    options: dict[str, Any] = {}
    if "DISCORD_API_BASE_URL" in os.environ:
        options["api_base_url"] = os.environ["DISCORD_API_BASE_URL"]
    discord = DiscordChannel(
        application_id=os.environ["DISCORD_APPLICATION_ID"],
        public_key=os.environ["DISCORD_PUBLIC_KEY"],
        bot_token=os.environ["DISCORD_BOT_TOKEN"],
        **options,
    )
    return Host(
        build_agent(),
        channels=[discord, ConsoleChannel()],
        linker=OneTimeCodeLinker(),
        state_dir=os.environ.get("AGENTHOST_STATE_DIR", ".agenthost"),
    )
