"""Shared set-up for the MCP channel's tests: hosts served on loopback, the real ``mcp``
client over streamable HTTP, and targets that record or hold their runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from agenthost import Host, HostMessage
from agenthost.backends.channel import Channel
from agenthost.channels.mcp import MCPChannel
from agenthost.stores.sqlite import SQLiteStore

TIMEOUT = 30.0
#: The two generations the SDK speaks: the initialize handshake (it offers 2025-11-25)
#: and the stateless 2026-07-28 envelope.
GENERATIONS = ("legacy", "2026-07-28")
TOKENS = {"token-alice": "alice", "token-bob": "bob"}


@pytest.fixture(params=GENERATIONS)
def generation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_host(
    target: Any,
    tmp_path: Path,
    *,
    channels: Sequence[Channel] | None = None,
    **host_options: Any,
) -> Host:
    return Host(
        target,
        channels=list(channels) if channels is not None else [MCPChannel(api_keys=TOKENS)],
        store=SQLiteStore(tmp_path / "state.db"),
        state_dir=tmp_path,
        **host_options,
    )


@asynccontextmanager
async def mcp_client(
    base_url: str,
    generation: str,
    *,
    token: str | None = "token-alice",
    headers: Mapping[str, str] | None = None,
    path: str = "/mcp",
) -> AsyncIterator[Client]:
    """The official client, connected in ``generation`` with ``token`` as its bearer."""
    sent = {"authorization": f"Bearer {token}"} if token is not None else {}
    sent.update(headers or {})
    async with (
        httpx2.AsyncClient(headers=sent, timeout=httpx2.Timeout(TIMEOUT)) as http,
        Client(
            streamable_http_client(f"{base_url}{path}", http_client=http),
            mode=generation,
            cache=None,
        ) as client,
    ):
        yield client


def user_texts(messages: Sequence[HostMessage]) -> list[str]:
    return [m.text for m in messages if m.role == "user"]


class Recorder:
    """Answers with the user's words so far, joined by ' | ', and records each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, messages: list[HostMessage]) -> str:
        self.calls.append(user_texts(messages))
        return " | ".join(user_texts(messages))


class Streaming:
    """Streams each of ``pieces`` as its own update."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = tuple(pieces)

    async def __call__(self, messages: list[HostMessage]) -> AsyncIterator[str]:
        for piece in self.pieces:
            yield piece


class Gated:
    """Streams ``first``, then waits for ``release``; notes its start and a cancellation.

    Later calls (after the first was cancelled or released) answer at once with the user's
    words so far, so a test can see what the session kept.
    """

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = anyio.Event()
        self.calls: list[list[str]] = []

    async def __call__(self, messages: list[HostMessage]) -> AsyncIterator[str]:
        self.calls.append(user_texts(messages))
        if len(self.calls) > 1:
            yield " | ".join(user_texts(messages))
            return
        self.started.set()
        try:
            yield "working "
            await self.release.wait()
            yield "done"
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
