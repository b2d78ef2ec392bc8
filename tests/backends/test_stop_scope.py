"""The scope a lease-holding run is stopped in (``asyncio_bridge.stop_scope``): stopped from
another task, it swallows its own cancellation and nothing else, on asyncio and on trio."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from agenthost.backends.asyncio_bridge import StopScope, running_on_asyncio, stop_scope

pytestmark = pytest.mark.anyio


async def _stop_while_inside(body_after_stop: str) -> tuple[list[str], StopScope]:
    """Run a body in a stop scope and stop it once from outside. ``body_after_stop`` says
    what the body does with the cancellation: ``"raise"`` lets it propagate,
    ``"swallow"`` catches it and returns, ``"swallow then wait"`` catches it and waits
    again (until the second stop)."""
    seen: list[str] = []
    entered = anyio.Event()
    scopes: list[StopScope] = []

    async def body() -> None:
        async with stop_scope() as scope:
            scopes.append(scope)
            entered.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                seen.append("cancelled")
                if body_after_stop == "raise":
                    raise
            if body_after_stop == "swallow then wait":
                await anyio.sleep(30)
                seen.append("slept on")
        seen.append("after the scope")
        await anyio.lowlevel.checkpoint()  # a cancellation left pending would be raised here
        seen.append("checkpoint passed")
        if running_on_asyncio():
            import asyncio  # noqa: TID251 - the asyncio side of the scope

            # Every cancellation the scope sent was taken back: an asyncio.timeout or
            # TaskGroup around the run still tells its own cancellation from others.
            task = asyncio.current_task()
            assert task is not None
            seen.append(f"pending {task.cancelling()}")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(body)
            await entered.wait()
            scopes[0].cancel()
            if body_after_stop == "swallow then wait":
                with anyio.fail_after(5):
                    while "cancelled" not in seen:
                        await anyio.sleep(0.01)
                scopes[0].cancel()
    return seen, scopes[0]


async def test_a_stopped_scope_swallows_its_own_cancellation() -> None:
    seen, scope = await _stop_while_inside("raise")
    assert seen[:3] == ["cancelled", "after the scope", "checkpoint passed"]
    assert seen[3:] == (["pending 0"] if running_on_asyncio() else [])
    assert scope.cancelled_caught


async def test_a_body_that_swallows_the_stop_leaves_no_cancellation_behind() -> None:
    seen, scope = await _stop_while_inside("swallow")
    assert seen[:3] == ["cancelled", "after the scope", "checkpoint passed"]
    assert seen[3:] == (["pending 0"] if running_on_asyncio() else [])
    assert not scope.cancelled_caught


async def test_a_body_that_swallowed_one_stop_is_stopped_by_the_next() -> None:
    # As a lost lease's next renewal round, or a second interrupt, stops it.
    seen, scope = await _stop_while_inside("swallow then wait")
    assert "slept on" not in seen
    assert seen[1:3] == ["after the scope", "checkpoint passed"]
    assert seen[3:] == (["pending 0"] if running_on_asyncio() else [])
    assert scope.cancelled_caught


async def test_a_scope_never_stopped_changes_nothing() -> None:
    async with stop_scope() as scope:
        await anyio.lowlevel.checkpoint()
    await anyio.lowlevel.checkpoint()
    assert not scope.cancelled_caught


async def test_a_stop_passes_the_scopes_a_target_opens_inside() -> None:
    # An agent waits inside cancel scopes of its own (anyio's, a framework's timeout): the
    # stop must reach the run scope through them, not end at the innermost.
    entered = anyio.Event()
    reached: list[str] = []
    scopes: list[StopScope] = []

    async def body() -> None:
        async with stop_scope() as scope:
            scopes.append(scope)
            with anyio.move_on_after(30):
                entered.set()
                await anyio.sleep_forever()
            reached.append("after the inner scope")
        reached.append("after the run scope")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(body)
            await entered.wait()
            scopes[0].cancel()
    assert reached == ["after the run scope"] and scopes[0].cancelled_caught


async def test_a_cancellation_from_outside_passes_through_a_scope() -> None:
    entered = anyio.Event()
    reached: list[str] = []

    async def body() -> None:
        async with stop_scope():
            entered.set()
            await anyio.sleep_forever()
        reached.append("after the scope")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(body)
            await entered.wait()
            tasks.cancel_scope.cancel()
    assert reached == []


async def test_on_asyncio_a_native_cancellation_sent_with_a_stop_is_not_swallowed() -> None:
    # anyio re-delivers its own cancellations; a native one (asyncio.timeout's, a task's
    # cancel()) is sent once, so a scope that swallowed it would lose it for good.
    if not running_on_asyncio():
        pytest.skip("native asyncio cancellation")
    import asyncio  # noqa: TID251 - the asyncio side of the scope is what this test is about

    entered = asyncio.Event()
    stopped: list[StopScope] = []
    reached: list[str] = []

    async def body() -> None:
        async with stop_scope() as scope:
            stopped.append(scope)
            entered.set()
            await asyncio.sleep(30)
        reached.append("after the scope")

    task = asyncio.create_task(body())
    await asyncio.wait_for(entered.wait(), 5)
    stopped[0].cancel()  # the stop ...
    task.cancel()  # ... and a cancellation from outside, before the task runs again
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert reached == [] and not stopped[0].cancelled_caught
