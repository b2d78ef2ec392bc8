"""Our own Discord signer: an Ed25519 key pair standing in for the application's.

Discord signs ``X-Signature-Timestamp`` + the raw body with the application's private key
and sends the signature hex-encoded in ``X-Signature-Ed25519``; the channel verifies it
with the public key the developer portal shows (hex). This signer does exactly that with a
fresh key, so tests can sign real interactions, and forge, tamper and replay them.
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class Signer:
    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()

    @property
    def public_key_hex(self) -> str:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def signature(self, body: bytes, timestamp: str) -> str:
        return self._key.sign(timestamp.encode() + body).hex()

    def headers(self, body: bytes, *, timestamp: float | None = None) -> dict[str, str]:
        stamp = str(int(time.time() if timestamp is None else timestamp))
        return {
            "content-type": "application/json",
            "x-signature-ed25519": self.signature(body, stamp),
            "x-signature-timestamp": stamp,
        }
