"""Run asyncio-only code (Agent Framework targets) from any anyio backend.

Under asyncio the bridge calls straight through. Under trio it owns one asyncio event loop
in a helper thread (an anyio blocking portal) and reaches it with ``call_async``, which
carries cancellation across: cancelling the trio caller cancels the asyncio task. Streams
are pulled one update per call, so the trio side sets the pace and nothing is buffered.
Every pull of one stream runs in the same ``contextvars.Context``, as it would inside one
asyncio task: Agent Framework sets a context variable in one step of a stream and resets it
in a later one, which fails if each step has a context of its own.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Protocol, TypeVar

import anyio
import anyio.from_thread

T = TypeVar("T")

_END = object()
THREAD_NAME = "agenthost-asyncio-bridge"  # the helper loop's thread, under trio


def running_on_asyncio() -> bool:
    """Whether the calling task runs on an asyncio event loop (else: trio)."""
    import asyncio  # noqa: TID251 - this module is where the host names asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def asyncio_timeout(seconds: float) -> AbstractAsyncContextManager[Any] | None:
    """asyncio's own timeout when the calling task runs on asyncio (it raises
    ``TimeoutError`` after ``seconds``), else ``None``: use anyio's scope then.

    For a deadline on every request: an anyio cancel scope with a deadline costs about
    2.2x asyncio's timeout there (timeit, 30,000 rounds: 11.5 us for the scope and 8 more
    for its timer, against 8.7 us). The two nest: an anyio cancellation from outside
    passes through as a CancelledError, which becomes ``TimeoutError`` only at the
    timeout's own deadline.
    """
    import asyncio  # noqa: TID251 - this module is where the host names asyncio

    if not running_on_asyncio():
        return None
    return asyncio.timeout(seconds)


class StopScope(Protocol):
    """Where a task's work can be stopped from another task: ``cancel()`` stops it at its
    next checkpoint, and the scope swallows that one cancellation (``cancelled_caught``).
    A cancellation from outside the scope passes through it."""

    @property
    def cancelled_caught(self) -> bool: ...

    def cancel(self) -> None: ...

    async def __aenter__(self) -> StopScope: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool: ...


def stop_scope() -> StopScope:
    """A :class:`StopScope` for the calling task: on asyncio, the task's own cancellation
    (``Task.cancel`` and ``Task.uncancel``, as ``asyncio.timeout`` uses it); on trio, an
    anyio cancel scope.

    On asyncio an anyio cancel scope costs a run that holds a session lease about 32,000
    instructions (callgrind, a returning Invocations turn on MemoryStore: 496k -> 464k
    without one), 6% of the request: it tracks its host task and the scopes around it, and
    its exit walks them. This one keeps the task and its cancel count, and nothing else.
    """
    if running_on_asyncio():
        return _AsyncioStopScope()
    return _AnyioStopScope()


class _AsyncioStopScope:
    """The rules of ``asyncio.timeout``, without its deadline. ``cancel()`` is called from
    another task while this one waits inside the scope (the interpreter registers the scope
    after entering it and unregisters it before leaving), so ``Task.cancel`` throws a
    ``CancelledError`` at the await it waits in; each call sends one more (a target that
    swallowed one is stopped by the next lease round or interrupt). On the way out the
    scope takes back the cancellations it sent (``Task.uncancel``) and swallows the error
    only when no other is pending on the task: a cancellation from outside passes through.
    """

    __slots__ = ("_cancelling", "_sent", "_task", "cancelled_caught")

    def __init__(self) -> None:
        self._task: Any = None
        self._cancelling = 0  # the task's pending cancellations on entry
        self._sent = 0
        self.cancelled_caught = False

    def cancel(self) -> None:
        if self._task is not None:
            self._sent += 1
            self._task.cancel()

    async def __aenter__(self) -> _AsyncioStopScope:
        import asyncio  # noqa: TID251 - this module is where the host names asyncio

        task = asyncio.current_task()
        if task is None:  # pragma: no cover - only called from a task
            raise RuntimeError("a stop scope must be entered inside an asyncio task")
        self._task = task
        self._cancelling = task.cancelling()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        task, self._task = self._task, None
        if not self._sent:
            return False
        import asyncio  # noqa: TID251 - this module is where the host names asyncio

        for _ in range(self._sent):
            pending = task.uncancel()
        if pending <= self._cancelling and exc_type is asyncio.CancelledError:
            self.cancelled_caught = True
            return True
        return False


class _AnyioStopScope:
    __slots__ = ("_scope",)

    def __init__(self) -> None:
        self._scope = anyio.CancelScope()

    @property
    def cancelled_caught(self) -> bool:
        return self._scope.cancelled_caught

    def cancel(self) -> None:
        self._scope.cancel()

    async def __aenter__(self) -> _AnyioStopScope:
        self._scope.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return bool(self._scope.__exit__(exc_type, exc, traceback))


class AsyncioBridge:
    """Owned by the host's lifespan: ``async with bridge:`` starts the helper loop if needed."""

    def __init__(self) -> None:
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None

    async def __aenter__(self) -> AsyncioBridge:
        if not running_on_asyncio():
            self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio", name=THREAD_NAME)
            # Shielded, as the exit below: a started loop must be known, to be stopped.
            with anyio.CancelScope(shield=True):
                self._portal = await anyio.to_thread.run_sync(self._portal_cm.__enter__)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._portal_cm is not None:
            cm, self._portal_cm, self._portal = self._portal_cm, None, None
            # Shielded: left in a cancelled scope (a lifespan cancelled from outside), trio's
            # to_thread.run_sync refuses to start and the loop's thread would run on; at
            # interpreter exit its portal's clean-up then waits for that (daemon, killed)
            # thread forever, and the process never ends. Stopping the loop takes little.
            with anyio.CancelScope(shield=True):
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

    async def iterate(self, open_stream: Callable[[], AsyncIterator[T]]) -> AsyncGenerator[T, None]:
        """Iterate an asyncio-side async iterator from this loop, one update per pull."""
        if self._portal is None:
            direct = await self.call(_as_awaitable(open_stream))
            try:
                async for item in direct:
                    yield item
            finally:
                # As below: leaving early closes the stream now, not when it is collected.
                with anyio.CancelScope(shield=True):
                    aclose = getattr(direct, "aclose", None)
                    if aclose is not None:
                        await aclose()
            return
        context, iterator = await self._portal.call_async(_open_in_own_context, open_stream)
        try:
            while True:
                item = await self._portal.call_async(_in_context, context, _next_or_end, iterator)
                if item is _END:
                    return
                yield item
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await self._portal.call_async(_in_context, context, aclose)


def _as_awaitable(
    open_stream: Callable[[], AsyncIterator[T]],
) -> Callable[[], Awaitable[AsyncIterator[T]]]:
    async def opened() -> AsyncIterator[T]:
        return open_stream()

    return opened


async def _open_in_own_context(
    open_stream: Callable[[], AsyncIterator[T]],
) -> tuple[contextvars.Context, AsyncIterator[T]]:
    context = contextvars.copy_context()
    return context, context.run(open_stream)


async def _in_context(
    context: contextvars.Context, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any
) -> T:
    import asyncio  # noqa: TID251 - this module is where the host names asyncio

    # Awaiting the task passes a cancellation of this one on to it.
    return await asyncio.create_task(fn(*args), context=context)


async def _next_or_end(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _END
