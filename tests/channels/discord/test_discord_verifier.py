"""The signature check on its own: Ed25519 over timestamp + body, and the replay window."""

from __future__ import annotations

import pytest

from agenthost.channels.discord.verifier import SignatureVerifier, Verdict, public_key
from tests.channels.discord.signer import Signer

NOW = 1_764_000_000.0
BODY = b'{"type":1,"id":"1311000000000001000"}'


def verifier_for(signer: Signer, window: float = 300.0) -> SignatureVerifier:
    return SignatureVerifier(public_key(signer.public_key_hex), window=window)


def test_a_signature_over_timestamp_and_body_verifies() -> None:
    signer = Signer()
    stamp = str(int(NOW))
    verdict = verifier_for(signer).verify(signer.signature(BODY, stamp), stamp, BODY, now=NOW)
    assert verdict is Verdict.VALID


def test_another_key_does_not_verify() -> None:
    signer, stranger = Signer(), Signer()
    stamp = str(int(NOW))
    verdict = verifier_for(signer).verify(stranger.signature(BODY, stamp), stamp, BODY, now=NOW)
    assert verdict is Verdict.FORGED


def test_a_changed_body_or_timestamp_does_not_verify() -> None:
    signer = Signer()
    stamp = str(int(NOW))
    signature = signer.signature(BODY, stamp)
    check = verifier_for(signer)
    assert (
        check.verify(signature, stamp, BODY.replace(b'"type":1', b'"type":4'), now=NOW)
        is Verdict.FORGED
    )
    assert check.verify(signature, str(int(NOW) - 1), BODY, now=NOW) is Verdict.FORGED


@pytest.mark.parametrize(
    ("signature", "timestamp", "expected"),
    [
        (None, "1764000000", Verdict.MISSING),
        ("ab" * 64, None, Verdict.MISSING),
        ("", "1764000000", Verdict.MISSING),
        ("zz" * 64, "1764000000", Verdict.MALFORMED),
        ("ab" * 63, "1764000000", Verdict.MALFORMED),
        ("ab" * 64, "17640e5", Verdict.MALFORMED),
        ("ab" * 64, "-1764000000", Verdict.MALFORMED),
    ],
)
def test_missing_or_malformed_headers_are_refused(
    signature: str | None, timestamp: str | None, expected: Verdict
) -> None:
    assert verifier_for(Signer()).verify(signature, timestamp, BODY, now=NOW) is expected


@pytest.mark.parametrize("offset", [-301, 301, -86_400])
def test_a_valid_signature_outside_the_window_is_stale(offset: int) -> None:
    signer = Signer()
    stamp = str(int(NOW) + offset)
    verdict = verifier_for(signer).verify(signer.signature(BODY, stamp), stamp, BODY, now=NOW)
    assert verdict is Verdict.STALE


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_a_timestamp_inside_the_window_passes(offset: int) -> None:
    signer = Signer()
    stamp = str(int(NOW) + offset)
    verdict = verifier_for(signer).verify(signer.signature(BODY, stamp), stamp, BODY, now=NOW)
    assert verdict is Verdict.VALID


@pytest.mark.parametrize("key", ["", "abc", "g" * 64, "ab" * 33, 42])
def test_a_public_key_that_is_not_32_hex_bytes_is_refused(key: object) -> None:
    with pytest.raises(ValueError):
        public_key(key)  # type: ignore[arg-type]
