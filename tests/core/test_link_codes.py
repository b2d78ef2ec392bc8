"""The one-time link code lifecycle: issue, complete once, expire, lock, rate-limit.

Pure: codes are made from fixed entropy, time is a number, and ``decide_attempt`` gets
what a store would load. Every transition of ``CODE_TRANSITIONS`` is exercised.
"""

from __future__ import annotations

import hashlib
import hmac

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import link_codes
from agenthost.sansio_core.link_codes import (
    CODE_TRANSITIONS,
    AlreadyUsed,
    Attempt,
    AttemptCounter,
    AttemptLimit,
    CodeChallenge,
    CodeLimits,
    CodeState,
    Expired,
    LinkForbidden,
    Locked,
    Matched,
    NoSuchCode,
    OwnCode,
    RateLimited,
    WrongCode,
    after_failure,
    apply,
    decide_attempt,
    issue,
    parse_code,
)
from agenthost.sansio_core.link_policy import DenyAllLinks, LinkRules
from agenthost.sansio_core.linking import LinkReason, UserRecord
from agenthost.sansio_core.types import ChannelIdentity

ALICE = ChannelIdentity("invocations", "alice")
ALICE_CHAT = ChannelIdentity("chat", "alice-chat")
MALLORY = ChannelIdentity("chat", "mallory")
LIMITS = CodeLimits(
    ttl_seconds=600,
    max_attempts=3,
    per_identity=AttemptLimit(4, 600, 900),
    overall=AttemptLimit(10, 60, 60),
)
ENTROPY = bytes(range(1, 9))
SALT = bytes(range(16))


def issued(now: float = 0.0, entropy: bytes = ENTROPY) -> link_codes.IssuedCode:
    return issue(
        issuer=ALICE, challenge_id="lc1", entropy=entropy, salt=SALT, now=now, limits=LIMITS
    )


def secret_of(code: str) -> str:
    parsed = parse_code(code)
    assert parsed is not None
    return parsed[1]


def wrong(secret: str) -> str:
    return ("1" if secret[0] != "1" else "2") + secret[1:]


# --- the code itself ---------------------------------------------------------------------


def test_a_code_is_a_locator_and_a_40_bit_secret_stored_only_as_a_salted_hash() -> None:
    made = issued()
    locator, secret = parse_code(made.code) or ("", "")
    assert len(made.code) == 14 and made.code.count("-") == 2
    assert locator == made.challenge.locator and len(locator) == 4
    assert len(secret) == 8 and all(c in link_codes.ALPHABET for c in secret)
    assert len(link_codes.ALPHABET) ** len(secret) == 2**40
    stored = repr(made.challenge)
    assert secret not in stored and made.code not in stored
    expected = hashlib.sha256(SALT + secret.encode()).hexdigest()
    assert hmac.compare_digest(made.challenge.secret_hash, expected)
    assert made.challenge.expires_at == 600.0
    assert made.challenge.state is CodeState.ISSUED


def test_different_entropy_gives_different_codes() -> None:
    codes = {issued(entropy=bytes([n] * 8)).code for n in range(50)}
    assert len(codes) == 50


def test_parsing_forgives_case_spaces_dashes_and_look_alikes() -> None:
    made = issued()
    locator, secret = parse_code(made.code) or ("", "")
    typed = f" {made.code.lower().replace('-', ' ')} "
    assert parse_code(typed) == (locator, secret)
    assert parse_code("0000-1111-1111") == parse_code("oooo-iiii-llll")
    assert parse_code("short") is None
    assert parse_code("UUUU-UUUU-UUUU") is None  # not in the alphabet
    assert parse_code(made.code + "X") is None


def test_issuing_needs_enough_entropy() -> None:
    with pytest.raises(ValueError, match="entropy"):
        issue(issuer=ALICE, challenge_id="x", entropy=b"1234", salt=SALT, now=0, limits=LIMITS)
    with pytest.raises(ValueError, match="salt"):
        issue(issuer=ALICE, challenge_id="x", entropy=ENTROPY, salt=b"s", now=0, limits=LIMITS)


def test_instructions_show_the_code_and_how_long_it_lives() -> None:
    text = link_codes.instructions("ABCD-EFGH-JKMN", LIMITS)
    assert "ABCD-EFGH-JKMN" in text and "/link ABCD-EFGH-JKMN" in text and "10 minutes" in text


# --- the lifecycle ---------------------------------------------------------------------------


def attempt(
    challenge: CodeChallenge, secret: str, *, now: float = 10.0, **kw: object
) -> tuple[CodeChallenge, object]:
    event = Attempt(kw.pop("completer", ALICE_CHAT), secret, now, **kw)  # type: ignore[arg-type]
    return apply(challenge, event)


