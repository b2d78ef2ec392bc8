"""The OpenID Connect link ceremony's rules and wire formats, with no I/O.

What this module owns:

- **ID token validation.** MSAL (1.38 and later) no longer validates ID tokens, so we do:
  the signature against the provider's JWKS (the key named by ``kid``, an allowed
  algorithm, the key type that algorithm needs), then ``iss`` (exactly, or Entra's
  ``{tenantid}`` template filled with the token's ``tid``), ``aud`` (and ``azp``), ``exp``,
  ``iat``/``nbf`` with a clock-skew leeway, ``nonce``, and the ``sub``/``oid``/``tid``
  claims the link is keyed on. The time is an argument; this module never reads a clock.
  Claims are never looked at before the signature verifies.
- **``return_to``.** Only a same-origin relative path passes: it starts with exactly one
  ``/`` and holds printable ASCII only (no ``\\``, no whitespace or control characters,
  which browsers strip and could so turn ``/<tab>/evil`` into ``//evil``).
- **Stored records.** What a ticket and a pending flow keep in the store, versioned, and
  the hashed keys they are stored under (a store dump reveals no usable secret).
- **Pages.** Every page the ceremony shows, with each dynamic value escaped, and the
  headers that go with them (a strict ``Content-Security-Policy``, no framing, no
  referrer, no caching).

It must not: read the clock, draw randomness, touch the network or the store.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import html
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import attrs
import jwt

from agenthost.sansio_core import strict_json
from agenthost.sansio_core.types import ChannelIdentity

RECORD_VERSION = 1
MAX_ID_TOKEN_CHARS = 16 * 1024
MAX_RETURN_TO_CHARS = 512
DEFAULT_ALGORITHMS = ("RS256",)
TENANT_TEMPLATE = "{tenantid}"

# Secrets the ceremony hands out (tickets, ``state``, the browser binding) are
# ``secrets.token_urlsafe(32)``: 256 bits, 43 characters. Anything else is not ours.
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # fullmatch only: "$" allows a trailing "\n"
_TENANT_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_KEY_TYPES = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
}
SUPPORTED_ALGORITHMS = frozenset(_KEY_TYPES)


# --- ID tokens ------------------------------------------------------------------------


class IdTokenReason(enum.Enum):
    MALFORMED = "malformed"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    NONCE_MISMATCH = "nonce_mismatch"
    MISSING_CLAIM = "missing_claim"
    TENANT_NOT_ALLOWED = "tenant_not_allowed"


class IdTokenRejected(Exception):
    """The ID token failed validation. ``reason`` is for logs and pages; ``detail`` for
    logs only (it never holds claim values)."""

    def __init__(self, reason: IdTokenReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@attrs.frozen
class VerifiedClaims:
    """What a validated ID token says about the user. ``(tenant_id, object_id)`` is the
    Entra user; ``subject`` is pairwise per application."""

    issuer: str
    subject: str
    tenant_id: str
    object_id: str

    def link_claims(self) -> dict[str, str]:
        """The claims another channel can present to be linked to the same user."""
        return {"oid": self.object_id, "tid": self.tenant_id}


def msal_nonce_claim(flow_nonce: str) -> str:
    """The ``nonce`` an ID token carries for an MSAL flow: MSAL sends the SHA-256 hex of
    the flow's random nonce, never the nonce itself."""
    return hashlib.sha256(flow_nonce.encode("ascii")).hexdigest()


