"""The REST client's own rules: how Discord's answers are classified, and what the
``X-RateLimit-*`` headers teach the rate-limit book-keeping (a hand-driven clock)."""

from __future__ import annotations

import logging

import pytest

from agenthost.channels.discord.api import (
    BadRequest,
    Forbidden,
    NotFound,
    RateLimited,
    RateLimits,
    RedactInteractionTokens,
    TokenExpired,
    Unauthorized,
    Unavailable,
    classify,
)

ROUTE = "POST /channels/{channel}/messages"


@pytest.mark.parametrize(
    ("status", "body", "webhook", "expected"),
    [
        (401, {"message": "Invalid Webhook Token", "code": 50027}, True, TokenExpired),
        (404, {"message": "Unknown Webhook", "code": 10015}, True, TokenExpired),
        (404, {"message": "Unknown interaction", "code": 10062}, True, TokenExpired),
        (404, {"message": "Unknown Message", "code": 10008}, True, NotFound),
        (401, {"message": "401: Unauthorized", "code": 0}, False, Unauthorized),
        (403, {"message": "Cannot send messages to this user", "code": 50007}, False, Forbidden),
        (404, {"message": "Unknown Channel", "code": 10003}, False, NotFound),
        (400, {"message": "Invalid Form Body", "code": 50035}, False, BadRequest),
        (502, None, False, Unavailable),
    ],
)
def test_answers_are_classified(
    status: int, body: object, webhook: bool, expected: type[Exception]
) -> None:
    error = classify(ROUTE, status, body, {}, webhook=webhook)
    assert type(error) is expected
    assert error.permanent is (expected is not Unavailable)
    assert "discord.com" not in str(error) and ROUTE in str(error)


def test_a_429_carries_retry_after_and_scope() -> None:
    body = {"message": "You are being rate limited.", "retry_after": 1.337, "global": False}
    error = classify(ROUTE, 429, body, {"x-ratelimit-scope": "shared"}, webhook=False)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 1.337 and not error.is_global and not error.permanent
    # No body (a proxy's 429): the Retry-After header, and the global header.
    bare = classify(
        ROUTE, 429, None, {"retry-after": "4", "x-ratelimit-global": "true"}, webhook=False
    )
    assert isinstance(bare, RateLimited) and bare.retry_after == 4.0 and bare.is_global


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_exhausted_bucket_delays_every_route_sharing_it() -> None:
    clock = Clock()
    limits = RateLimits(clock)
    headers = {
        "x-ratelimit-bucket": "abcd",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset-after": "2.5",
    }
    limits.observe("channel:1", headers)
    limits.observe("channel:2", {"x-ratelimit-bucket": "abcd", "x-ratelimit-remaining": "3"})
    # channel:2 reported the bucket has room again: both routes share it.
    assert limits.delay("channel:1", webhook=False) == 0.0
    limits.observe("channel:1", headers)
    assert limits.delay("channel:2", webhook=False) == 2.5
    clock.now += 2.5
    assert limits.delay("channel:1", webhook=False) == 0.0


def test_a_global_limit_holds_bot_calls_but_not_interaction_webhooks() -> None:
    clock = Clock()
    limits = RateLimits(clock)
    limits.limited("channel:1", RateLimited(ROUTE, 3.0, is_global=True, scope="global"))
    assert limits.delay("anything", webhook=False) == 3.0
    assert limits.delay("webhook:xyz", webhook=True) == 0.0


def test_interaction_tokens_are_redacted_from_http_logs() -> None:
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        'HTTP Request: %s %s "%s"',
        (
            "PATCH",
            "https://discord.com/api/v10/webhooks/1187411200000000001/aW50ZXJhY3Rpb24secret/messages/@original",
            "HTTP/1.1 200 OK",
        ),
        None,
    )
    RedactInteractionTokens().filter(record)
    shown = record.getMessage()
    assert "secret" not in shown
    assert "/webhooks/1187411200000000001/<redacted>/messages/@original" in shown