def test_the_right_secret_completes_once() -> None:
    made = issued()
    secret = secret_of(made.code)
    done, decision = attempt(made.challenge, secret)
    assert isinstance(decision, Matched)
    assert done.state is CodeState.COMPLETED
    assert done.completed_by == ALICE_CHAT and done.completed_at == 10.0
    again, replay = attempt(done, secret, completer=MALLORY)
    assert isinstance(replay, AlreadyUsed) and again == done


def test_a_code_expires() -> None:
    made = issued()
    expired, decision = attempt(made.challenge, secret_of(made.code), now=600.0)
    assert isinstance(decision, Expired) and expired.state is CodeState.EXPIRED
    _, later = attempt(expired, secret_of(made.code), now=601.0)
    assert isinstance(later, Expired)
    assert link_codes.is_expired(made.challenge, 600.0)
    assert not link_codes.is_expired(made.challenge, 599.0)


def test_wrong_secrets_lock_the_code_and_then_even_the_right_one_fails() -> None:
    made = issued()
    secret = secret_of(made.code)
    challenge = made.challenge
    for n in range(LIMITS.max_attempts):
        challenge, decision = attempt(challenge, wrong(secret))
        assert isinstance(decision, WrongCode)
        assert challenge.attempts == n + 1
    assert challenge.state is CodeState.LOCKED
    _, decision = attempt(challenge, secret)
    assert isinstance(decision, Locked)


def test_a_wrong_secret_reveals_nothing_about_the_codes_state() -> None:
    made = issued()
    secret = secret_of(made.code)
    done, _ = attempt(made.challenge, secret)
    expired, _ = attempt(made.challenge, secret, now=700.0)
    locked = attrs.evolve(made.challenge, state=CodeState.LOCKED)
    for challenge in (done, expired, locked):
        unchanged, decision = attempt(challenge, wrong(secret))
        assert isinstance(decision, WrongCode) and unchanged == challenge


def test_the_issuer_cannot_complete_its_own_code() -> None:
    made = issued()
    same, decision = attempt(made.challenge, secret_of(made.code), completer=ALICE)
    assert isinstance(decision, OwnCode) and same == made.challenge


def test_a_link_the_policy_forbids_leaves_the_code_issued() -> None:
    made = issued()
    same, decision = attempt(made.challenge, secret_of(made.code), link_permitted=False)
    assert isinstance(decision, LinkForbidden) and same.state is CodeState.ISSUED


def test_every_table_transition_is_reachable() -> None:
    made = issued()
    secret = secret_of(made.code)
    issued_state = made.challenge
    completed, _ = attempt(issued_state, secret)
    expired, _ = attempt(issued_state, secret, now=1e6)
    locked = attrs.evolve(issued_state, state=CodeState.LOCKED)
    almost_locked = attrs.evolve(issued_state, attempts=LIMITS.max_attempts - 1)
    seen: set[tuple[CodeState, type, CodeState, type]] = set()
    cases = [
        (issued_state, secret, {}),
        (issued_state, wrong(secret), {}),
        (issued_state, secret, {"completer": ALICE}),
        (issued_state, secret, {"link_permitted": False}),
        (almost_locked, wrong(secret), {}),
        (issued_state, secret, {"now": 1e6}),
        (completed, secret, {}),
        (completed, wrong(secret), {}),
        (expired, secret, {}),
        (expired, wrong(secret), {}),
        (locked, secret, {}),
        (locked, wrong(secret), {}),
    ]
    for challenge, typed, options in cases:
        new, decision = attempt(challenge, typed, **options)
        seen.add((challenge.state, Attempt, new.state, type(decision)))
    expected = {
        (before, event, after, decision)
        for (before, event, after), decisions in CODE_TRANSITIONS.items()
        for decision in decisions
    }
    assert seen == expected


# --- attempt counters ---------------------------------------------------------------------


def test_failures_lock_for_the_cool_down_then_count_afresh() -> None:
    limit = AttemptLimit(3, window_seconds=60, cool_down_seconds=100)
    counter = AttemptCounter("s")
    for now in (1.0, 2.0):
        counter = after_failure(counter, limit, now)
        assert not counter.is_locked(now)
    counter = after_failure(counter, limit, 3.0)
    assert counter.is_locked(3.0) and counter.is_locked(102.9)
    assert not counter.is_locked(103.0)
    assert after_failure(counter, limit, 50.0) == counter  # no counting while locked
    counter = after_failure(counter, limit, 103.0)
    assert counter.failures == 1 and not counter.is_locked(103.0)


def test_failures_outside_the_window_do_not_add_up() -> None:
    limit = AttemptLimit(3, window_seconds=60, cool_down_seconds=100)
    counter = AttemptCounter("s")
    for now in (0.0, 50.0, 120.0, 170.0, 240.0):
        counter = after_failure(counter, limit, now)
        assert not counter.is_locked(now)
    assert link_codes.counter_is_expired(counter, 240.0 + 60.0)
    assert not link_codes.counter_is_expired(counter, 250.0)


def test_attempt_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AttemptLimit(0, 1, 1)
    with pytest.raises(ValueError):
        CodeLimits(ttl_seconds=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=5000, allow_nan=False), max_size=40))
