"""The host that the replica tests run as several ``agenthost serve`` processes on one
PostgreSQL database (``AGENTHOST_STORE``, set by the test).

Its target answers with what it saw, so a test can tell from the answers alone whether
turns on one session ran one after another: ``"<replica> saw <n>"``, ``n`` being how many
user messages the session's history held. Input ``"block"`` blocks on its first attempt
anywhere (a marker file in the shared directory says which replica took it) and answers
``"finished by <replica>"`` on the next. Every attempt is appended to a shared log.
Two webhook channels (``hook_a``, ``hook_b``) point at the test's receiver.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from agenthost import ChannelIdentity, Host, HostMessage
from agenthost.channels.invocations import InvocationsChannel
from agenthost.channels.webhook import WebhookChannel
from agenthost.sansio_core.delivery import RetryPolicy
from tests.delivery.receiver import SECRET


def build_host() -> Host:
    shared = Path(os.environ["REPLICA_TEST_DIR"])
    name = os.environ["REPLICA_NAME"]
    receiver = os.environ["REPLICA_TEST_RECEIVER"]

    async def answer(messages: list[HostMessage]) -> str:
        text = messages[-1].text
        with (shared / "attempts.log").open("a") as log:
            log.write(f"{name} {text}\n")
        if text == "block":
            marker = shared / "blocked-by"
            if not marker.exists():
                marker.write_text(name)
                await anyio.sleep(120)  # the test kills this replica long before
            return f"finished by {name}"
        seen = sum(1 for m in messages[:-1] if m.role == "user")
        await anyio.sleep(0.05)  # widen the window in which overlapping turns would show
        return f"{name} saw {seen}"

    def trusted(request: Any, identity: ChannelIdentity) -> bool:
        return bool(request is not None and request.headers.get("x-test-trusted") == "yes")

    return Host(
        answer,
        channels=[
            InvocationsChannel(trust_platform_headers=True),
            WebhookChannel(name="hook_a", url=f"{receiver}/hook/a", secret=SECRET),
            WebhookChannel(name="hook_b", url=f"{receiver}/hook/b", secret=SECRET),
        ],
        state_dir=shared / name,
        trust_wire_targets=trusted,
        lease_seconds=1.0,
        delivery_retry=RetryPolicy(max_attempts=100, base_seconds=0.1, cap_seconds=0.3),
        delivery_lease_seconds=2.0,
    )
