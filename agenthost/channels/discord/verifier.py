"""Checking that an interaction came from Discord, before anything reads its body.

Rules:

1. Discord signs every interaction with Ed25519 over ``X-Signature-Timestamp`` followed by
   the raw body, with the application's key; the signature arrives hex-encoded in
   ``X-Signature-Ed25519``. The public key is parsed once, when the channel is built.
2. A missing header, a signature that is not 64 bytes of hex, or one that does not verify
   is refused. Discord probes endpoints with bad signatures and removes those that accept
   them, so a refusal must come before any parsing.
3. Discord documents no replay window, so the host adds one: a timestamp more than
   ``window`` seconds away from the host's clock (either side) is refused, even with a
   valid signature. Together with the de-duplication of interaction ids (the inbox), a
   captured request cannot be played again.
4. The verdict names why a request was refused, for the log line; the caller answers every
   refusal the same way (401) and never says which check failed.

No I/O and no clock: the caller passes ``now``.
"""

from __future__ import annotations

import enum
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_HEADER = "x-signature-ed25519"
TIMESTAMP_HEADER = "x-signature-timestamp"

_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
_HEX_SIGNATURE = re.compile(r"^[0-9a-fA-F]{128}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


class Verdict(enum.Enum):
    VALID = "valid"
    MISSING = "missing_signature_headers"
    MALFORMED = "malformed_signature"
    FORGED = "signature_does_not_verify"
    STALE = "timestamp_outside_replay_window"


def public_key(hex_key: str) -> Ed25519PublicKey:
    """The application's public key from the hex string the developer portal shows.

    Raises ``ValueError`` (the caller turns it into a configuration error)."""
    if not isinstance(hex_key, str) or not _HEX_KEY.match(hex_key.strip()):
        raise ValueError("the public key is 64 hex characters (32 bytes)")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key.strip()))


class SignatureVerifier:
    """Verifies interactions for one application key, with a replay ``window`` in seconds."""

    def __init__(self, key: Ed25519PublicKey, *, window: float) -> None:
        self._key = key
        self._window = window

    @property
    def window(self) -> float:
        return self._window

    def verify(
        self, signature: str | None, timestamp: str | None, body: bytes, *, now: float
    ) -> Verdict:
        if not signature or not timestamp:
            return Verdict.MISSING
        if not _HEX_SIGNATURE.match(signature) or not _TIMESTAMP.match(timestamp):
            return Verdict.MALFORMED
        try:
            # The library compares in constant time; the message is exactly what was signed.
            self._key.verify(bytes.fromhex(signature), timestamp.encode("ascii") + body)
        except InvalidSignature:
            return Verdict.FORGED
        if abs(now - int(timestamp)) > self._window:
            return Verdict.STALE
        return Verdict.VALID
