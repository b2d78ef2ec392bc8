"""The link ceremony's codec: ID token validation, ``return_to``, records and pages.

Pure functions, no I/O: tokens are signed here with local keys, and time is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from agenthost import ChannelIdentity
from agenthost.channels.oidc import codec
from agenthost.channels.oidc.codec import IdTokenReason

NOW = 1_800_000_000.0
CLIENT = "client-1"
TENANT = "7f3c2a9e-1d4b-4c8e-9a6f-2b5d8e1c4a70"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
FLOW_NONCE = "flow-nonce-value"
NONCE = codec.msal_nonce_claim(FLOW_NONCE)

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        data: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "use": "sig", **extra}


JWKS = {"keys": [jwk(KEY, "k1"), jwk(OTHER_KEY, "k2")]}


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "pairwise-subject",
        "oid": "0c8a7d6e-5f4b-4a3c-9b2d-1e0f9a8b7c6d",
        "tid": TENANT,
        "nonce": NONCE,
        "iat": int(NOW) - 10,
        "nbf": int(NOW) - 10,
        "exp": int(NOW) + 3600,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def sign(
    payload: dict[str, Any], *, key: Any = KEY, kid: str | None = "k1", alg: str = "RS256"
) -> str:
    """A compact JWS over exactly ``payload`` (PyJWT's ``encode`` would refuse odd claims)."""
    headers = {"kid": kid} if kid is not None else {}
    body = json.dumps(payload).encode()
    return jwt.api_jws.encode(body, key, algorithm=alg, headers=headers)


def validate(token: str, **options: Any) -> codec.VerifiedClaims:
    arguments: dict[str, Any] = {
        "jwks": JWKS,
        "issuer": ISSUER,
        "audience": CLIENT,
        "nonce": NONCE,
        "now": NOW,
        "leeway": 120.0,
        **options,
    }
    return codec.validate_id_token(token, **arguments)


def rejected(token: str, reason: IdTokenReason, **options: Any) -> None:
    with pytest.raises(codec.IdTokenRejected) as raised:
        validate(token, **options)
    assert raised.value.reason is reason, raised.value.detail


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- the happy path ------------------------------------------------------------------


def test_a_valid_token_answers_its_verified_claims() -> None:
    verified = validate(sign(claims()))
    assert verified == codec.VerifiedClaims(
        issuer=ISSUER,
        subject="pairwise-subject",
        tenant_id=TENANT,
        object_id="0c8a7d6e-5f4b-4a3c-9b2d-1e0f9a8b7c6d",
    )
    assert verified.link_claims() == {"oid": verified.object_id, "tid": TENANT}


def test_the_nonce_claim_is_msals_hash_of_the_flow_nonce() -> None:
    from msal.oauth2cli.oidc import _nonce_hash  # MSAL's own, to catch a change there

    assert codec.msal_nonce_claim(FLOW_NONCE) == _nonce_hash(FLOW_NONCE)
    assert codec.msal_nonce_claim(FLOW_NONCE) == hashlib.sha256(FLOW_NONCE.encode()).hexdigest()


# --- signature, algorithm, key -----------------------------------------------------------


def test_a_token_signed_with_another_key_is_refused() -> None:
    rejected(sign(claims(), key=OTHER_KEY, kid="k1"), IdTokenReason.BAD_SIGNATURE)


def test_a_tampered_payload_is_refused() -> None:
    header, _, signature = sign(claims()).split(".")
    forged = b64(json.dumps(claims(oid="someone-else")).encode())
    rejected(f"{header}.{forged}.{signature}", IdTokenReason.BAD_SIGNATURE)


def test_a_key_id_the_jwks_does_not_hold_is_unknown() -> None:
    rejected(sign(claims(), kid="rotated"), IdTokenReason.UNKNOWN_KEY)


def test_without_a_key_id_only_a_single_published_key_is_used() -> None:
    token = sign(claims(), kid=None)
    rejected(token, IdTokenReason.UNKNOWN_KEY)  # two keys: ambiguous
    assert validate(token, jwks={"keys": [jwk(KEY, "k1")]}).tenant_id == TENANT


def test_keys_not_for_signing_or_for_another_algorithm_are_skipped() -> None:
    token = sign(claims())
    rejected(token, IdTokenReason.UNKNOWN_KEY, jwks={"keys": [jwk(KEY, "k1", use="enc")]})
    rejected(token, IdTokenReason.UNKNOWN_KEY, jwks={"keys": [jwk(KEY, "k1", alg="RS512")]})
    rejected(token, IdTokenReason.UNKNOWN_KEY, jwks={"keys": []})
    rejected(token, IdTokenReason.UNKNOWN_KEY, jwks={})
    rejected(token, IdTokenReason.UNKNOWN_KEY, jwks={"keys": [{"kid": "k1", "kty": "RSA"}]})


def test_alg_none_is_refused() -> None:
    header = b64(json.dumps({"alg": "none", "kid": "k1"}).encode())
    payload = b64(json.dumps(claims()).encode())
    rejected(f"{header}.{payload}.", IdTokenReason.UNSUPPORTED_ALGORITHM)


def test_an_hmac_token_keyed_with_the_public_key_is_refused() -> None:
    # The classic confusion: HS256 with the RSA public key as the shared secret.
    header = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    secret = json.dumps(JWKS["keys"][0]).encode()
    import hmac as hmac_module

    signature = hmac_module.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    rejected(f"{header}.{payload}.{b64(signature)}", IdTokenReason.UNSUPPORTED_ALGORITHM)


def test_only_the_allowed_algorithms_are_accepted() -> None:
    token = sign(claims(), key=EC_KEY, kid="e1", alg="ES256")
    jwks = {"keys": [jwk(EC_KEY, "e1")]}
    rejected(token, IdTokenReason.UNSUPPORTED_ALGORITHM, jwks=jwks)
    assert validate(token, jwks=jwks, algorithms=("ES256",)).tenant_id == TENANT
    # An RSA key cannot verify an ES256 token even if both algorithms are allowed.
    rejected(
        sign(claims(), key=EC_KEY, kid="k1", alg="ES256"),
        IdTokenReason.UNKNOWN_KEY,
        algorithms=("RS256", "ES256"),
    )


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "!!!.###.$$$", "e30.e30.", "x" * 20000, b64(b"{").join("..")],
)
def test_a_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(codec.IdTokenRejected) as raised:
        validate(token)
    assert raised.value.reason in (IdTokenReason.MALFORMED, IdTokenReason.UNSUPPORTED_ALGORITHM)


