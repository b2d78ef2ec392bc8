"""Authorization: whether the sender of one message may use a channel, decided every time.

Rules:

1. Authorization runs for every message, for the user who sent it (never for the chat):
   in a group, one admitted user never admits the others.
2. An allowlist answers one of three verdicts: ``ALLOW``, ``DENY`` or ``ABSTAIN`` (nothing
   to say). The lists admit their members and abstain on everyone else; a
   ``CallableAllowlist`` may also deny. ``AnyOfAllowlists`` allows when any member
   allows, else denies when any denies; ``AllOfAllowlists`` denies when any member
   denies and allows only when every member allows; otherwise both abstain.
3. The allowlist is evaluated *pre-link*, on the requesting identity alone, and, when the
   user is linked, *post-link*, on what linking established: the user's other identities
   and verified claims. A ``DENY`` from either is final: linking never overrides a denial,
   and an ``ALLOW`` from either admits.
4. ``require_link`` answers ``LinkRequired`` to a user who is not linked (unless denied).
5. ``ABSTAIN`` denies, except that a user whom a link could still admit (the host can
   link, and the allowlist consults linked identities or claims the user does not have
   yet) is answered ``LinkRequired``.
6. A denial shows the user one bland message. The reason code and the details go to
   structured logs only: never message text, link codes, tokens or claims.

The outcomes are :class:`Allowed`, :class:`LinkRequired` and :class:`Denied`. Everything
here is pure: allowlists are values, and a ``CallableAllowlist`` must not perform I/O.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from agenthost.sansio_core.linking import LinkChallenge, UserFacts
from agenthost.sansio_core.types import ChannelIdentity

DENIED_MESSAGE = "Sorry, this agent is not available to you."
LINK_REQUIRED_MESSAGE = (
    "Please link this account first: send /link to me where you already talk to me, "
    "then send me the code you get here, as /link CODE."
)
LINK_REQUIRED_IN_GROUP_MESSAGE = (
    "Please link your account first: write to me directly and send /link there."
)


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    ABSTAIN = "abstain"


class Phase(enum.Enum):
    PRE_LINK = "pre_link"  # the requesting identity alone
    POST_LINK = "post_link"  # with what linking established


def _plain_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


def _identities(value: Iterable[ChannelIdentity]) -> tuple[ChannelIdentity, ...]:
    return tuple(value)


def _claims(value: Iterable[tuple[str, str]]) -> frozenset[tuple[str, str]]:
    return frozenset(value)


@attrs.frozen
class Subject:
    """What an allowlist sees of the sender in one phase."""

    identity: ChannelIdentity
    phase: Phase = Phase.PRE_LINK
    linked_identities: tuple[ChannelIdentity, ...] = attrs.field(default=(), converter=_identities)
    claims: frozenset[tuple[str, str]] = attrs.field(default=frozenset(), converter=_claims)

    @property
    def identities(self) -> tuple[ChannelIdentity, ...]:
        """The requesting identity first, then (post-link) the user's others."""
        return (self.identity, *self.linked_identities)


# --- allowlists ---------------------------------------------------------------------


class Allowlist(abc.ABC):
    """A tri-state rule over a :class:`Subject`. Subclasses are frozen values."""

    @abc.abstractmethod
    def evaluate(self, subject: Subject) -> Verdict: ...

    def members(self) -> tuple[Allowlist, ...]:
        """Nested allowlists (combinators), for checks that walk the whole tree."""
        return ()

    def named_channels(self) -> frozenset[str]:
        """Channels this allowlist itself names (not its members')."""
        return frozenset()

    def consults_links(self) -> bool:
        """Whether a verdict may change once the user is linked (this node only)."""
        return False

    def consults_claims(self) -> bool:
        """Whether it reads verified claims (this node only): it needs a claim source."""
        return False


def walk(allowlist: Allowlist) -> Iterator[Allowlist]:
    """The allowlist and every allowlist nested in it, depth first."""
    yield allowlist
    for member in allowlist.members():
        yield from walk(member)


def channels_named(allowlist: Allowlist) -> frozenset[str]:
    return frozenset(name for node in walk(allowlist) for name in node.named_channels())


def consults_links(allowlist: Allowlist) -> bool:
    return any(node.consults_links() for node in walk(allowlist))


def consults_claims(allowlist: Allowlist) -> bool:
    return any(node.consults_claims() for node in walk(allowlist))


@attrs.frozen
class AllowAll(Allowlist):
    """Everyone is allowed."""

    def evaluate(self, subject: Subject) -> Verdict:
        return Verdict.ALLOW


