"""A fake OpenID provider shaped like Entra ID's v2.0 endpoints, for loopback tests.

It is a real Starlette app (served over TLS by the tests) with one registered confidential
client and one user who is always signed in:

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the discovery document, where
  MSAL and the channel look for it;
- ``GET /{tenant}/discovery/v2.0/keys``: the JWKS (RSA keys made here);
- ``GET /{tenant}/oauth2/v2.0/authorize``: checks the client, the *exact* redirect URI,
  ``response_type=code``, the ``openid`` scope, PKCE with ``S256``, ``state`` and ``nonce``;
  then answers the code and the state with a redirect (``query``) or an auto-posting form
  (``form_post``), or ``error=access_denied`` when told to refuse;
- ``POST /{tenant}/oauth2/v2.0/token``: checks the client secret, the code (single use,
  short-lived), the redirect URI and the PKCE verifier against the challenge; answers an
  ID token signed with its key.

``knobs`` make the next ID tokens wrong in one way each (nonce, audience, issuer, expiry,
signing key, key id), for the failure tests. Everything it was sent is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

CODE_TTL_SECONDS = 300.0


@attrs.define
class Clock:
    """One clock for the host and the provider, so token times and record times agree."""

    now: float

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@attrs.define
class TokenKnobs:
    """What the next ID tokens get wrong (``None``/``False``: nothing)."""

    nonce: str | None = None
    audience: str | list[str] | None = None
    issuer: str | None = None
    expired: bool = False
    sign_with_other_key: bool = False  # same kid, a key the JWKS does not hold
    kid: str | None = None  # name a key the JWKS does not hold
    omit: tuple[str, ...] = ()


@attrs.frozen
class User:
    oid: str
    tid: str
    name: str = "Alice Example"


@attrs.define
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig"}


class FakeProvider:
    def __init__(
        self,
        *,
        base_url: str,
        tenant: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        clock: Callable[[], float],
        user: User,
    ) -> None:
        self.base_url = base_url
        self.tenant = tenant
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.clock = clock
        self.user = user
        self.key = SigningKey.generate("fake-key-1")
        self.other_key = SigningKey.generate("fake-key-1")
        self.knobs = TokenKnobs()
        self.refuse_sign_in = False
        self.codes: dict[str, dict[str, Any]] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.jwks_fetches = 0
        self.discovery_fetches = 0

    # --- what the tests configure the channel with ---------------------------------------

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.tenant}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/{self.tenant}/v2.0"

    def rotate_key(self, kid: str) -> None:
        self.key = SigningKey.generate(kid)

    @property
    def app(self) -> Starlette:
        prefix = f"/{self.tenant}"
        return Starlette(
            routes=[
                Route("/readiness", self._readiness),
                Route(f"{prefix}/v2.0/.well-known/openid-configuration", self._discovery),
                Route(f"{prefix}/discovery/v2.0/keys", self._jwks),
                Route(f"{prefix}/oauth2/v2.0/authorize", self._authorize),
                Route(f"{prefix}/oauth2/v2.0/token", self._token, methods=["POST"]),
            ]
        )

    # --- endpoints ------------------------------------------------------------------------

    async def _readiness(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def _discovery(self, request: Request) -> Response:
        self.discovery_fetches += 1
        base = f"{self.base_url}/{self.tenant}"
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code"],
                "response_modes_supported": ["query", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        self.jwks_fetches += 1
        return JSONResponse({"keys": [self.key.jwk()]})

    async def _authorize(self, request: Request) -> Response:
        query = dict(request.query_params)
        self.authorize_requests.append(query)
        # A wrong client or redirect URI is never redirected to (that would be an open
        # redirect at the provider): it is a page, as Entra's AADSTS50011 is.
        if query.get("client_id") != self.client_id:
            return PlainTextResponse("unknown client_id", status_code=400)
        if query.get("redirect_uri") != self.redirect_uri:
            return PlainTextResponse("redirect_uri is not registered exactly", status_code=400)
        problems = [
            name
            for name, ok in (
                ("response_type", query.get("response_type") == "code"),
                ("scope", "openid" in query.get("scope", "").split()),
                ("code_challenge_method", query.get("code_challenge_method") == "S256"),
                ("code_challenge", len(query.get("code_challenge", "")) == 43),
                ("state", bool(query.get("state"))),
                ("nonce", bool(query.get("nonce"))),
            )
            if not ok
        ]
        if problems:
            return PlainTextResponse(f"invalid request: {problems}", status_code=400)
        answer = {"state": query["state"]}
        if self.refuse_sign_in:
            answer |= {"error": "access_denied", "error_description": "<script>x()</script>"}
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = {
                "challenge": query["code_challenge"],
                "nonce": query["nonce"],
                "redirect_uri": query["redirect_uri"],
                "expires_at": self.clock() + CODE_TTL_SECONDS,
            }
            answer["code"] = code
        if query.get("response_mode") == "form_post":
            inputs = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                for k, v in answer.items()
            )
            return HTMLResponse(
                f'<html><body onload="document.forms[0].submit()">'
                f'<form method="post" action="{html.escape(self.redirect_uri)}">{inputs}'
                "</form></body></html>"
            )
        return RedirectResponse(f"{self.redirect_uri}?{urlencode(answer)}", status_code=302)

    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        self.token_requests.append(form)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if client_id != self.client_id or secret != self.client_secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") != "authorization_code":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        grant = self.codes.pop(form.get("code", ""), None)  # single use
        if grant is None or grant["expires_at"] <= self.clock():
            return _invalid_grant("unknown, used or expired code")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return _invalid_grant("redirect_uri differs from the authorization request")
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if challenge.rstrip(b"=").decode() != grant["challenge"]:
            return _invalid_grant("PKCE verification failed")
        return JSONResponse(
            {
                "token_type": "Bearer",
                "scope": form.get("scope", "openid profile"),
                "expires_in": 3600,
                "access_token": secrets.token_urlsafe(32),
                "id_token": self.id_token(nonce=grant["nonce"]),
            }
        )

    # --- tokens ---------------------------------------------------------------------------

    def id_token(self, *, nonce: str) -> str:
        knobs, now = self.knobs, int(self.clock())
        issued = now - 7200 if knobs.expired else now
        claims: dict[str, Any] = {
            "ver": "2.0",
            "iss": knobs.issuer or self.issuer,
            "aud": knobs.audience or self.client_id,
            "sub": f"pairwise-{self.user.oid[:8]}",
            "oid": self.user.oid,
            "tid": self.user.tid,
            "name": self.user.name,
            "nonce": knobs.nonce or nonce,
            "iat": issued,
            "nbf": issued,
            "exp": issued + 3600,
        }
        for name in knobs.omit:
            claims.pop(name, None)
        key = self.other_key if knobs.sign_with_other_key else self.key
        return jwt.encode(
            claims, key.private, algorithm="RS256", headers={"kid": knobs.kid or key.kid}
        )


def _invalid_grant(description: str) -> Response:
    return JSONResponse(
        {"error": "invalid_grant", "error_description": description}, status_code=400
    )
