"""The Discord REST API over the host's ``httpx.AsyncClient``: errors and rate limits.

What this module owns:

- **Calls**: the bot's own (``Authorization: Bot <token>``: the command menu, DM channels,
  channel messages, the application itself) and the interaction webhook's (the
  interaction token in the path, no bot token: ``@original`` edits and follow-ups).
- **Errors, classified** (:func:`classify`), by whether the same call could ever succeed:
  429 is :class:`RateLimited` with ``retry_after`` (from the body, else ``Retry-After``)
  and whether the limit is global; an interaction token that expired or was never
  acknowledged (401 code 50027, 404 codes 10015/10062 on a webhook route) is
  :class:`TokenExpired`; 401 elsewhere is :class:`Unauthorized` (a wrong bot token); 403
  is :class:`Forbidden` (the user closed their DMs, the bot may not post there); 404 is
  :class:`NotFound`; any other 4xx :class:`BadRequest`; 5xx and network failures are
  :class:`Unavailable`. Only the last and :class:`RateLimited` are worth retrying.
- **Rate limits**, from Discord's headers: each route learns its bucket
  (``X-RateLimit-Bucket``), each bucket its ``Remaining`` and ``Reset-After``; a 429 marked
  global (``X-RateLimit-Global`` or ``"global": true``) pauses every bot call. A call to an
  exhausted bucket waits until it resets when the caller can wait (an interaction reply),
  or raises :class:`RateLimited` without calling when it cannot (a delivery, which the
  outbox reschedules): a request that would be refused still counts towards Discord's
  invalid-request ban. Interaction webhooks are outside the global limit, so a global
  pause does not hold them. Buckets are bounded in number.
- **Secrets stay out of logs**: the interaction token is part of webhook URLs, which the
  ``httpx`` logger prints; a filter on that logger redacts it. Errors name the route
  template, never the URL.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import httpx

log = logging.getLogger("agenthost.channels.discord")

DEFAULT_API_BASE_URL = "https://discord.com/api/v10"
USER_AGENT = "DiscordBot (https://github.com/agenthost/agenthost, 0.1)"

_INVALID_WEBHOOK_TOKEN = 50027
_UNKNOWN_WEBHOOK = 10015
_UNKNOWN_INTERACTION = 10062


# --- errors ----------------------------------------------------------------------------


class DiscordError(Exception):
    """A call failed. The message names the route and Discord's code, never the URL."""

    permanent = True

    def __init__(self, route: str, status: int | None, code: int | None, message: str) -> None:
        shown = " ".join(str(p) for p in (status, f"code {code}" if code else None) if p)
        super().__init__(f"{route}: {shown} {message}".strip())
        self.route = route
        self.status = status
        self.code = code


class Unavailable(DiscordError):
    permanent = False


class RateLimited(DiscordError):
    permanent = False

    def __init__(self, route: str, retry_after: float, *, is_global: bool, scope: str) -> None:
        super().__init__(route, 429, None, f"rate limited ({scope}); retry after {retry_after}s")
        self.retry_after = retry_after
        self.is_global = is_global


class TokenExpired(DiscordError):
    """The interaction token no longer works (15 minutes passed, or it was never acked)."""


class Unauthorized(DiscordError):
    """401 on a bot call: the bot token is wrong."""


class Forbidden(DiscordError):
    """403: the user does not accept DMs from the bot, or the bot may not post there."""


class NotFound(DiscordError):
    """404: the channel, user or message is gone."""


class BadRequest(DiscordError):
    """Another 4xx: this call can never succeed as it is."""


def classify(
    route: str, status: int, body: Any, headers: Mapping[str, str], *, webhook: bool
) -> DiscordError:
    data = body if isinstance(body, Mapping) else {}
    code = data.get("code") if isinstance(data.get("code"), int) else None
    message = str(data.get("message") or f"HTTP {status}")[:200]
    if status == 429:
        retry_after = _seconds(data.get("retry_after"))
        if retry_after is None:
            retry_after = _seconds(headers.get("retry-after"))
        is_global = data.get("global") is True or headers.get("x-ratelimit-global") == "true"
        scope = headers.get("x-ratelimit-scope") or ("global" if is_global else "user")
        return RateLimited(
            route, retry_after if retry_after is not None else 1.0, is_global=is_global, scope=scope
        )
    if webhook and (
        (status == 401 and code in (_INVALID_WEBHOOK_TOKEN, None))
        or (status == 404 and code in (_UNKNOWN_WEBHOOK, _UNKNOWN_INTERACTION))
    ):
        return TokenExpired(route, status, code, message)
    if status == 401:
        return Unauthorized(route, status, code, message)
    if status == 403:
        return Forbidden(route, status, code, message)
    if status == 404:
        return NotFound(route, status, code, message)
    if status >= 500:
        return Unavailable(route, status, code, message)
    return BadRequest(route, status, code, message)


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return max(seconds, 0.0) if seconds == seconds else None  # NaN is not a delay


