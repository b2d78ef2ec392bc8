"""The store contract for identities, links, verified claims, one-time codes and attempt
counters, run against every store (see ``conftest.py``).

The decisions are the core's (tested in ``tests/core``); these tests check that each store
loads what the decision needs, applies it atomically and remembers it.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agenthost.sansio_core import link_codes, linking
from agenthost.sansio_core.link_codes import (
    AttemptCounter,
    AttemptLimit,
    CodeChallenge,
    CodeLimits,
    CodeState,
)
from agenthost.sansio_core.link_policy import DenyAllLinks, LinkRules
from agenthost.sansio_core.linking import LinkReason, LinkResult, UserFacts
from agenthost.sansio_core.sessions import ScopeKey, SessionAlias
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores.base import Store
from agenthost.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

ALICE = ChannelIdentity("invocations", "alice")
ALICE_CHAT = ChannelIdentity("chat", "alice-chat")
ALICE_TEAMS = ChannelIdentity("teams", "aad-alice")
BOB = ChannelIdentity("chat", "bob")
CAROL = ChannelIdentity("chat", "carol")
OPEN = LinkRules()
LIMITS = CodeLimits(
    ttl_seconds=600,
    max_attempts=3,
    per_identity=AttemptLimit(4, 600, 300),
    overall=AttemptLimit(50, 60, 60),
)


async def known(store: Store, *identities: ChannelIdentity) -> None:
    for identity in identities:
        await store.issue_isolation_key(identity, f"k-{identity.native_id}", now=1.0)


def claims(oid: str, tid: str = "contoso", *, source: str = "entra") -> linking.VerifiedClaims:
    return linking.verified_claims(
        {"tid": tid, "oid": oid}, source=source, subject_claims=("tid", "oid"), now=5.0
    )


async def issue(store: Store, issuer: ChannelIdentity, *, seed: int = 1, now: float = 10.0) -> str:
    made = link_codes.issue(
        issuer=issuer,
        challenge_id=f"lc-{seed}",
        entropy=bytes([seed] * 8),
        salt=bytes([seed] * 16),
        now=now,
        limits=LIMITS,
    )
    assert await store.put_link_challenge(made.challenge)
    return made.code


async def attempt(
    store: Store, who: ChannelIdentity, code: str, *, now: float = 20.0, rules: LinkRules = OPEN
) -> LinkResult:
    parsed = link_codes.parse_code(code)
    assert parsed is not None
    return await store.attempt_link_code(
        who, parsed[0], parsed[1], now=now, limits=LIMITS, rules=rules
    )


# --- facts in the one-trip context -------------------------------------------------------


async def test_facts_come_with_the_context_only_when_asked(store: Store) -> None:
    assert (await store.load_context(ALICE, None, facts=True)).facts is None
    await known(store, ALICE)
    assert (await store.load_context(ALICE, None)).facts is None
    context = await store.load_context(ALICE, ScopeKey(None, "direct"), facts=True)
    assert context.isolation_key == "k-alice"
    assert context.facts == UserFacts()
    assert await store.load_facts(ALICE) == UserFacts()
    assert await store.load_facts(BOB) is None


async def test_facts_list_the_users_other_identities_and_every_claim(store: Store) -> None:
    await known(store, ALICE, ALICE_CHAT)
    alias = SessionAlias("k-alice", "direct", "s1", 1, 1.0)
    await store.create_session(alias, now=1.0)
    await store.link_identities(ALICE, ALICE_CHAT, OPEN, source="code", now=2.0)
    await store.link_verified_claims(ALICE_TEAMS, claims("o-1"), OPEN, candidate_key="k-t", now=3)
    await store.link_verified_claims(ALICE_CHAT, claims("o-1"), OPEN, candidate_key="x", now=4)
    # The chat identity's user (Alice and her chat) joined the holder of the claims.
    context = await store.load_context(ALICE_CHAT, ScopeKey(None, "direct"), facts=True)
    assert context.isolation_key == "k-t"
    assert context.alias is None  # the alias stays with the old key, no longer reached
    assert await store.load_alias(ScopeKey("k-alice", "direct")) == alias
    facts = context.facts
    assert facts is not None and facts.linked
    assert set(facts.linked_identities) == {ALICE, ALICE_TEAMS}
    assert ("tid", "contoso") in facts.claims and ("oid", "o-1") in facts.claims


# --- merges -------------------------------------------------------------------------------


async def test_a_link_moves_the_whole_second_user_and_records_it(store: Store) -> None:
    await known(store, ALICE, BOB, CAROL)
    assert (await store.link_identities(BOB, CAROL, OPEN, source="code", now=2.0)).linked
    result = await store.link_identities(ALICE, BOB, OPEN, source="code", now=3.0)
    assert result == LinkResult(True, "k-alice", LinkReason.LINKED)
    for identity in (ALICE, BOB, CAROL):
        assert (await store.load_context(identity, None)).isolation_key == "k-alice"
    assert await store.list_identities("k-alice") == sorted(
        [ALICE, BOB, CAROL], key=lambda i: (i.channel, i.native_id)
    )
    assert await store.list_identities("k-bob") == []
    records = await store.list_links("k-alice")
    assert {(r.identity, r.anchor, r.previous_key) for r in records} == {
        (BOB, ALICE, "k-bob"),
        (CAROL, ALICE, "k-bob"),
    }
    again = await store.link_identities(ALICE, CAROL, OPEN, source="code", now=4.0)
    assert again == LinkResult(True, "k-alice", LinkReason.ALREADY_LINKED)


async def test_a_link_keeps_sessions_where_they_are(store: Store) -> None:
    await known(store, ALICE, BOB)
    await store.create_session(SessionAlias("k-bob", "direct", "s-bob", 1, 1.0), now=1.0)
    await store.link_identities(ALICE, BOB, OPEN, source="code", now=2.0)
    assert await store.load_session("s-bob") is not None
    assert (await store.load_alias(ScopeKey("k-bob", "direct"))) is not None
    context = await store.load_context(BOB, ScopeKey(None, "direct"))
    assert context.alias is None  # Bob now reaches Alice's (not yet created) session


async def test_a_refused_or_impossible_link_changes_nothing(store: Store) -> None:
    await known(store, ALICE, BOB)
    refused = await store.link_identities(ALICE, BOB, LinkRules(DenyAllLinks()), source="c", now=2)
    assert refused == LinkResult(False, "k-bob", LinkReason.LINK_POLICY)
    unknown_anchor = await store.link_identities(CAROL, BOB, OPEN, source="c", now=2)
    assert unknown_anchor == LinkResult(False, "k-bob", LinkReason.NOT_LINKED)
    assert (await store.load_context(BOB, None)).isolation_key == "k-bob"
    assert await store.list_links("k-alice") == []


async def test_an_unseen_identity_is_linked_in(store: Store) -> None:
    await known(store, ALICE)
    assert (await store.link_identities(ALICE, CAROL, OPEN, source="c", now=2)).linked
    assert (await store.load_context(CAROL, None)).isolation_key == "k-alice"


# --- unlink --------------------------------------------------------------------------------


async def test_unlink_gives_a_fresh_key_and_forgets_claims_and_the_record(store: Store) -> None:
    await known(store, ALICE, BOB)
    await store.link_identities(ALICE, BOB, OPEN, source="code", now=2.0)
    await store.link_verified_claims(BOB, claims("o-b"), OPEN, candidate_key="x", now=3.0)
    result = await store.unlink_identity(BOB, "k-fresh", now=4.0)
    assert result == LinkResult(False, "k-fresh", LinkReason.UNLINKED)
    assert (await store.load_context(BOB, None)).isolation_key == "k-fresh"
    assert await store.load_facts(BOB) == UserFacts()
    assert await store.load_facts(ALICE) == UserFacts()  # Bob's claims went with the unlink
    assert await store.list_links("k-alice") == []
    again = await store.unlink_identity(BOB, "k-other", now=5.0)
    assert again == LinkResult(False, "k-fresh", LinkReason.NOT_LINKED)
    assert (await store.unlink_identity(CAROL, "k-c", now=5.0)).reason is LinkReason.NOT_LINKED


# --- verified claims ----------------------------------------------------------------------


async def test_claims_make_a_holder_then_link_others_silently(store: Store) -> None:
    first = await store.link_verified_claims(
        ALICE_TEAMS, claims("o-1"), OPEN, candidate_key="k-teams", now=1.0
    )
    assert first == LinkResult(True, "k-teams", LinkReason.CLAIMS_RECORDED)
    await known(store, ALICE_CHAT)
    second = await store.link_verified_claims(
        ALICE_CHAT, claims("o-1"), OPEN, candidate_key="unused", now=2.0
    )
    assert second == LinkResult(True, "k-teams", LinkReason.LINKED)
    assert (await store.load_context(ALICE_CHAT, None)).isolation_key == "k-teams"
    again = await store.link_verified_claims(
        ALICE_CHAT, claims("o-1"), OPEN, candidate_key="unused", now=3.0
    )
    assert again.reason is LinkReason.ALREADY_LINKED
    other_person = await store.link_verified_claims(
        BOB, claims("o-2"), OPEN, candidate_key="k-bob", now=4.0
    )
    assert other_person == LinkResult(True, "k-bob", LinkReason.CLAIMS_RECORDED)


async def test_claims_from_a_source_replace_that_sources_earlier_claims(store: Store) -> None:
    await store.link_verified_claims(BOB, claims("o-2", "t-1"), OPEN, candidate_key="k", now=1)
    await store.link_verified_claims(BOB, claims("o-2", "t-2"), OPEN, candidate_key="k", now=2)
    await store.link_verified_claims(
        BOB, claims("o-9", "t-9", source="okta"), OPEN, candidate_key="k", now=3
    )
    facts = await store.load_facts(BOB)
    assert facts is not None
    tenants = {value for kind, value in facts.claims if kind == "tid"}
    assert tenants == {"t-2", "t-9"}


async def test_claims_refused_by_the_policy_record_nothing(store: Store) -> None:
    await store.link_verified_claims(ALICE_TEAMS, claims("o-1"), OPEN, candidate_key="k-t", now=1)
    refused = await store.link_verified_claims(
        BOB, claims("o-1"), LinkRules(DenyAllLinks()), candidate_key="k-bob", now=2
    )
    assert refused == LinkResult(False, "k-bob", LinkReason.LINK_POLICY)
    assert await store.load_facts(BOB) == UserFacts()


# --- one-time codes ---------------------------------------------------------------------


async def test_a_new_code_replaces_the_issuers_old_one(store: Store) -> None:
    old = await issue(store, ALICE, seed=1)
    new = await issue(store, ALICE, seed=2)
    old_locator = (link_codes.parse_code(old) or ("", ""))[0]
    new_locator = (link_codes.parse_code(new) or ("", ""))[0]
    assert await store.get_link_challenge(old_locator) is None
    stored = await store.get_link_challenge(new_locator)
    assert isinstance(stored, CodeChallenge) and stored.issuer == ALICE
    await known(store, ALICE, BOB)
    assert (await attempt(store, BOB, old)).reason is LinkReason.WRONG_CODE


async def test_a_locator_held_by_another_issuer_is_refused(store: Store) -> None:
    await issue(store, ALICE, seed=1)
    clash = link_codes.issue(
        issuer=BOB, challenge_id="lc-x", entropy=bytes([1] * 8), salt=bytes(16), now=0,
        limits=LIMITS,
    )  # fmt: skip
    assert not await store.put_link_challenge(clash.challenge)
    stored = await store.get_link_challenge(clash.challenge.locator)
    assert stored is not None and stored.issuer == ALICE


async def test_a_code_links_once_and_a_replay_fails(store: Store) -> None:
    await known(store, ALICE, ALICE_CHAT, BOB)
    code = await issue(store, ALICE)
    assert await attempt(store, ALICE_CHAT, code) == LinkResult(True, "k-alice", LinkReason.LINKED)
    assert (await store.load_context(ALICE_CHAT, None)).isolation_key == "k-alice"
    replay = await attempt(store, BOB, code)
    assert replay.reason is LinkReason.CODE_USED and not replay.linked
    assert (await store.load_context(BOB, None)).isolation_key == "k-bob"
    locator = (link_codes.parse_code(code) or ("", ""))[0]
    stored = await store.get_link_challenge(locator)
    assert stored is not None and stored.state is CodeState.COMPLETED
    assert stored.completed_by == ALICE_CHAT


async def test_an_expired_code_fails(store: Store) -> None:
    await known(store, ALICE, BOB)
    code = await issue(store, ALICE, now=10.0)
    assert (await attempt(store, BOB, code, now=610.0)).reason is LinkReason.EXPIRED
    assert (await store.load_context(BOB, None)).isolation_key == "k-bob"


async def test_wrong_codes_lock_the_code_then_the_sender(store: Store) -> None:
    await known(store, ALICE, BOB)
    code = await issue(store, ALICE)
    locator, secret = link_codes.parse_code(code) or ("", "")
    wrong = ("1" if secret[0] != "1" else "2") + secret[1:]
    for _ in range(LIMITS.max_attempts):
        result = await store.attempt_link_code(
            BOB, locator, wrong, now=20.0, limits=LIMITS, rules=OPEN
        )
        assert result.reason is LinkReason.WRONG_CODE
    assert (await attempt(store, BOB, code)).reason is LinkReason.CODE_LOCKED
    counter = await store.get_attempt_counter(link_codes.identity_scope(BOB))
    assert counter.failures == LIMITS.max_attempts
    # One more failure (an unknown code) reaches the identity's limit: locked out.
    await store.attempt_link_code(BOB, "ZZZZ", "ZZZZZZZZ", now=21.0, limits=LIMITS, rules=OPEN)
    assert (await store.get_attempt_counter(link_codes.identity_scope(BOB))).is_locked(21.0)
    fresh = await issue(store, ALICE, seed=7)
    assert (await attempt(store, BOB, fresh, now=22.0)).reason is LinkReason.RATE_LIMITED
    assert (await attempt(store, BOB, fresh, now=321.0)).reason is LinkReason.LINKED
    assert (await store.get_attempt_counter(link_codes.identity_scope(BOB))) == AttemptCounter(
        link_codes.identity_scope(BOB)
    )
    overall = await store.get_attempt_counter(link_codes.GLOBAL_SCOPE)
    assert overall.failures == LIMITS.max_attempts + 1


async def test_the_policy_refusal_leaves_the_code_for_another_account(store: Store) -> None:
    await known(store, ALICE, BOB, CAROL)
    code = await issue(store, ALICE)
    forbid_chat = LinkRules(DenyAllLinks())
    assert (await attempt(store, BOB, code, rules=forbid_chat)).reason is LinkReason.LINK_POLICY
    assert (await attempt(store, CAROL, code)).reason is LinkReason.LINKED


async def test_two_concurrent_completions_of_one_code_link_exactly_once(store: Store) -> None:
    await known(store, ALICE, BOB, CAROL)
    results: list[LinkResult] = []

    for round_ in range(5):
        code = await issue(store, ALICE, seed=round_ + 1)

        async def complete(who: ChannelIdentity, code: str = code) -> None:
            results.append(await attempt(store, who, code))

        async with anyio.create_task_group() as tasks:
            for who in (BOB, CAROL):
                tasks.start_soon(complete, who)
        linked = [r for r in results[-2:] if r.reason is LinkReason.LINKED]
        used = [r for r in results[-2:] if r.reason in (LinkReason.CODE_USED,)]
        assert len(linked) == 1 and len(used) == 1, results[-2:]
        await store.unlink_identity(BOB, f"k-bob-{round_}", now=30.0)
        await store.unlink_identity(CAROL, f"k-carol-{round_}", now=30.0)


async def test_expired_challenges_and_idle_counters_are_deleted(store: Store) -> None:
    await known(store, ALICE, BOB)
    code = await issue(store, ALICE, now=10.0)
    await store.attempt_link_code(BOB, "ZZZZ", "ZZZZZZZZ", now=20.0, limits=LIMITS, rules=OPEN)
    assert await store.delete_expired_link_records(now=79.0) == 0
    # The global counter's window ended at 80, the code expires at 610 and the identity's
    # counter's window ends at 620.
    assert await store.delete_expired_link_records(now=80.0) == 1
    assert await store.get_attempt_counter(link_codes.GLOBAL_SCOPE) == AttemptCounter(
        link_codes.GLOBAL_SCOPE
    )
    assert await store.delete_expired_link_records(now=610.0) == 1
    locator = (link_codes.parse_code(code) or ("", ""))[0]
    assert await store.get_link_challenge(locator) is None
    assert await store.delete_expired_link_records(now=620.0) == 1
    assert await store.get_attempt_counter(link_codes.identity_scope(BOB)) == AttemptCounter(
        link_codes.identity_scope(BOB)
    )


# --- SQLite only: durability and indexes ----------------------------------------------------


async def test_sqlite_keeps_links_codes_and_counters_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    await known(store, ALICE, BOB)
    await store.link_identities(ALICE, BOB, OPEN, source="code", now=2.0)
    await store.link_verified_claims(ALICE, claims("o-a"), OPEN, candidate_key="x", now=3.0)
    code = await issue(store, ALICE)
    await store.attempt_link_code(BOB, "ZZZZ", "ZZZZZZZZ", now=20.0, limits=LIMITS, rules=OPEN)
    await store.close()

    again = SQLiteStore(path)
    facts = await again.load_facts(BOB)
    assert facts is not None and facts.linked_identities == (ALICE,)
    assert ("oid", "o-a") in facts.claims
    locator = (link_codes.parse_code(code) or ("", ""))[0]
    assert (await again.get_link_challenge(locator)) is not None
    assert (await again.get_attempt_counter(link_codes.identity_scope(BOB))).failures == 1
    assert [r.identity for r in await again.list_links("k-alice")] == [BOB]
    await again.close()


# What a group-commit batch wraps around each call; not a query of the call's own.
TRANSACTION_CONTROL = ("BEGIN", "SAVEPOINT", "RELEASE", "COMMIT", "ROLLBACK", "PRAGMA")


async def test_sqlite_linking_paths_are_indexed_queries(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    conn = store._conn
    assert conn is not None
    await known(store, ALICE, BOB)
    code = await issue(store, ALICE)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        await store.load_context(BOB, ScopeKey(None, "direct"), facts=True)
        queries = [s for s in statements if not s.startswith(TRANSACTION_CONTROL)]
        assert len(queries) == 1  # facts still come in the one round trip
        await attempt(store, BOB, code)
        await store.link_verified_claims(BOB, claims("o-b"), OPEN, candidate_key="x", now=30.0)
        await store.unlink_identity(BOB, "k-fresh", now=31.0)
        await store.list_links("k-alice")
        await store.delete_expired_link_records(now=1.0)
    finally:
        conn.set_trace_callback(None)
    queries = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "DELETE"))]
    assert len(queries) >= 10
    for query in queries:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}")]
        scans = [step for step in plan if step.startswith("SCAN")]
        assert not scans, f"{query.strip()} scans: {plan}"
    await store.close()


async def test_two_replicas_racing_for_one_code_link_exactly_once(tmp_path: Path) -> None:
    # Two stores (two connections, as two replicas) on one file: BEGIN IMMEDIATE makes the
    # read-decide-write of each completion atomic across them.
    path = tmp_path / "state.db"
    replicas = [SQLiteStore(path), SQLiteStore(path)]
    completers = [ChannelIdentity("chat", f"user-{n}") for n in range(10)]
    await known(replicas[0], ALICE, *completers)
    code = await issue(replicas[0], ALICE)
    results: list[LinkResult] = []

    async def complete(n: int) -> None:
        results.append(await attempt(replicas[n % 2], completers[n], code))

    try:
        async with anyio.create_task_group() as tasks:
            for n in range(len(completers)):
                tasks.start_soon(complete, n)
    finally:
        for replica in replicas:
            await replica.close()
    assert sorted(r.reason.value for r in results) == ["code_used"] * 9 + ["linked"]
