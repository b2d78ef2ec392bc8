"""The linker seam: how a user proves that two channel identities are both theirs.

A linker *begins* a challenge for an identity (the host shows it in the user's direct
chat, for ``/link``) and *completes* it with a proof. The backend part lives here (drawing
entropy, calling the store); every decision (code format and hashing, attempt limits, the
link policy, what a merge moves) is the core's, applied inside the store's transactions.

- :class:`OneTimeCodeLinker`: ``/link`` on channel A answers a code; ``/link CODE`` on
  channel B completes it, and B's user joins A's.
- A linker whose proof arrives somewhere else (an OpenID Connect callback) implements
  ``begin`` only, leaves ``completes_by_command`` false, sets ``provides_claims`` and
  records what it verified with ``Host.link_verified_claims``.

Pass linkers as ``Host(linker=...)``; a channel that is also an :class:`IdentityLinker`
is picked up as one too. The host binds each linker to itself at construction.
"""

from __future__ import annotations

import abc
import logging
import secrets
from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

from agenthost.recent import RecentMap
from agenthost.sansio_core import link_codes
from agenthost.sansio_core.link_codes import AttemptLimit, CodeLimits
from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.linking import LinkChallenge, LinkReason, LinkResult
from agenthost.sansio_core.types import ChannelIdentity

if TYPE_CHECKING:
    from agenthost.stores.base import Store

log = logging.getLogger("agenthost.linking")

_MAX_DRAWS = 8  # fresh codes drawn when a locator is taken (each try is 1 in 2**20 unlucky)
_MAX_SOURCES = 10_000  # per-source counters kept in memory (the least recent go first)
#: The identity attribute a channel sets to where a request came from (the client address),
#: for channels whose callers can mint identities at will (``channel.SOURCE_ATTRIBUTE``).
SOURCE_ATTRIBUTE = "source"


class LinkingServices(Protocol):
    """What a linker may ask of the host."""

    @property
    def store(self) -> Store: ...

    @property
    def link_rules(self) -> LinkRules:
        """The link policy with the channels' confidentiality tiers."""
        ...

    def now(self) -> float: ...


class LinkerNotBound(RuntimeError):
    """A linker was used before a ``Host`` took it (``Host(linker=...)``)."""


class IdentityLinker(abc.ABC):
    """One way of linking identities.

    ``name``: a short label (shown in logs). ``completes_by_command``: ``/link ARGUMENT``
    completes this linker's challenges (with ``complete``). ``provides_claims``: completing
    it records verified claims, so a ``LinkedClaimAllowlist`` has a claim source.
    """

    name: str = "linker"
    completes_by_command: bool = False
    provides_claims: bool = False
    _linking_host: LinkingServices | None = None

    def bind(self, host: LinkingServices) -> None:
        """Called by ``Host(...)``: the linker works for that host from then on."""
        bound = self._linking_host
        if bound is not None and bound is not host:
            raise ValueError(f"linker {self.name!r} already belongs to another host")
        self._linking_host = host

    @property
    def is_bound(self) -> bool:
        return self._linking_host is not None

    @property
    def linking_host(self) -> LinkingServices:
        if self._linking_host is None:
            raise LinkerNotBound(f"linker {self.name!r} is not part of a Host yet")
        return self._linking_host

    @abc.abstractmethod
    async def begin(self, identity: ChannelIdentity) -> LinkChallenge:
        """Start linking ``identity``: the challenge to show it (in its direct chat only)."""

    async def complete(
        self, challenge_id: str, proof: str, *, identity: ChannelIdentity | None = None
    ) -> LinkResult:
        """Complete a challenge with its proof; ``identity`` is who completes it, when the
        proof is sent by a user (``/link CODE``). Answers the link's result."""
        raise NotImplementedError(f"linker {self.name!r} does not complete by command")

    async def is_linked(
        self,
        identity: ChannelIdentity,
        verified_claims: Collection[tuple[str, str]] = (),
    ) -> bool:
        """Whether ``identity`` is linked (shares its key, or holds verified claims), or,
        given ``verified_claims``, whether its user holds all of them already."""
        facts = await self.linking_host.store.load_facts(identity)
        if facts is None:
            return False
        if verified_claims:
            return set(verified_claims) <= facts.claims
        return facts.linked


