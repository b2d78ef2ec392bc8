"""The Telegram Bot API client: every call goes through the host's ``httpx.AsyncClient``.

Using the host's client (anyio underneath) instead of python-telegram-bot's ``Bot`` keeps
the channel runnable under trio as well as asyncio; python-telegram-bot still supplies the
types and constants.

What this module owns:

- **Errors, classified** (:func:`classify`): a 429 is :class:`RateLimited` with its
  ``retry_after``; a group upgraded to a supergroup is :class:`ChatMigrated` with the new
  chat id; 403 (the user blocked the bot, or never started it) is :class:`Forbidden`; 400
  is :class:`BadRequest` (:class:`FormattingRejected` when the parse mode could not be
  parsed); 409 is :class:`Conflict` (another poller, or a webhook is set); network errors
  and 5xx are :class:`Unavailable`. ``permanent`` says whether the same call could ever
  succeed, which is what a delivery needs to know.
- **Pacing**: a global token bucket (~30 messages/s) and one per chat (about one message a
  second in a private chat, twenty a minute in a group, short bursts allowed). A send
  reserves a token from both and sleeps once for as long as the later one needs: there is
  no polling loop. A 429 pauses the chat's bucket for ``retry_after`` and the call is
  retried (a bounded number of times); a migration is followed, remembered for later
  sends to the old id, and retried.
- **The token stays secret**: it is in every request URL, so it must not reach a log. The
  client installs a filter that redacts it from the ``httpx``/``httpcore`` loggers, and
  its own errors name the method, never the URL.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import attrs
import httpx

log = logging.getLogger("agenthost.channels.telegram")

DEFAULT_API_BASE_URL = "https://api.telegram.org"


# --- errors ----------------------------------------------------------------------------


class TelegramError(Exception):
    """A Bot API call failed. Its message names the method and Telegram's description."""

    permanent = True

    def __init__(self, method: str, code: int | None, description: str) -> None:
        status = "" if code is None else f"{code} "
        super().__init__(f"{method}: {status}{description}")
        self.method = method
        self.code = code
        self.description = description


class Unavailable(TelegramError):
    """The network failed or Telegram answered 5xx: worth retrying later."""

    permanent = False


class RateLimited(TelegramError):
    permanent = False

    def __init__(self, method: str, description: str, retry_after: float) -> None:
        super().__init__(method, 429, description)
        self.retry_after = retry_after


class ChatMigrated(TelegramError):
    def __init__(self, method: str, description: str, new_chat_id: int) -> None:
        super().__init__(method, 400, description)
        self.new_chat_id = new_chat_id


class BadRequest(TelegramError):
    """400: this call can never succeed as it is."""


class FormattingRejected(BadRequest):
    """400 "can't parse entities": the text is fine, its formatting is not."""


class NotModified(BadRequest):
    """400 "message is not modified": an edit to the text the message already has."""


class Forbidden(TelegramError):
    """403: the user blocked the bot, left, or never started it."""


class Unauthorized(TelegramError):
    """401/404: the token is wrong (a configuration error)."""


class Conflict(TelegramError):
    """409: another ``getUpdates`` poller is running, or a webhook is set."""

    permanent = False


def classify(method: str, status: int, body: Any) -> TelegramError:
    """The error for a failed call, from its HTTP status and Bot API body."""
    data = body if isinstance(body, Mapping) else {}
    code = data.get("error_code", status)
    code = code if isinstance(code, int) else status
    description = str(data.get("description") or f"HTTP {status}")[:300]
    parameters = data.get("parameters") if isinstance(data.get("parameters"), Mapping) else {}
    assert isinstance(parameters, Mapping)
    retry_after = parameters.get("retry_after")
    migrate_to = parameters.get("migrate_to_chat_id")
    if code == 429 or isinstance(retry_after, int | float):
        seconds = float(retry_after) if isinstance(retry_after, int | float) else 1.0
        return RateLimited(method, description, max(seconds, 0.0))
    if isinstance(migrate_to, int):
        return ChatMigrated(method, description, migrate_to)
    lowered = description.lower()
    if code == 400 and "can't parse entities" in lowered:
        return FormattingRejected(method, code, description)
    if code == 400 and "message is not modified" in lowered:
        return NotModified(method, code, description)
    if code == 400:
        return BadRequest(method, code, description)
    if code == 403:
        return Forbidden(method, code, description)
    if code in (401, 404):
        return Unauthorized(method, code, description)
    if code == 409:
        return Conflict(method, code, description)
    if code >= 500 or status >= 500:
        return Unavailable(method, code, description)
    return TelegramError(method, code, description)


