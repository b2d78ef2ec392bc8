"""The host that ``test_delivery_crash.py`` runs in a child process and kills.

Invocations (platform headers trusted; wire targets trusted from ``x-test-trusted: yes``)
and two webhook channels, ``hook_a`` and ``hook_b``, pointed at the test's receiver.
Settings come from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agenthost import ChannelIdentity, Host, HostMessage
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.webhook import WebhookChannel
from agenthost.sansio_core.delivery import RetryPolicy
from tests.delivery.receiver import SECRET


def build_host() -> Host:
    receiver = os.environ["CRASH_TEST_RECEIVER"]

    async def answer(messages: list[HostMessage]) -> str:
        return f"answer to {messages[-1].text}"

    def trusted(request: Any, identity: ChannelIdentity) -> bool:
        return bool(request is not None and request.headers.get("x-test-trusted") == "yes")

    return Host(
        answer,
        channels=[
            InvocationsChannel(trust_platform_headers=True),
            WebhookChannel(name="hook_a", url=f"{receiver}/hook/a", secret=SECRET),
            WebhookChannel(name="hook_b", url=f"{receiver}/hook/b", secret=SECRET),
        ],
        state_dir=Path(os.environ["CRASH_TEST_STATE_DIR"]),
        trust_wire_targets=trusted,
        delivery_retry=RetryPolicy(max_attempts=100, base_seconds=0.1, cap_seconds=0.3),
        delivery_lease_seconds=1.0,
    )