def test_a_payload_that_is_not_an_object_is_malformed() -> None:
    token = jwt.api_jws.encode(b"[1, 2]", KEY, algorithm="RS256", headers={"kid": "k1"})
    rejected(token, IdTokenReason.MALFORMED)


# --- issuer ---------------------------------------------------------------------------


def test_the_issuer_must_match_exactly() -> None:
    for issuer in (ISSUER + "/", ISSUER.upper(), "https://evil.example/v2.0", " " + ISSUER):
        rejected(sign(claims(iss=issuer)), IdTokenReason.WRONG_ISSUER)


def test_entras_tenant_template_is_filled_with_the_tokens_tid() -> None:
    template = "https://login.microsoftonline.com/{tenantid}/v2.0"
    assert validate(sign(claims()), issuer=template).tenant_id == TENANT
    other = "11111111-2222-3333-4444-555555555555"
    # A token from another tenant must carry that tenant's issuer too.
    rejected(sign(claims(tid=other)), IdTokenReason.WRONG_ISSUER, issuer=template)
    rejected(
        sign(claims(tid="../evil", iss=template.replace("{tenantid}", "../evil"))),
        IdTokenReason.WRONG_ISSUER,
        issuer=template,
    )


def test_allowed_tenants_limit_who_may_link() -> None:
    token = sign(claims())
    assert validate(token, allowed_tenants={TENANT.upper()}).tenant_id == TENANT
    rejected(token, IdTokenReason.TENANT_NOT_ALLOWED, allowed_tenants={"other"})