def validate_id_token(
    id_token: str,
    *,
    jwks: Mapping[str, Any],
    issuer: str,
    audience: str,
    nonce: str,
    now: float,
    leeway: float = 120.0,
    algorithms: Collection[str] = DEFAULT_ALGORITHMS,
    allowed_tenants: Collection[str] | None = None,
) -> VerifiedClaims:
    """Validate ``id_token`` and return its claims, or raise :class:`IdTokenRejected`.

    ``issuer`` is the discovery document's ``issuer``; Entra's multi-tenant authorities
    (``common``, ``organizations``) publish ``https://login.microsoftonline.com/{tenantid}/v2.0``
    and the token's ``tid`` fills the placeholder. ``nonce`` is the value the token must
    carry (for an MSAL flow, :func:`msal_nonce_claim` of the flow's nonce).
    """
    payload = _verified_payload(id_token, jwks, algorithms)

    tenant_id = _string_claim(payload, "tid")
    token_issuer = _string_claim(payload, "iss")
    if TENANT_TEMPLATE in issuer:
        if not _TENANT_ID.fullmatch(tenant_id):
            raise IdTokenRejected(IdTokenReason.WRONG_ISSUER, "tid cannot fill the issuer")
        issuer = issuer.replace(TENANT_TEMPLATE, tenant_id)
    if token_issuer != issuer:
        raise IdTokenRejected(IdTokenReason.WRONG_ISSUER, "iss is not the provider's issuer")

    _check_audience(payload, audience)
    _check_times(payload, now, leeway)

    token_nonce = payload.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(
        token_nonce.encode(), nonce.encode()
    ):
        raise IdTokenRejected(IdTokenReason.NONCE_MISMATCH, "nonce is not this flow's")

    claims = VerifiedClaims(
        issuer=token_issuer,
        subject=_string_claim(payload, "sub"),
        tenant_id=tenant_id,
        object_id=_string_claim(payload, "oid"),
    )
    if allowed_tenants is not None and tenant_id.lower() not in {
        t.lower() for t in allowed_tenants
    }:
        raise IdTokenRejected(IdTokenReason.TENANT_NOT_ALLOWED, "tid is not an allowed tenant")
    return claims


def _verified_payload(
    id_token: str, jwks: Mapping[str, Any], algorithms: Collection[str]
) -> dict[str, Any]:
    if not isinstance(id_token, str) or len(id_token) > MAX_ID_TOKEN_CHARS:
        raise IdTokenRejected(IdTokenReason.MALFORMED, "not a string of sane length")
    if id_token.count(".") != 2:
        raise IdTokenRejected(IdTokenReason.MALFORMED, "not a compact JWS")
    jws = jwt.PyJWS()
    try:
        header = jws.get_unverified_header(id_token)
    except jwt.PyJWTError:
        raise IdTokenRejected(IdTokenReason.MALFORMED, "unreadable header") from None
    algorithm = header.get("alg")
    if algorithm not in algorithms or algorithm not in _KEY_TYPES:
        raise IdTokenRejected(
            IdTokenReason.UNSUPPORTED_ALGORITHM, f"alg {algorithm!r} is not allowed"
        )
    key = _signing_key(jwks, header.get("kid"), algorithm)
    try:
        decoded = jws.decode_complete(id_token, key=key, algorithms=[algorithm])
    except jwt.InvalidSignatureError:
        raise IdTokenRejected(IdTokenReason.BAD_SIGNATURE, "signature does not verify") from None
    except jwt.PyJWTError as error:
        raise IdTokenRejected(IdTokenReason.MALFORMED, type(error).__name__) from None
    try:
        payload = strict_json.loads(decoded["payload"])
    except strict_json.JsonRefused:
        raise IdTokenRejected(IdTokenReason.MALFORMED, "payload is not JSON") from None
    if not isinstance(payload, dict):
        raise IdTokenRejected(IdTokenReason.MALFORMED, "payload is not an object")
    return payload


def _signing_key(jwks: Mapping[str, Any], kid: Any, algorithm: str) -> jwt.PyJWK:
    if kid is not None and not isinstance(kid, str):
        raise IdTokenRejected(IdTokenReason.MALFORMED, "kid is not a string")
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise IdTokenRejected(IdTokenReason.UNKNOWN_KEY, "the JWKS has no keys")
    candidates = [
        key
        for key in keys
        if isinstance(key, dict)
        and key.get("use", "sig") == "sig"
        and key.get("kty") == _KEY_TYPES[algorithm]
        and key.get("alg", algorithm) == algorithm
        and (kid is None or key.get("kid") == kid)
    ]
    # Without a kid the key is ambiguous unless the provider publishes exactly one.
    if len(candidates) != 1:
        raise IdTokenRejected(IdTokenReason.UNKNOWN_KEY, "no single JWKS key matches the token")
    try:
        return jwt.PyJWK(candidates[0], algorithm=algorithm)
    except jwt.PyJWTError:
        raise IdTokenRejected(IdTokenReason.UNKNOWN_KEY, "the JWKS key is unusable") from None