def _native_ids(value: Mapping[str, Iterable[str]]) -> Mapping[str, frozenset[str]]:
    if isinstance(value, str) or not isinstance(value, Mapping):
        raise TypeError(
            "NativeIdAllowlist takes a mapping of channel name to native ids, "
            "e.g. NativeIdAllowlist({'telegram': ['123']})"
        )
    ids = {}
    for channel, natives in value.items():
        if isinstance(natives, str):
            raise TypeError(
                f"the native ids of {channel!r} must be a collection of strings, not one string"
            )
        ids[channel] = frozenset(str(native) for native in natives)
    return ids


@attrs.frozen
class NativeIdAllowlist(Allowlist):
    """Identities allowed by their channel's own id: ``{"telegram": ["123", "456"]}``.

    Post-link it also allows a user one of whose linked identities is listed
    (``include_linked=False`` looks at the requesting identity only).
    """

    ids: Mapping[str, frozenset[str]] = attrs.field(converter=_native_ids)
    include_linked: bool = True

    def evaluate(self, subject: Subject) -> Verdict:
        candidates = subject.identities if self.include_linked else (subject.identity,)
        for identity in candidates:
            if identity.native_id in self.ids.get(identity.channel, ()):
                return Verdict.ALLOW
        return Verdict.ABSTAIN

    def named_channels(self) -> frozenset[str]:
        return frozenset(self.ids)

    def consults_links(self) -> bool:
        return self.include_linked


def _values(value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):
        raise TypeError("LinkedClaimAllowlist values must be a collection of strings")
    return frozenset(value)


@attrs.frozen
class LinkedClaimAllowlist(Allowlist):
    """Users holding a verified claim of ``claim_type`` with one of ``values``.

    ``LinkedClaimAllowlist("tid", ["<tenant id>"])`` admits everyone who linked an account
    of that Entra tenant. Claims exist only post-link, so pre-link it abstains.
    """

    claim_type: str
    values: frozenset[str] = attrs.field(converter=_values)

    def evaluate(self, subject: Subject) -> Verdict:
        if any(kind == self.claim_type and value in self.values for kind, value in subject.claims):
            return Verdict.ALLOW
        return Verdict.ABSTAIN

    def consults_links(self) -> bool:
        return True

    def consults_claims(self) -> bool:
        return True


def _members(value: Iterable[Allowlist]) -> tuple[Allowlist, ...]:
    members = tuple(value)
    for member in members:
        if not isinstance(member, Allowlist):
            raise TypeError(f"{member!r} is not an Allowlist")
    return members


@attrs.frozen(init=False)
class AnyOfAllowlists(Allowlist):
    """Allows when any member allows; else denies when any member denies; else abstains."""

    allowlists: tuple[Allowlist, ...]

    def __init__(self, *allowlists: Allowlist) -> None:
        self.__attrs_init__(_members(allowlists))

    def evaluate(self, subject: Subject) -> Verdict:
        verdicts = [member.evaluate(subject) for member in self.allowlists]
        if Verdict.ALLOW in verdicts:
            return Verdict.ALLOW
        if Verdict.DENY in verdicts:
            return Verdict.DENY
        return Verdict.ABSTAIN

    def members(self) -> tuple[Allowlist, ...]:
        return self.allowlists


@attrs.frozen(init=False)
class AllOfAllowlists(Allowlist):
    """Denies when any member denies; allows when every member allows; else abstains."""

    allowlists: tuple[Allowlist, ...]

    def __init__(self, *allowlists: Allowlist) -> None:
        self.__attrs_init__(_members(allowlists))

    def evaluate(self, subject: Subject) -> Verdict:
        verdicts = [member.evaluate(subject) for member in self.allowlists]
        if Verdict.DENY in verdicts:
            return Verdict.DENY
        if verdicts and all(verdict is Verdict.ALLOW for verdict in verdicts):
            return Verdict.ALLOW
        return Verdict.ABSTAIN

    def members(self) -> tuple[Allowlist, ...]:
        return self.allowlists


AnyOf = AnyOfAllowlists
AllOf = AllOfAllowlists

SubjectRule = Callable[[Subject], "Verdict | bool | None"]


