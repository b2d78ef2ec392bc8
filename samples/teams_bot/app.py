"""Sample: a Microsoft Teams bot (Azure Bot Service) answered by the demo agent.

Serve it with ``python -m agenthost serve samples.teams_bot.app:build_host`` and set the
Azure Bot's messaging endpoint to ``https://<your host>/activity/api/messages``.
Settings: ``MICROSOFT_APP_ID`` and ``MICROSOFT_APP_PASSWORD`` (the bot's Entra app
registration and a client secret; required), ``MICROSOFT_APP_TENANT_ID`` (single-tenant
bots), ``AGENTHOST_STATE_DIR``. ``ACTIVITY_OPENID_METADATA_URL``, ``ACTIVITY_AUTHORITY_HOST``
and ``ACTIVITY_SERVICE_URLS`` (comma-separated) point the channel at other token and
connector servers: a national cloud, or the smoke test's loopback fakes.
"""

from __future__ import annotations

import os
from typing import Any

from agenthost import Host
from agenthost.channels.activity import ActivityChannel
from agenthost.demo import build_agent


def build_host() -> Host:
    options: dict[str, Any] = {}
    if os.environ.get("ACTIVITY_OPENID_METADATA_URL"):
        options["openid_metadata_url"] = os.environ["ACTIVITY_OPENID_METADATA_URL"]
    if os.environ.get("ACTIVITY_AUTHORITY_HOST"):
        options["authority_host"] = os.environ["ACTIVITY_AUTHORITY_HOST"]
    if os.environ.get("ACTIVITY_SERVICE_URLS"):
        urls = os.environ["ACTIVITY_SERVICE_URLS"].split(",")
        options["service_urls"] = [url.strip() for url in urls if url.strip()]
    teams = ActivityChannel(
        os.environ["MICROSOFT_APP_ID"],
        app_secret=os.environ["MICROSOFT_APP_PASSWORD"],
        tenant_id=os.environ.get("MICROSOFT_APP_TENANT_ID") or None,
        greeting="Hi! Ask me some arithmetic, or what you said first.",
        **options,
    )
    return Host(
        build_agent(),
        channels=[teams],
        state_dir=os.environ.get("AGENTHOST_STATE_DIR", ".agenthost"),
    )
