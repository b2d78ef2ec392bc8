"""The state-store contract: everything the host remembers, behind one interface.

Every store (memory, SQLite, PostgreSQL) implements this class and passes the one contract
suite in ``tests/stores/``. A store performs storage and atomicity only: where a change
needs a decision (a lease step, a run transition, a session rotation) the store loads the
record inside its transaction, calls the pure function from ``agenthost.sansio_core`` and
writes what it returns. It never decides on its own.

All methods are async; stores with sync drivers run them through ``anyio.to_thread`` so
they work under asyncio and trio alike.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from agenthost.sansio_core import leases
from agenthost.sansio_core.background import RunEvent, RunRecord
from agenthost.sansio_core.effects import LeaseAnswer, RequestContext
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import ChannelIdentity, RunStatus

SCHEMA_VERSION = 1


class StoreError(Exception):
    """A store cannot be used as configured (a configuration error, raised at start-up)."""


class StoreSchemaError(StoreError):
    """The stored data was written by a schema this version does not know."""


class RunNotFound(KeyError):
    """No background run has that token (or it expired)."""


@attrs.frozen
class ChannelRecord:
    """A record a channel keeps for its own protocol (a stored response, a conversation item,
    a polling cursor). Keys sort within ``(channel, kind)``; a channel pads numbers in keys
    so that order is meaningful. ``owner`` is the isolation key allowed to read it, if any.
    """

    channel: str
    kind: str
    key: str
    value: Mapping[str, Any]
    owner: str | None = None
    created_at: float = 0.0
    expires_at: float | None = None


class Store(abc.ABC):
    """The contract. See the module docstring for what a store may and may not do."""

    async def open(self) -> None:  # noqa: B027 - optional for stores with nothing to open
        """Prepare the store (create or migrate its schema). Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional for stores with nothing to close
        """Release connections. The store may be opened again."""

    # --- identities -----------------------------------------------------------------

    @abc.abstractmethod
    async def load_context(
        self, identity: ChannelIdentity, scope: ScopeKey | None
    ) -> RequestContext:
        """The identity's isolation key and, when known, the alias of ``scope``, in one trip.

        ``scope.owner=None`` means the identity's own isolation key.
        """

    @abc.abstractmethod
    async def issue_isolation_key(
        self, identity: ChannelIdentity, candidate: str, now: float
    ) -> str:
        """Store ``candidate`` for the identity unless it has a key; return the stored key."""

    # --- sessions -------------------------------------------------------------------

    @abc.abstractmethod
    async def load_alias(self, scope: ScopeKey) -> SessionAlias | None:
        """The alias of a fully owned scope."""

    @abc.abstractmethod
    async def create_session(self, alias: SessionAlias, now: float) -> SessionAlias:
        """Insert the alias and its empty session unless the alias exists; return the winner."""

    @abc.abstractmethod
    async def fork_session(
        self, source_session_id: str, alias: SessionAlias, now: float
    ) -> SessionAlias:
        """Insert the alias and a session copying the source's state unless the alias exists;
        return the winner. The source session is not changed."""

    @abc.abstractmethod
    async def rotate_session(
        self, scope: ScopeKey, new_session_id: str, now: float
    ) -> SessionAlias:
        """Point the alias at a fresh empty session (a reset); the old session stays stored."""

    @abc.abstractmethod
    async def load_session(self, session_id: str) -> SessionRecord | None:
        """One stored session."""

    @abc.abstractmethod
    async def list_sessions(self, owner: str) -> list[SessionRecord]:
        """Every session an owner has had, oldest first (history survives resets)."""

    # --- session leases -------------------------------------------------------------

    @abc.abstractmethod
    async def apply_lease_event(self, session_id: str, event: leases.LeaseEvent) -> LeaseAnswer:
        """Apply ``leases.apply`` atomically; when it grants, load the session too."""

    @abc.abstractmethod
    async def finish_run(
        self, session_id: str, run_id: str, session: SessionRecord | None, now: float
    ) -> bool:
        """Save ``session`` (if given) and release the lease, atomically.

        Saves only while ``run_id`` still holds the lease; returns whether it saved.
        """

    # --- background runs ------------------------------------------------------------

    @abc.abstractmethod
    async def create_run(self, record: RunRecord) -> None:
        """Record a new run (``queued``). A duplicate token is an error."""

    @abc.abstractmethod
    async def get_run(self, token: str) -> RunRecord | None:
        """A run by token, or ``None``."""

    @abc.abstractmethod
    async def apply_run_event(self, token: str, event: RunEvent) -> RunRecord:
        """Apply ``background.apply`` atomically and store the result.

        Raises :class:`RunNotFound` or ``background.RunTransitionRefused``.
        """

    @abc.abstractmethod
    async def list_runs(self, statuses: Iterable[RunStatus]) -> list[RunRecord]:
        """Runs in any of ``statuses``, oldest first."""

    @abc.abstractmethod
    async def delete_expired_runs(self, now: float) -> int:
        """Delete finished runs whose ``expires_at`` has passed; return how many."""

    # --- channel records ------------------------------------------------------------

    @abc.abstractmethod
    async def put_channel_records(self, records: Sequence[ChannelRecord]) -> None:
        """Insert or replace records, all in one transaction (one round trip)."""

    @abc.abstractmethod
    async def get_channel_record(self, channel: str, kind: str, key: str) -> ChannelRecord | None:
        """One record (expired ones included until they are deleted)."""

    @abc.abstractmethod
    async def list_channel_records(
        self,
        channel: str,
        kind: str,
        *,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        descending: bool = False,
    ) -> list[ChannelRecord]:
        """Records whose key starts with ``prefix``, in key order, strictly past ``after``."""

    @abc.abstractmethod
    async def delete_channel_records(self, channel: str, kind: str, *, prefix: str) -> int:
        """Delete the records whose key starts with ``prefix``; return how many."""

    @abc.abstractmethod
    async def delete_expired_channel_records(self, now: float) -> int:
        """Delete records whose ``expires_at`` has passed; return how many."""
