"""The host that ``test_kill_restart.py`` runs in a child process and kills.

Its target blocks on the first attempt (after leaving a marker file, so the test knows
the run is in flight) and answers on any later one. Settings come from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from agenthost import Host, HostMessage
from agenthost.channels.invocations import InvocationsChannel


def build_host() -> Host:
    state_dir = Path(os.environ["KILL_TEST_STATE_DIR"])
    marker = state_dir / "first-attempt-started"

    async def slow_first_time(messages: list[HostMessage]) -> str:
        if not marker.exists():
            marker.write_text("running")
            await anyio.sleep(120)  # the test kills the process long before this ends
        return f"finished after restart: {messages[-1].text}"

    return Host(
        slow_first_time,
        channels=[InvocationsChannel()],
        state_dir=state_dir,
        lease_seconds=1.0,
        background_max_attempts=int(os.environ["KILL_TEST_MAX_ATTEMPTS"]),
        shutdown_grace_seconds=float(os.environ.get("KILL_TEST_GRACE_SECONDS", "10")),
    )
