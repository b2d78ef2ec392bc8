"""Authorization decisions per second in the core, for each access profile of the design.

Each row calls ``authorization.authorize`` (what ``turns.resolve_turn`` does for every
message) over a fixed mix of senders: members and strangers, linked and unlinked, with and
without verified claims, direct and in groups. No event loop, no store: the facts a store
would load with the request's context are built once, up front. The last row prices one
``/link CODE`` decision (``link_codes.decide_attempt``: a SHA-256, a constant-time compare,
the counters and the merge plan).
"""

from __future__ import annotations

from collections.abc import Sequence

from agenthost.sansio_core import link_codes
from agenthost.sansio_core.authorization import (
    AllOfAllowlists,
    AnyOfAllowlists,
    CallableAllowlist,
    ChannelAccess,
    LinkedClaimAllowlist,
    NativeIdAllowlist,
    authorize,
)
from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.linking import UserFacts, UserRecord
from agenthost.sansio_core.types import ChannelIdentity
from benchmarks.report import Row
from benchmarks.timing import time_calls

BUDGET_SECONDS = 0.5  # per row; six rows
MEMBERS = 1_000  # native ids on the allowlist

Sender = tuple[ChannelIdentity, UserFacts | None, bool]  # identity, loaded facts, is_direct


def senders() -> list[Sender]:
    """A fixed mix: a third listed members, a third strangers, a third linked users."""
    mix: list[Sender] = []
    for n in range(300):
        member = ChannelIdentity("telegram", f"user-{n * 3}")
        stranger = ChannelIdentity("telegram", f"stranger-{n}")
        linked = ChannelIdentity("invocations", f"api-{n}")
        claims = {("tid", "contoso" if n % 2 else "fabrikam"), ("oid", f"oid-{n}")}
        mix.append((member, UserFacts(), n % 5 != 0))
        mix.append((stranger, None, True))
        mix.append((linked, UserFacts((member,), claims), n % 4 != 0))
    return mix


def profiles() -> list[tuple[str, ChannelAccess]]:
    listed = NativeIdAllowlist({"telegram": [f"user-{n}" for n in range(MEMBERS * 3)]})
    tenant = LinkedClaimAllowlist("tid", ["contoso"])
    blocked = frozenset(f"stranger-{n}" for n in range(0, 300, 7))
    blocklist = CallableAllowlist(lambda s: False if s.identity.native_id in blocked else None)
    mixed = AllOfAllowlists(
        AnyOfAllowlists(listed, tenant),
        AnyOfAllowlists(blocklist, AnyOfAllowlists(listed, tenant)),
    )
    return [
        ("open", ChannelAccess()),
        ("forced link", ChannelAccess(require_link=True, can_link=True)),
        ("native allowlist", ChannelAccess(listed, can_link=True)),
        ("linked-claim allowlist", ChannelAccess(tenant, can_link=True, claims_available=True)),
        ("mixed (nested AnyOf/AllOf)", ChannelAccess(mixed, can_link=True, claims_available=True)),
    ]


def _profile_row(name: str, access: ChannelAccess, mix: Sequence[Sender]) -> Row:
    outcomes: dict[str, int] = {}

    def decide(i: int) -> None:
        identity, facts, is_direct = mix[i % len(mix)]
        decision = authorize(
            access, identity, facts if access.needs_facts else None, is_direct=is_direct
        )
        kind = type(decision).__name__
        outcomes[kind] = outcomes.get(kind, 0) + 1

    row = time_calls(f"core authorize: {name}", decide, budget=BUDGET_SECONDS)
    total = sum(outcomes.values())
    shares = " ".join(
        f"{kind[0]}{round(100 * count / total)}%" for kind, count in sorted(outcomes.items())
    )
    return Row(row.name, row.operations, row.seconds, {**row.extra, "A/D/L": shares})


def _code_row() -> Row:
    limits = link_codes.CodeLimits()
    issuer = ChannelIdentity("invocations", "alice")
    completer = ChannelIdentity("telegram", "alice")
    issued = link_codes.issue(
        issuer=issuer,
        challenge_id="lc",
        entropy=bytes(range(8)),
        salt=bytes(range(16)),
        now=0.0,
        limits=limits,
    )
    locator_secret = link_codes.parse_code(issued.code)
    assert locator_secret is not None
    secret = locator_secret[1]
    wrong = ("1" if secret[0] != "1" else "2") + secret[1:]
    identity_counter = link_codes.AttemptCounter(link_codes.identity_scope(completer))
    global_counter = link_codes.AttemptCounter(link_codes.GLOBAL_SCOPE)
    rules = LinkRules()
    issuer_user = UserRecord("k-a", (issuer,))
    completer_user = UserRecord("k-b", (completer,))

    def attempt(i: int) -> None:
        link_codes.decide_attempt(
            challenge=issued.challenge,
            identity_counter=identity_counter,
            global_counter=global_counter,
            completer=completer,
            secret=secret if i % 2 else wrong,
            now=1.0,
            limits=limits,
            completer_user=completer_user,
            issuer_user=issuer_user,
            rules=rules,
        )

    return time_calls("core /link CODE decision (half right)", attempt, budget=BUDGET_SECONDS)


def run() -> list[Row]:
    mix = senders()
    rows = [_profile_row(name, access, mix) for name, access in profiles()]
    rows.append(_code_row())
    return rows