# --- audience -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "other-client"},
        {"aud": ["other-client"]},
        {"aud": []},
        {"aud": DROP},
        {"aud": 42},
        {"aud": [CLIENT, "other"]},  # several audiences need azp
        {"aud": [CLIENT, "other"], "azp": "other"},
        {"azp": "other"},
    ],
)
def test_the_audience_must_be_this_client(changes: dict[str, Any]) -> None:
    rejected(sign(claims(**changes)), IdTokenReason.WRONG_AUDIENCE)


def test_several_audiences_pass_when_we_are_the_authorized_party() -> None:
    assert validate(sign(claims(aud=[CLIENT, "other"], azp=CLIENT))).tenant_id == TENANT
    assert validate(sign(claims(aud=[CLIENT]))).tenant_id == TENANT


# --- time -----------------------------------------------------------------------------


def test_expiry_with_leeway() -> None:
    assert validate(sign(claims(exp=int(NOW) - 60))).tenant_id == TENANT  # within skew
    rejected(sign(claims(exp=int(NOW) - 120)), IdTokenReason.EXPIRED)
    rejected(sign(claims(exp=int(NOW) - 1)), IdTokenReason.EXPIRED, leeway=0)


def test_a_token_from_the_future_is_refused() -> None:
    assert validate(sign(claims(iat=int(NOW) + 100, nbf=int(NOW) + 100))).tenant_id == TENANT
    rejected(sign(claims(iat=int(NOW) + 121)), IdTokenReason.NOT_YET_VALID)
    rejected(sign(claims(nbf=int(NOW) + 121)), IdTokenReason.NOT_YET_VALID)
    assert validate(sign(claims(nbf=DROP))).tenant_id == TENANT  # nbf is optional


@pytest.mark.parametrize("name", ["exp", "iat"])
@pytest.mark.parametrize("value", [DROP, "1800000000", True, None])
def test_times_must_be_numbers(name: str, value: Any) -> None:
    rejected(sign(claims(**{name: value})), IdTokenReason.MISSING_CLAIM)


def test_now_is_an_argument() -> None:
    token = sign(claims())
    rejected(token, IdTokenReason.EXPIRED, now=NOW + 3600 + 121)
    rejected(token, IdTokenReason.NOT_YET_VALID, now=NOW - 10 - 121)


# --- nonce and the claims the link needs ----------------------------------------------


@pytest.mark.parametrize("nonce", ["0" * 64, FLOW_NONCE, NONCE.upper(), "", DROP, 7])
def test_the_nonce_must_be_this_flows(nonce: Any) -> None:
    rejected(sign(claims(nonce=nonce)), IdTokenReason.NONCE_MISMATCH)


@pytest.mark.parametrize("name", ["sub", "oid", "tid", "iss"])
@pytest.mark.parametrize("value", [DROP, "", 12, ["x"], "x" * 300])
def test_identity_claims_must_be_strings(name: str, value: Any) -> None:
    rejected(sign(claims(**{name: value})), IdTokenReason.MISSING_CLAIM)


def test_claims_are_checked_only_after_the_signature() -> None:
    # A bad signature wins over every claim problem: nothing unverified is looked at.
    token = sign(claims(aud="x", exp=0, nonce="x", oid=DROP), key=OTHER_KEY, kid="k1")
    rejected(token, IdTokenReason.BAD_SIGNATURE)


def test_rejections_never_carry_claim_values() -> None:
    with pytest.raises(codec.IdTokenRejected) as raised:
        validate(sign(claims(aud="secret-audience-value", oid="secret-oid")))
    assert "secret" not in str(raised.value)


# --- return_to ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["/", "/console", "/console?tab=links&x=1", "/a/b#frag", "/%2F%2Fevil", "/~user"]
)
def test_relative_paths_are_safe_return_targets(value: str) -> None:
    assert codec.check_return_to(value) == value