# --- pacing ------------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a reservation may go into debt and says how
    long its holder must wait, so waiters queue in order without polling."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()
        self._paused_until = 0.0

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + max(now - self._stamp, 0.0) * self._rate)
        self._stamp = now
        return now

    def delay(self) -> float:
        """How long a reservation made now would wait (without making it)."""
        now = self._refill()
        debt = max(0.0, (1.0 - self._tokens) / self._rate)
        return max(debt, self._paused_until - now)

    def reserve(self) -> float:
        now = self._refill()
        self._tokens -= 1.0
        return max(max(0.0, -self._tokens / self._rate), self._paused_until - now)

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @property
    def idle(self) -> bool:
        self._refill()
        return self._tokens >= self._burst and self._paused_until <= self._stamp


@attrs.frozen
class Pacing:
    """Send rates (Telegram's documented limits by default; protocols §3)."""

    global_per_second: float = 30.0
    global_burst: float = 30.0
    private_per_second: float = 1.0
    private_burst: float = 3.0
    group_per_minute: float = 20.0
    group_burst: float = 3.0

    def __attrs_post_init__(self) -> None:
        for name in attrs.fields_dict(type(self)):
            if not getattr(self, name) > 0:
                raise ValueError(f"Pacing.{name} must be greater than 0")


class Pacer:
    """The global bucket and one bucket per chat (private chats have positive ids)."""

    _MAX_CHATS = 10_000

    def __init__(self, pacing: Pacing, clock: Callable[[], float]) -> None:
        self._pacing = pacing
        self._clock = clock
        self._global = TokenBucket(pacing.global_per_second, pacing.global_burst, clock)
        self._chats: dict[int, TokenBucket] = {}

    def _chat(self, chat_id: int) -> TokenBucket:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            if len(self._chats) >= self._MAX_CHATS:
                self._chats = {key: b for key, b in self._chats.items() if not b.idle}
            pacing = self._pacing
            if chat_id > 0:
                bucket = TokenBucket(pacing.private_per_second, pacing.private_burst, self._clock)
            else:
                rate = pacing.group_per_minute / 60.0
                bucket = TokenBucket(rate, pacing.group_burst, self._clock)
            self._chats[chat_id] = bucket
        return bucket

    async def acquire(self, chat_id: int | None) -> None:
        wait = self._global.reserve()
        if chat_id is not None:
            wait = max(wait, self._chat(chat_id).reserve())
        if wait > 0:
            await anyio.sleep(wait)

    def try_acquire(self, chat_id: int | None) -> bool:
        """Take a token only if none of the buckets would make the caller wait."""
        if self._global.delay() > 0:
            return False
        if chat_id is not None and self._chat(chat_id).delay() > 0:
            return False
        self._global.reserve()
        if chat_id is not None:
            self._chat(chat_id).reserve()
        return True

    def pause(self, chat_id: int | None, seconds: float) -> None:
        (self._chat(chat_id) if chat_id is not None else self._global).pause(seconds)


# --- logging ---------------------------------------------------------------------------


class RedactSecrets(logging.Filter):
    """Replaces secrets in records of the loggers it is attached to (httpx logs URLs)."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def add(self, secret: str) -> None:
        if secret and secret not in self._secrets:
            self._secrets.append(secret)

    def _clean(self, value: Any) -> Any:
        text = str(value)
        if any(secret in text for secret in self._secrets):
            for secret in self._secrets:
                text = text.replace(secret, "<redacted>")
            return text
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: self._clean(value) for key, value in record.args.items()}
        return True


_HTTP_LOGGERS = ("httpx", "httpcore")
# One filter for the process, never removed: a request still in flight while the host shuts
# down logs its URL too, and redacting a token that is no longer used costs nothing.
_REDACTION = RedactSecrets()


def redact_in_http_logs(secret: str) -> None:
    """Keep ``secret`` out of the HTTP client's log records from now on."""
    _REDACTION.add(secret)
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).addFilter(_REDACTION)  # adding it again is a no-op


