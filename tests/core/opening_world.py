"""What a store does for ``OpenTurn``, on plain dicts: load, ``opening.decide``, write.

Shared by the core's test worlds (``identity_world.IdentityWorld`` and ``test_turns.World``)
so each answers the one-trip opening exactly as the stores do.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from agenthost.sansio_core import leases, opening
from agenthost.sansio_core.background import RunRecord
from agenthost.sansio_core.linking import UserFacts
from agenthost.sansio_core.routing import LastSeen
from agenthost.sansio_core.sessions import SessionAlias, SessionRecord
from agenthost.sansio_core.types import ChannelIdentity


def open_in_dicts(
    plan: opening.Opening,
    *,
    identities: dict[tuple[str, str], str],
    aliases: dict[tuple[str, str], SessionAlias],
    sessions: dict[str, SessionRecord],
    lease_states: dict[str, leases.LeaseState],
    facts_of: Callable[[ChannelIdentity], UserFacts | None] | None = None,
    seen: list[tuple[str, LastSeen]] | None = None,
    runs: dict[str, RunRecord] | None = None,
) -> opening.Outcome:
    native = (plan.identity.channel, plan.identity.native_id)
    key = identities.get(native)
    alias = None
    if plan.scope is not None and (plan.scope.owner or key) is not None:
        alias = aliases.get((plan.scope.owner or key or "", plan.scope.qualifier))
    facts = None
    if facts_of is not None and key is not None and plan.access.needs_facts:
        facts = facts_of(plan.identity)
    loaded = opening.Loaded(
        key,
        alias,
        facts,
        lease_states.get(alias.session_id) if alias is not None else None,
        sessions.get(alias.session_id) if alias is not None else None,
    )
    fork = None
    if plan.fork_scope is not None and key is not None:
        fork = aliases.get((key, plan.fork_scope.qualifier))
    if fork is not None:
        loaded = attrs.evolve(
            loaded,
            fork_alias=fork,
            fork_lease=lease_states.get(fork.session_id),
            fork_session=sessions.get(fork.session_id),
        )
    outcome, writes = opening.decide(plan, loaded)
    if writes.issue_key is not None:
        identities[native] = writes.issue_key
    if writes.last_seen is not None and seen is not None:
        seen.append(writes.last_seen)
    if writes.create is not None:
        created, record = writes.create
        aliases[(created.owner, created.qualifier)] = created
        sessions[created.session_id] = record
    if writes.lease is not None:
        lease_states[writes.lease.session_id] = writes.lease
    if writes.run is not None:
        assert runs is not None, "this world records no background runs"
        assert writes.run.token not in runs
        runs[writes.run.token] = writes.run
    return outcome
