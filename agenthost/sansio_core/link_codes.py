"""The one-time link code: asked for on one channel, completed once on another.

Rules (everything that decides whether a one-time code links lives in this file):

1. A code is made from the backend's CSPRNG: a 4-character *locator* that finds the
   stored challenge and an 8-character *secret* (40 bits) that proves it, in Crockford
   base32, shown as ``XXXX-XXXX-XXXX``. Only a salted SHA-256 of the secret is stored,
   and it is compared in constant time (``hmac.compare_digest``).
2. A code belongs to the identity that asked for it; asking again replaces it, so an
   identity has at most one live code. Completing it merges the completing identity's
   user onto the issuer's user (``linking.py``), only if the link policy permits it.
3. A code is single use (a second completion answers ``AlreadyUsed``), expires
   ``ttl_seconds`` after it was issued, and locks after ``max_attempts`` wrong secrets.
4. A code's state is told only to someone who knows its secret: a wrong secret answers
   ``WrongCode`` whatever state the code is in.
5. Failed attempts are counted per completing identity, per source (where the request
   came from, for channels whose callers can mint new identities at will, such as fresh
   bearer keys) and over the whole host. Past a limit within a window, every attempt, even
   one with the right code, is refused until a cool-down has passed. A success clears the
   completing identity's count (not its source's: a source may be shared). The per-source
   limit sits far below the host-wide one, so one client cannot trip the host-wide
   breaker that would stop linking for everybody.
6. The issuer sending its own code changes nothing (``OwnCode``); a link the policy
   refuses leaves the code issued (``LinkForbidden``), so it may still be used elsewhere.

Stored challenges move through :data:`CODE_TRANSITIONS`, which ``apply`` checks on every
step and ``docs/`` draws; the store deletes a challenge once its expiry has passed.
Entropy (the code, the salt, the challenge id) and time come in as arguments.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

import attrs

from agenthost.sansio_core import linking
from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.linking import LinkReason, LinkResult, Merge, UserRecord
from agenthost.sansio_core.types import ChannelIdentity

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
LOCATOR_LENGTH = 4
SECRET_LENGTH = 8  # 40 bits
ENTROPY_BYTES = 8  # the backend supplies at least this much; 60 bits are used
SALT_BYTES = 16
GLOBAL_SCOPE = "global"
_READS_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})


class CodeState(enum.Enum):
    ISSUED = "issued"
    COMPLETED = "completed"
    EXPIRED = "expired"
    LOCKED = "locked"


@attrs.frozen
class AttemptLimit:
    """At most ``max_failures`` failed attempts within ``window_seconds``, then a
    ``cool_down_seconds`` lock."""

    max_failures: int
    window_seconds: float
    cool_down_seconds: float

    def __attrs_post_init__(self) -> None:
        if self.max_failures < 1 or self.window_seconds <= 0 or self.cool_down_seconds <= 0:
            raise ValueError(
                "an AttemptLimit needs max_failures >= 1 and positive window and cool-down"
            )


@attrs.frozen
class CodeLimits:
    """How long codes live and how many failures are tolerated, and where."""

    ttl_seconds: float = 600.0
    max_attempts: int = 5  # wrong secrets per code
    per_identity: AttemptLimit = AttemptLimit(5, 600.0, 900.0)
    per_source: AttemptLimit = AttemptLimit(20, 600.0, 900.0)
    overall: AttemptLimit = AttemptLimit(1000, 60.0, 60.0)

    def __attrs_post_init__(self) -> None:
        if self.ttl_seconds <= 0 or self.max_attempts < 1:
            raise ValueError("a link code needs a positive ttl_seconds and max_attempts >= 1")


@attrs.frozen
class CodeChallenge:
    """A stored one-time code: never the code itself, only what proves it."""

    challenge_id: str
    locator: str
    issuer: ChannelIdentity
    salt: str  # hex
    secret_hash: str  # hex SHA-256 of salt + secret
    created_at: float
    expires_at: float
    max_attempts: int
    state: CodeState = CodeState.ISSUED
    attempts: int = 0  # wrong secrets so far
    completed_by: ChannelIdentity | None = None
    completed_at: float | None = None


@attrs.frozen
class IssuedCode:
    """A new challenge to store, and the code to show its issuer (once, never stored)."""

    challenge: CodeChallenge
    code: str


def issue(
    *,
    issuer: ChannelIdentity,
    challenge_id: str,
    entropy: bytes,
    salt: bytes,
    now: float,
    limits: CodeLimits,
) -> IssuedCode:
    """Make a code from the backend's entropy (``ENTROPY_BYTES`` from a CSPRNG)."""
    if len(entropy) < ENTROPY_BYTES or len(salt) < SALT_BYTES:
        raise ValueError(
            f"a link code needs {ENTROPY_BYTES} bytes of entropy and {SALT_BYTES} of salt"
        )
    number = int.from_bytes(entropy[:ENTROPY_BYTES], "big")
    chars = []
    for _ in range(LOCATOR_LENGTH + SECRET_LENGTH):
        number, digit = divmod(number, len(ALPHABET))
        chars.append(ALPHABET[digit])
    locator = "".join(chars[:LOCATOR_LENGTH])
    secret = "".join(chars[LOCATOR_LENGTH:])
    challenge = CodeChallenge(
        challenge_id=challenge_id,
        locator=locator,
        issuer=issuer,
        salt=salt.hex(),
        secret_hash=_digest(salt.hex(), secret),
        created_at=now,
        expires_at=now + limits.ttl_seconds,
        max_attempts=limits.max_attempts,
    )
    return IssuedCode(challenge, format_code(locator, secret))


