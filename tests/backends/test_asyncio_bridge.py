"""The asyncio bridge runs asyncio-only code the same way under asyncio and under trio.

Under asyncio the bridge calls straight through; under trio it reaches an asyncio loop in a
helper thread. These tests hold both to the same behaviour: results, streams, context
variables that live across the steps of one stream, and cancellation carried to the
asyncio side. The asyncio-only code here uses asyncio directly, as Agent Framework does.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - the point of these tests is code that only runs on asyncio
import contextvars
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing

import anyio
import pytest

from agenthost.backends.asyncio_bridge import THREAD_NAME, AsyncioBridge, running_on_asyncio
from tests.conftest import BACKEND

pytestmark = pytest.mark.anyio

STEP = contextvars.ContextVar[str]("STEP")


async def doubled_on_asyncio(value: int) -> tuple[int, bool]:
    await asyncio.sleep(0.001)
    return value * 2, asyncio.current_task() is not None


async def counting(limit: int) -> AsyncIterator[int]:
    for i in range(limit):
        await asyncio.sleep(0)
        yield i


async def test_call_runs_asyncio_only_code() -> None:
    assert running_on_asyncio() is (BACKEND == "asyncio")
    with anyio.fail_after(10):
        async with AsyncioBridge() as bridge:
            assert await bridge.call(doubled_on_asyncio, 21) == (42, True)
            assert await bridge.call(doubled_on_asyncio, 1) == (2, True)


async def test_call_outside_the_bridge_needs_asyncio() -> None:
    bridge = AsyncioBridge()
    if BACKEND == "asyncio":
        assert await bridge.call(doubled_on_asyncio, 2) == (4, True)
    else:
        with pytest.raises(RuntimeError, match="asyncio bridge"):
            await bridge.call(doubled_on_asyncio, 2)


async def test_iterate_pulls_an_asyncio_stream() -> None:
    with anyio.fail_after(10):
        async with AsyncioBridge() as bridge:
            items = [item async for item in bridge.iterate(lambda: counting(5))]
            assert items == [0, 1, 2, 3, 4]
            assert [item async for item in bridge.iterate(lambda: counting(0))] == []


async def test_a_stream_keeps_one_context_across_its_steps() -> None:
    # Agent Framework sets a context variable in one step of a stream and resets it later.
    async def telemetry_like() -> AsyncIterator[str]:
        token = STEP.set("streaming")
        yield STEP.get()
        await asyncio.sleep(0)
        yield STEP.get()
        STEP.reset(token)
        yield STEP.get("reset")

    with anyio.fail_after(10):
        async with AsyncioBridge() as bridge:
            items = [item async for item in bridge.iterate(telemetry_like)]
    assert items == ["streaming", "streaming", "reset"]


async def test_cancelling_the_caller_cancels_the_asyncio_task() -> None:
    started = threading.Event()
    seen: list[str] = []

    async def waits_forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("woke up")

    with anyio.fail_after(10):
        async with AsyncioBridge() as bridge:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(bridge.call, waits_forever)
                assert await anyio.to_thread.run_sync(started.wait, 5)
                tasks.cancel_scope.cancel()
            # The bridge waits for the asyncio side to finish before the caller moves on.
            assert seen == ["cancelled"]
            # The bridge still works after a cancelled call.
            assert await bridge.call(doubled_on_asyncio, 5) == (10, True)


async def test_cancelling_a_stream_cancels_and_closes_the_asyncio_generator() -> None:
    waiting = threading.Event()
    seen: list[str] = []
    received: list[int] = []

    async def slow_stream() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
            waiting.set()
            await asyncio.sleep(3600)
            yield 3
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("closed")

    async def consume(bridge: AsyncioBridge) -> None:
        async for item in bridge.iterate(slow_stream):
            received.append(item)

    with anyio.fail_after(10):
        async with AsyncioBridge() as bridge:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(consume, bridge)
                assert await anyio.to_thread.run_sync(waiting.wait, 5)
                tasks.cancel_scope.cancel()
            assert received == [1, 2]
            assert seen == ["cancelled", "closed"]


async def test_leaving_a_stream_early_closes_the_asyncio_generator() -> None:
    seen: list[str] = []

    async def endless() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                await asyncio.sleep(0)
                yield i
                i += 1
        finally:
            seen.append("closed")

    with anyio.fail_after(10):
        async with AsyncioBridge() as bridge:
            received = []
            async with aclosing(bridge.iterate(endless)) as stream:
                async for item in stream:
                    received.append(item)
                    if item == 2:
                        break
            assert received == [0, 1, 2]
            assert seen == ["closed"]


async def test_a_bridge_left_in_a_cancelled_scope_stops_its_loop() -> None:
    """A lifespan cancelled from outside still stops the helper loop: left running, its
    daemon thread is killed at interpreter exit and the portal's clean-up then waits for it
    forever, so the process never ends (seen under trio after a failing test)."""

    def bridge_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == THREAD_NAME]

    with anyio.fail_after(10):
        with anyio.move_on_after(0.2) as left:
            async with AsyncioBridge() as bridge:
                assert await bridge.call(doubled_on_asyncio, 1) == (2, True)
                assert len(bridge_threads()) == (1 if BACKEND == "trio" else 0)
                await anyio.sleep(5)
        assert left.cancelled_caught
        assert bridge_threads() == []