def _names(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@attrs.frozen
class CallableAllowlist(Allowlist):
    """An application rule: ``True``/``ALLOW`` allows, ``False``/``DENY`` denies,
    ``None``/``ABSTAIN`` abstains. It must be pure and quick (it runs on every message).

    Say what it reads, so the host can check its configuration and load what it needs:
    ``consults_links`` (it looks at linked identities or claims), ``consults_claims``
    (it needs a claim source), ``channels`` (channel names it refers to).
    """

    rule: SubjectRule = attrs.field(eq=False)
    links: bool = False
    claims: bool = False
    channels: frozenset[str] = attrs.field(default=frozenset(), converter=_names)

    def evaluate(self, subject: Subject) -> Verdict:
        answer = self.rule(subject)
        if isinstance(answer, Verdict):
            return answer
        if answer is None:
            return Verdict.ABSTAIN
        if isinstance(answer, bool):
            return Verdict.ALLOW if answer else Verdict.DENY
        raise TypeError(f"an allowlist rule answered {answer!r}; answer a Verdict, bool or None")

    def named_channels(self) -> frozenset[str]:
        return self.channels

    def consults_links(self) -> bool:
        return self.links or self.claims

    def consults_claims(self) -> bool:
        return self.claims


# --- outcomes -----------------------------------------------------------------------


@attrs.frozen
class Allowed:
    isolation_key: str | None = None


_ALLOWED = Allowed()  # the usual answer: one frozen value, not one allocation a message


@attrs.frozen
class LinkRequired:
    """The user must link first. ``user_message`` tells them how (it names ``/link``)."""

    user_message: str
    reason_code: str = "link_required"
    challenge: LinkChallenge | None = None


@attrs.frozen
class Denied:
    """Refused. ``user_message`` is bland; ``log_details`` are for structured logs only."""

    reason_code: str
    user_message: str
    log_details: Mapping[str, Any] = attrs.field(factory=dict, converter=_plain_dict)


AccessDecision = Allowed | LinkRequired | Denied


# --- settings -----------------------------------------------------------------------


@attrs.frozen
class ChannelAccess:
    """A channel's effective access rules (``"inherit"`` already resolved by the host).

    ``allowlist=None`` is open. ``can_link``: the host has a way to link (a linker or a
    channel verifying claims). ``claims_available``: something records verified claims.
    """

    allowlist: Allowlist | None = None
    require_link: bool = False
    can_link: bool = False
    claims_available: bool = False

    @property
    def needs_facts(self) -> bool:
        """Whether a decision needs the user's linked identities and claims loaded."""
        return self.require_link or (self.allowlist is not None and consults_links(self.allowlist))


def _access_map(value: Mapping[str, ChannelAccess]) -> dict[str, ChannelAccess]:
    return dict(value)


@attrs.frozen
class AccessSettings:
    """Access rules per channel; ``default`` for requests from any other channel name."""

    default: ChannelAccess = attrs.field(factory=ChannelAccess)
    channels: Mapping[str, ChannelAccess] = attrs.field(factory=dict, converter=_access_map)

    def for_channel(self, channel: str) -> ChannelAccess:
        return self.channels.get(channel, self.default)


# --- the decision -------------------------------------------------------------------


def authorize(
    access: ChannelAccess,
    identity: ChannelIdentity,
    facts: UserFacts | None,
    *,
    is_direct: bool = True,
) -> AccessDecision:
    """Decide one message (see the rules above). ``facts=None``: nothing loaded, not linked."""
    allowlist = access.allowlist
    if allowlist is None and not access.require_link:
        return _ALLOWED  # an open channel, the usual case: what the steps below conclude
    linked = facts is not None and facts.linked
    pre = allowlist.evaluate(Subject(identity)) if allowlist is not None else Verdict.ALLOW
    if pre is Verdict.DENY:
        return _denied("denied", identity, allowlist, Phase.PRE_LINK)
    verdict = pre
    if linked and allowlist is not None and facts is not None:
        post = allowlist.evaluate(
            Subject(identity, Phase.POST_LINK, facts.linked_identities, facts.claims)
        )
        if post is Verdict.DENY:
            return _denied("denied", identity, allowlist, Phase.POST_LINK)
        if post is Verdict.ALLOW:
            verdict = Verdict.ALLOW
    if access.require_link and not linked:
        return _link_required(is_direct)
    if verdict is Verdict.ALLOW:
        return _ALLOWED
    if allowlist is not None and access.can_link and _link_could_admit(access, allowlist, facts):
        return _link_required(is_direct)
    phase = Phase.POST_LINK if linked else Phase.PRE_LINK
    return _denied("not_allowlisted", identity, allowlist, phase)


def _link_could_admit(access: ChannelAccess, allowlist: Allowlist, facts: UserFacts | None) -> bool:
    if facts is None or not facts.linked:
        return consults_links(allowlist)
    # Linked already: only claims the user does not hold yet could still change the verdict.
    return access.claims_available and consults_claims(allowlist) and not facts.claims


def _link_required(is_direct: bool) -> LinkRequired:
    return LinkRequired(LINK_REQUIRED_MESSAGE if is_direct else LINK_REQUIRED_IN_GROUP_MESSAGE)


def _denied(
    reason: str, identity: ChannelIdentity, allowlist: Allowlist | None, phase: Phase
) -> Denied:
    return Denied(
        reason,
        DENIED_MESSAGE,
        {
            "channel": identity.channel,
            "native_id": identity.native_id,
            "phase": phase.value,
            "allowlist": type(allowlist).__name__,
        },
    )
