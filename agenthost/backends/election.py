"""One replica at a time: run a task only while this process holds a store singleton lease.

Some work must have exactly one doer among the replicas sharing a store: Telegram allows one
``getUpdates`` poller per bot. :func:`run_while_elected` contends for the lease ``name``
(``Store.acquire_singleton``), runs the work while it holds it, renews it every third of
its time, and cancels the work as soon as a renewal fails, then contends again. A replica
that dies stops renewing; another takes over once the lease lapses, within ``ttl`` plus a
third of it. A clean stop releases the lease, so the next holder starts at once.

Whatever the work does must stay correct if two holders briefly overlap (a process frozen
past its lease): the Telegram poller keeps its offset and processed update ids in the
store, so an overlap costs a refused ``getUpdates``, never a lost or repeated update.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

import anyio

from agenthost.stores.base import Store

log = logging.getLogger(__name__)

DEFAULT_TTL = 6.0


async def run_while_elected(
    store: Store,
    name: str,
    work: Callable[[], Awaitable[None]],
    *,
    clock: Callable[[], float],
    ttl: float = DEFAULT_TTL,
    holder: str | None = None,
) -> None:
    """Run ``work`` whenever this process holds the lease ``name``; never returns unless
    ``work`` does (or raises)."""
    me = holder or f"{name}:{uuid.uuid4().hex}"
    while True:
        if not await _acquire(store, name, me, clock, ttl):
            await anyio.sleep(ttl / 3)
            continue
        log.info("elected", extra={"singleton": name})
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_keep, store, name, me, clock, ttl, tasks.cancel_scope)
                await work()
                tasks.cancel_scope.cancel()
                return
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await store.release_singleton(name, me)
                except Exception:
                    log.warning("could not release a singleton lease", extra={"singleton": name})
        # The lease was lost (``_keep`` cancelled the work): contend again.


async def _keep(
    store: Store,
    name: str,
    me: str,
    clock: Callable[[], float],
    ttl: float,
    scope: anyio.CancelScope,
) -> None:
    while True:
        await anyio.sleep(ttl / 3)
        if not await _acquire(store, name, me, clock, ttl):
            log.warning("lost a singleton lease; stopping its work", extra={"singleton": name})
            scope.cancel()
            return


async def _acquire(
    store: Store, name: str, me: str, clock: Callable[[], float], ttl: float
) -> bool:
    try:
        return await store.acquire_singleton(name, me, now=clock(), ttl=ttl)
    except Exception:  # a store outage: not elected now, try again later
        log.exception("could not reach the store for a singleton lease", extra={"singleton": name})
        return False