@pytest.mark.parametrize("value", [None, ""])
def test_no_return_to_is_none(value: str | None) -> None:
    assert codec.check_return_to(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "https://evil.example",
        "http://evil.example/",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "data:text/html,x",
        "evil.example/path",
        "console",
        "/\t/evil.example",
        "/\n/evil.example",
        "/ /evil.example",
        "/ok\r\nLocation: https://evil.example",
        "/caf\u00e9",
        "/\u3002/evil",
        "/" + "a" * 600,
    ],
)
def test_anything_else_is_refused(value: str) -> None:
    with pytest.raises(codec.ReturnToRejected):
        codec.check_return_to(value)


# --- documents ------------------------------------------------------------------------


def discovery(**changes: Any) -> dict[str, Any]:
    doc = {
        "issuer": ISSUER,
        "authorization_endpoint": "https://login.example/t/oauth2/v2.0/authorize",
        "token_endpoint": "https://login.example/t/oauth2/v2.0/token",
        "jwks_uri": "https://login.example/t/discovery/v2.0/keys",
    }
    doc.update(changes)
    return doc


def test_discovery_is_parsed() -> None:
    metadata = codec.parse_discovery(discovery())
    assert metadata.issuer == ISSUER
    assert metadata.authorization_origin == "https://login.example"


@pytest.mark.parametrize(
    "document",
    [
        [],
        "x",
        discovery(issuer=None),
        discovery(jwks_uri="http://login.example/keys"),
        discovery(token_endpoint="/relative"),
        discovery(authorization_endpoint=42),
    ],
)
def test_an_unusable_discovery_document_is_the_providers_fault(document: Any) -> None:
    with pytest.raises(codec.ProviderDocumentError):
        codec.parse_discovery(document)


@pytest.mark.parametrize("document", [[], {"keys": {}}, {}, "x"])
def test_an_unusable_jwks_is_the_providers_fault(document: Any) -> None:
    with pytest.raises(codec.ProviderDocumentError):
        codec.parse_jwks(document)


def test_the_authorization_request_must_go_to_the_discovered_endpoint() -> None:
    metadata = codec.parse_discovery(discovery())
    assert codec.is_authorization_request(metadata.authorization_endpoint + "?a=b", metadata)
    for url in (
        "https://evil.example/t/oauth2/v2.0/authorize?a=b",
        "https://login.example/t/oauth2/v2.0/token?a=b",
        "http://login.example/t/oauth2/v2.0/authorize",
        "https://login.example:444/t/oauth2/v2.0/authorize",
    ):
        assert not codec.is_authorization_request(url, metadata)


def test_entra_discovery_url() -> None:
    assert codec.entra_discovery_url("https://login.microsoftonline.com/contoso/") == (
        "https://login.microsoftonline.com/contoso/v2.0/.well-known/openid-configuration"
    )


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Agent.Example/x", "https://agent.example"),
        ("https://agent.example:443/x", "https://agent.example"),
        ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080"),
        ("http://[::1]:80/x", "http://[::1]"),
    ],
)
def test_origins_are_written_as_browsers_send_them(url: str, origin: str) -> None:
    assert codec.origin_of(url) == origin


# --- forms ----------------------------------------------------------------------------


def test_forms_are_parsed_once_per_field() -> None:
    assert codec.parse_form(b"a=1&b=%2F%3F&c=") == {"a": "1", "b": "/?", "c": ""}
    for body in (
        b"a=1&a=2",
        b"x" * (codec.MAX_FORM_BYTES + 1),
        "a=\u00e9".encode(),
        b"&".join([b"a%d=1" % i for i in range(40)]),
    ):
        with pytest.raises(codec.FormRejected):
            codec.parse_form(body)


# --- records --------------------------------------------------------------------------


def test_secrets_are_well_formed_and_stored_hashed() -> None:
    secret = "A" * 43
    assert codec.is_well_formed_secret(secret)
    for bad in (None, "", "A" * 42, "A" * 44, "A" * 42 + "=", "A" * 42 + "/"):
        assert not codec.is_well_formed_secret(bad)
    key = codec.record_key(secret)
    assert re.fullmatch(r"[0-9a-f]{64}", key) and secret not in key
    assert codec.binding_matches(secret, key)
    assert not codec.binding_matches("B" * 43, key)
    assert not codec.binding_matches(None, key)