def _string_claim(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise IdTokenRejected(IdTokenReason.MISSING_CLAIM, f"{name} is missing or not a string")
    return value


def _number_claim(payload: Mapping[str, Any], name: str) -> float:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IdTokenRejected(IdTokenReason.MISSING_CLAIM, f"{name} is missing or not a number")
    return float(value)


def _check_audience(payload: Mapping[str, Any], audience: str) -> None:
    aud = payload.get("aud")
    if isinstance(aud, str):
        audiences = [aud]
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        audiences = aud
    else:
        raise IdTokenRejected(IdTokenReason.WRONG_AUDIENCE, "aud is missing")
    if audience not in audiences:
        raise IdTokenRejected(IdTokenReason.WRONG_AUDIENCE, "aud is not this client")
    # OIDC Core 3.1.3.7: with several audiences the authorized party must be us.
    azp = payload.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != audience:
        raise IdTokenRejected(IdTokenReason.WRONG_AUDIENCE, "azp is not this client")


def _check_times(payload: Mapping[str, Any], now: float, leeway: float) -> None:
    expires = _number_claim(payload, "exp")
    issued = _number_claim(payload, "iat")
    not_before = _number_claim(payload, "nbf") if "nbf" in payload else None
    if now >= expires + leeway:
        raise IdTokenRejected(IdTokenReason.EXPIRED, "exp has passed")
    if issued > now + leeway or (not_before is not None and not_before > now + leeway):
        raise IdTokenRejected(IdTokenReason.NOT_YET_VALID, "iat or nbf is in the future")


# --- the provider's documents ---------------------------------------------------------


class ProviderDocumentError(Exception):
    """The provider's discovery document or JWKS is unusable (its fault, not the user's)."""


@attrs.frozen
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str

    @property
    def authorization_origin(self) -> str:
        return origin_of(self.authorization_endpoint)


def parse_discovery(document: Any) -> ProviderMetadata:
    """The parts of ``/.well-known/openid-configuration`` the ceremony relies on."""
    if not isinstance(document, dict):
        raise ProviderDocumentError("the discovery document is not a JSON object")
    values: dict[str, str] = {}
    for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str) or not _is_https_url(value):
            raise ProviderDocumentError(f"the discovery document's {name} is not an https URL")
        values[name] = value
    return ProviderMetadata(**values)


