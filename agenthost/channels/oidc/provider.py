"""Talking to the OpenID provider: discovery, the JWKS, and MSAL's authorization-code flow.

MSAL builds the authorization request (PKCE S256, ``state``, ``nonce``, Entra's extra
parameters) and redeems the code; it no longer validates ID tokens, so this module hands
the raw ``id_token`` back and the codec validates it.

MSAL is synchronous and would bring its own ``requests`` session. Here every MSAL call
runs in a worker thread (``anyio.to_thread``), and MSAL's HTTP goes through
:class:`_HttpxForMsal`, which hands each request back to the event loop's
``httpx.AsyncClient``. So all of the channel's HTTP (discovery, JWKS, token endpoint) goes
through one httpx client, with its TLS settings and timeouts, under asyncio and trio alike.

This module owns no routes and no records; it must not decide anything about links.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx
import msal

from agenthost.channels.oidc import codec

log = logging.getLogger("agenthost.channels.oidc")

HttpClientSource = Callable[[], httpx.AsyncClient]


class ProviderUnavailable(Exception):
    """The provider cannot be reached or answered nonsense (retry later; not the user's fault)."""


class TokenExchangeFailed(Exception):
    """The token endpoint refused the code (``error`` is the OAuth error code, for logs)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class OidcProvider:
    """One provider, loaded lazily on first use and then kept for the host's lifetime.

    Create it inside the running host (it holds an anyio lock); nothing here touches the
    network until the first flow needs it, so a provider outage at boot does not stop the
    host serving its other channels.
    """

    def __init__(
        self,
        *,
        authority: str,
        client_id: str,
        client_credential: str | Mapping[str, Any],
        scopes: Sequence[str],
        validate_authority: bool,
        http: HttpClientSource,
        clock: Callable[[], float],
        jwks_max_age_seconds: float = 24 * 3600.0,
        jwks_min_refresh_seconds: float = 60.0,
    ) -> None:
        self._authority = authority
        self._client_id = client_id
        self._client_credential = client_credential
        self._scopes = list(scopes)
        self._validate_authority = validate_authority
        self._http = http
        self._clock = clock
        self._jwks_max_age = jwks_max_age_seconds
        self._jwks_min_refresh = jwks_min_refresh_seconds
        self._lock = anyio.Lock()
        self._metadata: codec.ProviderMetadata | None = None
        self._app: Any = None
        self._jwks: dict[str, Any] | None = None
        self._jwks_fetched_at = float("-inf")

    async def metadata(self) -> codec.ProviderMetadata:
        """The discovery document's endpoints (fetched once; MSAL set up alongside)."""
        if self._metadata is None:
            async with self._lock:
                if self._metadata is None:
                    metadata = codec.parse_discovery(
                        await self._get_json(codec.entra_discovery_url(self._authority))
                    )
                    self._app = await self._in_thread(self._build_msal_app)
                    self._metadata = metadata
        return self._metadata

    async def begin(self, *, redirect_uri: str, state: str, response_mode: str) -> dict[str, Any]:
        """A new MSAL auth-code flow: the dict to store whole, with its ``auth_uri``."""
        metadata = await self.metadata()
        flow = await self._in_thread(
            partial(
                self._app.initiate_auth_code_flow,
                self._scopes,
                redirect_uri=redirect_uri,
                state=state,
                response_mode=response_mode,
            )
        )
        # Never send a browser anywhere but the discovered authorization endpoint.
        if (
            not isinstance(flow, dict)
            or flow.get("state") != state
            or not isinstance(flow.get("auth_uri"), str)
            or not codec.is_authorization_request(flow["auth_uri"], metadata)
        ):
            raise ProviderUnavailable("MSAL built an unexpected authorization request")
        return flow

    async def redeem(self, flow: Mapping[str, Any], auth_response: Mapping[str, str]) -> str:
        """Exchange the code (with the flow's PKCE verifier); return the raw ``id_token``.

        Raises :class:`TokenExchangeFailed`, :class:`ProviderUnavailable`, or
        ``codec.IdTokenRejected(NONCE_MISMATCH)`` when MSAL's own nonce check refuses.
        """
        await self.metadata()
        call = partial(self._app.acquire_token_by_auth_code_flow, dict(flow), dict(auth_response))
        try:
            result = await self._in_thread(call)
        except (httpx.HTTPError, msal.exceptions.MsalServiceError) as error:
            raise ProviderUnavailable(f"token endpoint: {type(error).__name__}") from None
        except RuntimeError as error:
            # MSAL compares the ID token's nonce before handing the token back; that is
            # the only RuntimeError this call raises for a flow that carries no max_age.
            if "nonce" in str(error):
                raise codec.IdTokenRejected(
                    codec.IdTokenReason.NONCE_MISMATCH, "MSAL's nonce check refused the token"
                ) from None
            raise TokenExchangeFailed(type(error).__name__) from None
        except (ValueError, LookupError, TypeError) as error:
            # A token response MSAL cannot read (not JSON, an unreadable id_token).
            raise TokenExchangeFailed(type(error).__name__) from None
        if not isinstance(result, dict):
            raise TokenExchangeFailed("no_result")
        if "error" in result:
            raise TokenExchangeFailed(str(result["error"])[:64])
        id_token = result.get("id_token")
        if not isinstance(id_token, str):
            raise TokenExchangeFailed("no_id_token")
        return id_token

    async def jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        """The provider's signing keys: cached, refetched when old, or when ``refresh``
        (a token named a key we do not have: keys rotate) unless fetched a moment ago."""
        metadata = await self.metadata()
        async with self._lock:
            age = self._clock() - self._jwks_fetched_at
            stale = self._jwks is None or age >= self._jwks_max_age
            if stale or (refresh and age >= self._jwks_min_refresh):
                self._jwks = codec.parse_jwks(await self._get_json(metadata.jwks_uri))
                self._jwks_fetched_at = self._clock()
            assert self._jwks is not None
            return self._jwks

    # --- plumbing ---------------------------------------------------------------------

    async def _get_json(self, url: str) -> Any:
        try:
            response = await self._http().get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as error:
            raise ProviderUnavailable(f"GET {url}: {type(error).__name__}") from None
        if response.status_code != 200:
            raise ProviderUnavailable(f"GET {url}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise ProviderUnavailable(f"GET {url}: not JSON") from None

    def _build_msal_app(self) -> Any:
        try:
            return msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=self._client_credential,
                authority=self._authority,
                validate_authority=self._validate_authority,
                http_client=_HttpxForMsal(self._http),
                token_cache=_DiscardingTokenCache(),
                # The ceremony needs one ID token, once: never ask for a refresh token.
                exclude_scopes=["offline_access"],
            )
        except (httpx.HTTPError, msal.exceptions.MsalServiceError, ValueError) as error:
            raise ProviderUnavailable(f"MSAL set-up: {type(error).__name__}") from None

    @staticmethod
    async def _in_thread(call: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(call)


class _DiscardingTokenCache(msal.TokenCache):  # type: ignore[misc]  # msal is untyped
    """Keeps nothing: tokens never sit in this process's memory after the callback."""

    def add(self, event: Any, **kwargs: Any) -> None:
        return None


class _HttpxForMsal:
    """MSAL's ``http_client`` seam (sync ``get``/``post`` answering ``status_code``,
    ``text``, ``headers``), served by an ``httpx.AsyncClient`` on the event loop.

    Only usable from a worker thread started by ``anyio.to_thread`` (where MSAL runs).
    """

    def __init__(self, http: HttpClientSource) -> None:
        self._http = http

    def get(
        self, url: str, params: Any = None, headers: Mapping[str, Any] | None = None, **_: Any
    ) -> httpx.Response:
        return self._request("GET", url, params=params, headers=headers)

    def post(
        self,
        url: str,
        params: Any = None,
        data: Any = None,
        headers: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> httpx.Response:
        return self._request("POST", url, params=params, data=data, headers=headers)

    def close(self) -> None:
        """The client belongs to whoever made it (the host); MSAL does not close it."""

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Any,
        headers: Mapping[str, Any] | None,
        data: Any = None,
    ) -> httpx.Response:
        clean_headers = {k: str(v) for k, v in (headers or {}).items() if v is not None}
        request = partial(
            self._http().request,
            method,
            url,
            params=params,
            data=data,
            headers=clean_headers,
        )
        response: httpx.Response = anyio.from_thread.run(request)
        return response
