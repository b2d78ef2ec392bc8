"""Sample: one host served by several replicas on one PostgreSQL database.

The host is built without a store, so it takes the one ``AGENTHOST_STORE`` names
(``postgresql://user@db:5432/name``; see docs/deployment.md). Every replica serves this same
``build_host`` with the same ``AGENTHOST_STORE``: sessions, stored responses, runs and the
outbox live in the database, so any replica continues a conversation another one began.
Without ``AGENTHOST_STORE`` the host falls back to SQLite in ``AGENTHOST_STATE_DIR``, which
is for one process only.

Callers use the Responses API with ``Authorization: Bearer <key>``; ``RESPONSES_API_KEYS``
lists ``key=caller`` pairs, comma-separated (default ``dev-key=developer``). Every replica
needs the same keys.
"""

from __future__ import annotations

import os

from agenthost import Host
from agenthost.channels.responses import ResponsesChannel
from agenthost.demo import build_agent


def api_keys(setting: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in setting.split(",") if item.strip())
    return {key.strip(): caller.strip() for key, _, caller in pairs if key and caller}


def build_host() -> Host:
    keys = api_keys(os.environ.get("RESPONSES_API_KEYS", "dev-key=developer"))
    return Host(
        build_agent(),
        channels=[ResponsesChannel(api_keys=keys)],
        state_dir=os.environ.get("AGENTHOST_STATE_DIR", ".agenthost"),
    )
