"""The host that ``test_exactly_once_turns.py`` runs in a child process and kills.

Its store stalls wherever a background run's completion would be recorded on its own,
after the turn's session was saved: the window in which a process that dies applied the
turn but did not finish the run. The target answers how many times the session's history
holds the word ``first``, so a turn applied twice shows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anyio

from agenthost import Host, HostMessage
from agenthost.channels.invocations import InvocationsChannel
from agenthost.sansio_core import background
from agenthost.sansio_core.delivery import Delivery
from agenthost.stores.sqlite import SQLiteStore


class CompletionStallingStore(SQLiteStore):
    """Stalls (marking it in a file) when asked to complete a run on its own."""

    def __init__(self, path: Path, marker: Path, stall: bool) -> None:
        super().__init__(path)
        self._marker = marker
        self._stall = stall

    async def apply_run_event(self, token: str, event: background.RunEvent) -> background.RunRecord:
        if isinstance(event, background.Complete):
            await self._stall_here()
        return await super().apply_run_event(token, event)

    async def complete_run_with_deliveries(
        self, token: str, event: background.RunEvent, deliveries: Sequence[Delivery]
    ) -> background.RunRecord:
        await self._stall_here()
        return await super().complete_run_with_deliveries(token, event, deliveries)

    async def _stall_here(self) -> None:
        if self._stall:
            self._marker.write_text("stalled between the save and the completion")
            await anyio.sleep(120)  # the test kills the process long before this ends


async def count_first(messages: list[HostMessage]) -> str:
    return f"first x{sum(message.text == 'first' for message in messages)}"


def build_host() -> Host:
    state_dir = Path(os.environ["EXACTLY_ONCE_STATE_DIR"])
    store = CompletionStallingStore(
        state_dir / "state.db",
        state_dir / "stalled",
        stall=os.environ.get("EXACTLY_ONCE_STALL") == "1",
    )
    return Host(
        count_first,
        channels=[InvocationsChannel()],
        store=store,
        state_dir=state_dir,
        lease_seconds=1.0,
    )