class OneTimeCodeLinker(IdentityLinker):
    """Link by a one-time code: ``/link`` shows a code, ``/link CODE`` elsewhere uses it.

    ``ttl_seconds``: how long a code lives. ``max_attempts_per_code``: wrong secrets a code
    takes before it locks. ``per_identity`` / ``per_source`` / ``overall``: failed attempts
    tolerated per completing identity, per source (the client address a channel records
    for identities its callers can mint at will, such as fresh bearer keys) and over the
    whole host within a window, before a cool-down refuses every attempt (see
    ``sansio_core/link_codes.py``, rule 5). Source counters are kept in this process.

    For :meth:`complete` the challenge id is the code's locator and the proof its secret;
    :meth:`complete_code` takes the code as the user typed it.
    """

    name = "code"
    completes_by_command = True

    def __init__(
        self,
        *,
        ttl_seconds: float = 600.0,
        max_attempts_per_code: int = 5,
        per_identity: AttemptLimit | None = None,
        per_source: AttemptLimit | None = None,
        overall: AttemptLimit | None = None,
    ) -> None:
        defaults = CodeLimits()
        self.limits = CodeLimits(
            ttl_seconds=ttl_seconds,
            max_attempts=max_attempts_per_code,
            per_identity=per_identity or defaults.per_identity,
            per_source=per_source or defaults.per_source,
            overall=overall or defaults.overall,
        )
        self._sources: RecentMap[str, link_codes.AttemptCounter] = RecentMap(_MAX_SOURCES)

    async def begin(self, identity: ChannelIdentity) -> LinkChallenge:
        host = self.linking_host
        for _ in range(_MAX_DRAWS):
            issued = link_codes.issue(
                issuer=identity,
                challenge_id=f"lc_{secrets.token_hex(16)}",
                entropy=secrets.token_bytes(link_codes.ENTROPY_BYTES),
                salt=secrets.token_bytes(link_codes.SALT_BYTES),
                now=host.now(),
                limits=self.limits,
            )
            if await host.store.put_link_challenge(issued.challenge):
                log.info(
                    "link code issued",
                    extra={"channel": identity.channel, "challenge": issued.challenge.challenge_id},
                )
                return LinkChallenge(
                    challenge_id=issued.challenge.challenge_id,
                    linker=self.name,
                    instructions=link_codes.instructions(issued.code, self.limits),
                    expires_at=issued.challenge.expires_at,
                )
        raise RuntimeError("no free link code was drawn; the challenge table is full")

    async def complete(
        self, challenge_id: str, proof: str, *, identity: ChannelIdentity | None = None
    ) -> LinkResult:
        if identity is None:
            raise ValueError("a one-time code is completed by the identity that sends it")
        host = self.linking_host
        source = identity.attributes.get(SOURCE_ATTRIBUTE)
        scope = link_codes.source_scope(source) if isinstance(source, str) and source else None
        if scope is not None and self._source_counter(scope).is_locked(host.now()):
            log.info(
                "link code attempt",
                extra={"channel": identity.channel, "reason": LinkReason.RATE_LIMITED.value},
            )
            return LinkResult(False, None, LinkReason.RATE_LIMITED)
        result = await host.store.attempt_link_code(
            identity,
            challenge_id,
            proof,
            now=host.now(),
            limits=self.limits,
            rules=host.link_rules,
        )
        if scope is not None and result.reason is LinkReason.WRONG_CODE:
            counter = self._source_counter(scope)
            self._sources.put(
                scope, link_codes.after_failure(counter, self.limits.per_source, host.now())
            )
        # The reason code only: never the code, its locator or the identity's claims.
        log.info(
            "link code attempt",
            extra={"channel": identity.channel, "reason": result.reason.value},
        )
        return result

    def _source_counter(self, scope: str) -> link_codes.AttemptCounter:
        counter = self._sources.get(scope)
        if counter is None or link_codes.counter_is_expired(counter, self.linking_host.now()):
            counter = link_codes.AttemptCounter(scope)
            self._sources.put(scope, counter)
        return counter

    async def complete_code(self, identity: ChannelIdentity, code: str) -> LinkResult | None:
        """Complete with a code as typed; ``None`` when the text cannot be a code."""
        parsed = link_codes.parse_code(code)
        if parsed is None:
            return None
        locator, secret = parsed
        return await self.complete(locator, secret, identity=identity)