def parse_jwks(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ProviderDocumentError("the JWKS is not an object with a 'keys' list")
    return document


def entra_discovery_url(authority: str) -> str:
    """Where Entra (and MSAL) find an authority's v2.0 discovery document."""
    return f"{authority.rstrip('/')}/v2.0/.well-known/openid-configuration"


def _is_https_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme == "https" and bool(parts.hostname)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin`` (default ports left out)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = f":{parts.port}" if parts.port is not None and parts.port != default else ""
    return f"{parts.scheme}://{host}{port}"


def is_authorization_request(url: str, metadata: ProviderMetadata) -> bool:
    """Whether ``url`` goes to the provider's authorization endpoint and nowhere else."""
    endpoint = urlsplit(metadata.authorization_endpoint)
    target = urlsplit(url)
    return (target.scheme, target.netloc, target.path) == (
        endpoint.scheme,
        endpoint.netloc,
        endpoint.path,
    )


# --- forms ----------------------------------------------------------------------------

MAX_FORM_BYTES = 16 * 1024
_MAX_FORM_FIELDS = 16


class FormRejected(ValueError):
    """A form body that is too large, not URL-encoded text, or repeats a field."""


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; each field at most once."""
    if len(body) > MAX_FORM_BYTES:
        raise FormRejected("the form is too large")
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise FormRejected("the form is not URL-encoded ASCII") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise FormRejected(f"the form repeats {name!r}")
        fields[name] = value
    return fields


# --- return_to ------------------------------------------------------------------------


class ReturnToRejected(ValueError):
    """``return_to`` is not a same-origin relative path."""


def check_return_to(value: str | None) -> str | None:
    """``value`` if it is a safe relative path (``None`` and ``""`` mean "none").

    Only a path starting with exactly one ``/``, made of printable ASCII other than
    ``\\``: no scheme, no ``//host``, no ``/\\host`` (browsers read ``\\`` as ``/``), and
    no whitespace or control characters (browsers strip tabs and newlines from URLs).
    """
    if value is None or value == "":
        return None
    if len(value) > MAX_RETURN_TO_CHARS:
        raise ReturnToRejected("return_to is too long")
    if not value.startswith("/") or value.startswith("//"):
        raise ReturnToRejected("return_to must be a path starting with a single '/'")
    if any(not ("\x21" <= ch <= "\x7e") or ch == "\\" for ch in value):
        raise ReturnToRejected("return_to may hold printable ASCII only, and no '\\'")
    return value


# --- stored records -------------------------------------------------------------------


class RecordUnreadable(ValueError):
    """A stored ticket or flow was written by another version, or is damaged."""


def is_well_formed_secret(value: str | None) -> bool:
    return value is not None and bool(_SECRET.fullmatch(value))


def record_key(secret: str) -> str:
    """Records are stored under the SHA-256 of their secret, never the secret itself."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def binding_matches(cookie: str | None, binding_hash: str) -> bool:
    if not is_well_formed_secret(cookie):
        return False
    assert cookie is not None
    return hmac.compare_digest(record_key(cookie), binding_hash)


@attrs.frozen
class Ticket:
    """A pending link: who asked for it (the identity to link) and how to show them."""

    channel: str
    native_id: str
    display_name: str | None = None

    @classmethod
    def for_identity(cls, identity: ChannelIdentity) -> Ticket:
        return cls(identity.channel, identity.native_id, display_name_of(identity))

    @property
    def identity(self) -> ChannelIdentity:
        return ChannelIdentity(self.channel, self.native_id)

    def to_value(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "channel": self.channel,
            "native_id": self.native_id,
            "display_name": self.display_name,
        }

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> Ticket:
        _check_version(value)
        channel, native_id = value.get("channel"), value.get("native_id")
        display = value.get("display_name")
        if not isinstance(channel, str) or not isinstance(native_id, str):
            raise RecordUnreadable("the ticket names no identity")
        return cls(channel, native_id, display if isinstance(display, str) else None)


@attrs.frozen
class PendingFlow:
    """A flow between the redirect to the provider and the callback.

    ``msal_flow`` is the dict MSAL's ``initiate_auth_code_flow`` returned (``state``, the
    PKCE ``code_verifier``, the ``nonce``, ...), stored whole as MSAL asks, so any replica
    can finish the flow. ``binding_hash`` ties it to the browser that started it.
    """

    ticket: Ticket
    return_to: str | None
    binding_hash: str
    msal_flow: Mapping[str, Any]

    @property
    def expected_nonce(self) -> str:
        nonce = self.msal_flow.get("nonce")
        if not isinstance(nonce, str):
            raise RecordUnreadable("the flow has no nonce")
        return msal_nonce_claim(nonce)

    def to_value(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "ticket": self.ticket.to_value(),
            "return_to": self.return_to,
            "binding_hash": self.binding_hash,
            "msal_flow": dict(self.msal_flow),
        }

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> PendingFlow:
        _check_version(value)
        ticket, flow = value.get("ticket"), value.get("msal_flow")
        binding, return_to = value.get("binding_hash"), value.get("return_to")
        if not isinstance(ticket, Mapping) or not isinstance(flow, Mapping):
            raise RecordUnreadable("the flow is incomplete")
        if not isinstance(binding, str) or not isinstance(flow.get("state"), str):
            raise RecordUnreadable("the flow is incomplete")
        try:
            return_to = check_return_to(return_to if isinstance(return_to, str) else None)
        except ReturnToRejected:
            raise RecordUnreadable("the flow's return_to is unsafe") from None
        return cls(Ticket.from_value(ticket), return_to, binding, dict(flow))


def _check_version(value: Mapping[str, Any]) -> None:
    if value.get("v") != RECORD_VERSION:
        raise RecordUnreadable(f"record version {value.get('v')!r} is not {RECORD_VERSION}")


def display_name_of(identity: ChannelIdentity) -> str | None:
    """A short human label from the identity's display hints, if it has one."""
    for name in ("display_name", "username", "name"):
        value = identity.attributes.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()[:80]
    return None


# --- pages ----------------------------------------------------------------------------


@attrs.frozen
class Failure:
    """Why the ceremony stopped: ``code`` (logs, and the page's reference), the HTTP
    status, and the sentence the user reads. Never built from request input."""

    code: str
    status: int
    message: str


BAD_REQUEST = Failure("bad_request", 400, "This request is incomplete or malformed.")
TICKET_INVALID = Failure(
    "ticket_invalid",
    400,
    "This link is not valid any more: it was already used, or it expired. "
    "Ask for a new one with /link.",
)
RETURN_TO_INVALID = Failure(
    "return_to_invalid", 400, "The page to return to must be a page of this site."
)
CROSS_SITE = Failure(
    "cross_site_request", 400, "This request did not come from this site's own link page."
)
STATE_INVALID = Failure(
    "state_invalid",
    400,
    "This sign-in is unknown, was already completed, or was tampered with. Start again with /link.",
)
FLOW_EXPIRED = Failure(
    "flow_expired", 400, "This sign-in took too long and expired. Start again with /link."
)
BROWSER_MISMATCH = Failure(
    "browser_mismatch",
    400,
    "This sign-in was started in another browser. Finish it in the browser where you "
    "opened the link, or start again with /link.",
)
SIGN_IN_FAILED = Failure(
    "sign_in_failed", 400, "The sign-in was cancelled or refused. Start again with /link."
)
TOKEN_EXCHANGE_FAILED = Failure(
    "token_exchange_failed", 400, "The sign-in could not be completed. Start again with /link."
)
PROVIDER_UNAVAILABLE = Failure(
    "provider_unavailable", 502, "The sign-in service cannot be reached. Try again later."
)
LINK_REFUSED = Failure(
    "link_refused",
    409,
    "Your sign-in worked, but these accounts cannot be linked here. Nothing was changed.",
)
LINK_FAILED = Failure(
    "link_failed", 500, "Your sign-in worked, but the accounts could not be linked. Try again."
)


def id_token_failure(reason: IdTokenReason) -> Failure:
    return Failure(
        f"id_token_{reason.value}",
        400,
        "The sign-in could not be verified, so nothing was linked. Start again with /link.",
    )


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;"
    "line-height:1.5;color:#1b1b1b}h1{font-size:1.4rem}.ref{color:#666;font-size:.85rem}"
    "button{font-size:1rem;padding:.5rem 1rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()


def page_headers(*, form_targets: Sequence[str] = ()) -> dict[str, str]:
    """Headers for every ceremony page. ``form_targets``: origins a form on the page may
    end up at; browsers apply ``form-action`` to the redirects after a submit too, so the
    confirmation page lists the provider's authorization origin next to ``'self'``."""
    form_action = " ".join(["'self'", *form_targets])
    policy = (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action {form_action}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "content-security-policy": policy,
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
    }


def confirm_page(
    *,
    ticket: str,
    return_to: str | None,
    display_name: str | None,
    channel: str,
    provider_label: str,
    action: str,
) -> str:
    """The page ``GET start`` shows: say what will be linked, and submit only on a click.

    A GET never changes anything, so link previews in chat apps cannot spend the ticket,
    and a user sent someone else's link is told what it would do before it does it.
    """
    who = f"{_e(display_name)} on {_e(channel)}" if display_name else f"your {_e(channel)} account"
    return _layout(
        "Link your account",
        f"<p>You are about to link <strong>{who}</strong> to the {_e(provider_label)} "
        "account you sign in with next.</p>"
        "<p>Continue only if you asked for this link yourself just now. If someone sent you "
        "this page, close it.</p>"
        f'<form method="post" action="{_e(action)}">'
        f'<input type="hidden" name="ticket" value="{_e(ticket)}">'
        f'<input type="hidden" name="return_to" value="{_e(return_to or "")}">'
        f'<button type="submit">Continue to {_e(provider_label)} sign-in</button></form>',
    )


def done_page(*, return_to: str | None) -> str:
    back = (
        f'<p><a href="{_e(return_to)}">Continue</a></p>'
        if return_to
        else "<p>You can close this page and go back to the chat.</p>"
    )
    return _layout("Account linked", "<p>Your accounts are now linked.</p>" + back)


def failure_page(failure: Failure) -> str:
    return _layout(
        "Linking failed",
        f"<p>{_e(failure.message)}</p>"
        f'<p class="ref">Reference: <code>{_e(failure.code)}</code></p>',
    )


def start_query(ticket: str, return_to: str | None) -> str:
    query = f"ticket={quote(ticket, safe='')}"
    if return_to:
        query += f"&return_to={quote(return_to, safe='')}"
    return query


def _layout(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1>{body}</body></html>"
    )


def _e(value: str) -> str:
    return html.escape(value, quote=True)
