"""Linking decisions in the core: merges, unlinks, verified claims and the link policy.

The properties drive random sequences of links, unlinks and presented claims through the
same planning functions a store applies (``IdentityWorld`` keeps the dicts) and compare
the result with a plain model of who should be one user.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import linking
from agenthost.sansio_core.link_policy import (
    AllowAllLinks,
    ChannelProfile,
    DenyAllLinks,
    ExplicitAllowList,
    LinkPolicy,
    LinkRules,
    SameConfidentialityTierOnly,
)
from agenthost.sansio_core.linking import (
    LinkReason,
    LinkResult,
    Merge,
    Unlink,
    UserFacts,
    UserRecord,
    plan_claims_link,
    plan_merge,
    plan_unlink,
    verified_claims,
)
from agenthost.sansio_core.types import ChannelIdentity
from tests.core.identity_world import IdentityWorld

ALICE_TG = ChannelIdentity("telegram", "111")
ALICE_API = ChannelIdentity("invocations", "alice")
ALICE_TEAMS = ChannelIdentity("teams", "aad-1")
BOB_TG = ChannelIdentity("telegram", "222")

TIERS = {"telegram": "public", "invocations": "internal", "teams": "internal"}


def rules(policy: LinkPolicy) -> LinkRules:
    return LinkRules(policy, TIERS)


# --- the link policy ---------------------------------------------------------------------


def test_built_in_policies() -> None:
    internal_a = ChannelProfile("invocations", "internal")
    internal_b = ChannelProfile("teams", "internal")
    public = ChannelProfile("telegram", "public")
    assert AllowAllLinks().permits(public, internal_a)
    assert not DenyAllLinks().permits(internal_a, internal_b)
    assert SameConfidentialityTierOnly().permits(internal_a, internal_b)
    assert not SameConfidentialityTierOnly().permits(public, internal_a)
    explicit = ExplicitAllowList([("telegram", "teams")])
    assert explicit.permits(public, internal_b) and explicit.permits(internal_b, public)
    assert not explicit.permits(public, internal_a)
    assert not explicit.permits(public, public)  # same channel: only when listed
    assert explicit.named_channels() == {"telegram", "teams"}


def test_link_rules_default_unknown_channels_to_the_standard_tier() -> None:
    same = rules(SameConfidentialityTierOnly())
    assert same.profile("slack") == ChannelProfile("slack", "standard")
    assert same.permits("invocations", "teams")
    assert not same.permits("telegram", "teams")
    assert same.permits_merge({"invocations"}, {"teams", "invocations"})
    assert not same.permits_merge({"invocations"}, {"teams", "telegram"})


# --- merges --------------------------------------------------------------------------------


def test_a_merge_moves_every_identity_of_the_second_user() -> None:
    anchor_user = UserRecord("k-a", (ALICE_TG,))
    moving_user = UserRecord("k-b", (ALICE_API, ALICE_TEAMS))
    plan = plan_merge(
        ALICE_TG, anchor_user, ALICE_API, moving_user, rules(AllowAllLinks()), source="code", now=5
    )
    assert isinstance(plan, Merge)
    assert plan.from_key == "k-b" and plan.to_key == "k-a"
    assert plan.moved == (ALICE_API, ALICE_TEAMS)
    assert [(r.identity, r.anchor, r.previous_key, r.source) for r in plan.records] == [
        (ALICE_API, ALICE_TG, "k-b", "code"),
        (ALICE_TEAMS, ALICE_TG, "k-b", "code"),
    ]


def test_a_merge_of_one_user_is_already_linked() -> None:
    user = UserRecord("k-a", (ALICE_TG, ALICE_API))
    assert plan_merge(
        ALICE_TG, user, ALICE_API, user, rules(DenyAllLinks()), source="code", now=0
    ) == LinkResult(True, "k-a", LinkReason.ALREADY_LINKED)


def test_a_merge_of_a_new_identity_inserts_it() -> None:
    plan = plan_merge(
        ALICE_TG,
        UserRecord("k-a", (ALICE_TG,)),
        ALICE_API,
        UserRecord(None, ()),
        rules(AllowAllLinks()),
        source="code",
        now=0,
    )
    assert isinstance(plan, Merge) and plan.from_key is None and plan.moved == (ALICE_API,)


def test_the_policy_checks_every_pair_across_the_two_users() -> None:
    policy = ExplicitAllowList([("telegram", "invocations"), ("invocations", "teams")])
    anchor = UserRecord("k-a", (ALICE_TG,))
    moving = UserRecord("k-b", (ALICE_API, ALICE_TEAMS))
    refused = plan_merge(ALICE_TG, anchor, ALICE_API, moving, rules(policy), source="c", now=0)
    assert refused == LinkResult(False, "k-b", LinkReason.LINK_POLICY)


def test_the_anchor_must_have_a_key() -> None:
    with pytest.raises(ValueError, match="anchor"):
        plan_merge(
            ALICE_TG, UserRecord(None, ()), ALICE_API, UserRecord(None, ()),
            rules(AllowAllLinks()), source="c", now=0,
        )  # fmt: skip


# --- unlinks ----------------------------------------------------------------------------


def test_unlink_gives_a_fresh_key_to_a_linked_identity_only() -> None:
    shared = UserRecord("k-a", (ALICE_TG, ALICE_API))
    assert plan_unlink(ALICE_API, shared, has_claims=False, new_key="k-new") == Unlink(
        ALICE_API, "k-a", "k-new"
    )
    alone = UserRecord("k-a", (ALICE_TG,))
    assert plan_unlink(ALICE_TG, alone, has_claims=False, new_key="k-new") == LinkResult(
        False, "k-a", LinkReason.NOT_LINKED
    )
    assert isinstance(plan_unlink(ALICE_TG, alone, has_claims=True, new_key="k-new"), Unlink)
    assert plan_unlink(ALICE_TG, UserRecord(None, ()), has_claims=False, new_key="x") == (
        LinkResult(False, None, LinkReason.NOT_LINKED)
    )


# --- verified claims ------------------------------------------------------------------------


def test_verified_claims_need_their_subject() -> None:
    claims = verified_claims(
        {"tid": "t", "oid": "o", "name": "Ada"}, source="entra", subject_claims=("tid", "oid"),
        now=1,
    )  # fmt: skip
    assert claims.rows()[0] == (linking.SUBJECT_CLAIM, claims.subject)
    assert ("name", "Ada") in claims.rows()
    with pytest.raises(ValueError, match="oid"):
        verified_claims({"tid": "t"}, source="entra", subject_claims=("tid", "oid"), now=1)
    with pytest.raises(ValueError, match="reserved"):
        verified_claims({"subject": "x"}, source="e", subject_claims=("subject",), now=1)
    with pytest.raises(ValueError, match="source"):
        verified_claims({"tid": "t"}, source="", subject_claims=("tid",), now=1)


def test_subjects_differ_by_source_and_do_not_mix_values() -> None:
    def subject(tid: str, oid: str, source: str) -> str:
        claims = {"tid": tid, "oid": oid}
        return verified_claims(claims, source=source, subject_claims=("tid", "oid"), now=0).subject

    one = subject("a|b", "c", "entra")
    two = subject("a", "b|c", "entra")
    other = subject("a|b", "c", "okta")
    assert len({one, two, other}) == 3


def test_claims_make_a_holder_then_link_the_next_identity_silently() -> None:
    r = rules(AllowAllLinks())
    first = plan_claims_link(
        ALICE_TEAMS, UserRecord("k-t", (ALICE_TEAMS,)), [], r, source="c", now=0
    )
    assert first.result == LinkResult(True, "k-t", LinkReason.CLAIMS_RECORDED)
    assert first.record and first.merge is None
    holders = [(ALICE_TEAMS, UserRecord("k-t", (ALICE_TEAMS,)))]
    second = plan_claims_link(
        ALICE_TG, UserRecord("k-g", (ALICE_TG,)), holders, r, source="c", now=0
    )
    assert second.result == LinkResult(True, "k-t", LinkReason.LINKED)
    assert second.record and second.merge is not None and second.merge.moved == (ALICE_TG,)
    again = plan_claims_link(
        ALICE_TEAMS, UserRecord("k-t", (ALICE_TEAMS,)), holders, r, source="c", now=0
    )
    assert again.result.reason is LinkReason.ALREADY_LINKED


def test_claims_respect_the_policy_and_record_nothing_when_refused() -> None:
    holders = [(ALICE_TEAMS, UserRecord("k-t", (ALICE_TEAMS,)))]
    refused = plan_claims_link(
        ALICE_TG, UserRecord("k-g", (ALICE_TG,)), holders, rules(SameConfidentialityTierOnly()),
        source="c", now=0,
    )  # fmt: skip
    assert refused.result == LinkResult(False, "k-g", LinkReason.LINK_POLICY)
    assert not refused.record and refused.merge is None


def test_claims_held_by_two_users_link_nothing() -> None:
    holders = [
        (ALICE_TEAMS, UserRecord("k-t", (ALICE_TEAMS,))),
        (ALICE_API, UserRecord("k-i", (ALICE_API,))),
    ]
    conflict = plan_claims_link(
        ALICE_TG, UserRecord("k-g", (ALICE_TG,)), holders, rules(AllowAllLinks()), source="c", now=0
    )
    assert conflict.result.reason is LinkReason.CONFLICTING_CLAIMS
    assert not conflict.record


def test_user_facts_say_linked() -> None:
    assert not UserFacts().linked
    assert UserFacts((ALICE_TG,)).linked
    assert UserFacts(claims={("tid", "t")}).linked


# --- properties -------------------------------------------------------------------------------

IDENTITIES = [
    ChannelIdentity(channel, native)
    for channel, native in itertools.product(("telegram", "invocations", "teams"), ("1", "2"))
]
SUBJECTS = ["s1", "s2"]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("link"), st.sampled_from(IDENTITIES), st.sampled_from(IDENTITIES)),
        st.tuples(st.just("unlink"), st.sampled_from(IDENTITIES), st.just(None)),
        st.tuples(st.just("claims"), st.sampled_from(IDENTITIES), st.sampled_from(SUBJECTS)),
    ),
    max_size=14,
)


class Model:
    """Who should be one user, tracked without keys: a partition of the identities."""

    def __init__(self) -> None:
        self.group = {identity: frozenset({identity}) for identity in IDENTITIES}
        self.subject_of: dict[ChannelIdentity, str] = {}

    def union(self, a: ChannelIdentity, b: ChannelIdentity) -> None:
        merged = self.group[a] | self.group[b]
        for member in merged:
            self.group[member] = merged

    def leave(self, identity: ChannelIdentity) -> None:
        rest = self.group[identity] - {identity}
        for member in rest:
            self.group[member] = rest
        self.group[identity] = frozenset({identity})
        self.subject_of.pop(identity, None)

    def present(self, identity: ChannelIdentity, subject: str) -> None:
        holders = [h for h, s in self.subject_of.items() if s == subject and h != identity]
        if holders:
            self.union(holders[0], identity)
        self.subject_of[identity] = subject


def seeded_world(policy: LinkPolicy, tiers: dict[str, str] | None = None) -> IdentityWorld:
    world = IdentityWorld(rules=LinkRules(policy, tiers or TIERS))
    for n, identity in enumerate(IDENTITIES):
        world.identities[(identity.channel, identity.native_id)] = f"ik_{n}"
    return world


@settings(max_examples=250, deadline=None)
@given(operations)
def test_a_merge_never_splits_one_user_into_two_keys(
    ops: list[tuple[str, ChannelIdentity, object]],
) -> None:
    world = seeded_world(AllowAllLinks())
    model = Model()
    for n, (op, identity, arg) in enumerate(ops):
        if op == "link":
            assert isinstance(arg, ChannelIdentity)
            result = world.link(identity, arg)
            assert result.linked
            model.union(identity, arg)
        elif op == "unlink":
            result = world.unlink(identity, f"ik_fresh_{n}")
            if result.reason is LinkReason.UNLINKED:
                model.leave(identity)
            else:
                assert model.group[identity] == {identity} and identity not in model.subject_of
        else:
            assert isinstance(arg, str)
            result = world.present_claims(identity, {"tid": "t", "oid": arg})
            assert result.linked
            model.present(identity, arg)
        # One user, one key: same key exactly when the model says one user.
        for a, b in itertools.combinations(IDENTITIES, 2):
            same_key = world.key_of(a) == world.key_of(b)
            assert same_key == (b in model.group[a]), (a, b, op)


policies = st.one_of(
    st.just(AllowAllLinks()),
    st.just(DenyAllLinks()),
    st.just(SameConfidentialityTierOnly()),
    st.lists(
        st.tuples(
            st.sampled_from(["telegram", "invocations", "teams"]),
            st.sampled_from(["telegram", "invocations", "teams"]),
        ),
        max_size=4,
    ).map(ExplicitAllowList),
)
tier_maps = st.fixed_dictionaries(
    {name: st.sampled_from(["public", "internal"]) for name in ("telegram", "invocations", "teams")}
)
link_steps = st.lists(
    st.tuples(
        st.sampled_from(["link", "code", "claims", "unlink"]),
        st.sampled_from(IDENTITIES),
        st.sampled_from(IDENTITIES),
    ),
    max_size=12,
)


@settings(max_examples=250, deadline=None)
@given(policies, tier_maps, link_steps)
def test_the_link_policy_is_never_bypassed(
    policy: LinkPolicy,
    tiers: dict[str, str],
    steps: list[tuple[str, ChannelIdentity, ChannelIdentity]],
) -> None:
    world = seeded_world(policy, tiers)
    for n, (how, first, second) in enumerate(steps):
        if how == "link":
            world.link(first, second)
        elif how == "code":
            world.begin_code(first)
            challenge = next(iter(world.challenges.values()))
            locator, secret = linking_code_parts(world.codes[-1])
            world.complete_code(second, locator, secret)
            world.challenges.clear()
            assert challenge.issuer == first
        elif how == "claims":
            world.present_claims(first, {"tid": "t", "oid": "same-person"})
            world.present_claims(second, {"tid": "t", "oid": "same-person"})
        else:
            world.unlink(first, f"ik_fresh_{n}")
        keys: dict[str, list[ChannelIdentity]] = {}
        for native, key in world.identities.items():
            keys.setdefault(key, []).append(ChannelIdentity(*native))
        for members in keys.values():
            for a, b in itertools.combinations(members, 2):
                assert world.rules.permits(a.channel, b.channel), (policy, tiers, a, b)


def linking_code_parts(code: str) -> tuple[str, str]:
    from agenthost.sansio_core import link_codes

    parsed = link_codes.parse_code(code)
    assert parsed is not None
    return parsed
