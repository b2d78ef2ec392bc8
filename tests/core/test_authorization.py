"""Authorization in the core: every profile of the design (open, forced link, native
allowlist, linked-claim allowlist, mixed), tri-state combinators, pre- and post-link
evaluation, per-message decisions in groups, and the property that a denied sender never
reaches the target. No event loop: turns are driven by ``IdentityWorld``.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import authorization
from agenthost.sansio_core.authorization import (
    DENIED_MESSAGE,
    AllOfAllowlists,
    AllowAll,
    Allowed,
    Allowlist,
    AnyOfAllowlists,
    CallableAllowlist,
    ChannelAccess,
    Denied,
    LinkedClaimAllowlist,
    LinkRequired,
    NativeIdAllowlist,
    Phase,
    Subject,
    Verdict,
    authorize,
)
from agenthost.sansio_core.linking import UserFacts
from agenthost.sansio_core.turns import RefusalReason, TurnCompleted, TurnRefused
from agenthost.sansio_core.types import ChannelIdentity
from tests.core.identity_world import IdentityWorld, message, settings_for

ALICE = ChannelIdentity("telegram", "111")
ALICE_ON_API = ChannelIdentity("invocations", "alice")
BOB = ChannelIdentity("telegram", "222")
CAROL = ChannelIdentity("invocations", "carol")

CONTOSO = "contoso-tenant"
FABRIKAM = "fabrikam-tenant"


def access(
    allowlist: Allowlist | None = None,
    *,
    require_link: bool = False,
    can_link: bool = True,
    claims: bool = True,
) -> ChannelAccess:
    return ChannelAccess(allowlist, require_link, can_link, claims)


def const(verdict: Verdict) -> CallableAllowlist:
    return CallableAllowlist(lambda subject: verdict)


ALLOW, DENY, ABSTAIN = Verdict.ALLOW, Verdict.DENY, Verdict.ABSTAIN


# --- tri-state ---------------------------------------------------------------------------


@pytest.mark.parametrize("verdicts", list(itertools.product(list(Verdict), repeat=3)))
def test_any_of_and_all_of_follow_their_truth_tables(verdicts: tuple[Verdict, ...]) -> None:
    members = [const(v) for v in verdicts]
    subject = Subject(ALICE)
    any_of = AnyOfAllowlists(*members).evaluate(subject)
    all_of = AllOfAllowlists(*members).evaluate(subject)
    if ALLOW in verdicts:
        assert any_of is ALLOW
    elif DENY in verdicts:
        assert any_of is DENY
    else:
        assert any_of is ABSTAIN
    if DENY in verdicts:
        assert all_of is DENY
    elif all(v is ALLOW for v in verdicts):
        assert all_of is ALLOW
    else:
        assert all_of is ABSTAIN


def test_empty_combinators_abstain() -> None:
    assert AnyOfAllowlists().evaluate(Subject(ALICE)) is ABSTAIN
    assert AllOfAllowlists().evaluate(Subject(ALICE)) is ABSTAIN


def test_lists_allow_members_and_abstain_on_everyone_else() -> None:
    natives = NativeIdAllowlist({"telegram": ["111"]})
    assert natives.evaluate(Subject(ALICE)) is ALLOW
    assert natives.evaluate(Subject(BOB)) is ABSTAIN
    assert natives.evaluate(Subject(ChannelIdentity("slack", "111"))) is ABSTAIN
    claims = LinkedClaimAllowlist("tid", [CONTOSO])
    assert claims.evaluate(Subject(ALICE)) is ABSTAIN
    post = Subject(ALICE, Phase.POST_LINK, claims={("tid", CONTOSO)})
    assert claims.evaluate(post) is ALLOW
    assert claims.evaluate(Subject(ALICE, Phase.POST_LINK, claims={("oid", CONTOSO)})) is ABSTAIN


def test_callable_answers_map_to_verdicts() -> None:
    assert CallableAllowlist(lambda s: True).evaluate(Subject(ALICE)) is ALLOW
    assert CallableAllowlist(lambda s: False).evaluate(Subject(ALICE)) is DENY
    assert CallableAllowlist(lambda s: None).evaluate(Subject(ALICE)) is ABSTAIN
    with pytest.raises(TypeError, match="Verdict, bool or None"):
        CallableAllowlist(lambda s: "yes").evaluate(Subject(ALICE))  # type: ignore[arg-type,return-value]


def test_walking_nested_combinators_finds_channels_and_claims() -> None:
    tree = AnyOfAllowlists(
        AllOfAllowlists(NativeIdAllowlist({"telegram": ["1"]}), const(ALLOW)),
        AnyOfAllowlists(CallableAllowlist(lambda s: None, channels=["slack"])),
        AllOfAllowlists(AnyOfAllowlists(LinkedClaimAllowlist("tid", ["x"]))),
    )
    assert authorization.channels_named(tree) == {"telegram", "slack"}
    assert authorization.consults_claims(tree)
    assert authorization.consults_links(tree)
    assert not authorization.consults_claims(NativeIdAllowlist({"telegram": ["1"]}))
    assert not authorization.consults_links(NativeIdAllowlist({"t": ["1"]}, include_linked=False))


def test_allowlists_reject_wrong_shapes_early() -> None:
    with pytest.raises(TypeError, match="mapping of channel name"):
        NativeIdAllowlist(["111"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one string"):
        NativeIdAllowlist({"telegram": "111"})
    with pytest.raises(TypeError, match="collection of strings"):
        LinkedClaimAllowlist("tid", "contoso")
    with pytest.raises(TypeError, match="is not an Allowlist"):
        AnyOfAllowlists("telegram")  # type: ignore[arg-type]


# --- the decision: pre-link and post-link ----------------------------------------------


def test_open_profile_admits_everyone_without_loading_facts() -> None:
    assert not access().needs_facts
    assert authorize(access(), BOB, None) == Allowed()
    assert authorize(access(AllowAll()), BOB, None) == Allowed()


def test_forced_link_requires_a_link_until_there_is_one() -> None:
    forced = access(require_link=True)
    assert forced.needs_facts
    assert isinstance(authorize(forced, BOB, None), LinkRequired)
    assert isinstance(authorize(forced, BOB, UserFacts()), LinkRequired)
    assert authorize(forced, BOB, UserFacts((ALICE,))) == Allowed()
    assert authorize(forced, BOB, UserFacts(claims={("tid", CONTOSO)})) == Allowed()


def test_link_required_tells_group_members_to_write_directly() -> None:
    forced = access(require_link=True)
    direct = authorize(forced, BOB, None)
    group = authorize(forced, BOB, None, is_direct=False)
    assert isinstance(direct, LinkRequired) and isinstance(group, LinkRequired)
    assert "/link" in direct.user_message
    assert "directly" in group.user_message
    assert direct.reason_code == "link_required"


def test_native_allowlist_profile() -> None:
    natives = NativeIdAllowlist({"telegram": ["111"]})
    assert authorize(access(natives), ALICE, None) == Allowed()
    # Without a way to link, a stranger is simply denied, with a bland message.
    denied = authorize(access(natives, can_link=False), BOB, None)
    assert isinstance(denied, Denied)
    assert denied.reason_code == "not_allowlisted"
    assert denied.user_message == DENIED_MESSAGE
    assert denied.log_details["channel"] == "telegram"
    # With a linker, linking to a listed identity could admit: link first.
    assert isinstance(authorize(access(natives), BOB, None), LinkRequired)
    # Post-link, a user one of whose identities is listed is admitted on any channel.
    assert authorize(access(natives), ALICE_ON_API, UserFacts((ALICE,))) == Allowed()
    # ...unless the list looks at the requesting identity only.
    strict = NativeIdAllowlist({"telegram": ["111"]}, include_linked=False)
    assert isinstance(authorize(access(strict), ALICE_ON_API, UserFacts((ALICE,))), Denied)
    assert isinstance(authorize(access(strict), BOB, None), Denied)  # linking cannot help


def test_linked_claim_allowlist_profile() -> None:
    claims = access(LinkedClaimAllowlist("tid", [CONTOSO]))
    assert isinstance(authorize(claims, BOB, None), LinkRequired)  # pre-link: no claims yet
    contoso = UserFacts(claims={("tid", CONTOSO), ("oid", "o-1")})
    assert authorize(claims, BOB, contoso) == Allowed()
    fabrikam = UserFacts(claims={("tid", FABRIKAM), ("oid", "o-2")})
    denied = authorize(claims, BOB, fabrikam)
    assert isinstance(denied, Denied)
    assert denied.log_details["phase"] == "post_link"
    # Linked by code to an identity holding no claims: still needs a claim-bearing link.
    assert isinstance(authorize(claims, BOB, UserFacts((ALICE,))), LinkRequired)
    # ...but not when nothing on the host verifies claims.
    no_source = access(LinkedClaimAllowlist("tid", [CONTOSO]), claims=False)
    assert isinstance(authorize(no_source, BOB, UserFacts((ALICE,))), Denied)
    # A user linked by code to an identity that holds the claim is admitted.
    assert authorize(claims, ALICE_ON_API, UserFacts((ALICE,), {("tid", CONTOSO)})) == Allowed()


def test_mixed_profiles_any_of_and_all_of_nested() -> None:
    staff = AnyOfAllowlists(
        NativeIdAllowlist({"telegram": ["111"]}), LinkedClaimAllowlist("tid", [CONTOSO])
    )
    blocked = {"999"}
    blocklist = CallableAllowlist(lambda s: False if s.identity.native_id in blocked else None)
    policy = AllOfAllowlists(AnyOfAllowlists(staff, blocklist), AnyOfAllowlists(blocklist))
    # AllOf needs every member to allow: the blocklist abstains, so nobody is "all allowed";
    # the lists could still change their mind once linked, so: link first.
    assert isinstance(authorize(access(policy), ALICE, None), LinkRequired)
    assert isinstance(authorize(access(policy, can_link=False), ALICE, None), Denied)

    rules = AnyOfAllowlists(staff, AllOfAllowlists(blocklist))
    assert authorize(access(rules), ALICE, None) == Allowed()
    assert authorize(access(rules), BOB, UserFacts(claims={("tid", CONTOSO)})) == Allowed()
    blocked_user = ChannelIdentity("telegram", "999")
    assert isinstance(authorize(access(rules), blocked_user, None), Denied)

    # A veto in front: AllOf(not blocked, staff) denies the blocked even when listed.
    vetoed = AllOfAllowlists(CallableAllowlist(lambda s: s.identity.native_id != "111"), staff)
    assert isinstance(authorize(access(vetoed), ALICE, None), Denied)
    assert authorize(access(vetoed), BOB, UserFacts(claims={("tid", CONTOSO)})) == Allowed()


def test_a_pre_link_denial_is_final_even_when_post_link_allows() -> None:
    deny_bob = CallableAllowlist(
        lambda s: False if s.phase is Phase.PRE_LINK and s.identity == BOB else None
    )
    rules = AnyOfAllowlists(deny_bob, NativeIdAllowlist({"telegram": ["111"]}))
    linked_to_alice = UserFacts((ALICE,))
    assert rules.evaluate(Subject(BOB, Phase.POST_LINK, (ALICE,))) is ALLOW
    decision = authorize(access(rules), BOB, linked_to_alice)
    assert isinstance(decision, Denied)
    assert decision.log_details["phase"] == "pre_link"


def test_a_post_link_denial_is_final() -> None:
    no_fabrikam = CallableAllowlist(lambda s: ("tid", FABRIKAM) not in s.claims, claims=True)
    assert authorize(access(no_fabrikam), BOB, None) == Allowed()
    denied = authorize(access(no_fabrikam), BOB, UserFacts(claims={("tid", FABRIKAM)}))
    assert isinstance(denied, Denied)
    assert denied.reason_code == "denied"
    assert denied.log_details["phase"] == "post_link"


def test_a_pre_link_allow_is_not_revoked_by_linking() -> None:
    natives = NativeIdAllowlist({"telegram": ["111"]}, include_linked=False)
    assert authorize(access(natives), ALICE, UserFacts((CAROL,))) == Allowed()


def test_denial_details_never_carry_claims() -> None:
    decision = authorize(
        access(LinkedClaimAllowlist("tid", [CONTOSO])), BOB, UserFacts(claims={("tid", "x")})
    )
    assert isinstance(decision, Denied)
    assert "x" not in decision.log_details.values()
    assert set(decision.log_details) == {"channel", "native_id", "phase", "allowlist"}


# --- through the turn ---------------------------------------------------------------------


def test_a_denied_stranger_ends_the_turn_after_one_load_and_leaves_no_trace() -> None:
    world = IdentityWorld()
    settings = settings_for(NativeIdAllowlist({"telegram": ["111"]}), can_link=False)
    driven = world.turn(message("hello", BOB), settings)
    assert driven.kinds == ["OpenTurn"]  # the store refused it in the trip that loaded it
    assert driven.effects[0].opening.identity == BOB
    assert driven.effects[0].opening.access.needs_facts
    refused = driven.outcome
    assert isinstance(refused, TurnRefused)
    assert refused.reason is RefusalReason.DENIED
    assert refused.user_message == DENIED_MESSAGE
    assert isinstance(refused.access, Denied)
    assert world.identities == {} and world.sessions == {}


def test_the_open_profile_costs_no_extra_effect() -> None:
    world = IdentityWorld()
    first = world.turn(message("hello", ALICE), settings_for(None, commands=False))
    assert first.kinds == ["OpenTurn", "RunTarget", "FinishRun"]
    again = world.turn(message("again", ALICE), settings_for(None, commands=False))
    assert again.kinds == ["OpenTurn", "RunTarget", "FinishRun"]
    assert again.effects[0].opening.access.needs_facts is False


def test_a_returning_user_under_an_allowlist_still_costs_one_load() -> None:
    world = IdentityWorld()
    settings = settings_for(NativeIdAllowlist({"telegram": ["111"]}))
    world.turn(message("hello", ALICE), settings)
    again = world.turn(message("again", ALICE), settings)
    assert again.kinds == ["OpenTurn", "RunTarget", "FinishRun"]
    assert again.effects[0].opening.access.needs_facts is True


def test_forced_link_through_the_turn_then_linked_by_code() -> None:
    world = IdentityWorld()
    settings = settings_for(require_link=True)
    refused = world.turn(message("hello", BOB), settings).outcome
    assert isinstance(refused, TurnRefused) and refused.reason is RefusalReason.LINK_REQUIRED
    assert "/link" in (refused.user_message or "")
    # /link is open to a user who must link: Bob asks for a code, Alice uses it.
    asked = world.turn(message("/link", BOB), settings).outcome
    assert isinstance(asked, TurnCompleted)
    code = world.codes[-1]
    assert code in asked.result.text
    world.turn(message("/link", ALICE), settings)  # Alice is refused nothing for /link
    used = world.turn(message(f"/link {code}", ALICE), settings).outcome
    assert isinstance(used, TurnCompleted) and used.result.text.startswith("Linked")
    assert world.key_of(ALICE) == world.key_of(BOB)
    ran = world.turn(message("hello again", BOB), settings)
    assert isinstance(ran.outcome, TurnCompleted)


def test_per_message_in_a_group_one_allowed_user_never_admits_another() -> None:
    world = IdentityWorld()
    settings = settings_for(NativeIdAllowlist({"telegram": ["111"]}), can_link=False)
    outcomes = [
        world.turn(message(text, who, group="g1"), settings).outcome
        for who, text in [(ALICE, "hi all"), (BOB, "me too"), (ALICE, "again"), (BOB, "please")]
    ]
    assert [type(o).__name__ for o in outcomes] == [
        "TurnCompleted",
        "TurnRefused",
        "TurnCompleted",
        "TurnRefused",
    ]
    assert [t.request.identity for t in world.targets] == [ALICE, ALICE]


def test_each_channel_has_its_own_access() -> None:
    world = IdentityWorld()
    natives = NativeIdAllowlist({"telegram": ["111"]}, include_linked=False)
    settings = settings_for(
        None, channels={"telegram": access(natives), "invocations": access(None)}
    )
    assert isinstance(world.turn(message("hi", BOB), settings).outcome, TurnRefused)
    assert isinstance(world.turn(message("hi", CAROL), settings).outcome, TurnCompleted)
    other = ChannelIdentity("slack", "222")  # a channel with no entry: the host default
    assert isinstance(world.turn(message("hi", other), settings).outcome, TurnCompleted)


# --- property: a denied identity never produces a target run -----------------------------

IDENTITIES = [
    ChannelIdentity(channel, native)
    for channel in ("telegram", "invocations")
    for native in ("1", "2", "3")
]
CLAIM_VALUES = ["contoso", "fabrikam"]


def leaves() -> st.SearchStrategy[Allowlist]:
    natives = st.builds(
        lambda chosen, linked: NativeIdAllowlist(
            {ch: [i.native_id for i in chosen if i.channel == ch] for ch in ("telegram",)},
            include_linked=linked,
        ),
        st.lists(st.sampled_from(IDENTITIES), max_size=3),
        st.booleans(),
    )
    claims = st.builds(
        lambda values: LinkedClaimAllowlist("tid", values),
        st.lists(st.sampled_from(CLAIM_VALUES), max_size=2),
    )
    constant = st.sampled_from(list(Verdict)).map(const)
    return st.one_of(natives, claims, constant, st.just(AllowAll()))


allowlists = st.recursive(
    leaves(),
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda m: AnyOfAllowlists(*m)),
        st.lists(children, max_size=3).map(lambda m: AllOfAllowlists(*m)),
    ),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    allowlist=st.one_of(st.none(), allowlists),
    require_link=st.booleans(),
    can_link=st.booleans(),
    links=st.lists(st.tuples(st.sampled_from(IDENTITIES), st.sampled_from(IDENTITIES)), max_size=3),
    claims=st.lists(
        st.tuples(st.sampled_from(IDENTITIES), st.sampled_from(CLAIM_VALUES)), max_size=2
    ),
    requests=st.lists(
        st.tuples(st.sampled_from(IDENTITIES), st.booleans()), min_size=1, max_size=6
    ),
)
def test_a_denied_identity_never_produces_a_target_run(
    allowlist: Allowlist | None,
    require_link: bool,
    can_link: bool,
    links: list[tuple[ChannelIdentity, ChannelIdentity]],
    claims: list[tuple[ChannelIdentity, str]],
    requests: list[tuple[ChannelIdentity, bool]],
) -> None:
    require_link = require_link and can_link
    world = IdentityWorld()
    for n, identity in enumerate(IDENTITIES):
        world.identities[(identity.channel, identity.native_id)] = f"ik_{n}"
    for anchor, moving in links:
        world.link(anchor, moving)
    for identity, tenant in claims:
        world.present_claims(identity, {"tid": tenant, "oid": f"oid-{identity.native_id}"})
    chosen = access(allowlist, require_link=require_link, can_link=can_link)
    settings = settings_for(
        allowlist, require_link=require_link, can_link=can_link, claims_available=True
    )
    for identity, in_group in requests:
        facts = world.facts(identity) if chosen.needs_facts else None
        expected = authorize(chosen, identity, facts, is_direct=not in_group)
        before = dict(world.identities)
        ran = len(world.targets)
        driven = world.turn(message("hi", identity, group="g" if in_group else None), settings)
        if isinstance(expected, Allowed):
            assert isinstance(driven.outcome, TurnCompleted)
            assert len(world.targets) == ran + 1
            assert world.targets[-1].request.identity == identity
        else:
            assert isinstance(driven.outcome, TurnRefused)
            assert driven.outcome.access == expected
            assert driven.kinds == ["OpenTurn"]
            assert len(world.targets) == ran
            assert world.identities == before
