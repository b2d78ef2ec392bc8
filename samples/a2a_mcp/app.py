"""Sample: one agent exposed to other agents over A2A and to assistants and IDEs over MCP.

Serve it with ``python -m agenthost serve samples.a2a_mcp.app:build_host``: the agent card is
at ``/.well-known/agent-card.json``, A2A at ``/a2a``, the MCP server (streamable HTTP) at
``/mcp``. Callers present ``Authorization: Bearer <key>``; ``AGENT_KEYS`` lists
``key=caller`` pairs (default ``dev-key=developer``), and the caller a key names is who the
host sees on both protocols. ``PUBLIC_URL`` is the address the agent card advertises
(default: the address the caller used).
"""

from __future__ import annotations

import hmac
import os

from starlette.requests import Request

from agenthost import Host
from agenthost.channels.a2a import A2AChannel
from agenthost.channels.mcp import MCPChannel
from agenthost.demo import build_agent


def agent_keys() -> dict[str, str]:
    setting = os.environ.get("AGENT_KEYS", "dev-key=developer")
    pairs = (item.partition("=") for item in setting.split(",") if item.strip())
    return {key.strip(): caller.strip() for key, _, caller in pairs if key and caller}


def build_host() -> Host:
    keys = agent_keys()

    def authenticate(request: Request) -> str | None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        for key, caller in keys.items():  # constant time per key: no early mismatch exit
            if hmac.compare_digest(key.encode(), presented.strip().encode()):
                return caller
        return None

    return Host(
        build_agent(),
        channels=[
            A2AChannel(
                public_url=os.environ.get("PUBLIC_URL"),
                agent_name="demo agent",
                authenticate=authenticate,
            ),
            MCPChannel(api_keys=keys),
        ],
        state_dir=os.environ.get("AGENTHOST_STATE_DIR", ".agenthost"),
    )
