"""The in-memory store: the contract's reference implementation, for tests.

It keeps every record in dicts guarded by one lock; nothing survives the process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from agenthost.sansio_core import background, leases, sessions
from agenthost.sansio_core.background import RunEvent, RunRecord
from agenthost.sansio_core.effects import LeaseAnswer, RequestContext
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias, SessionRecord
from agenthost.sansio_core.types import ChannelIdentity, RunStatus
from agenthost.stores.base import ChannelRecord, RunNotFound, Store


class MemoryStore(Store):
    def __init__(self) -> None:
        # A threading lock, not an anyio one: every method is short and never awaits while
        # holding it, and tests may touch the store from worker threads.
        self._lock = threading.Lock()
        self._identities: dict[tuple[str, str], str] = {}
        self._aliases: dict[tuple[str, str], SessionAlias] = {}
        self._sessions: dict[str, SessionRecord] = {}
        self._leases: dict[str, leases.LeaseState] = {}
        self._runs: dict[str, RunRecord] = {}
        self._records: dict[tuple[str, str, str], ChannelRecord] = {}

    async def load_context(
        self, identity: ChannelIdentity, scope: ScopeKey | None
    ) -> RequestContext:
        with self._lock:
            key = self._identities.get((identity.channel, identity.native_id))
            alias = None
            if key is not None and scope is not None:
                owned = scope.owned_by(key)
                alias = self._aliases.get((owned.owner or key, owned.qualifier))
            return RequestContext(key, alias)

    async def issue_isolation_key(
        self, identity: ChannelIdentity, candidate: str, now: float
    ) -> str:
        with self._lock:
            return self._identities.setdefault((identity.channel, identity.native_id), candidate)

    async def load_alias(self, scope: ScopeKey) -> SessionAlias | None:
        with self._lock:
            return self._aliases.get(_alias_key(scope))

    async def create_session(self, alias: SessionAlias, now: float) -> SessionAlias:
        with self._lock:
            existing = self._aliases.get((alias.owner, alias.qualifier))
            if existing is not None:
                return existing
            self._aliases[(alias.owner, alias.qualifier)] = alias
            self._sessions[alias.session_id] = sessions.new_session_record(alias, now)
            return alias

    async def fork_session(
        self, source_session_id: str, alias: SessionAlias, now: float
    ) -> SessionAlias:
        with self._lock:
            existing = self._aliases.get((alias.owner, alias.qualifier))
            if existing is not None:
                return existing
            source = self._sessions.get(source_session_id)
            self._aliases[(alias.owner, alias.qualifier)] = alias
            self._sessions[alias.session_id] = sessions.forked_record(source, alias, now)
            return alias

    async def rotate_session(
        self, scope: ScopeKey, new_session_id: str, now: float
    ) -> SessionAlias:
        with self._lock:
            key = _alias_key(scope)
            alias = sessions.rotate(
                scope, self._aliases.get(key), new_session_id=new_session_id, now=now
            )
            self._aliases[key] = alias
            self._sessions[alias.session_id] = sessions.new_session_record(alias, now)
            return alias

    async def load_session(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            return self._sessions.get(session_id)

    async def list_sessions(self, owner: str) -> list[SessionRecord]:
        with self._lock:
            found = [s for s in self._sessions.values() if s.owner == owner]
        return sorted(found, key=lambda s: (s.created_at, s.generation, s.session_id))

    async def apply_lease_event(self, session_id: str, event: leases.LeaseEvent) -> LeaseAnswer:
        with self._lock:
            state = self._leases.get(session_id) or leases.initial_state(session_id)
            new_state, decision = leases.apply(state, event)
            self._leases[session_id] = new_state
            session = (
                self._sessions.get(session_id) if isinstance(decision, leases.Granted) else None
            )
            return LeaseAnswer(decision, session)

    async def finish_run(
        self, session_id: str, run_id: str, session: SessionRecord | None, now: float
    ) -> bool:
        with self._lock:
            state = self._leases.get(session_id) or leases.initial_state(session_id)
            new_state, decision = leases.apply(state, leases.Release(run_id, now))
            if not isinstance(decision, leases.Released):
                return False
            self._leases[session_id] = new_state
            if session is None:
                return False
            self._sessions[session_id] = session
            return True

    async def create_run(self, record: RunRecord) -> None:
        with self._lock:
            if record.token in self._runs:
                raise ValueError(f"a run with token {record.token!r} exists")
            self._runs[record.token] = record

    async def get_run(self, token: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(token)

    async def apply_run_event(self, token: str, event: RunEvent) -> RunRecord:
        with self._lock:
            record = self._runs.get(token)
            if record is None:
                raise RunNotFound(token)
            new = background.apply(record, event)
            self._runs[token] = new
            return new

    async def list_runs(self, statuses: Iterable[RunStatus]) -> list[RunRecord]:
        wanted = set(statuses)
        with self._lock:
            found = [r for r in self._runs.values() if r.status in wanted]
        return sorted(found, key=lambda r: (r.created_at, r.token))

    async def delete_expired_runs(self, now: float) -> int:
        with self._lock:
            expired = [t for t, r in self._runs.items() if background.is_expired(r, now)]
            for token in expired:
                del self._runs[token]
            return len(expired)

    async def put_channel_records(self, records: Sequence[ChannelRecord]) -> None:
        with self._lock:
            for record in records:
                self._records[(record.channel, record.kind, record.key)] = record

    async def get_channel_record(self, channel: str, kind: str, key: str) -> ChannelRecord | None:
        with self._lock:
            return self._records.get((channel, kind, key))

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
        with self._lock:
            keys = sorted(
                key
                for (c, k, key) in self._records
                if c == channel and k == kind and key.startswith(prefix)
            )
            if descending:
                keys.reverse()
            if after is not None:
                keys = [k for k in keys if (k < after if descending else k > after)]
            return [self._records[(channel, kind, key)] for key in keys[:limit]]

    async def delete_channel_records(self, channel: str, kind: str, *, prefix: str) -> int:
        with self._lock:
            doomed = [
                ident
                for ident in self._records
                if ident[0] == channel and ident[1] == kind and ident[2].startswith(prefix)
            ]
            for ident in doomed:
                del self._records[ident]
            return len(doomed)

    async def delete_expired_channel_records(self, now: float) -> int:
        with self._lock:
            doomed = [
                ident
                for ident, record in self._records.items()
                if record.expires_at is not None and record.expires_at <= now
            ]
            for ident in doomed:
                del self._records[ident]
            return len(doomed)


def _alias_key(scope: ScopeKey) -> tuple[str, str]:
    if scope.owner is None:
        raise ValueError("an alias scope needs its owner")
    return (scope.owner, scope.qualifier)