def test_never_more_than_the_limit_of_failures_in_any_window(times: list[float]) -> None:
    limit = AttemptLimit(4, window_seconds=100, cool_down_seconds=300)
    counter = AttemptCounter("s")
    accepted: list[float] = []  # failures counted while not locked
    for now in sorted(times):
        if counter.is_locked(now):
            continue
        accepted.append(now)
        counter = after_failure(counter, limit, now)
        in_window = [t for t in accepted if now - t < limit.window_seconds]
        assert len(in_window) <= limit.max_failures
        assert counter.is_locked(now) == (len(in_window) == limit.max_failures)


# --- one completion, decided whole ---------------------------------------------------------


ALICE_USER = UserRecord("k-alice", (ALICE,))
CHAT_USER = UserRecord("k-chat", (ALICE_CHAT,))
FRESH_IDENTITY = AttemptCounter(link_codes.identity_scope(ALICE_CHAT))
FRESH_GLOBAL = AttemptCounter(link_codes.GLOBAL_SCOPE)


def decide(
    challenge: CodeChallenge | None,
    secret: str,
    *,
    now: float = 10.0,
    identity_counter: AttemptCounter = FRESH_IDENTITY,
    global_counter: AttemptCounter = FRESH_GLOBAL,
    rules: LinkRules | None = None,
) -> link_codes.AttemptOutcome:
    return decide_attempt(
        challenge=challenge,
        identity_counter=identity_counter,
        global_counter=global_counter,
        completer=ALICE_CHAT,
        secret=secret,
        now=now,
        limits=LIMITS,
        completer_user=CHAT_USER,
        issuer_user=ALICE_USER if challenge is not None else None,
        rules=rules or LinkRules(),
    )


def test_a_match_merges_the_completer_onto_the_issuer_and_clears_its_count() -> None:
    made = issued()
    counted = after_failure(FRESH_IDENTITY, LIMITS.per_identity, 5.0)
    outcome = decide(made.challenge, secret_of(made.code), identity_counter=counted)
    assert isinstance(outcome.decision, Matched)
    assert outcome.result.linked and outcome.result.isolation_key == "k-alice"
    assert outcome.result.reason is LinkReason.LINKED
    assert outcome.merge is not None and outcome.merge.moved == (ALICE_CHAT,)
    assert outcome.challenge is not None and outcome.challenge.state is CodeState.COMPLETED
    assert outcome.identity_counter == FRESH_IDENTITY


def test_a_wrong_or_unknown_code_counts_against_the_identity_and_the_host() -> None:
    made = issued()
    outcome = decide(made.challenge, wrong(secret_of(made.code)))
    assert isinstance(outcome.decision, WrongCode)
    assert outcome.result.reason is LinkReason.WRONG_CODE and not outcome.result.linked
    assert outcome.identity_counter.failures == 1 and outcome.global_counter.failures == 1
    assert outcome.challenge is not None and outcome.challenge.attempts == 1
    unknown = decide(None, "ABCDEFGH")
    assert isinstance(unknown.decision, NoSuchCode)
    assert unknown.result.reason is LinkReason.WRONG_CODE
    assert unknown.identity_counter.failures == 1 and unknown.global_counter.failures == 1


def test_a_locked_out_identity_is_refused_even_with_the_right_code() -> None:
    made = issued()
    locked = AttemptCounter(FRESH_IDENTITY.scope, (), 500.0, 500.0)
    outcome = decide(made.challenge, secret_of(made.code), identity_counter=locked)
    assert isinstance(outcome.decision, RateLimited)
    assert outcome.result.reason is LinkReason.RATE_LIMITED
    assert outcome.challenge is None and outcome.merge is None
    after = decide(made.challenge, secret_of(made.code), identity_counter=locked, now=500.0)
    assert isinstance(after.decision, Matched)


def test_the_global_limit_refuses_everyone_until_its_cool_down() -> None:
    made = issued()
    locked = AttemptCounter(link_codes.GLOBAL_SCOPE, (), 60.0, 60.0)
    assert isinstance(
        decide(made.challenge, secret_of(made.code), global_counter=locked).decision, RateLimited
    )
    assert isinstance(
        decide(made.challenge, secret_of(made.code), global_counter=locked, now=60.0).decision,
        Matched,
    )


def test_right_codes_that_cannot_link_do_not_count_as_failures() -> None:
    made = issued()
    secret = secret_of(made.code)
    expired = decide(made.challenge, secret, now=700.0)
    forbidden = decide(made.challenge, secret, rules=LinkRules(DenyAllLinks()))
    assert expired.result.reason is LinkReason.EXPIRED
    assert forbidden.result.reason is LinkReason.LINK_POLICY
    for outcome in (expired, forbidden):
        assert outcome.identity_counter == FRESH_IDENTITY
        assert outcome.global_counter == FRESH_GLOBAL
        assert outcome.merge is None
