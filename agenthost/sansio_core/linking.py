"""Linking: what joins channel identities into one user, and what separates them again.

Rules:

1. A *user* is the set of identities that share an isolation key. A link merges the second
   user onto the first user's key: every identity of the second user moves, so a merge
   never splits one user into two keys. The store applies the merge in one transaction,
   and only after the link policy (``link_policy.py``) permitted it.
2. Merged identities reach the first user's sessions from then on. Their own earlier
   sessions stay stored under their old key: readable, no longer reached.
3. Unlinking gives the identity a fresh isolation key and forgets the claims verified for
   it, so it never reaches the shared sessions again; the rest of the user keeps the key.
4. A user is *linked* when their key is shared by more than one identity or holds
   verified claims.
5. Verified claims (an OpenID Connect sign-in, say) name a person by their *subject*
   claims (``tid`` and ``oid`` for Entra). An identity presenting a subject another user
   holds is linked to that user silently; otherwise it becomes the subject's holder.

Fresh keys and time come in as arguments: nothing here reads a clock or draws randomness.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence

import attrs

from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.types import ChannelIdentity

SUBJECT_CLAIM = "subject"  # the claim type under which a verified subject is recorded
CODE_SOURCE = "code"  # the source recorded for links made with one-time codes


class LinkReason(enum.StrEnum):
    """Why a link operation answered what it did (stable codes, safe to log)."""

    LINKED = "linked"
    ALREADY_LINKED = "already_linked"
    CLAIMS_RECORDED = "claims_recorded"  # the identity now holds the verified subject
    LINK_POLICY = "link_policy"
    CONFLICTING_CLAIMS = "conflicting_claims"
    WRONG_CODE = "wrong_code"
    EXPIRED = "expired"
    CODE_LOCKED = "code_locked"
    CODE_USED = "code_used"
    OWN_CODE = "own_code"
    RATE_LIMITED = "rate_limited"
    UNLINKED = "unlinked"
    NOT_LINKED = "not_linked"


@attrs.frozen
class LinkResult:
    """The answer of a link, a completion or an unlink.

    ``linked`` says whether the identity is now linked (to another identity, or to the
    verified account whose claims it presented); ``isolation_key`` is its key afterwards.
    """

    linked: bool
    isolation_key: str | None
    reason: LinkReason


@attrs.frozen
class LinkChallenge:
    """What a linker answers to ``begin``: shown to the user, in their direct chat only."""

    challenge_id: str
    linker: str
    instructions: str
    expires_at: float | None = None
    url: str | None = None


def _claim_set(value: Iterable[tuple[str, str]]) -> frozenset[tuple[str, str]]:
    return frozenset((str(kind), str(claim)) for kind, claim in value)


@attrs.frozen
class UserFacts:
    """What linking established about a user, loaded with the request's context."""

    linked_identities: tuple[ChannelIdentity, ...] = ()  # the user's *other* identities
    claims: frozenset[tuple[str, str]] = attrs.field(default=frozenset(), converter=_claim_set)

    @property
    def linked(self) -> bool:
        return bool(self.linked_identities) or bool(self.claims)


NO_FACTS = UserFacts()


@attrs.frozen
class UserRecord:
    """A user as a store loads it for a link decision: the key and every identity on it.

    ``isolation_key`` is ``None`` for an identity never seen (it then stands alone).
    """

    isolation_key: str | None
    identities: tuple[ChannelIdentity, ...]

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(identity.channel for identity in self.identities)


@attrs.frozen
class LinkRecord:
    """One stored link: ``identity`` joined the user of ``anchor`` (for listing, unlinking)."""

    identity: ChannelIdentity
    isolation_key: str
    anchor: ChannelIdentity
    source: str
    previous_key: str | None
    created_at: float


@attrs.frozen
class Merge:
    """Move every identity of the user keyed ``from_key`` onto ``to_key``.

    ``from_key`` is ``None`` when the moving identity was never seen: the store inserts it.
    """

    from_key: str | None
    to_key: str
    moved: tuple[ChannelIdentity, ...]
    records: tuple[LinkRecord, ...]


def plan_merge(
    anchor: ChannelIdentity,
    anchor_user: UserRecord,
    moving: ChannelIdentity,
    moving_user: UserRecord,
    rules: LinkRules,
    *,
    source: str,
    now: float,
) -> Merge | LinkResult:
    """Decide whether ``moving``'s user joins ``anchor``'s user, and what moves.

    Answers a :class:`Merge` to apply, or a :class:`LinkResult` when nothing is to be
    written (already one user, or the policy refuses).
    """
    if anchor_user.isolation_key is None:
        raise ValueError("the anchor of a link must have an isolation key")
    to_key = anchor_user.isolation_key
    if moving_user.isolation_key == to_key:
        return LinkResult(True, to_key, LinkReason.ALREADY_LINKED)
    moved = moving_user.identities or (moving,)
    if moving not in moved:
        raise ValueError("the moving user's identities must include the moving identity")
    if not rules.permits_merge(anchor_user.channels, (identity.channel for identity in moved)):
        return LinkResult(False, moving_user.isolation_key, LinkReason.LINK_POLICY)
    records = tuple(
        LinkRecord(identity, to_key, anchor, source, moving_user.isolation_key, now)
        for identity in moved
    )
    return Merge(moving_user.isolation_key, to_key, moved, records)