# --- rate limits ---------------------------------------------------------------------------


class RateLimits:
    """What Discord's headers said about each route's bucket, and a global pause."""

    _MAX_BUCKETS = 10_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._bucket_of: dict[str, str] = {}  # route key -> bucket hash
        self._exhausted_until: dict[str, float] = {}  # bucket (or route key) -> reset time
        self._global_until = 0.0

    def delay(self, route_key: str, *, webhook: bool) -> float:
        """How long a call on ``route_key`` should wait before it is sent."""
        now = self._clock()
        bucket = self._bucket_of.get(route_key, route_key)
        wait = self._exhausted_until.get(bucket, 0.0) - now
        if not webhook:
            wait = max(wait, self._global_until - now)
        return max(wait, 0.0)

    def observe(self, route_key: str, headers: Mapping[str, str]) -> None:
        """Learn from a response's ``X-RateLimit-*`` headers."""
        bucket = headers.get("x-ratelimit-bucket")
        if bucket:
            if len(self._bucket_of) >= self._MAX_BUCKETS:
                self._forget_stale()
            self._bucket_of[route_key] = bucket
        key = self._bucket_of.get(route_key, route_key)
        remaining = headers.get("x-ratelimit-remaining")
        reset_after = _seconds(headers.get("x-ratelimit-reset-after"))
        if remaining == "0" and reset_after is not None:
            if len(self._exhausted_until) >= self._MAX_BUCKETS:
                self._forget_stale()
            self._exhausted_until[key] = self._clock() + reset_after
        elif remaining is not None:
            self._exhausted_until.pop(key, None)

    def limited(self, route_key: str, error: RateLimited) -> None:
        until = self._clock() + error.retry_after
        if error.is_global:
            self._global_until = max(self._global_until, until)
        else:
            if len(self._exhausted_until) >= self._MAX_BUCKETS:
                self._forget_stale()
            key = self._bucket_of.get(route_key, route_key)
            self._exhausted_until[key] = max(self._exhausted_until.get(key, 0.0), until)

    def _forget_stale(self) -> None:
        now = self._clock()
        self._exhausted_until = {k: t for k, t in self._exhausted_until.items() if t > now}
        live = set(self._exhausted_until)
        self._bucket_of = {r: b for r, b in self._bucket_of.items() if b in live}


# --- logging ---------------------------------------------------------------------------------

_WEBHOOK_TOKEN_IN_URL = re.compile(r"(/webhooks/[0-9]+/)[^/\s?\"']+")
_INTERACTION_TOKEN_IN_URL = re.compile(r"(/interactions/[0-9]+/)[^/\s?\"']+")


class RedactInteractionTokens(logging.Filter):
    """Replaces interaction tokens in the URLs the HTTP client logs."""

    def _clean(self, value: Any) -> Any:
        text = str(value)
        if "/webhooks/" not in text and "/interactions/" not in text:
            return value
        text = _WEBHOOK_TOKEN_IN_URL.sub(r"\1<redacted>", text)
        return _INTERACTION_TOKEN_IN_URL.sub(r"\1<redacted>", text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: self._clean(value) for key, value in record.args.items()}
        return True


_REDACTION = RedactInteractionTokens()


def redact_interaction_tokens_in_http_logs() -> None:
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).addFilter(_REDACTION)  # adding it again is a no-op


# --- the client ------------------------------------------------------------------------------