# --- the client ------------------------------------------------------------------------


class BotApi:
    """Bot API calls for one bot token over ``http``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        token: str,
        *,
        base_url: str = DEFAULT_API_BASE_URL,
        clock: Callable[[], float],
        pacing: Pacing | None = None,
        max_attempts: int = 4,
        max_retry_after: float = 60.0,
        timeout: float = 30.0,
    ) -> None:
        self._http = http
        self._token = token
        self._base = base_url.rstrip("/")
        self._pacer = Pacer(pacing or Pacing(), clock)
        self._max_attempts = max_attempts
        self._max_retry_after = max_retry_after
        self._timeout = timeout
        self._migrated: dict[int, int] = {}
        #: awaited with ``(old, new)`` when a send finds a chat migrated (to persist it)
        self.on_migrated: Callable[[int, int], Awaitable[None]] | None = None
        redact_in_http_logs(token)

    @property
    def pacer(self) -> Pacer:
        return self._pacer

    def chat_id(self, chat_id: int) -> int:
        """The chat's current id (a group upgraded to a supergroup has a new one)."""
        return self._migrated.get(chat_id, chat_id)

    def remember_migration(self, old: int, new: int) -> None:
        """Send what is addressed to ``old`` to ``new`` from now on."""
        self._migrated[old] = new

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        paced: bool = False,
        http_timeout: float | None = None,
        wait_out_rate_limits: bool = True,
    ) -> Any:
        """Call ``method``; 429s and migrations are handled here, other errors raised.

        Without ``wait_out_rate_limits`` a 429 is raised at once (after pausing the chat's
        pacing), for callers that retry later themselves (the delivery worker)."""
        body = {key: value for key, value in (params or {}).items() if value is not None}
        chat = body.get("chat_id")
        chat = self.chat_id(chat) if isinstance(chat, int) else None
        if chat is not None:
            body["chat_id"] = chat
        for attempt in range(1, self._max_attempts + 1):
            if paced:
                await self._pacer.acquire(chat)
            try:
                return await self._post(method, body, http_timeout)
            except RateLimited as limited:
                if not wait_out_rate_limits:
                    if paced:
                        self._pacer.pause(chat, limited.retry_after)
                    raise
                if attempt == self._max_attempts or limited.retry_after > self._max_retry_after:
                    raise
                log.warning(
                    "telegram rate limit: waiting",
                    extra={"method": method, "retry_after": limited.retry_after, "chat_id": chat},
                )
                if paced:
                    self._pacer.pause(chat, limited.retry_after)
                else:
                    await anyio.sleep(limited.retry_after)
            except ChatMigrated as moved:
                if chat is None or attempt == self._max_attempts:
                    raise
                log.info(
                    "telegram chat migrated",
                    extra={"chat_id": chat, "new_chat_id": moved.new_chat_id},
                )
                self._migrated[chat] = moved.new_chat_id
                if self.on_migrated is not None:
                    await self.on_migrated(chat, moved.new_chat_id)
                chat = body["chat_id"] = moved.new_chat_id
            except Unavailable as unavailable:
                # Only a request that never reached Telegram is safe to repeat blindly.
                if attempt == self._max_attempts or not isinstance(
                    unavailable.__cause__, httpx.ConnectError | httpx.ConnectTimeout
                ):
                    raise
                await anyio.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, method: str, body: Mapping[str, Any], http_timeout: float | None) -> Any:
        url = f"{self._base}/bot{self._token}/{method}"
        try:
            response = await self._http.post(
                url, json=body, timeout=http_timeout if http_timeout is not None else self._timeout
            )
        except httpx.HTTPError as error:
            raise Unavailable(method, None, type(error).__name__) from error
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 200 and isinstance(data, Mapping) and data.get("ok") is True:
            return data.get("result")
        raise classify(method, response.status_code, data)

    # --- methods ---------------------------------------------------------------------

    async def get_me(self) -> Mapping[str, Any]:
        result = await self.call("getMe")
        if not isinstance(result, Mapping):
            raise TelegramError("getMe", None, "unexpected answer")
        return result

    async def set_webhook(
        self,
        url: str,
        *,
        secret_token: str,
        allowed_updates: Sequence[str],
        max_connections: int | None = None,
        drop_pending_updates: bool = False,
    ) -> None:
        await self.call(
            "setWebhook",
            {
                "url": url,
                "secret_token": secret_token,
                "allowed_updates": list(allowed_updates),
                "max_connections": max_connections,
                "drop_pending_updates": drop_pending_updates or None,
            },
        )

    async def delete_webhook(self, *, drop_pending_updates: bool = False) -> None:
        await self.call("deleteWebhook", {"drop_pending_updates": drop_pending_updates or None})

    async def get_updates(
        self,
        *,
        offset: int | None,
        poll_seconds: int,
        allowed_updates: Sequence[str],
        limit: int = 100,
    ) -> list[Mapping[str, Any]]:
        result = await self.call(
            "getUpdates",
            {
                "offset": offset,
                "timeout": poll_seconds,
                "limit": limit,
                "allowed_updates": list(allowed_updates),
            },
            http_timeout=poll_seconds + 15.0,
        )
        if not isinstance(result, list):
            raise TelegramError("getUpdates", None, "unexpected answer")
        return [update for update in result if isinstance(update, Mapping)]

    async def send_message(
        self,
        chat_id: int,
        text: str,
        *,
        parse_mode: str | None = None,
        thread_id: int | None = None,
        reply_to: int | None = None,
        silent: bool = False,
        wait_out_rate_limits: bool = True,
    ) -> Mapping[str, Any]:
        reply = (
            {"message_id": reply_to, "allow_sending_without_reply": True}
            if reply_to is not None
            else None
        )
        result = await self.call(
            "sendMessage",
            {
                "chat_id": chat_id,
                "text": text,
                "parse_mode": parse_mode,
                "message_thread_id": thread_id,
                "reply_parameters": reply,
                "link_preview_options": {"is_disabled": True},
                "disable_notification": True if silent else None,
            },
            paced=True,
            wait_out_rate_limits=wait_out_rate_limits,
        )
        return result if isinstance(result, Mapping) else {}

    async def edit_message_text(
        self, chat_id: int, message_id: int, text: str, *, parse_mode: str | None = None
    ) -> None:
        await self.call(
            "editMessageText",
            {
                "chat_id": chat_id,
                "message_id": message_id,
                "text": text,
                "parse_mode": parse_mode,
                "link_preview_options": {"is_disabled": True},
            },
            paced=True,
        )

    async def send_message_draft(
        self,
        chat_id: int,
        draft_id: int,
        text: str,
        *,
        parse_mode: str | None = None,
        thread_id: int | None = None,
        wait_out_rate_limits: bool = True,
    ) -> None:
        await self.call(
            "sendMessageDraft",
            {
                "chat_id": chat_id,
                "draft_id": draft_id,
                "text": text,
                "parse_mode": parse_mode,
                "message_thread_id": thread_id,
            },
            wait_out_rate_limits=wait_out_rate_limits,
        )

    async def send_chat_action(
        self, chat_id: int, action: str, *, thread_id: int | None = None
    ) -> None:
        await self.call(
            "sendChatAction",
            {"chat_id": chat_id, "action": action, "message_thread_id": thread_id},
        )

    async def set_my_commands(
        self,
        commands: Sequence[Mapping[str, str]],
        *,
        scope: Mapping[str, Any] | None = None,
        language_code: str | None = None,
    ) -> None:
        await self.call(
            "setMyCommands",
            {"commands": list(commands), "scope": scope, "language_code": language_code},
        )

    async def answer_callback_query(self, callback_query_id: str) -> None:
        await self.call("answerCallbackQuery", {"callback_query_id": callback_query_id})

    async def get_file(self, file_id: str) -> Mapping[str, Any]:
        result = await self.call("getFile", {"file_id": file_id})
        if not isinstance(result, Mapping):
            raise TelegramError("getFile", None, "unexpected answer")
        return result

    async def open_file(self, file_path: str) -> httpx.Response:
        """Start downloading a file (a streamed response: the caller closes it)."""
        url = f"{self._base}/file/bot{self._token}/{file_path.lstrip('/')}"
        try:
            request = self._http.build_request("GET", url, timeout=self._timeout)
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as error:
            raise Unavailable("file download", None, type(error).__name__) from error
        if response.status_code != 200:
            await response.aclose()
            raise classify("file download", response.status_code, None)
        return response