@attrs.frozen
class Unlink:
    """Give ``identity`` the fresh key ``to_key`` and forget its verified claims."""

    identity: ChannelIdentity
    from_key: str
    to_key: str


def plan_unlink(
    identity: ChannelIdentity, user: UserRecord, *, has_claims: bool, new_key: str
) -> Unlink | LinkResult:
    """Decide an unlink: an identity alone on its key, holding no claims, is not linked."""
    if user.isolation_key is None:
        return LinkResult(False, None, LinkReason.NOT_LINKED)
    others = [other for other in user.identities if other != identity]
    if not others and not has_claims:
        return LinkResult(False, user.isolation_key, LinkReason.NOT_LINKED)
    return Unlink(identity, user.isolation_key, new_key)


def _plain_dict(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@attrs.frozen
class VerifiedClaims:
    """Claims a trusted source verified for one identity, with the subject they name."""

    source: str
    claims: Mapping[str, str] = attrs.field(converter=_plain_dict)
    subject: str
    verified_at: float

    def rows(self) -> tuple[tuple[str, str], ...]:
        """Every ``(claim_type, claim_value)`` to record, the subject included."""
        return ((SUBJECT_CLAIM, self.subject), *sorted(self.claims.items()))


def verified_claims(
    claims: Mapping[str, str], *, source: str, subject_claims: Sequence[str], now: float
) -> VerifiedClaims:
    """Validate claims and derive their subject; a missing subject claim is a bug upstream."""
    if not source:
        raise ValueError("verified claims need a source (e.g. 'entra')")
    if not subject_claims:
        raise ValueError("subject_claims must name at least one claim (e.g. 'tid', 'oid')")
    clean: dict[str, str] = {}
    for kind, value in claims.items():
        if not isinstance(kind, str) or not isinstance(value, str):
            raise ValueError("verified claims are strings mapped to strings")
        if kind == SUBJECT_CLAIM:
            raise ValueError(f"{SUBJECT_CLAIM!r} is reserved for the subject the host derives")
        clean[kind] = value
    missing = [name for name in subject_claims if not clean.get(name)]
    if missing:
        raise ValueError(
            f"the verified claims lack the subject claim(s) {', '.join(missing)}; pass "
            "subject_claims naming claims the source always verifies"
        )
    subject = json.dumps([source, [[name, clean[name]] for name in subject_claims]])
    return VerifiedClaims(source, clean, subject, now)


@attrs.frozen
class ClaimsLink:
    """The decision for presented claims: what to merge (if anything), whether to record."""

    result: LinkResult
    merge: Merge | None = None
    record: bool = False  # store the claims for the presenting identity


def plan_claims_link(
    identity: ChannelIdentity,
    user: UserRecord,
    holders: Sequence[tuple[ChannelIdentity, UserRecord]],
    rules: LinkRules,
    *,
    source: str,
    now: float,
) -> ClaimsLink:
    """Decide what presented claims do, given who already holds their subject.

    ``user`` is the presenting identity's user (with its key, which the store issued if
    the identity was new); ``holders`` the identities holding the same subject, with
    their users.
    """
    if user.isolation_key is None:
        raise ValueError("the presenting identity needs an isolation key")
    others = {
        record.isolation_key: (holder, record)
        for holder, record in holders
        if record.isolation_key != user.isolation_key
    }
    if not others:
        reason = LinkReason.ALREADY_LINKED if holders else LinkReason.CLAIMS_RECORDED
        return ClaimsLink(LinkResult(True, user.isolation_key, reason), record=True)
    if len(others) > 1:
        return ClaimsLink(LinkResult(False, user.isolation_key, LinkReason.CONFLICTING_CLAIMS))
    ((holder, holder_user),) = others.values()
    plan = plan_merge(holder, holder_user, identity, user, rules, source=source, now=now)
    if isinstance(plan, LinkResult):
        return ClaimsLink(plan, record=plan.linked)
    return ClaimsLink(LinkResult(True, plan.to_key, LinkReason.LINKED), merge=plan, record=True)


def claims_source(source: str) -> str:
    """The link source recorded for a link made by verified claims."""
    return f"claims:{source}"
