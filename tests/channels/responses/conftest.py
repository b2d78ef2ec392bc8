"""Shared set-up for the Responses channel's end-to-end tests: hosts, clients, gated targets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import openai

from agenthost import Host, HostMessage
from agenthost.backends.channel import Channel
from agenthost.channels.responses import ResponsesChannel
from agenthost.stores.sqlite import SQLiteStore
from tests.served import served

TIMEOUT = 30.0


def make_host(
    target: Any,
    tmp_path: Path,
    *,
    channels: Sequence[Channel] | None = None,
    **host_options: Any,
) -> Host:
    return Host(
        target,
        channels=list(channels) if channels is not None else [ResponsesChannel()],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        **host_options,
    )


def sdk_client(base_url: str, key: str = "key-a") -> openai.AsyncOpenAI:
    """The official client, pointed at the channel as at OpenAI (no retries: tests count)."""
    return openai.AsyncOpenAI(
        api_key=key, base_url=f"{base_url}/responses/v1", max_retries=0, timeout=TIMEOUT
    )


@asynccontextmanager
async def serving(host: Host) -> AsyncIterator[str]:
    """The host served on loopback by the real Hypercorn: yields its base URL."""
    async with served(host.app) as base_url:
        yield base_url


class Gated:
    """A text-streaming target that yields ``first``, then waits for ``release`` before
    yielding ``rest``; it notes when it started and whether it was cancelled."""

    def __init__(self, first: str = "one ", rest: Sequence[str] = ("two ", "three")) -> None:
        self.first = first
        self.rest = tuple(rest)
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = anyio.Event()
        self.calls: list[list[str]] = []

    async def __call__(self, messages: list[HostMessage]) -> AsyncIterator[str]:
        self.calls.append([m.text for m in messages])
        self.started.set()
        try:
            yield self.first
            await self.release.wait()
            for piece in self.rest:
                yield piece
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