def format_code(locator: str, secret: str) -> str:
    return f"{locator}-{secret[:4]}-{secret[4:]}"


def parse_code(text: str) -> tuple[str, str] | None:
    """``(locator, secret)`` of a typed code (case, spaces, dashes and look-alikes forgiven),
    or ``None`` when the text cannot be a code."""
    cleaned = "".join(text.split()).replace("-", "").upper().translate(_READS_AS)
    if len(cleaned) != LOCATOR_LENGTH + SECRET_LENGTH or any(c not in ALPHABET for c in cleaned):
        return None
    return cleaned[:LOCATOR_LENGTH], cleaned[LOCATOR_LENGTH:]


def instructions(code: str, limits: CodeLimits) -> str:
    minutes = max(1, round(limits.ttl_seconds / 60))
    return (
        f"Your link code is {code}. Within {minutes} minutes, send /link {code} to me from "
        "the account you want to link with this one. It works once; never share it."
    )


def _digest(salt_hex: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt_hex) + secret.encode("ascii")).hexdigest()


def secret_matches(challenge: CodeChallenge, secret: str) -> bool:
    """Constant-time comparison of a typed secret with the stored hash."""
    return hmac.compare_digest(challenge.secret_hash, _digest(challenge.salt, secret))


# --- the lifecycle ------------------------------------------------------------------


@attrs.frozen
class Attempt:
    """Someone sent ``/link CODE`` naming this challenge's locator.

    ``link_permitted`` is the link policy's answer for this issuer and completer, worked
    out beforehand by :func:`decide_attempt`.
    """

    completer: ChannelIdentity
    secret: str
    now: float
    link_permitted: bool = True


CodeEvent = Attempt


@attrs.frozen
class Matched:
    pass


@attrs.frozen
class WrongCode:
    pass


@attrs.frozen
class Expired:
    pass


@attrs.frozen
class Locked:
    pass


@attrs.frozen
class AlreadyUsed:
    pass


@attrs.frozen
class OwnCode:
    pass


@attrs.frozen
class LinkForbidden:
    pass


CodeDecision = Matched | WrongCode | Expired | Locked | AlreadyUsed | OwnCode | LinkForbidden

ISSUED, COMPLETED, EXPIRED, LOCKED = (
    CodeState.ISSUED,
    CodeState.COMPLETED,
    CodeState.EXPIRED,
    CodeState.LOCKED,
)

