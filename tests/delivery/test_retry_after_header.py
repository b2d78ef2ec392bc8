"""A receiver's ``Retry-After``: both forms read, an endless one never parks a delivery."""

from __future__ import annotations

import httpx
import pytest

from agenthost.channels.webhook import classify_response
from agenthost.sansio_core import delivery
from agenthost.sansio_core.delivery import Claim, DeliveryStatus, FailureKind, SendFailed
from agenthost.sansio_core.types import ChannelIdentity


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


def test_delta_seconds() -> None:
    assert classify_response(answer(429, **{"retry-after": "120"})).retry_after == 120.0


def test_an_http_date_is_measured_from_the_receivers_date() -> None:
    outcome = classify_response(
        answer(
            503,
            date="Wed, 21 Oct 2015 07:28:00 GMT",
            **{"retry-after": "Wed, 21 Oct 2015 07:30:00 GMT"},
        )
    )
    assert outcome.failure is FailureKind.TRANSIENT
    assert outcome.retry_after == pytest.approx(120.0)


@pytest.mark.parametrize("header", ["inf", "Infinity", "nan", "1e400", "-1", "soon"])
def test_an_unreadable_or_endless_value_is_no_retry_after(header: str) -> None:
    assert classify_response(answer(503, **{"retry-after": header})).retry_after is None


def test_a_date_far_away_is_a_dead_letter_not_a_parked_delivery() -> None:
    outcome = classify_response(
        answer(
            503,
            date="Wed, 21 Oct 2015 07:28:00 GMT",
            **{"retry-after": "Wed, 21 Oct 2037 07:28:00 GMT"},
        )
    )
    assert outcome.retry_after is not None and outcome.retry_after > 3600
    d = delivery.Delivery(
        delivery_id="dl",
        isolation_key="ik",
        channel="webhook",
        identity=ChannelIdentity("webhook", "ik"),
        conversation_id=None,
        reply={"text": "x"},
        echo=None,
        created_at=0.0,
    )
    d = delivery.apply(d, Claim("w1", 0.0, 60.0))
    failure = outcome.failure or FailureKind.TRANSIENT
    d = delivery.apply(
        d, SendFailed("w1", 1.0, failure, outcome.reason or "", 0.5, outcome.retry_after)
    )
    assert d.status is DeliveryStatus.DEAD