class DiscordApi:
    """REST calls for one application and its bot over ``http``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        bot_token: str,
        *,
        application_id: str,
        base_url: str = DEFAULT_API_BASE_URL,
        clock: Callable[[], float],
        max_attempts: int = 4,
        max_wait: float = 30.0,
        timeout: float = 15.0,
    ) -> None:
        self._http = http
        self._auth = {"authorization": f"Bot {bot_token}", "user-agent": USER_AGENT}
        self._plain = {"user-agent": USER_AGENT}
        self.application_id = application_id
        self._base = base_url.rstrip("/")
        self._limits = RateLimits(clock)
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self._timeout = timeout
        redact_interaction_tokens_in_http_logs()

    async def call(
        self,
        method: str,
        path: str,
        *,
        route: str,
        route_key: str,
        body: Any = None,
        webhook: bool = False,
        wait: bool = True,
        idempotent: bool = False,
    ) -> Any:
        """Send one request; answer its JSON (``None`` for 204).

        ``route`` names the call in errors and logs; ``route_key`` is what its rate-limit
        bucket is learned under. With ``wait`` a rate limit is waited out (up to
        ``max_wait`` seconds, a bounded number of times); without it, raised at once.
        A failed connection is retried; a 5xx or a lost answer only when ``idempotent``
        (an edit), since a message sent twice would show twice.
        """
        for attempt in range(1, self._max_attempts + 1):
            delay = self._limits.delay(route_key, webhook=webhook)
            if delay > 0:
                if not wait or delay > self._max_wait:
                    raise RateLimited(route, delay, is_global=False, scope="bucket")
                await anyio.sleep(delay)
            try:
                return await self._send(method, path, route, route_key, body, webhook)
            except RateLimited as limited:
                self._limits.limited(route_key, limited)
                log.warning(
                    "discord rate limit",
                    extra={
                        "route": route,
                        "retry_after": limited.retry_after,
                        "global": limited.is_global,
                    },
                )
                if (
                    not wait
                    or attempt == self._max_attempts
                    or limited.retry_after > self._max_wait
                ):
                    raise
            except Unavailable as unavailable:
                # Only a request that never reached Discord is safe to repeat blindly.
                never_sent = isinstance(
                    unavailable.__cause__, httpx.ConnectError | httpx.ConnectTimeout
                )
                if attempt == self._max_attempts or not (never_sent or idempotent):
                    raise
                await anyio.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self, method: str, path: str, route: str, route_key: str, body: Any, webhook: bool
    ) -> Any:
        try:
            response = await self._http.request(
                method,
                f"{self._base}{path}",
                json=body,
                headers=self._plain if webhook else self._auth,
                timeout=self._timeout,
            )
        except httpx.HTTPError as error:
            raise Unavailable(route, None, None, type(error).__name__) from error
        self._limits.observe(route_key, response.headers)
        if response.status_code == 204:
            return None
        try:
            data = response.json()
        except ValueError:
            data = None
        if 200 <= response.status_code < 300:
            return data
        raise classify(route, response.status_code, data, response.headers, webhook=webhook)

    # --- the bot's calls ---------------------------------------------------------------------

    async def overwrite_commands(
        self, commands: Sequence[Mapping[str, Any]], *, guild_id: str | None = None
    ) -> list[Any]:
        app = self.application_id
        if guild_id is None:
            path, route = f"/applications/{app}/commands", "PUT /applications/{app}/commands"
        else:
            path = f"/applications/{app}/guilds/{guild_id}/commands"
            route = "PUT /applications/{app}/guilds/{guild}/commands"
        result = await self.call(
            "PUT", path, route=route, route_key=path, body=list(commands), idempotent=True
        )
        return result if isinstance(result, list) else []

    async def current_application(self) -> Mapping[str, Any]:
        """The application the bot token belongs to (``GET /applications/@me``: its
        ``id``, ``name``, ``verify_key`` and ``bot`` user). Read-only."""
        route = "GET /applications/@me"
        result = await self.call(
            "GET", "/applications/@me", route=route, route_key=route, idempotent=True
        )
        return result if isinstance(result, Mapping) else {}

    async def open_dm(self, user_id: str, *, wait: bool = True) -> str:
        """The id of the bot's DM channel with ``user_id`` (Discord answers the existing one)."""
        route = "POST /users/@me/channels"
        result = await self.call(
            "POST",
            "/users/@me/channels",
            route=route,
            route_key=route,
            body={"recipient_id": user_id},
            wait=wait,
        )
        channel_id = result.get("id") if isinstance(result, Mapping) else None
        if not isinstance(channel_id, str):
            raise BadRequest(route, None, None, "no channel id in the answer")
        return channel_id

    async def create_message(
        self, channel_id: str, body: Mapping[str, Any], *, wait: bool = True
    ) -> Mapping[str, Any]:
        path = f"/channels/{channel_id}/messages"
        result = await self.call(
            "POST",
            path,
            route="POST /channels/{channel}/messages",
            route_key=path,
            body=dict(body),
            wait=wait,
        )
        return result if isinstance(result, Mapping) else {}

    # --- the interaction webhook's calls -------------------------------------------------------

    def _webhook(self, token: str) -> tuple[str, str]:
        digest = hashlib.sha256(token.encode()).hexdigest()[:24]
        return f"/webhooks/{self.application_id}/{token}", f"webhook:{digest}"

    def edit_would_wait(self, token: str) -> bool:
        """Whether an ``@original`` edit would have to wait for its rate-limit bucket."""
        _, key = self._webhook(token)
        return self._limits.delay(f"{key}:original", webhook=True) > 0

    async def edit_original(self, token: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        path, key = self._webhook(token)
        result = await self.call(
            "PATCH",
            f"{path}/messages/@original",
            route="PATCH /webhooks/{app}/{token}/messages/@original",
            route_key=f"{key}:original",
            body=dict(body),
            webhook=True,
            idempotent=True,
        )
        return result if isinstance(result, Mapping) else {}

    async def create_followup(self, token: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        path, key = self._webhook(token)
        result = await self.call(
            "POST",
            path,
            route="POST /webhooks/{app}/{token}",
            route_key=f"{key}:followup",
            body=dict(body),
            webhook=True,
        )
        return result if isinstance(result, Mapping) else {}