# (state before, event, state after) -> the decision kinds that step may answer.
CODE_TRANSITIONS: dict[
    tuple[CodeState, type[CodeEvent], CodeState], tuple[type[CodeDecision], ...]
] = {
    (ISSUED, Attempt, COMPLETED): (Matched,),
    (ISSUED, Attempt, ISSUED): (WrongCode, OwnCode, LinkForbidden),
    (ISSUED, Attempt, LOCKED): (WrongCode,),  # the wrong secret that used up its attempts
    (ISSUED, Attempt, EXPIRED): (Expired,),
    (COMPLETED, Attempt, COMPLETED): (AlreadyUsed, WrongCode),
    (EXPIRED, Attempt, EXPIRED): (Expired, WrongCode),
    (LOCKED, Attempt, LOCKED): (Locked, WrongCode),
}


class CodeTransitionError(AssertionError):
    """The code logic produced a step its own table forbids (a bug in this module)."""


def apply(challenge: CodeChallenge, event: CodeEvent) -> tuple[CodeChallenge, CodeDecision]:
    """Apply one event to a stored challenge; return the new challenge and the answer."""
    new, decision = _step(challenge, event)
    allowed = CODE_TRANSITIONS.get((challenge.state, type(event), new.state))
    if allowed is None or not isinstance(decision, allowed):
        raise CodeTransitionError(
            f"code step {challenge.state.value} --{type(event).__name__}--> {new.state.value} "
            f"answering {type(decision).__name__} is not in CODE_TRANSITIONS"
        )
    return new, decision


def _step(challenge: CodeChallenge, event: Attempt) -> tuple[CodeChallenge, CodeDecision]:
    if not secret_matches(challenge, event.secret):
        if challenge.state is not CodeState.ISSUED:
            return challenge, WrongCode()
        attempts = challenge.attempts + 1
        state = CodeState.LOCKED if attempts >= challenge.max_attempts else CodeState.ISSUED
        return attrs.evolve(challenge, attempts=attempts, state=state), WrongCode()
    if challenge.state is CodeState.COMPLETED:
        return challenge, AlreadyUsed()
    if challenge.state is CodeState.LOCKED:
        return challenge, Locked()
    if challenge.state is CodeState.EXPIRED:
        return challenge, Expired()
    if event.now >= challenge.expires_at:
        return attrs.evolve(challenge, state=CodeState.EXPIRED), Expired()
    if event.completer == challenge.issuer:
        return challenge, OwnCode()
    if not event.link_permitted:
        return challenge, LinkForbidden()
    completed = attrs.evolve(
        challenge,
        state=CodeState.COMPLETED,
        completed_by=event.completer,
        completed_at=event.now,
    )
    return completed, Matched()


def is_expired(challenge: CodeChallenge, now: float) -> bool:
    """Whether a store may delete the challenge (its expiry has passed, whatever its state)."""
    return challenge.expires_at <= now


# --- attempt counters ---------------------------------------------------------------


