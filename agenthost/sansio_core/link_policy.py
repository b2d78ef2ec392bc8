"""Link policy: which channels' identities may be joined into one user.

Rules:

1. Every channel declares a ``confidentiality_tier`` (``"standard"`` unless it says
   otherwise). A policy decides for a *pair* of channels whether an identity on one may be
   linked with an identity on the other; a pair of identities on one channel is a pair too.
2. A link joins two users, not two identities: it is permitted only when every pair of
   channels across the two users is, so a policy that is not transitive
   (``ExplicitAllowList``) cannot be bypassed by linking in steps.
3. The policy is consulted before anything is written, for every kind of link (one-time
   codes, verified claims); a refused link changes nothing and tells the user why.
4. Routing consults the same rules (:meth:`LinkRules.permits`) before it delivers a reply
   to another channel of the user.

Built-ins: :class:`AllowAllLinks` (the default), :class:`SameConfidentialityTierOnly`,
:class:`ExplicitAllowList` and :class:`DenyAllLinks`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping

import attrs

DEFAULT_TIER = "standard"


@attrs.frozen
class ChannelProfile:
    """What the link policy knows of a channel."""

    name: str
    confidentiality_tier: str = DEFAULT_TIER


class LinkPolicy(abc.ABC):
    """Decides whether identities on two channels may belong to one user."""

    @abc.abstractmethod
    def permits(self, a: ChannelProfile, b: ChannelProfile) -> bool:
        """Whether an identity on ``a`` may be linked with one on ``b`` (symmetric)."""

    def named_channels(self) -> frozenset[str]:
        """The channels the policy names by name (checked against the host's channels)."""
        return frozenset()


@attrs.frozen
class AllowAllLinks(LinkPolicy):
    """Any identity may be linked with any other (the default)."""

    def permits(self, a: ChannelProfile, b: ChannelProfile) -> bool:
        return True


@attrs.frozen
class DenyAllLinks(LinkPolicy):
    """Nothing may be linked: every channel identity stays its own user."""

    def permits(self, a: ChannelProfile, b: ChannelProfile) -> bool:
        return False


@attrs.frozen
class SameConfidentialityTierOnly(LinkPolicy):
    """Identities may be linked only across channels of the same confidentiality tier."""

    def permits(self, a: ChannelProfile, b: ChannelProfile) -> bool:
        return a.confidentiality_tier == b.confidentiality_tier


def _pairs(value: Iterable[tuple[str, str]]) -> frozenset[frozenset[str]]:
    pairs = []
    for pair in value:
        a, b = pair
        pairs.append(frozenset((a, b)))
    return frozenset(pairs)


@attrs.frozen
class ExplicitAllowList(LinkPolicy):
    """Only the listed (unordered) channel pairs may be linked.

    ``ExplicitAllowList([("telegram", "teams")])`` permits a Telegram identity and a Teams
    identity in one user; two Telegram identities need ``("telegram", "telegram")``.
    """

    pairs: frozenset[frozenset[str]] = attrs.field(converter=_pairs)

    def permits(self, a: ChannelProfile, b: ChannelProfile) -> bool:
        return frozenset((a.name, b.name)) in self.pairs

    def named_channels(self) -> frozenset[str]:
        return frozenset(name for pair in self.pairs for name in pair)


def _tier_map(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@attrs.frozen
class LinkRules:
    """A policy together with the channels' tiers: everything a link decision needs."""

    policy: LinkPolicy = attrs.field(factory=AllowAllLinks)
    tiers: Mapping[str, str] = attrs.field(factory=dict, converter=_tier_map)
    default_tier: str = DEFAULT_TIER

    def profile(self, channel: str) -> ChannelProfile:
        return ChannelProfile(channel, self.tiers.get(channel, self.default_tier))

    def permits(self, a: str, b: str) -> bool:
        """Whether identities on channels ``a`` and ``b`` may belong to one user."""
        return self.policy.permits(self.profile(a), self.profile(b))

    def permits_merge(self, first: Iterable[str], second: Iterable[str]) -> bool:
        """Whether two users (given by their identities' channels) may become one."""
        second = tuple(second)
        return all(self.permits(a, b) for a in set(first) for b in set(second))
