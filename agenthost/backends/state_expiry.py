"""The timer that drops session states their target can do without once the session idles.

A target marks such a state when it saves it (``TargetSucceeded.state_expires_when_idle``;
the workflow adapter marks a finished workflow's checkpoint). This task asks the store every
``interval_seconds`` to drop the marked states of sessions last saved ``ttl_seconds`` or
more ago (``Store.expire_idle_states``). The core decides each one
(``sessions.idle_state_expired``) with the session's lease, read in the store's
transaction, so a session in a turn is never touched; the time is the host's clock, given
in. A pass is bounded: batches of ``batch_size`` sessions, at most ``max_batches`` of them,
then it sleeps, so a backlog (after an upgrade, or a shortened TTL) drains over several
passes instead of holding the store. Every replica runs it; the store keeps concurrent
passes from dropping a state twice or racing a turn.

It lives in the host's lifespan task group and performs nothing else: no decision here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.abc
import attrs

from agenthost.stores.base import Store

log = logging.getLogger("agenthost.state_expiry")

_MIN_INTERVAL_SECONDS = 0.2
_MAX_INTERVAL_SECONDS = 600.0


@attrs.frozen
class StateExpirySettings:
    ttl_seconds: float
    interval_seconds: float = _MAX_INTERVAL_SECONDS
    batch_size: int = 100
    max_batches: int = 10

    @classmethod
    def for_ttl(cls, ttl_seconds: float) -> StateExpirySettings:
        """Looked at ten times a TTL (a state goes at most a tenth of it late), and at most
        every ten minutes: a pass that finds nothing is one indexed query."""
        interval = min(max(ttl_seconds / 10, _MIN_INTERVAL_SECONDS), _MAX_INTERVAL_SECONDS)
        return cls(ttl_seconds, interval_seconds=interval)


class IdleStateExpiry:
    def __init__(
        self, *, store: Store, clock: Callable[[], float], settings: StateExpirySettings
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Sweep now and every ``interval_seconds`` until cancelled."""
        task_status.started()
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("idle state expiry failed; retrying at the next interval")
            await anyio.sleep(self._settings.interval_seconds)

    async def sweep(self) -> int:
        """One pass: batches until one comes back short or ``max_batches``; how many went."""
        settings = self._settings
        dropped = 0
        for _ in range(settings.max_batches):
            batch = await self._store.expire_idle_states(
                self._clock(), settings.ttl_seconds, settings.batch_size
            )
            dropped += batch
            if batch < settings.batch_size:
                break
        if dropped:
            log.info("dropped idle session states", extra={"sessions": dropped})
        return dropped
