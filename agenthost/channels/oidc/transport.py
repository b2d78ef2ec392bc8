"""The link ceremony's routes: link a channel identity to a verified Entra (OpenID) user.

Theory of operation. Each step spends the record the step before it wrote, so every
secret is single use, and every record lives in the store, so any replica can serve any
step. Records are stored under the SHA-256 of their secret.

=========  ===============================  ===========  ============================
step       request                          spends       writes
=========  ===============================  ===========  ============================
issue      ``create_ticket(identity)``                   ``oidc_ticket``
confirm    ``GET start?ticket&return_to``
start      ``POST start`` (our own page)    the ticket   ``oidc_flow`` (key: state),
                                                         the browser binding cookie
callback   the provider's redirect back     the flow     (the host links the claims)
done       ``GET done?return_to``
=========  ===============================  ===========  ============================

``issue`` is the host's ``/link`` command; ``confirm`` shows what would be linked;
``start`` answers 303 to the provider; ``callback`` needs the same browser and answers
303 to ``done``, which shows the done page.

Every refusal is a page naming its reason and links nothing: status 400 for a bad or
stale request or token, 409 when the host refuses the link (its link policy), 500 when
the host fails to link, 502 when the provider cannot be reached.

Why the ceremony has the steps it has:

- ``GET start`` only shows a page: chat apps fetch links to preview them, and a GET that
  spent the ticket would spend it for the preview bot. The page also tells a user who was
  sent someone else's link what clicking would link.
- ``POST start`` must come from our own page (``Origin`` / ``Sec-Fetch-Site``): otherwise
  another site could post an attacker's ticket from the victim's browser and, with the
  victim signed in at the provider, link the attacker's chat to the victim's account.
- The flow is bound to the browser that started it (a random cookie, its hash in the
  flow): ``state`` alone does not stop an attacker from sending a victim the provider URL
  of a flow the attacker started (RFC 6749 section 10.12, RFC 9700 section 4.7).
- The callback answers with a redirect to ``done`` so a reload does not replay it.
- ``redirect_uri`` is configured, never derived from the request's ``Host`` header, and the
  pages' own URLs derive from it.

The identity to link comes from the ticket, never from the request; the verified
``oid``/``tid`` go to ``Host.link_verified_claims``, which decides the link.

The channel is also the host's linker for this ceremony (``IdentityLinker``): the host's
``/link`` command calls :meth:`OidcLinkChannel.begin`, which issues a ticket and answers
the instructions with the start URL.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from agenthost.backends.bodies import BodyRefused, ClientGone, read_limited
from agenthost.backends.channel import Channel, HostServices
from agenthost.backends.configuration import ConfigurationError
from agenthost.backends.linking import IdentityLinker, LinkingServices
from agenthost.channels.oidc import codec
from agenthost.channels.oidc.provider import (
    OidcProvider,
    ProviderUnavailable,
    TokenExchangeFailed,
)
from agenthost.sansio_core.linking import LinkChallenge
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores.base import ChannelRecord

log = logging.getLogger("agenthost.channels.oidc")

TICKET_KIND = "oidc_ticket"
FLOW_KIND = "oidc_flow"
ResponseMode = Literal["form_post", "query"]

_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class OidcLinkChannel(Channel, IdentityLinker):
    """Link a chat identity to the Entra ID (OpenID Connect) user who signs in.

    ``authority``: ``https://login.microsoftonline.com/<tenant>`` (a tenant id or domain,
    ``organizations`` or ``common``). ``client_id`` / ``client_credential``: the app
    registration and its secret (or any credential MSAL accepts). ``redirect_uri``: the
    exact, absolute URL registered with the provider; it must end with
    ``{mount}/callback`` (a proxy may add a path prefix before it) and be https, or http on
    a loopback host. ``scopes``: extra scopes only (``openid`` and ``profile`` are always
    asked for). ``response_mode``: ``form_post`` (the default, as MSAL recommends: the code
    never appears in a URL) or ``query``. ``allowed_tenants``: refuse users of any other
    tenant (useful with ``organizations`` / ``common``). ``claims_source``: the source the
    verified ``oid``/``tid`` are recorded under; the host keys a verified user on the
    source and the claims, so every channel that verifies Entra users must use the same
    one for their identities to link silently. ``validate_authority=False`` is
    for a provider on a host Microsoft does not know (a test provider).
    ``http_client``: the client for the provider's endpoints (the host's shared one if
    ``None``): the seam for tests and for custom TLS or proxies.
    """

    # As a channel: it verifies claims, and has no chat for the host's commands.
    provides_verified_claims = True
    offers_link_commands = False
    # As a linker: ``/link`` begins here; the proof arrives at the callback, not by command.
    provides_claims = True
    completes_by_command = False

    def __init__(
        self,
        *,
        authority: str,
        client_id: str,
        client_credential: str | Mapping[str, Any],
        redirect_uri: str,
        scopes: Sequence[str] = (),
        name: str = "oidc",
        mount: str = "/link/oidc",
        response_mode: ResponseMode = "form_post",
        flow_ttl_seconds: float = 600.0,
        ticket_ttl_seconds: float = 600.0,
        clock_skew_seconds: float = 120.0,
        allowed_tenants: Collection[str] | None = None,
        algorithms: Collection[str] = codec.DEFAULT_ALGORITHMS,
        validate_authority: bool = True,
        provider_label: str = "Microsoft",
        claims_source: str = "entra",
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        _check_mount(mount)
        _check_authority(authority)
        _check_redirect_uri(redirect_uri, mount)
        if not client_id or not client_credential:
            raise ConfigurationError(
                "client_id and client_credential are required: copy them from the app "
                "registration (Certificates & secrets)"
            )
        reserved = _RESERVED_SCOPES.intersection(scopes)
        if reserved:
            raise ConfigurationError(
                f"scopes must not list {sorted(reserved)}: openid and profile are always "
                "requested, and the link ceremony never needs a refresh token"
            )
        if response_mode not in ("form_post", "query"):
            raise ConfigurationError(
                f"response_mode must be 'form_post' or 'query', not {response_mode!r}"
            )
        for setting, value in (
            ("flow_ttl_seconds", flow_ttl_seconds),
            ("ticket_ttl_seconds", ticket_ttl_seconds),
        ):
            if not value > 0:
                raise ConfigurationError(f"{setting} must be greater than 0, not {value!r}")
        if not claims_source:
            raise ConfigurationError("claims_source must name the source of the claims")
        if clock_skew_seconds < 0:
            raise ConfigurationError("clock_skew_seconds must not be negative")
        unknown = set(algorithms) - codec.SUPPORTED_ALGORITHMS
        if not algorithms or unknown:
            raise ConfigurationError(
                f"algorithms must be some of {sorted(codec.SUPPORTED_ALGORITHMS)} "
                f"(asymmetric only), not {sorted(unknown) or 'none'}"
            )
        self.name = name
        self.mount = mount
        self.authority = authority.rstrip("/")
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.scopes = tuple(scopes)
        self.response_mode: ResponseMode = response_mode
        self.flow_ttl_seconds = flow_ttl_seconds
        self.ticket_ttl_seconds = ticket_ttl_seconds
        self.clock_skew_seconds = clock_skew_seconds
        self.allowed_tenants = None if allowed_tenants is None else frozenset(allowed_tenants)
        self.algorithms = tuple(algorithms)
        self.provider_label = provider_label
        self.claims_source = claims_source
        self._client_credential = client_credential
        self._validate_authority = validate_authority
        self._http_client = http_client
        # The public URLs of the ceremony pages come from the configured redirect URI.
        self._public_base = redirect_uri[: -len("/callback")]
        self._origin = codec.origin_of(redirect_uri)
        secure = urlsplit(redirect_uri).scheme == "https"
        self._cookie_name = f"__Host-agenthost-oidc-{name}" if secure else f"agenthost-oidc-{name}"
        self._cookie_path = "/" if secure else urlsplit(self._public_base).path
        self._host: HostServices | None = None
        self._provider: OidcProvider | None = None

    # --- the Channel seam -------------------------------------------------------------

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        if self._host is not None and self._host is not host:
            raise ConfigurationError(f"channel {self.name!r} is already part of another host")
        self._host = host
        handlers = _Handlers(self)
        callback_method = "POST" if self.response_mode == "form_post" else "GET"
        return [
            Route(f"{self.mount}/start", handlers.confirm, methods=["GET"]),
            Route(f"{self.mount}/start", handlers.start, methods=["POST"]),
            Route(f"{self.mount}/callback", handlers.callback, methods=[callback_method]),
            Route(f"{self.mount}/done", handlers.done, methods=["GET"]),
        ]

    async def check_credentials(self, http: httpx.AsyncClient) -> str | None:
        """For ``agenthost doctor``: the authority's discovery document and signing keys.

        The client credential is not checked: the provider takes it only with a user's
        authorization code, so the first sign-in is what proves it.
        """
        client = self._http_client if self._http_client is not None else http
        where = codec.entra_discovery_url(self.authority)
        response = await client.get(where, headers={"accept": "application/json"})
        if response.status_code != 200:
            raise ConfigurationError(
                f"authority {self.authority} has no OpenID discovery document (HTTP "
                f"{response.status_code}); check the tenant id or domain in authority"
            )
        try:
            metadata = codec.parse_discovery(response.json())
            keys = await client.get(metadata.jwks_uri, headers={"accept": "application/json"})
            jwks = codec.parse_jwks(keys.json() if keys.status_code == 200 else None)
        except (ValueError, codec.ProviderDocumentError) as error:
            raise ConfigurationError(
                f"authority {self.authority} does not answer as an OpenID provider ({error})"
            ) from None
        count = len(jwks["keys"])
        return (
            f"provider {metadata.issuer}: discovery and {count} signing "
            f"key{'' if count == 1 else 's'}; client_credential is checked by the first sign-in"
        )

    async def startup(self, host: HostServices) -> None:
        if not callable(getattr(host, "link_verified_claims", None)):
            raise ConfigurationError(
                f"channel {self.name!r} links through Host.link_verified_claims(identity, "
                "claims, *, source), which this host does not have: use an agenthost whose "
                "Host links verified claims, or remove the channel"
            )
        self._host = host
        self._provider = OidcProvider(
            authority=self.authority,
            client_id=self.client_id,
            client_credential=self._client_credential,
            scopes=self.scopes,
            validate_authority=self._validate_authority,
            http=self._http,
            clock=host.now,
        )

    async def shutdown(self) -> None:
        self._provider = None

    # --- what the host's /link command calls ------------------------------------------

    async def begin(self, identity: ChannelIdentity) -> LinkChallenge:
        """The ``IdentityLinker`` seam: a fresh ticket for ``identity``, as instructions
        with the start URL (the host shows them in the user's direct chat only)."""
        ticket, expires_at = await self._issue_ticket(identity)
        url = self.start_url(ticket)
        minutes = max(1, round(self.ticket_ttl_seconds / 60))
        return LinkChallenge(
            challenge_id=f"oidc_{codec.record_key(ticket)[:32]}",
            linker=self.name,
            instructions=(
                f"To link this account, open {url} and sign in with {self.provider_label}. "
                f"The link works once, for {minutes} minute{'s' if minutes != 1 else ''}."
            ),
            expires_at=expires_at,
            url=url,
        )

    async def create_ticket(self, identity: ChannelIdentity) -> str:
        """A single-use ticket to link ``identity`` (valid ``ticket_ttl_seconds``).

        Hand the user :meth:`start_url` of it, in a direct message only.
        """
        ticket, _ = await self._issue_ticket(identity)
        return ticket

    def start_url(self, ticket: str, *, return_to: str | None = None) -> str:
        """The absolute URL the user opens to link (``return_to``: a path of this site)."""
        query = codec.start_query(ticket, codec.check_return_to(return_to))
        return f"{self._public_base}/start?{query}"

    # --- used by the handlers ---------------------------------------------------------

    async def _issue_ticket(self, identity: ChannelIdentity) -> tuple[str, float]:
        if identity.channel == self.name:
            raise ValueError("the link channel cannot link its own identities")
        host = self._records_host()
        ticket = secrets.token_urlsafe(32)
        now = host.now()
        expires_at = now + self.ticket_ttl_seconds
        await host.store.put_channel_records(
            [
                ChannelRecord(
                    channel=self.name,
                    kind=TICKET_KIND,
                    key=codec.record_key(ticket),
                    value=codec.Ticket.for_identity(identity).to_value(),
                    created_at=now,
                    expires_at=expires_at,
                )
            ]
        )
        return ticket, expires_at

    def _records_host(self) -> HostServices | LinkingServices:
        """Who keeps the records: the host serving the routes, or the host that took this
        channel as its linker (``Host`` binds linkers when it is built)."""
        if self._host is not None:
            return self._host
        if self._linking_host is not None:
            return self._linking_host
        return self._require_host()

    def _require_host(self) -> HostServices:
        if self._host is None:
            raise ConfigurationError(
                f"channel {self.name!r} is not part of a host yet: pass it to Host(channels=...)"
            )
        return self._host

    def _http(self) -> httpx.AsyncClient:
        return self._http_client if self._http_client is not None else self._require_host().http

    def _done_url(self, return_to: str | None) -> str:
        url = f"{self._public_base}/done"
        return f"{url}?return_to={quote(return_to, safe='')}" if return_to else url


class _Handlers:
    def __init__(self, channel: OidcLinkChannel) -> None:
        self._channel = channel

    async def confirm(self, request: Request) -> Response:
        """``GET start``: show what will be linked; change nothing."""
        channel = self._channel
        params = _query(request)
        if params is None:
            return self._refuse(codec.BAD_REQUEST)
        try:
            return_to = codec.check_return_to(params.get("return_to"))
        except codec.ReturnToRejected:
            return self._refuse(codec.RETURN_TO_INVALID)
        ticket_secret = params.get("ticket")
        record = await self._peek(TICKET_KIND, ticket_secret)
        if record is None or self._expired(record):
            return self._refuse(codec.TICKET_INVALID)
        try:
            ticket = codec.Ticket.from_value(record.value)
            metadata = await self._provider().metadata()
        except codec.RecordUnreadable:
            return self._refuse(codec.TICKET_INVALID)
        except (ProviderUnavailable, codec.ProviderDocumentError) as error:
            return self._provider_down(error)
        assert ticket_secret is not None
        page = codec.confirm_page(
            ticket=ticket_secret,
            return_to=return_to,
            display_name=ticket.display_name,
            channel=ticket.channel,
            provider_label=channel.provider_label,
            action=f"{channel._public_base}/start",
        )
        return HTMLResponse(
            page, headers=codec.page_headers(form_targets=[metadata.authorization_origin])
        )

    async def start(self, request: Request) -> Response:
        """``POST start``: spend the ticket, store the flow, send the browser to sign in."""
        channel = self._channel
        if not self._from_our_page(request):
            return self._refuse(codec.CROSS_SITE)
        form = await _form(request)
        if form is None:
            return self._refuse(codec.BAD_REQUEST)
        try:
            return_to = codec.check_return_to(form.get("return_to"))
        except codec.ReturnToRejected:
            return self._refuse(codec.RETURN_TO_INVALID)
        ticket_secret = form.get("ticket")
        if not codec.is_well_formed_secret(ticket_secret):
            return self._refuse(codec.TICKET_INVALID)

        state = secrets.token_urlsafe(32)
        binding = request.cookies.get(channel._cookie_name)
        if not codec.is_well_formed_secret(binding):
            binding = secrets.token_urlsafe(32)
        assert binding is not None
        try:
            # Ask MSAL first: if the provider is down the ticket is not spent.
            msal_flow = await self._provider().begin(
                redirect_uri=channel.redirect_uri,
                state=state,
                response_mode=channel.response_mode,
            )
        except (ProviderUnavailable, codec.ProviderDocumentError) as error:
            return self._provider_down(error)

        record = await self._spend(TICKET_KIND, ticket_secret)
        if record is None or self._expired(record):
            return self._refuse(codec.TICKET_INVALID)
        try:
            ticket = codec.Ticket.from_value(record.value)
        except codec.RecordUnreadable:
            return self._refuse(codec.TICKET_INVALID)
        flow = codec.PendingFlow(
            ticket=ticket,
            return_to=return_to,
            binding_hash=codec.record_key(binding),
            msal_flow=msal_flow,
        )
        host = channel._require_host()
        now = host.now()
        await host.store.put_channel_records(
            [
                ChannelRecord(
                    channel=channel.name,
                    kind=FLOW_KIND,
                    key=codec.record_key(state),
                    value=flow.to_value(),
                    created_at=now,
                    expires_at=now + channel.flow_ttl_seconds,
                )
            ]
        )
        log.info("link flow started", extra={"channel": channel.name, "for": ticket.channel})
        response = RedirectResponse(msal_flow["auth_uri"], status_code=303)
        _no_store(response)
        self._set_binding(response, binding)
        return response

    async def callback(self, request: Request) -> Response:
        """The provider's redirect back: spend the flow, redeem the code, verify, link."""
        channel = self._channel
        params = await _form(request) if request.method == "POST" else _query(request)
        if params is None:
            return self._refuse(codec.BAD_REQUEST)
        state = params.get("state")
        record = await self._spend(FLOW_KIND, state)
        if record is None:
            return self._refuse(codec.STATE_INVALID)
        if self._expired(record):
            return self._refuse(codec.FLOW_EXPIRED)
        try:
            flow = codec.PendingFlow.from_value(record.value)
            expected_nonce = flow.expected_nonce
        except codec.RecordUnreadable:
            return self._refuse(codec.STATE_INVALID)
        if not codec.binding_matches(request.cookies.get(channel._cookie_name), flow.binding_hash):
            return self._refuse(codec.BROWSER_MISMATCH)
        if "error" in params:
            return self._refuse(codec.SIGN_IN_FAILED)
        code = params.get("code")
        if not code or len(code) > 4096:
            return self._refuse(codec.BAD_REQUEST)
        assert state is not None

        try:
            provider = self._provider()
            id_token = await provider.redeem(flow.msal_flow, {"state": state, "code": code})
            claims = await self._verify(provider, id_token, expected_nonce)
        except codec.IdTokenRejected as rejected:
            log.warning(
                "id token rejected",
                extra={
                    "channel": channel.name,
                    "reason": rejected.reason.value,
                    "detail": rejected.detail,
                },
            )
            return self._refuse(codec.id_token_failure(rejected.reason))
        except TokenExchangeFailed as failed:
            log.warning(
                "token exchange failed", extra={"channel": channel.name, "error": failed.error}
            )
            return self._refuse(codec.TOKEN_EXCHANGE_FAILED)
        except (ProviderUnavailable, codec.ProviderDocumentError) as error:
            return self._provider_down(error)

        try:
            result = await channel._require_host().link_verified_claims(
                flow.ticket.identity, claims.link_claims(), source=channel.claims_source
            )
        except Exception:
            log.exception("linking verified claims failed", extra={"channel": channel.name})
            return self._refuse(codec.LINK_FAILED)
        # A LinkResult says whether the identity is now linked; a refusal (the link
        # policy, claims held by two users) keeps its reason for the logs only.
        if not result.linked:
            log.warning(
                "link refused by the host",
                extra={"channel": channel.name, "reason": str(result.reason)},
            )
            return self._refuse(codec.LINK_REFUSED)
        log.info(
            "identity linked by verified claims",
            extra={"channel": channel.name, "for": flow.ticket.channel},
        )
        response = RedirectResponse(channel._done_url(flow.return_to), status_code=303)
        _no_store(response)
        return response

    async def done(self, request: Request) -> Response:
        params = _query(request)
        if params is None:
            return self._refuse(codec.BAD_REQUEST)
        try:
            return_to = codec.check_return_to(params.get("return_to"))
        except codec.ReturnToRejected:
            return self._refuse(codec.RETURN_TO_INVALID)
        return HTMLResponse(codec.done_page(return_to=return_to), headers=codec.page_headers())

    # --- steps --------------------------------------------------------------------------

    async def _verify(
        self, provider: OidcProvider, id_token: str, expected_nonce: str
    ) -> codec.VerifiedClaims:
        channel = self._channel
        metadata = await provider.metadata()

        def validate(jwks: Mapping[str, Any]) -> codec.VerifiedClaims:
            return codec.validate_id_token(
                id_token,
                jwks=jwks,
                issuer=metadata.issuer,
                audience=channel.client_id,
                nonce=expected_nonce,
                now=channel._require_host().now(),
                leeway=channel.clock_skew_seconds,
                algorithms=channel.algorithms,
                allowed_tenants=channel.allowed_tenants,
            )

        try:
            return validate(await provider.jwks())
        except codec.IdTokenRejected as rejected:
            if rejected.reason is not codec.IdTokenReason.UNKNOWN_KEY:
                raise
        # Providers rotate keys: a kid we have not seen may be new.
        return validate(await provider.jwks(refresh=True))

    async def _peek(self, kind: str, secret: str | None) -> ChannelRecord | None:
        if not codec.is_well_formed_secret(secret):
            return None
        assert secret is not None
        host = self._channel._require_host()
        return await host.store.get_channel_record(
            self._channel.name, kind, codec.record_key(secret)
        )

    async def _spend(self, kind: str, secret: str | None) -> ChannelRecord | None:
        """Read and delete the record of ``secret``; ``None`` unless this call deleted it.

        Deleting is the claim: of two requests racing with one secret (two replicas, a
        replayed callback), only one deletes the record, and only that one goes on.
        Keys are 64 hex digits, so the key as a prefix matches that record alone.
        """
        record = await self._peek(kind, secret)
        if record is None:
            return None
        host = self._channel._require_host()
        deleted = await host.store.delete_channel_records(
            self._channel.name, kind, prefix=record.key
        )
        return record if deleted == 1 else None

    def _expired(self, record: ChannelRecord) -> bool:
        now = self._channel._require_host().now()
        return record.expires_at is not None and record.expires_at <= now

    def _from_our_page(self, request: Request) -> bool:
        """Browsers send ``Origin`` (and ``Sec-Fetch-Site``) on every POST; a form posted
        from another site carries that site's origin. Clients sending neither are not
        browsers, and gain nothing a ticket holder does not already have."""
        origin = request.headers.get("origin")
        if origin is not None and origin != self._channel._origin:
            return False
        site = request.headers.get("sec-fetch-site")
        return site is None or site == "same-origin"

    def _provider(self) -> OidcProvider:
        provider = self._channel._provider
        if provider is None:
            raise ProviderUnavailable("the host is not running")
        return provider

    def _set_binding(self, response: Response, binding: str) -> None:
        channel = self._channel
        form_post = channel.response_mode == "form_post"
        response.set_cookie(
            channel._cookie_name,
            binding,
            max_age=int(channel.flow_ttl_seconds),
            path=channel._cookie_path,
            # form_post comes back as a cross-site POST, which carries only SameSite=None
            # cookies (and browsers take those only when Secure).
            secure=form_post or urlsplit(channel.redirect_uri).scheme == "https",
            httponly=True,
            samesite="none" if form_post else "lax",
        )

    def _refuse(self, failure: codec.Failure) -> Response:
        log.warning(
            "link ceremony refused", extra={"channel": self._channel.name, "reason": failure.code}
        )
        return HTMLResponse(
            codec.failure_page(failure), status_code=failure.status, headers=codec.page_headers()
        )

    def _provider_down(self, error: Exception) -> Response:
        log.warning(
            "identity provider unavailable",
            extra={"channel": self._channel.name, "detail": str(error)},
        )
        return self._refuse(codec.PROVIDER_UNAVAILABLE)


def _query(request: Request) -> dict[str, str] | None:
    try:
        return codec.parse_form(request.scope.get("query_string", b""))
    except codec.FormRejected:
        return None


async def _form(request: Request) -> dict[str, str] | None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    try:
        body = await read_limited(request, codec.MAX_FORM_BYTES)
    except (BodyRefused, ClientGone):
        return None
    try:
        return codec.parse_form(body)
    except codec.FormRejected:
        return None


def _no_store(response: Response) -> None:
    response.headers["cache-control"] = "no-store"
    response.headers["referrer-policy"] = "no-referrer"


# --- configuration checks (raised at construction, naming the fix) ---------------------


def _check_mount(mount: str) -> None:
    if not mount.startswith("/") or mount.endswith("/") or "//" in mount:
        raise ConfigurationError(f"mount must start with '/' and not end with one, not {mount!r}")


def _check_authority(authority: str) -> None:
    parts = urlsplit(authority)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or not parts.path.strip("/")
        or parts.query
        or parts.fragment
    ):
        raise ConfigurationError(
            f"authority must be an https URL naming a tenant, such as "
            f"https://login.microsoftonline.com/<tenant-id>, not {authority!r}"
        )


def _check_redirect_uri(redirect_uri: str, mount: str) -> None:
    parts = urlsplit(redirect_uri)
    secure = parts.scheme == "https" or (
        parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
    )
    if not secure or not parts.hostname or parts.username or parts.password:
        raise ConfigurationError(
            f"redirect_uri must be an absolute https URL (http only on localhost), "
            f"not {redirect_uri!r}"
        )
    if parts.query or parts.fragment or not parts.path.endswith(f"{mount}/callback"):
        raise ConfigurationError(
            f"redirect_uri must end with {mount}/callback (the channel's callback route, "
            f"as registered with the provider) and carry no query, not {redirect_uri!r}"
        )
