"""Fakes of the Bot Framework's services: real HTTP servers on 127.0.0.1 for tests.

- :class:`FakeChannelService` is both the Bot Framework's token issuer for channel ->
  bot calls and the Bot Connector. As issuer it serves OpenID metadata
  (``/v1/.well-known/openidconfiguration``) and a JWKS whose keys carry ``endorsements``
  (the channel ids each key may sign for), and signs RS256 tokens with keys generated
  here; keys can be rotated. As connector (``/amer/v3/conversations/…``, the Teams-like
  service URL ``{base}/amer/``) it accepts only bearer tokens the fake Entra issued,
  records each activity, answers ``{"id": …}``, and follows the documented failures:
  :meth:`fail` (429 with ``Retry-After``, 412, 502 …) and :attr:`gone` (403
  ``BotNotInConversationRoster``: the app was uninstalled). It also serves a file that
  needs the bot token (``/amer/files/{name}``).
- :class:`FakeEntra` is Entra's token endpoint for the bot (client credentials): tenant
  discovery metadata and ``/{tenant}/oauth2/v2.0/token``, which checks the app id (an
  unknown one is 400 ``unauthorized_client``), the secret or certificate (a wrong one is
  401 ``invalid_client``) and the Bot Framework scope. msal insists on https, so it is
  served with TLS (``tls.py``).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

APP_ID = "7f1d5c3e-0a2b-4c6d-8e9f-0123456789ab"
APP_SECRET = "not-a-real-secret~0123456789"
BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
SCOPE = "https://api.botframework.com/.default"
FILE_BYTES = b"\x89PNG\r\n\x1a\n fake image bytes"

_KEYS: list[RSAPrivateKey] = []


def rsa_key() -> RSAPrivateKey:
    """A fresh RSA key (generated once per test process, then reused round-robin)."""
    if len(_KEYS) < 4:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _KEYS[-1]
    key = _KEYS.pop(0)
    _KEYS.append(key)
    return key


@attrs.define
class IssuerKey:
    kid: str
    private: RSAPrivateKey
    endorsements: list[str]

    def jwk(self) -> dict[str, Any]:
        public: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "endorsements": list(self.endorsements)}


@attrs.define
class Received:
    """One activity the bot sent to the connector."""

    conversation_id: str
    reply_to: str | None  # the activity id in the reply URL
    activity: dict[str, Any]
    at: float  # time.monotonic()
    status: int
    id: str | None

    @property
    def text(self) -> str:
        return str(self.activity.get("text") or "")

    @property
    def type(self) -> str:
        return str(self.activity.get("type"))

    @property
    def stream_info(self) -> dict[str, Any] | None:
        for entity in self.activity.get("entities") or []:
            if entity.get("type") == "streaminfo":
                return dict(entity)
        return None


class FakeChannelService:
    def __init__(
        self,
        *,
        app_id: str = APP_ID,
        endorsements: tuple[str, ...] = ("msteams",),
        key: IssuerKey | None = None,
    ):
        self.app_id = app_id
        self.base_url = ""  # set once served
        self.keys = [key or IssuerKey(f"kid-{secrets.token_hex(4)}", rsa_key(), list(endorsements))]
        self.metadata_fetches = 0
        self.key_fetches = 0
        self.jwks_delay = 0.0  # seconds the JWKS takes to answer (a slow issuer)
        self.accepted_tokens: set[str] = set()  # filled by FakeEntra
        self.received: list[Received] = []
        self.refused: list[Received] = []
        self.gone: set[str] = set()
        self.stopped_streams: set[str] = set()  # conversations whose user pressed Stop
        self.file_requests: list[str | None] = []  # the authorization header of each
        self._failures: list[tuple[str, int, float | None]] = []
        self._ids = 0
        self.app = Starlette(
            routes=[
                Route("/v1/.well-known/openidconfiguration", self._metadata),
                Route("/v1/keys", self._jwks),
                Route(
                    "/amer/v3/conversations/{conversation_id}/activities",
                    self._activity,
                    methods=["POST"],
                ),
                Route(
                    "/amer/v3/conversations/{conversation_id}/activities/{activity_id}",
                    self._activity,
                    methods=["POST"],
                ),
                Route("/amer/files/{name}", self._file),
                Route("/readiness", _ready),
            ]
        )

    # --- the issuer -------------------------------------------------------------------

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/v1/.well-known/openidconfiguration"

    @property
    def service_url(self) -> str:
        return f"{self.base_url}/amer/"

    def rotate(self, endorsements: tuple[str, ...] = ("msteams",)) -> IssuerKey:
        """Publish a new signing key (the old one stays published, as during a rollover)."""
        key = IssuerKey(f"kid-{secrets.token_hex(4)}", rsa_key(), list(endorsements))
        self.keys.append(key)
        return key

    def token(
        self,
        *,
        key: IssuerKey | None = None,
        kid: str | None = None,
        algorithm: str = "RS256",
        signing_key: Any = None,
        lifetime: float = 3600.0,
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        """A token as the Bot Framework signs one; keyword arguments override claims."""
        key = key or self.keys[0]
        now = time.time()
        body: dict[str, Any] = {
            "iss": BOT_FRAMEWORK_ISSUER,
            "aud": self.app_id,
            "serviceurl": self.service_url,
            "nbf": int(now) - 10,
            "exp": int(now + lifetime),
        }
        body.update(claims)
        for name in drop:
            body.pop(name, None)
        return jwt.encode(
            body,
            signing_key if signing_key is not None else key.private,
            algorithm=algorithm,
            headers={"kid": kid if kid is not None else key.kid},
        )

    async def _metadata(self, request: Request) -> Response:
        self.metadata_fetches += 1
        return JSONResponse(
            {
                "issuer": BOT_FRAMEWORK_ISSUER,
                "authorization_endpoint": "https://invalid.botframework.com",
                "jwks_uri": f"{self.base_url}/v1/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        self.key_fetches += 1
        await anyio.sleep(self.jwks_delay)
        return JSONResponse({"keys": [key.jwk() for key in self.keys]})

    # --- the connector ------------------------------------------------------------------

    def fail(
        self, conversation_id: str, status: int, *, times: int = 1, retry_after: float | None = None
    ) -> None:
        """Answer the next ``times`` sends to the conversation with ``status``."""
        self._failures.extend([(conversation_id, status, retry_after)] * times)

    def sent_to(self, conversation_id: str) -> list[Received]:
        return [r for r in self.received if r.conversation_id == conversation_id]

    def messages_to(self, conversation_id: str) -> list[Received]:
        return [r for r in self.sent_to(conversation_id) if r.type == "message"]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(0.01)

    async def _activity(self, request: Request) -> Response:
        conversation_id = request.path_params["conversation_id"]
        reply_to = request.path_params.get("activity_id")
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or token not in self.accepted_tokens:
            return _connector_error(401, "Unauthorized", "Authorization has been denied.")
        activity = await request.json()
        if not isinstance(activity, Mapping) or not activity.get("type"):
            return _connector_error(400, "BadArgument", "Activity is missing its type.")
        at = time.monotonic()
        failure = next((f for f in self._failures if f[0] == conversation_id), None)
        if failure is not None:
            self._failures.remove(failure)
            _, status, retry_after = failure
            self.refused.append(
                Received(conversation_id, reply_to, dict(activity), at, status, None)
            )
            headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
            return _connector_error(status, "Throttled" if status == 429 else "Failed", "", headers)
        if conversation_id in self.gone:
            self.refused.append(Received(conversation_id, reply_to, dict(activity), at, 403, None))
            return _connector_error(
                403, "BotNotInConversationRoster", "The bot is not part of the conversation roster."
            )
        info = next(
            (e for e in activity.get("entities") or [] if e.get("type") == "streaminfo"), None
        )
        if info is not None and info.get("streamType") != "informative":
            refused = self._stream_refusal(conversation_id, info, str(activity.get("text") or ""))
            if refused is not None:
                self.refused.append(
                    Received(
                        conversation_id, reply_to, dict(activity), at, refused.status_code, None
                    )
                )
                return refused
        self._ids += 1
        activity_id = f"{1_700_000_000_000 + self._ids}"
        if info is not None and info.get("streamId"):
            activity_id = str(info["streamId"])  # a stream keeps its message
        self.received.append(
            Received(conversation_id, reply_to, dict(activity), at, 200, activity_id)
        )
        return JSONResponse({"id": activity_id}, status_code=200)

    def _stream_refusal(
        self, conversation_id: str, info: Mapping[str, Any], text: str
    ) -> Response | None:
        """Teams' rules for a chunk or a final message (TM-STREAM): it continues a stream
        the bot opened in this chat, a chunk's sequence grows and its text is cumulative;
        a stream the user stopped takes nothing more."""
        stream = [
            r
            for r in self.received
            if r.conversation_id == conversation_id
            and r.stream_info is not None
            and info.get("streamId") in (r.id, r.stream_info.get("streamId"))
        ]
        if not stream:
            return _connector_error(400, "BadArgument", "Unknown stream.")
        if conversation_id in self.stopped_streams:
            return _connector_error(403, "ContentStreamNotAllowed", "The user stopped the stream.")
        if info.get("streamType") == "streaming":
            last = stream[-1]
            previous = int((last.stream_info or {}).get("streamSequence", 0))
            if int(info.get("streamSequence", 0)) <= previous:
                return _connector_error(400, "BadArgument", "The stream sequence must increase.")
            if (
                not text.startswith(last.text)
                and last.stream_info.get("streamType") != "informative"
            ):
                return _connector_error(400, "BadArgument", "Streamed text must be cumulative.")
        return None

    async def _file(self, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        self.file_requests.append(authorization)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme != "Bearer" or token not in self.accepted_tokens:
            return Response(status_code=401)
        return Response(FILE_BYTES, media_type="image/png")


def _base64url(text: str) -> str:
    return text.rstrip("=").replace("+", "-").replace("/", "_")


async def _ready(request: Request) -> Response:
    return Response("ready")


def _connector_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


class FakeEntra:
    """Entra's client-credentials endpoint for one app registration: a client secret, or
    a certificate (a signed ``client_assertion`` naming it by ``x5t``)."""

    def __init__(
        self,
        service: FakeChannelService,
        *,
        secret: str = APP_SECRET,
        certificate: x509.Certificate | None = None,
    ) -> None:
        self.base_url = ""  # set once served (https)
        self._service = service
        self._secret = secret
        self._certificate = certificate
        self.token_requests: list[dict[str, str]] = []
        self.issued = 0
        self.expires_in = 3599
        self.app = Starlette(
            routes=[
                Route("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery),
                Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
            ]
        )

    async def _discovery(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        base = f"{self.base_url}/{tenant}"
        return JSONResponse(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
            }
        )

    async def _token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.token_requests.append({**form, "tenant": request.path_params["tenant"]})
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if form.get("client_id") != self._service.app_id:
            # Entra: no such application in the tenant (AADSTS700016), a 400.
            return JSONResponse(
                {"error": "unauthorized_client", "error_description": "AADSTS700016"},
                status_code=400,
            )
        if not self._authenticated(form, request.path_params["tenant"]):
            return JSONResponse(
                {"error": "invalid_client", "error_description": "AADSTS7000215"}, status_code=401
            )
        if form.get("scope") != SCOPE:
            return JSONResponse({"error": "invalid_scope"}, status_code=400)
        token = secrets.token_urlsafe(24)
        self._service.accepted_tokens.add(token)
        self.issued += 1
        return JSONResponse(
            {"token_type": "Bearer", "expires_in": self.expires_in, "access_token": token}
        )

    def _authenticated(self, form: Mapping[str, str], tenant: str) -> bool:
        if "client_secret" in form:
            return self._certificate is None and form["client_secret"] == self._secret
        assertion = form.get("client_assertion")
        if self._certificate is None or assertion is None:
            return False
        if form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return False
        fingerprint = self._certificate.fingerprint(hashes.SHA1())  # Entra's x5t is SHA-1
        header = jwt.get_unverified_header(assertion)
        x5t = base64.urlsafe_b64encode(fingerprint).rstrip(b"=").decode()
        presented = header.get("x5t")
        # msal writes x5t in base64's own alphabet, padded; Entra accepts that too.
        if not isinstance(presented, str) or _base64url(presented) != x5t:
            return False
        try:
            claims = jwt.decode(
                assertion,
                self._certificate.public_key(),  # type: ignore[arg-type]
                algorithms=["RS256", "PS256"],
                audience=f"{self.base_url}/{tenant}/oauth2/v2.0/token",
                issuer=self._service.app_id,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError:
            return False
        return bool(claims.get("sub") == self._service.app_id)
