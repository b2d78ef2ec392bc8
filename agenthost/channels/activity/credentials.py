"""The bot's outbound token: client credentials from Entra, through msal, cached.

Rules:

1. The token is the client-credentials grant of the bot's app registration for
   ``https://api.botframework.com/.default``, from ``{authority_host}/botframework.com``
   (multi-tenant bots) or ``{authority_host}/{tenant_id}`` (single-tenant), with a client
   secret or a certificate (PEM private key and its thumbprint).
2. msal is synchronous, so it runs in a worker thread (``anyio.to_thread``); its HTTP is
   performed by the host's ``httpx`` client, called back on the event loop from that
   thread (``anyio.from_thread``). So all HTTP still goes through one client, and the
   loop never blocks. That works the same under asyncio and trio.
3. The token is kept until five minutes before it expires; concurrent callers share one
   acquisition. msal's own cache sits behind it.
4. A refusal (wrong secret, unknown app) is :class:`TokenUnavailable` carrying Entra's
   error code, never its description or the secret. When no answer came, the code is
   ``entra_unreachable`` (the network) or ``token_request_failed`` (msal itself failed:
   an authority it refuses, a certificate it cannot load).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import attrs
import httpx

log = logging.getLogger("agenthost.channels.activity")

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
MULTI_TENANT = "botframework.com"
BOT_FRAMEWORK_SCOPE = "https://api.botframework.com/.default"
EXPIRY_MARGIN_SECONDS = 300.0


class TokenUnavailable(Exception):
    """No token: Entra refused, or could not be reached (``code`` says which)."""

    def __init__(self, code: str) -> None:
        super().__init__(f"no bot framework token ({code})")
        self.code = code


@attrs.frozen(repr=False)
class Certificate:
    """A certificate credential: the PEM private key and the certificate's SHA-1
    thumbprint (hex), as registered on the app."""

    private_key_pem: str
    thumbprint: str


class _HostHttp:
    """msal's synchronous HTTP interface, performed by the host's async client (rule 2).

    Only callable from a worker thread that anyio started.
    """

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    def get(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        **_: Any,
    ) -> _Response:
        return self._call("GET", url, params=params, headers=headers)

    def post(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        **_: Any,
    ) -> _Response:
        return self._call("POST", url, params=params, data=data, headers=headers)

    def close(self) -> None:
        """The host owns the client."""

    def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Response:
        async def request() -> httpx.Response:
            # msal sends form data as a dict (whose client assertion is bytes, which requests
            # encodes as text and httpx would write as "b'...'"), or as an encoded string.
            body: dict[str, Any]
            if isinstance(data, Mapping):
                body = {"data": {k: _form_value(v) for k, v in data.items()}}
            elif isinstance(data, str | bytes):
                body = {"content": data}
            else:
                body = {}
            return await self._http.request(method, url, params=params, headers=headers, **body)

        response = anyio.from_thread.run(request)
        return _Response(response.status_code, response.text, dict(response.headers))


def _form_value(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@attrs.frozen
class _Response:
    status_code: int
    text: str
    headers: Mapping[str, str]

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise httpx.HTTPStatusError(
                f"HTTP {self.status_code}",
                request=httpx.Request("GET", "https://invalid"),
                response=httpx.Response(self.status_code),
            )


class BotTokens:
    """Tokens for calling the Bot Connector as this bot (rules 1, 3 and 4)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        app_id: str,
        secret: str | None,
        certificate: Certificate | None,
        tenant_id: str | None,
        authority_host: str = DEFAULT_AUTHORITY_HOST,
        scope: str = BOT_FRAMEWORK_SCOPE,
        clock: Any = anyio.current_time,
    ) -> None:
        self._http = _HostHttp(http)
        self._app_id = app_id
        self._credential: Any = (
            secret
            if secret is not None
            else {
                "private_key": certificate.private_key_pem,
                "thumbprint": certificate.thumbprint,
            }
            if certificate is not None
            else None
        )
        self._authority = f"{authority_host.rstrip('/')}/{tenant_id or MULTI_TENANT}"
        self._scope = scope
        self._clock = clock
        self._app: Any = None  # msal's ConfidentialClientApplication, built on first use
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = anyio.Lock()
        self.acquisitions = 0  # tokens actually requested from msal (for tests and metrics)

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._expires_at:
            return self._token
        async with self._lock:
            if self._token is not None and self._clock() < self._expires_at:
                return self._token
            result = await anyio.to_thread.run_sync(self._acquire)
            token = result.get("access_token")
            if not isinstance(token, str) or not token:
                code = result.get("error")
                raise TokenUnavailable(code if isinstance(code, str) else "no_access_token")
            expires_in = result.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float | str) else 3600.0
            self._token = token
            self._expires_at = self._clock() + max(lifetime - EXPIRY_MARGIN_SECONDS, 0.0)
            self.acquisitions += 1
            return token

    def forget(self) -> None:
        """Drop the cached token (the connector refused it)."""
        self._token = None
        self._expires_at = 0.0
        if self._app is not None:
            # msal would hand back the same cached token; a fresh one is wanted.
            self._app = None

    def _acquire(self) -> Mapping[str, Any]:
        """In a worker thread: msal, with its HTTP on the host's client."""
        import msal  # the channel's extra; imported where it is used

        try:
            if self._app is None:
                self._app = msal.ConfidentialClientApplication(
                    self._app_id,
                    client_credential=self._credential,
                    authority=self._authority,
                    http_client=self._http,
                    # Tenant discovery still validates the authority; instance discovery
                    # would call login.microsoftonline.com even for another cloud.
                    instance_discovery=False,
                )
            result: Mapping[str, Any] = self._app.acquire_token_for_client(scopes=[self._scope])
        except Exception as error:
            # msal raises what its HTTP and crypto layers raise (ValueError for a bad
            # authority, RuntimeError, a key it cannot load ...): all mean "no token".
            log.warning(
                "bot framework token not acquired", extra={"error_type": type(error).__name__}
            )
            self._app = None
            unreachable = isinstance(error, httpx.HTTPError)
            raise TokenUnavailable(
                "entra_unreachable" if unreachable else "token_request_failed"
            ) from None
        return result
