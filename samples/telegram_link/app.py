"""Sample: a Telegram bot that users link to the Responses API.

Once a Responses caller has linked their Telegram account (``/link`` in the bot, then
``/link CODE`` as a Responses input), what they ask through the Responses API is answered
on the wire *and* shown in their Telegram chat: their words first ("You, via Responses:
..."), silently, then the answer. A ``run_hook`` chooses that target; callers who have not
linked are answered on the wire only.

Serve it with ``python -m agenthost serve samples.telegram_link.app:build_host`` (see the
README). Settings come from the environment:

- ``TELEGRAM_BOT_TOKEN`` (required): the bot's token from @BotFather;
- ``TELEGRAM_WEBHOOK_URL``: the public HTTPS URL of ``/telegram/webhook``; without it the
  bot polls Telegram, which needs no public address;
- ``RESPONSES_API_KEYS``: ``key=caller`` pairs, comma-separated; each key names the caller
  a Responses client is (default ``dev-key=developer``);
- ``AGENTHOST_STATE_DIR``: where the SQLite store lives (default ``.agenthost``);
- ``TELEGRAM_API_BASE_URL``: another Bot API server (the smoke test's fake).

The target is the demo agent (no model key needed); put your own Agent Framework ``Agent``
in :func:`build_agent_for_sample`.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from agenthost import Host
from agenthost.backends.linking import OneTimeCodeLinker
from agenthost.channels.console import ConsoleChannel
from agenthost.channels.responses import ResponsesChannel
from agenthost.channels.telegram import TelegramChannel
from agenthost.demo import build_agent
from agenthost.sansio_core.types import ChannelRequest, ResponseTarget


def build_agent_for_sample() -> Any:
    return build_agent()


def api_keys(setting: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in setting.split(",") if item.strip())
    return {key.strip(): caller.strip() for key, _, caller in pairs if key and caller}


def build_host() -> Host:
    webhook_url = os.environ.get("TELEGRAM_WEBHOOK_URL")
    telegram_options: dict[str, Any] = {}
    if "TELEGRAM_API_BASE_URL" in os.environ:
        telegram_options["api_base_url"] = os.environ["TELEGRAM_API_BASE_URL"]
    telegram = TelegramChannel(
        os.environ["TELEGRAM_BOT_TOKEN"],
        mode="webhook" if webhook_url else "polling",
        webhook_url=webhook_url,
        **telegram_options,
    )
    responses = ResponsesChannel(
        api_keys=api_keys(os.environ.get("RESPONSES_API_KEYS", "dev-key=developer"))
    )

    async def mirror_to_telegram(
        request: ChannelRequest, *, target: Any, protocol_request: Any
    ) -> ChannelRequest:
        if request.channel != responses.name:
            return request
        mine = await host.linked_identities(request.identity)
        if not any(identity.channel == telegram.name for identity in mine):
            return request
        return attrs.evolve(
            request, response_target=ResponseTarget.channel(telegram.name, echo_input=True)
        )

    host = Host(
        build_agent_for_sample(),
        channels=[telegram, responses, ConsoleChannel()],
        linker=OneTimeCodeLinker(),
        run_hook=mirror_to_telegram,
        state_dir=os.environ.get("AGENTHOST_STATE_DIR", ".agenthost"),
    )
    return host
