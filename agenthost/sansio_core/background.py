"""The background-run lifecycle: accepted runs are recorded, run, finished and expired.

Rules (everything that decides a background run's status lives in this file):

1. A run is recorded ``queued`` before anything runs, so a crash after the caller got its
   token loses nothing.
2. A worker takes a run by starting it: ``queued -> running`` with an owner and a lease it
   renews by heartbeat. Only the owner may heartbeat, complete or fail the run.
3. A ``running`` run whose lease expired was abandoned (its process died). Recovery puts it
   back to ``queued`` to be run again from the start (at-least-once) while attempts remain,
   and otherwise fails it with a reason. A run is never left ``running`` by a dead owner.
4. A graceful shutdown *suspends* the runs it had to interrupt: ``running -> queued``
   without spending an attempt, since the run did not fail.
5. Cancellation is idempotent: ``queued``/``running`` become ``cancelled``; cancelling a
   finished run changes nothing. The running owner learns it at its next heartbeat.
6. Finished runs (``completed``, ``failed``, ``cancelled``) keep their result until
   ``expires_at``; then ``expire`` deletes them.
7. A run belongs to the caller that asked for it: the identity (channel and native id) of
   its request as it arrived. A poll or cancel route answers a run only to that caller
   (:func:`is_owned_by`); anyone else gets the same "not found" as for a missing token,
   so a token is no oracle and no one else's run can be read or cancelled.

The transitions are :data:`RUN_TRANSITIONS`; ``apply`` refuses any step outside it, and
``docs/`` draws it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ContinuationToken,
    RunStatus,
)


@attrs.frozen
class RunRecord:
    """A stored background run: its request, its progress and, in the end, its result."""

    token: str
    status: RunStatus
    isolation_key: str
    session_id: str | None
    session_key: str | None
    request: ChannelRequest
    created_at: float
    updated_at: float
    max_attempts: int = 3
    attempts: int = 0
    owner: str | None = None
    lease_expires_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    result: Mapping[str, Any] | None = None
    error: str | None = None

    def to_token(self) -> ContinuationToken:
        return ContinuationToken(
            token=self.token,
            status=self.status,
            isolation_key=self.isolation_key,
            created_at=self.created_at,
            completed_at=self.completed_at,
            result=self.result,
            error=self.error,
            response_target=self.request.response_target,
        )

    def is_abandoned(self, now: float) -> bool:
        return (
            self.status is RunStatus.RUNNING
            and self.lease_expires_at is not None
            and self.lease_expires_at <= now
        )


# --- events -------------------------------------------------------------------------


@attrs.frozen
class Start:
    owner: str
    now: float
    lease_seconds: float


@attrs.frozen
class Heartbeat:
    owner: str
    now: float
    lease_seconds: float


@attrs.frozen
class Complete:
    owner: str
    now: float
    result: Mapping[str, Any]
    ttl: float


@attrs.frozen
class Fail:
    owner: str
    now: float
    error: str
    ttl: float


@attrs.frozen
class Suspend:
    """The owner stops a run for a shutdown; it goes back to the queue, attempt unspent."""

    owner: str
    now: float


@attrs.frozen
class Cancel:
    now: float
    ttl: float


@attrs.frozen
class Recover:
    """A sweep found the run; it acts only if the run was abandoned."""

    now: float
    ttl: float


RunEvent = Start | Heartbeat | Complete | Fail | Suspend | Cancel | Recover

Q, R, C, F, X = (
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
)

# (status before, event) -> statuses the step may lead to.
RUN_TRANSITIONS: dict[tuple[RunStatus, type[RunEvent]], frozenset[RunStatus]] = {
    (Q, Start): frozenset({R}),
    (R, Heartbeat): frozenset({R}),
    (R, Complete): frozenset({C}),
    (R, Fail): frozenset({F}),
    (R, Suspend): frozenset({Q}),
    (Q, Cancel): frozenset({X}),
    (R, Cancel): frozenset({X}),
    (C, Cancel): frozenset({C}),
    (F, Cancel): frozenset({F}),
    (X, Cancel): frozenset({X}),
    (R, Recover): frozenset({R, Q, F}),  # not abandoned / retried / out of attempts
    (Q, Recover): frozenset({Q}),
}


class RunTransitionRefused(Exception):
    """The event does not apply to the run as it stands (stale owner, finished run...)."""

    def __init__(self, record: RunRecord, event: RunEvent, reason: str) -> None:
        super().__init__(f"{type(event).__name__} refused on {record.status.value} run: {reason}")
        self.record = record
        self.reason = reason


def apply(record: RunRecord, event: RunEvent) -> RunRecord:
    """Apply one event; return the new record or raise :class:`RunTransitionRefused`."""
    allowed = RUN_TRANSITIONS.get((record.status, type(event)))
    if allowed is None:
        raise RunTransitionRefused(record, event, "no such transition")
    new = _step(record, event)
    if new.status not in allowed:  # pragma: no cover - guards this module's own logic
        raise AssertionError(f"{record.status} --{type(event).__name__}--> {new.status}")
    return new


def new_run(
    *,
    token: str,
    request: ChannelRequest,
    isolation_key: str,
    session_id: str | None,
    session_key: str | None,
    now: float,
    max_attempts: int,
) -> RunRecord:
    return RunRecord(
        token=token,
        status=RunStatus.QUEUED,
        isolation_key=isolation_key,
        session_id=session_id,
        session_key=session_key,
        request=request,
        created_at=now,
        updated_at=now,
        max_attempts=max_attempts,
    )


def is_owned_by(record: RunRecord, caller: ChannelIdentity) -> bool:
    """Rule 7: may ``caller`` read or cancel this run?"""
    owner = record.request.identity
    return owner.channel == caller.channel and owner.native_id == caller.native_id


def is_expired(record: RunRecord, now: float) -> bool:
    return record.expires_at is not None and record.expires_at <= now


def _finish(
    record: RunRecord, status: RunStatus, now: float, ttl: float, **changes: Any
) -> RunRecord:
    return attrs.evolve(
        record,
        status=status,
        updated_at=now,
        completed_at=now,
        expires_at=now + ttl,
        owner=None,
        lease_expires_at=None,
        **changes,
    )


def _check_owner(record: RunRecord, event: Heartbeat | Complete | Fail | Suspend) -> None:
    if record.owner != event.owner:
        raise RunTransitionRefused(record, event, "the run belongs to another worker")


def _step(record: RunRecord, event: RunEvent) -> RunRecord:
    if isinstance(event, Start):
        return attrs.evolve(
            record,
            status=RunStatus.RUNNING,
            owner=event.owner,
            attempts=record.attempts + 1,
            started_at=event.now,
            updated_at=event.now,
            lease_expires_at=event.now + event.lease_seconds,
        )
    if isinstance(event, Heartbeat):
        _check_owner(record, event)
        return attrs.evolve(
            record, updated_at=event.now, lease_expires_at=event.now + event.lease_seconds
        )
    if isinstance(event, Complete):
        _check_owner(record, event)
        return _finish(record, RunStatus.COMPLETED, event.now, event.ttl, result=event.result)
    if isinstance(event, Fail):
        _check_owner(record, event)
        return _finish(record, RunStatus.FAILED, event.now, event.ttl, error=event.error)
    if isinstance(event, Suspend):
        _check_owner(record, event)
        return attrs.evolve(
            record,
            status=RunStatus.QUEUED,
            owner=None,
            lease_expires_at=None,
            attempts=record.attempts - 1,
            updated_at=event.now,
        )
    if isinstance(event, Cancel):
        if record.status.is_final:
            return record
        return _finish(
            record, RunStatus.CANCELLED, event.now, event.ttl, error="cancelled by request"
        )
    # Recover
    if not record.is_abandoned(event.now):
        return record
    if record.attempts < record.max_attempts:
        return attrs.evolve(
            record, status=RunStatus.QUEUED, owner=None, lease_expires_at=None, updated_at=event.now
        )
    return _finish(
        record,
        RunStatus.FAILED,
        event.now,
        event.ttl,
        error=(
            f"the host stopped while this run was in flight, {record.attempts} time(s); "
            "it was not retried again"
        ),
    )
