"""Verifying the bearer token on every inbound activity (the Bot Connector calling the bot).

Rules:

1. The token is checked before the body is trusted: signature and claims first
   (:meth:`TokenVerifier.verify`), then, once the body has parsed, what the token binds
   it to (:meth:`TokenVerifier.check_binding`). Any failure is :class:`InvalidToken`,
   answered 401 with nothing recorded and no turn run.
2. Signing keys come from the OpenID metadata's ``jwks_uri``, fetched through the host's
   HTTP client and cached. An unknown ``kid`` refreshes the set, but at most once per
   ``refresh_interval`` (a flood of invented kids costs one fetch), and the set is
   refetched after ``max_age`` (the SDKs refresh daily). One fetch runs at a time, and
   requests arriving meanwhile wait for its result; a failed fetch keeps the keys already
   known. At most ``max_keys`` keys are kept.
3. RS256 only. ``iss`` is the Bot Framework's issuer, ``aud`` the bot's app id, ``exp``
   is required, and ``exp``/``nbf`` allow five minutes of clock skew.
4. Channel tokens: the signing key's ``endorsements`` include the activity's
   ``channelId``, and the ``serviceurl`` claim equals the activity's ``serviceUrl``.
5. Emulator and skill tokens (issued by Entra, v1 ``https://sts.windows.net/{tid}/`` or v2
   ``https://login.microsoftonline.com/{tid}/v2.0``, the caller's app id in ``appid`` or
   ``azp``) are accepted only when the channel was built with ``allow_emulator=True``;
   their keys come from the Entra metadata, and they carry no endorsements or service
   URL claim.
6. The reason for a refusal is logged as a short code; the token and its claims never are.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import anyio
import attrs
import httpx
import jwt

log = logging.getLogger("agenthost.channels.activity")

BOT_FRAMEWORK_METADATA_URL = "https://login.botframework.com/v1/.well-known/openidconfiguration"
BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
EMULATOR_METADATA_URL = (
    "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration"
)
CLOCK_SKEW_SECONDS = 300.0
MAX_TOKEN_BYTES = 16 * 1024
MAX_DOCUMENT_BYTES = 512 * 1024

_EMULATOR_ISSUERS = (
    re.compile(r"^https://sts\.windows\.net/[0-9A-Za-z.-]{1,64}/$"),
    re.compile(r"^https://login\.microsoftonline\.com/[0-9A-Za-z.-]{1,64}/v2\.0$"),
)


def _unverified_segment(token: str, index: int) -> Mapping[str, Any]:
    """One JSON segment of a compact JWS, decoded but not trusted."""
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidToken("malformed_token")
    segment = segments[index]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, TypeError):
        raise InvalidToken("malformed_token") from None
    if not isinstance(decoded, Mapping):
        raise InvalidToken("malformed_token")
    return decoded


class InvalidToken(Exception):
    """The caller is not the Bot Framework for this bot (``reason`` is a log code)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class SigningKey:
    kid: str
    key: Any  # the public key PyJWT verifies with
    endorsements: frozenset[str]


@attrs.frozen
class VerifiedToken:
    """What a verified token says about the request it came with."""

    kind: Literal["channel", "emulator"]
    endorsements: frozenset[str]
    service_url: str | None