def test_tickets_and_flows_round_trip() -> None:
    identity = ChannelIdentity("telegram", "42", {"username": " alice ", "display_name": 7})
    ticket = codec.Ticket.for_identity(identity)
    assert ticket == codec.Ticket("telegram", "42", "alice")
    assert codec.Ticket.from_value(ticket.to_value()) == ticket
    assert ticket.identity == ChannelIdentity("telegram", "42")
    flow = codec.PendingFlow(ticket, "/console", "h" * 64, {"state": "s", "nonce": FLOW_NONCE})
    again = codec.PendingFlow.from_value(json.loads(json.dumps(flow.to_value())))
    assert again == flow
    assert again.expected_nonce == NONCE


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"v": 2, "ticket": {}, "msal_flow": {}, "binding_hash": "h"},
        {"v": 1, "ticket": {"v": 1, "channel": "t", "native_id": "1"}, "binding_hash": "h"},
        {
            "v": 1,
            "ticket": {"v": 1, "channel": "t", "native_id": "1"},
            "binding_hash": "h",
            "msal_flow": {"state": "s"},
            "return_to": "//evil",
        },
    ],
)
def test_unreadable_flows_are_refused(value: dict[str, Any]) -> None:
    with pytest.raises(codec.RecordUnreadable):
        codec.PendingFlow.from_value(value)


def test_a_flow_without_a_nonce_has_no_expected_nonce() -> None:
    flow = codec.PendingFlow(codec.Ticket("t", "1"), None, "h", {"state": "s"})
    with pytest.raises(codec.RecordUnreadable):
        _ = flow.expected_nonce


# --- pages ----------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>\"'&<img src=x onerror=y>"


def test_the_confirmation_page_escapes_every_value() -> None:
    page = codec.confirm_page(
        ticket=HOSTILE,
        return_to=HOSTILE,
        display_name=HOSTILE,
        channel=HOSTILE,
        provider_label=HOSTILE,
        action=HOSTILE,
    )
    assert "<script>" not in page and "<img" not in page
    assert page.count(html.escape(HOSTILE, quote=True)) == 7
    # Only the page's own tags remain.
    assert set(re.findall(r"<([a-z0-9]+)", page)) == {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "p",
        "strong",
        "form",
        "input",
        "button",
    }


def test_the_done_page_links_back_only_when_asked() -> None:
    assert '<a href="/console?a=1&amp;b=&quot;">Continue</a>' in codec.done_page(
        return_to='/console?a=1&b="'
    )
    assert "<a " not in codec.done_page(return_to=None)


def test_failure_pages_show_the_reason_code_and_no_input() -> None:
    page = codec.failure_page(codec.id_token_failure(IdTokenReason.BAD_SIGNATURE))
    assert "Reference: <code>id_token_bad_signature</code>" in page
    assert codec.failure_page(codec.Failure(HOSTILE, 400, HOSTILE)).count("<script>") == 0


def test_the_page_headers_forbid_scripts_framing_and_referrers() -> None:
    headers = codec.page_headers(form_targets=["https://login.example"])
    policy = headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["form-action"] == "'self' https://login.example"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert "script-src" not in directives
    # The one inline stylesheet is allowed by its hash, nothing else.
    style = re.search(r"<style>(.*?)</style>", codec.done_page(return_to=None)).group(1)  # type: ignore[union-attr]
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert directives["style-src"] == f"'sha256-{digest}'"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"


def test_the_start_query_is_encoded() -> None:
    assert (
        codec.start_query("T" * 43, "/a?b=c&d")
        == "ticket=" + "T" * 43 + "&return_to=%2Fa%3Fb%3Dc%26d"
    )
    assert codec.start_query("T" * 43, None) == "ticket=" + "T" * 43
