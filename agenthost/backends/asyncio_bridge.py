"""Run asyncio-only code (Agent Framework targets) from any anyio backend.

Under asyncio the bridge calls straight through. Under trio it owns one asyncio event loop
in a helper thread (an anyio blocking portal) and reaches it with ``call_async``, which
carries cancellation across: cancelling the trio caller cancels the asyncio task. Streams
are pulled one update per call, so the trio side sets the pace and nothing is buffered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import anyio
import anyio.from_thread

T = TypeVar("T")

_END = object()


def running_on_asyncio() -> bool:
    """Whether the calling task runs on an asyncio event loop (else: trio)."""
    import asyncio  # noqa: TID251 - this module is where the host names asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class AsyncioBridge:
    """Owned by the host's lifespan: ``async with bridge:`` starts the helper loop if needed."""

    def __init__(self) -> None:
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None

    async def __aenter__(self) -> AsyncioBridge:
        if not running_on_asyncio():
            self._portal_cm = anyio.from_thread.start_blocking_portal(
                "asyncio", name="agenthost-asyncio-bridge"
            )
            self._portal = await anyio.to_thread.run_sync(self._portal_cm.__enter__)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._portal_cm is not None:
            cm, self._portal_cm, self._portal = self._portal_cm, None, None
            await anyio.to_thread.run_sync(cm.__exit__, None, None, None)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` on an asyncio loop."""
        if self._portal is None:
            if not running_on_asyncio():
                raise RuntimeError(
                    "an Agent Framework target needs the host's asyncio bridge under trio; "
                    "run it inside the host's lifespan (host.app or host.serve)"
                )
            return await fn(*args)
        return await self._portal.call_async(fn, *args)

    async def iterate(self, open_stream: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Iterate an asyncio-side async iterator from this loop, one update per pull."""
        if self._portal is None:
            async for item in await self.call(_as_awaitable(open_stream)):
                yield item
            return
        iterator = await self._portal.call_async(_as_awaitable(open_stream))
        try:
            while True:
                item = await self._portal.call_async(_next_or_end, iterator)
                if item is _END:
                    return
                yield item
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await self._portal.call_async(aclose)


def _as_awaitable(
    open_stream: Callable[[], AsyncIterator[T]],
) -> Callable[[], Awaitable[AsyncIterator[T]]]:
    async def opened() -> AsyncIterator[T]:
        return open_stream()

    return opened


async def _next_or_end(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _END
