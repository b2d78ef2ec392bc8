"""``WebhookChannel``: push replies as signed JSON to one URL the application owns.

Each push is one POST with a JSON body and three headers: ``x-agenthost-timestamp`` (unix
seconds), ``x-agenthost-signature`` (``v1=`` + hex HMAC-SHA256 over ``timestamp + "." +
body`` with the shared secret) and ``idempotency-key`` (the delivery id, stable across
retries, so the receiver can drop repeats). Receivers verify with :func:`verify`, which
also bounds the timestamp's age against replays.

Answers: 2xx delivered; 408, 425, 429 and 5xx transient (``Retry-After`` honoured); other
4xx permanent (the receiver refuses it and will keep refusing); network errors transient.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence

import httpx
from starlette.routing import BaseRoute

from agenthost.backends.channel import Channel, HostServices
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.sansio_core import delivery
from agenthost.sansio_core.routing import Destination

SIGNATURE_HEADER = "x-agenthost-signature"
TIMESTAMP_HEADER = "x-agenthost-timestamp"
IDEMPOTENCY_HEADER = "idempotency-key"
_TRANSIENT_STATUSES = frozenset({408, 425, 429})


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def verify(
    secret: bytes,
    *,
    timestamp: str,
    signature: str,
    body: bytes,
    now: float,
    tolerance: float = 300,
) -> bool:
    """Check a pushed request: a well-formed recent timestamp and a matching signature."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


class WebhookChannel(Channel):
    """Push-only: it serves no routes and answers no requests; it delivers."""

    push_is_idempotent = True  # the receiver is given the idempotency key to drop repeats
    # The application's endpoint reaches every user: routing addresses it by isolation key
    # (there is no conversation to have been seen in).
    addresses_every_user = True
    display_name = "Webhook"

    def __init__(
        self,
        *,
        url: str,
        secret: str | bytes,
        name: str = "webhook",
        timeout_seconds: float = 10.0,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"webhook url must be http(s), not {url!r}")
        if not secret:
            raise ValueError("a webhook channel needs a secret to sign with")
        self.name = name
        self.url = url
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._timeout = timeout_seconds
        self._host: HostServices | None = None

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        self._host = host
        return ()

    async def startup(self, host: HostServices) -> None:
        # A host run without its app (``async with host.running()``) never asks for routes.
        self._host = host

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        host = self._require_host()
        body = json.dumps(
            {
                "delivery_id": message.delivery_id,
                "isolation_key": message.isolation_key,
                "is_echo": message.is_echo,
                "text": message.text,
                "metadata": dict(message.metadata),
            },
            separators=(",", ":"),
        ).encode()
        timestamp = int(host.now())
        headers = {
            "content-type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            IDEMPOTENCY_HEADER: message.delivery_id,
        }
        try:
            response = await host.http.post(
                self.url, content=body, headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError as error:
            return PushOutcome.transient(f"network: {type(error).__name__}")
        return classify_response(response)

    def _require_host(self) -> HostServices:
        if self._host is None:
            raise RuntimeError("the webhook channel is not attached to a running host")
        return self._host


def classify_response(response: httpx.Response) -> PushOutcome:
    """A receiver's answer to a push: 2xx delivered; 408, 425, 429 and 5xx transient
    (``Retry-After`` honoured); any other status permanent."""
    status = response.status_code
    if 200 <= status < 300:
        return PushOutcome.ok()
    if status in _TRANSIENT_STATUSES or status >= 500:
        return PushOutcome.transient(f"http {status}", retry_after=_retry_after(response))
    return PushOutcome.permanent(f"http {status}")


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP-date). A date is measured from
    the receiver's own ``Date`` header when it sent one, so clock skew does not count."""
    date = response.headers.get("date")
    sent_at = delivery.parse_retry_after(date, 0.0) if date else None
    now = sent_at if sent_at is not None else time.time()
    return delivery.parse_retry_after(response.headers.get("retry-after"), now)