def _times(value: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    return tuple(value)


@attrs.frozen
class AttemptCounter:
    """Recent failed attempts of one scope (an identity, or the whole host).

    ``recent`` holds the times of the failures within the last window (a sliding window,
    so failures cannot bunch up across a window's edge). ``expires_at``: from then on the
    counter says nothing (its failures and any cool-down are over) and may be deleted.
    """

    scope: str
    recent: tuple[float, ...] = attrs.field(default=(), converter=_times)
    locked_until: float | None = None
    expires_at: float | None = None

    @property
    def failures(self) -> int:
        return len(self.recent)

    def is_locked(self, now: float) -> bool:
        return self.locked_until is not None and now < self.locked_until


def identity_scope(identity: ChannelIdentity) -> str:
    return f"identity:{identity.channel}:{identity.native_id}"


def source_scope(source: str) -> str:
    return f"source:{source}"


def after_failure(counter: AttemptCounter, limit: AttemptLimit, now: float) -> AttemptCounter:
    """Count one failure; the one that makes ``max_failures`` within a window locks the
    scope for the cool-down (and failures are not counted while it is locked)."""
    if counter.is_locked(now):
        return counter
    recent = (*(t for t in counter.recent if now - t < limit.window_seconds), now)
    if len(recent) >= limit.max_failures:
        locked_until = now + limit.cool_down_seconds
        return AttemptCounter(counter.scope, (), locked_until, locked_until)
    return AttemptCounter(counter.scope, recent, None, now + limit.window_seconds)


def after_success(counter: AttemptCounter) -> AttemptCounter:
    """A success clears the count (and the counter may be deleted at once)."""
    return AttemptCounter(counter.scope)


def counter_is_expired(counter: AttemptCounter, now: float) -> bool:
    """Whether a stored counter says nothing any more (a store may delete it)."""
    return counter.expires_at is None or counter.expires_at <= now


# --- one completion, decided whole --------------------------------------------------


@attrs.frozen
class RateLimited:
    """The completing identity, or the whole host, is cooling down after failures."""


@attrs.frozen
class NoSuchCode:
    """No stored challenge has the code's locator."""


@attrs.frozen
class AttemptOutcome:
    """Everything a store writes for one ``/link CODE``, in one transaction."""

    decision: CodeDecision | RateLimited | NoSuchCode
    result: LinkResult
    challenge: CodeChallenge | None  # the challenge to write back, if it changed
    identity_counter: AttemptCounter
    global_counter: AttemptCounter
    merge: Merge | None = None


_RESULTS: dict[type, LinkReason] = {
    WrongCode: LinkReason.WRONG_CODE,
    NoSuchCode: LinkReason.WRONG_CODE,
    Expired: LinkReason.EXPIRED,
    Locked: LinkReason.CODE_LOCKED,
    AlreadyUsed: LinkReason.CODE_USED,
    OwnCode: LinkReason.OWN_CODE,
    LinkForbidden: LinkReason.LINK_POLICY,
    RateLimited: LinkReason.RATE_LIMITED,
}


def decide_attempt(
    *,
    challenge: CodeChallenge | None,
    identity_counter: AttemptCounter,
    global_counter: AttemptCounter,
    completer: ChannelIdentity,
    secret: str,
    now: float,
    limits: CodeLimits,
    completer_user: UserRecord,
    issuer_user: UserRecord | None,
    rules: LinkRules,
) -> AttemptOutcome:
    """Decide one completion from what the store loaded in its transaction.

    ``challenge`` is the challenge with the code's locator (or ``None``), ``issuer_user``
    its issuer's user, ``completer_user`` the completing identity's user.
    """

    def outcome(
        decision: CodeDecision | RateLimited | NoSuchCode,
        new_challenge: CodeChallenge | None = None,
        *,
        failed: bool = False,
    ) -> AttemptOutcome:
        ident, overall = identity_counter, global_counter
        if failed:
            ident = after_failure(ident, limits.per_identity, now)
            overall = after_failure(overall, limits.overall, now)
        reason = _RESULTS[type(decision)]
        return AttemptOutcome(
            decision,
            LinkResult(False, completer_user.isolation_key, reason),
            new_challenge,
            ident,
            overall,
        )

    if global_counter.is_locked(now) or identity_counter.is_locked(now):
        return outcome(RateLimited())
    if challenge is None or issuer_user is None or issuer_user.isolation_key is None:
        return outcome(NoSuchCode(), failed=True)
    plan = linking.plan_merge(
        challenge.issuer,
        issuer_user,
        completer,
        completer_user,
        rules,
        source=linking.CODE_SOURCE,
        now=now,
    )
    permitted = not (isinstance(plan, LinkResult) and not plan.linked)
    new, decision = apply(challenge, Attempt(completer, secret, now, link_permitted=permitted))
    changed = new if new != challenge else None
    if not isinstance(decision, Matched):
        return outcome(decision, changed, failed=isinstance(decision, WrongCode))
    merge = plan if isinstance(plan, Merge) else None
    reason = LinkReason.LINKED if merge is not None else LinkReason.ALREADY_LINKED
    return AttemptOutcome(
        decision,
        LinkResult(True, issuer_user.isolation_key, reason),
        changed,
        after_success(identity_counter),
        global_counter,
        merge,
    )
