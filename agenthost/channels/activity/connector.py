"""The Bot Connector REST API over the host's HTTP client, and where the bot may call it.

Rules:

1. The bot token goes only to a service URL the allowlist admits (``ServiceUrls``): by
   default https on the Bot Framework's and Teams' own hosts. A service URL arrives in
   activities, so it is checked again at every send, not only when it was stored.
2. ``send`` posts to ``/v3/conversations/{id}/activities``, ``reply`` to
   ``…/activities/{activityId}``; the conversation and activity ids are path-escaped.
   The answer's ``id`` (the new activity) is returned.
3. Failures are :class:`ConnectorError` with a class for the caller: 429, 412, 502, 503,
   504, other 5xx and network errors are transient (429 with its ``Retry-After``); 403
   (the bot was removed, or the user blocked it) and 404 (the conversation is gone) are
   permanent, as are the other 4xx (413: too large). A 401 drops the cached token, so the
   next attempt fetches a new one, and is transient.
4. A file the user sent is fetched with the bot token only from an allowed host; other
   URLs (Teams' pre-authenticated download links) are fetched without it.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from agenthost.channels.activity.credentials import BotTokens, TokenUnavailable

log = logging.getLogger("agenthost.channels.activity")

DEFAULT_SERVICE_URLS = (
    "https://smba.trafficmanager.net",
    "https://*.botframework.com",
    "https://*.botframework.us",
    "https://*.botframework.azure.us",
    "https://*.teams.microsoft.com",
    "https://*.teams.microsoft.us",
    "https://*.infra.gov.teams.microsoft.us",
)
_TRANSIENT = frozenset({408, 412, 429, 500, 502, 503, 504})
_PERMANENT_REASONS = {
    403: "the bot may not post here (removed from the conversation, or blocked)",
    404: "the conversation is gone",
    413: "the message is too large",
}


class ServiceUrls:
    """Which service URLs may receive the bot's token (rule 1).

    A pattern is ``scheme://host[:port]`` where the host may start with ``*.`` (any
    subdomain, not the domain itself). Paths are not compared: Teams' service URLs carry a
    region path (``/amer/``).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._exact: set[tuple[str, str, int | None]] = set()
        self._suffixes: list[tuple[str, str, int | None]] = []
        for pattern in patterns:
            parts = urlsplit(pattern)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError(f"{pattern!r} is not scheme://host[:port]")
            host = parts.hostname.lower()
            entry = (parts.scheme, host, parts.port)
            if host.startswith("*."):
                self._suffixes.append((parts.scheme, host[1:], parts.port))
            else:
                self._exact.add(entry)

    def allows(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        host = (parts.hostname or "").lower()
        if not host or parts.username or parts.password:
            return False
        if (parts.scheme, host, port) in self._exact:
            return True
        return any(
            parts.scheme == scheme and host.endswith(suffix) and port == want_port
            for scheme, suffix, want_port in self._suffixes
        )


class ConnectorError(Exception):
    def __init__(
        self,
        reason: str,
        *,
        status: int | None,
        permanent: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.permanent = permanent
        self.retry_after = retry_after


class Connector:
    """Calls to the Bot Connector service as this bot (rules 2 and 3)."""

    def __init__(self, http: httpx.AsyncClient, tokens: BotTokens, service_urls: ServiceUrls):
        self._http = http
        self._tokens = tokens
        self.service_urls = service_urls

    async def send(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None:
        path = f"v3/conversations/{quote(conversation_id, safe='')}/activities"
        return await self._post(service_url, path, activity)

    async def reply(
        self,
        service_url: str,
        conversation_id: str,
        reply_to_id: str,
        activity: Mapping[str, Any],
    ) -> str | None:
        path = (
            f"v3/conversations/{quote(conversation_id, safe='')}"
            f"/activities/{quote(reply_to_id, safe='')}"
        )
        return await self._post(service_url, path, activity)

    async def _post(self, service_url: str, path: str, activity: Mapping[str, Any]) -> str | None:
        if not self.service_urls.allows(service_url):
            raise ConnectorError("service URL not allowed", status=None, permanent=True)
        try:
            token = await self._tokens.token()
        except TokenUnavailable as error:
            raise ConnectorError(f"no token ({error.code})", status=None, permanent=False) from None
        url = f"{service_url.rstrip('/')}/{path}"
        try:
            response = await self._http.post(
                url, json=dict(activity), headers={"authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as error:
            raise ConnectorError(
                f"connector unreachable ({type(error).__name__})", status=None, permanent=False
            ) from None
        if response.status_code < 300:
            try:
                body = response.json()
            except ValueError:
                return None
            found = body.get("id") if isinstance(body, Mapping) else None
            return found if isinstance(found, str) else None
        raise self._failure(response)

    def _failure(self, response: httpx.Response) -> ConnectorError:
        status = response.status_code
        code = _error_code(response)
        reason = f"HTTP {status}" + (f" {code}" if code else "")
        if status == 401:
            self._tokens.forget()
            return ConnectorError(reason + ": token refused", status=status, permanent=False)
        if status == 429:
            return ConnectorError(
                reason + ": rate limited",
                status=status,
                permanent=False,
                retry_after=_retry_after(response.headers.get("retry-after")),
            )
        if status in _TRANSIENT or status >= 500:
            return ConnectorError(reason, status=status, permanent=False)
        explained = _PERMANENT_REASONS.get(status)
        return ConnectorError(
            reason + (f": {explained}" if explained else ""), status=status, permanent=True
        )

    async def open_file(self, url: str) -> httpx.Response:
        """A streamed GET of a file the user sent (rule 4); the caller closes it."""
        headers: dict[str, str] = {}
        if self.service_urls.allows(url):
            try:
                headers["authorization"] = f"Bearer {await self._tokens.token()}"
            except TokenUnavailable as error:
                raise ConnectorError(
                    f"no token ({error.code})", status=None, permanent=False
                ) from None
        request = self._http.build_request("GET", url, headers=headers)
        try:
            return await self._http.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as error:
            raise ConnectorError(
                f"file unreachable ({type(error).__name__})", status=None, permanent=False
            ) from None


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, Mapping) else None
    code = error.get("code") if isinstance(error, Mapping) else None
    # A code is an identifier (MessageSizeTooBig, ConversationBlocked); keep it short.
    return code[:64] if isinstance(code, str) and code.isascii() else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delta = (when - datetime.datetime.now(tz=when.tzinfo or datetime.UTC)).total_seconds()
    return max(delta, 0.0)