class SigningKeys:
    """The keys one OpenID issuer signs with, cached (rule 2)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        metadata_url: str,
        *,
        refresh_interval: float = 300.0,
        max_age: float = 24 * 3600.0,
        max_keys: int = 64,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._http = http
        self._metadata_url = metadata_url
        self._refresh_interval = refresh_interval
        self._max_age = max_age
        self._max_keys = max_keys
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._attempts = 0
        self._lock = anyio.Lock()
        self.fetches = 0  # how many times the key set was fetched (for tests and metrics)

    async def key(self, kid: str) -> SigningKey | None:
        found = self._keys.get(kid)
        fetched = self._fetched_at
        if found is not None and fetched is not None and self._clock() - fetched < self._max_age:
            return found
        await self._refresh()
        return self._keys.get(kid)

    def _may_refresh(self, now: float) -> bool:
        if self._tried_at is None:
            return True
        # Until a first fetch succeeds, retry sooner: without keys nothing verifies.
        interval = self._refresh_interval if self._fetched_at is not None else 5.0
        return now - self._tried_at >= min(interval, self._refresh_interval)

    async def _refresh(self) -> None:
        attempts = self._attempts
        async with self._lock:
            # A request that waited for another's fetch uses its result.
            if self._attempts != attempts or not self._may_refresh(self._clock()):
                return
            self._attempts += 1
            self._tried_at = self._clock()
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
                log.warning(
                    "bot framework signing keys not fetched; keeping the known ones",
                    extra={"error_type": type(error).__name__, "known_keys": len(self._keys)},
                )
                return
            self._keys = keys
            self._fetched_at = self._clock()
            self.fetches += 1

    async def _fetch(self) -> dict[str, SigningKey]:
        metadata = await self._get_json(self._metadata_url)
        jwks_uri = metadata["jwks_uri"]
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("the OpenID metadata names no jwks_uri")
        document = await self._get_json(jwks_uri)
        keys: dict[str, SigningKey] = {}
        for jwk in document["keys"]:
            if len(keys) >= self._max_keys:
                break
            if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA":
                continue
            kid = jwk.get("kid")
            endorsements = jwk.get("endorsements") or []
            if not isinstance(kid, str) or not isinstance(endorsements, list):
                continue
            try:
                public = jwt.PyJWK(dict(jwk), algorithm="RS256").key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
            keys[kid] = SigningKey(
                kid, public, frozenset(e for e in endorsements if isinstance(e, str))
            )
        return keys

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        response = await self._http.get(url, headers={"accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise ValueError("the document is too large")
        document = response.json()
        if not isinstance(document, Mapping):
            raise ValueError("the document is not a JSON object")
        return document


class TokenVerifier:
    """Rules 1 and 3-6 over the cached keys of the Bot Framework (and the Emulator's)."""

    def __init__(
        self,
        app_id: str,
        channel_keys: SigningKeys,
        *,
        emulator_keys: SigningKeys | None = None,
        issuer: str = BOT_FRAMEWORK_ISSUER,
    ) -> None:
        self._app_id = app_id
        self._channel_keys = channel_keys
        self._emulator_keys = emulator_keys
        self._issuer = issuer

    async def verify(self, authorization: str | None) -> VerifiedToken:
        if not authorization:
            raise InvalidToken("no_token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise InvalidToken("not_bearer")
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token_too_long")
        # The header (and, with the emulator on, the issuer) pick the key: read them with
        # the standard library once; PyJWT checks the whole token again when it verifies.
        header = _unverified_segment(token, 0)
        if header.get("alg") != "RS256":
            raise InvalidToken("algorithm_not_allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("no_key_id")
        if self._emulator_keys is not None:
            issuer = _unverified_segment(token, 1).get("iss")
            if (
                isinstance(issuer, str)
                and not hmac.compare_digest(issuer.encode("utf-8"), self._issuer.encode("utf-8"))
                and any(p.match(issuer) for p in _EMULATOR_ISSUERS)
            ):
                return await self._verify_emulator(token, kid, issuer)
        return await self._verify_channel(token, kid)

    async def _verify_channel(self, token: str, kid: str) -> VerifiedToken:
        key = await self._channel_keys.key(kid)
        if key is None:
            raise InvalidToken("unknown_key")
        claims = self._decode(token, key, self._issuer)
        service_url = claims.get("serviceurl")
        return VerifiedToken(
            "channel", key.endorsements, service_url if isinstance(service_url, str) else None
        )

    async def _verify_emulator(self, token: str, kid: str, issuer: str) -> VerifiedToken:
        assert self._emulator_keys is not None
        key = await self._emulator_keys.key(kid)
        if key is None:
            raise InvalidToken("unknown_key")
        claims = self._decode(token, key, issuer)
        caller = claims.get("appid") if claims.get("ver", "1.0") == "1.0" else claims.get("azp")
        if not isinstance(caller, str) or not hmac.compare_digest(
            caller.encode("utf-8"), self._app_id.encode("utf-8")
        ):
            raise InvalidToken("wrong_app_id")
        return VerifiedToken("emulator", frozenset(), None)

    def _decode(self, token: str, key: SigningKey, issuer: str) -> Mapping[str, Any]:
        try:
            claims: Mapping[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self._app_id,
                issuer=issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("not_yet_valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong_issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad_signature") from None
        except jwt.PyJWTError:
            raise InvalidToken("invalid_claims") from None
        return claims

    @staticmethod
    def check_binding(verified: VerifiedToken, *, channel_id: str, service_url: str) -> None:
        """Rule 4: the token was issued for this activity's channel and service URL."""
        if verified.kind == "emulator":
            return
        base = channel_id.split(":", 1)[0]  # msteams:copilot-web is endorsed as msteams
        if channel_id not in verified.endorsements and base not in verified.endorsements:
            raise InvalidToken("channel_not_endorsed")
        claimed = verified.service_url
        if claimed is None or not hmac.compare_digest(
            claimed.encode("utf-8"), service_url.encode("utf-8")
        ):
            raise InvalidToken("service_url_mismatch")
