"""A fake Telegram Bot API: a real HTTP server (Starlette, served on 127.0.0.1) for tests.

It implements the methods the channel uses with the answers the Bot API documents
(core.telegram.org/bots/api), and records every call for assertions:

- ``getMe``, ``setWebhook``/``deleteWebhook`` (the secret token is kept and sent back on
  webhook deliveries, like Telegram), ``getUpdates`` (a long poll honouring ``timeout``;
  ``offset`` confirms earlier updates; a second concurrent poller gets 409, and so does
  polling while a webhook is set), ``sendMessage``/``editMessageText`` (the text is parsed
  like Telegram parses it: bad MarkdownV2 or HTML is 400 "can't parse entities", an empty
  or over-long text is 400), ``sendMessageDraft`` (private chats only), ``sendChatAction``,
  ``setMyCommands`` (validated), ``answerCallbackQuery``, ``getFile`` and the file download
  route ``/file/bot<token>/<path>``;
- knobs for the documented failures: :meth:`rate_limit` (429 with
  ``parameters.retry_after``), :attr:`blocked` (403 "bot was blocked by the user"),
  :attr:`migrations` (400 with ``parameters.migrate_to_chat_id``),
  :attr:`reject_formatting` (the next formatted messages, not drafts, are refused as
  unparseable), :attr:`missing_chats` (400 "chat not found") and :attr:`server_errors`
  (the next calls are answered 502); :meth:`fail_sends` (after some more sends succeed,
  the next ``sendMessage`` calls are answered 502) and :meth:`stall_sends` (after some
  more sends, the next ``sendMessage`` is taken, as Telegram would, but never answered:
  a request in flight when its sender stops);
- updates reach the bot by webhook (:meth:`deliver`, with the registered secret, another
  one, or none) or through ``getUpdates`` (:meth:`enqueue`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.channels.telegram import telegram_markup

_COMMAND = re.compile(r"^[a-z0-9_]{1,32}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
REGISTERED = "registered"  # deliver(..., secret=REGISTERED): the secret setWebhook gave


@attrs.define
class Call:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic()
    status: int = 200


@attrs.define
class SentMessage:
    chat_id: int
    message_id: int
    text: str  # as shown (after entity parsing)
    raw: str  # as sent
    parse_mode: str | None
    entities: list[telegram_markup.Entity]
    thread_id: int | None = None
    reply_to: int | None = None
    edits: int = 0


@attrs.define
class RateLimit:
    method: str
    chat_id: int | None
    times: int
    retry_after: int


class ApiError(Exception):
    def __init__(self, status: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


class FakeBotApi:
    def __init__(self, token: str, *, username: str = "agenthost_test_bot") -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.username = username
        self.calls: list[Call] = []
        self.messages: list[SentMessage] = []
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        self.allowed_updates: list[str] | None = None
        self.commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        self.files: dict[str, tuple[str, bytes]] = {}
        # failure knobs
        self.blocked: set[int] = set()
        self.migrations: dict[int, int] = {}
        self.reject_formatting = 0
        self.missing_chats: set[int] = set()
        self.server_errors = 0
        self._rate_limits: list[RateLimit] = []
        self._failing_sends: tuple[int, int] | None = None  # (sends to let through, to fail)
        self._stalling_after: int | None = None
        self.stalled = anyio.Event()  # a stalled send arrived
        self.unstall = anyio.Event()  # set it to let a stalled send answer (late)
        # getUpdates
        self._queue: list[dict[str, Any]] = []
        self._queued = anyio.Event()
        self._polling = False
        self._next_update_id = 500_000_000
        self._next_message_id: dict[int, int] = {}
        self._changed = anyio.Event()
        self.app = Starlette(
            routes=[
                Route("/readiness", self._readiness, methods=["GET"]),
                Route("/bot{token}/{method}", self._method, methods=["GET", "POST"]),
                Route("/file/bot{token}/{path:path}", self._download, methods=["GET"]),
            ]
        )

    # --- test controls -------------------------------------------------------------------

    def next_update_id(self) -> int:
        self._next_update_id += 1
        return self._next_update_id

    def rate_limit(
        self, method: str, *, chat_id: int | None = None, times: int = 1, retry_after: int = 1
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (to ``chat_id``) with 429."""
        self._rate_limits.append(RateLimit(method, chat_id, times, retry_after))

    def fail_sends(self, *, after: int, times: int) -> None:
        """Let ``after`` more ``sendMessage`` calls through, then answer ``times`` with 502."""
        self._failing_sends = (after, times)

    def stall_sends(self, *, after: int) -> None:
        """Let ``after`` more ``sendMessage`` calls through; take the next and never answer."""
        self._stalling_after = after

    def add_file(self, file_id: str, file_path: str, content: bytes) -> None:
        self.files[file_id] = (file_path, content)

    def enqueue(self, update: Mapping[str, Any]) -> None:
        """Queue an update for ``getUpdates``."""
        self._queue.append(dict(update))
        self._queued.set()
        self._queued = anyio.Event()

    async def deliver(
        self, update: Mapping[str, Any], *, secret: str | None = REGISTERED
    ) -> httpx.Response:
        """POST an update to the registered webhook, as Telegram does."""
        assert self.webhook_url, "no webhook is registered"
        headers = {}
        token = self.webhook_secret if secret == REGISTERED else secret
        if token is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = token
        async with httpx.AsyncClient(timeout=10.0) as client:
            return await client.post(self.webhook_url, json=dict(update), headers=headers)

    def called(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def sent_to(self, chat_id: int) -> list[SentMessage]:
        return [message for message in self.messages if message.chat_id == chat_id]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``condition()`` holds, re-checked after every call the fake answers."""
        with anyio.fail_after(timeout):
            while not condition():
                await self._changed.wait()

    async def settle(self, quiet: float = 0.3, timeout: float = 10.0) -> None:
        """Until no call has arrived for ``quiet`` seconds (to assert that nothing more comes)."""
        with anyio.fail_after(timeout):
            while True:
                count = len(self.calls)
                await anyio.sleep(quiet)
                if len(self.calls) == count:
                    return

    # --- HTTP --------------------------------------------------------------------------

    async def _readiness(self, request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    async def _method(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.path_params["method"]
        params: dict[str, Any] = dict(request.query_params)
        if request.method == "POST":
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                body = await request.json()
                params.update(body if isinstance(body, dict) else {})
            else:
                params.update(dict(await request.form()))
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        self._notify()  # a waiter may look for a call that is still being answered
        handler = getattr(self, f"_do_{method}", None)
        try:
            if handler is None:
                raise ApiError(404, "Not Found")
            if self.server_errors > 0:
                self.server_errors -= 1
                raise ApiError(502, "Bad Gateway")
            self._check_rate_limit(method, params)
            result = await handler(params)
        except ApiError as error:
            call.status = error.status
            self._notify()
            return _error(error.status, error.description, error.parameters)
        self._notify()
        return JSONResponse({"ok": True, "result": result})

    async def _download(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        path = request.path_params["path"]
        for file_path, content in self.files.values():
            if file_path == path:
                return Response(content, media_type="application/octet-stream")
        return _error(404, "Not Found")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _check_rate_limit(self, method: str, params: Mapping[str, Any]) -> None:
        for rule in self._rate_limits:
            if rule.times > 0 and rule.method == method:
                if rule.chat_id is not None and params.get("chat_id") != rule.chat_id:
                    continue
                rule.times -= 1
                raise ApiError(
                    429,
                    f"Too Many Requests: retry after {rule.retry_after}",
                    retry_after=rule.retry_after,
                )

    # --- methods -----------------------------------------------------------------------

    async def _do_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Agenthost Test",
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _do_setWebhook(self, params: dict[str, Any]) -> bool:
        url = params.get("url", "")
        if url and not re.match(r"^https?://", url):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET.match(secret):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        self.webhook_url = url
        self.webhook_secret = secret
        self.allowed_updates = params.get("allowed_updates")
        if params.get("drop_pending_updates"):
            self._queue.clear()
        return True

    async def _do_deleteWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook_url = ""
        self.webhook_secret = None
        if params.get("drop_pending_updates"):
            self._queue.clear()
        return True

    async def _do_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook_url:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use "
                "deleteWebhook to delete the webhook first",
            )
        if self._polling:
            raise ApiError(
                409,
                "Conflict: terminated by other getUpdates request; make sure that only one "
                "bot instance is running",
            )
        offset = int(params.get("offset") or 0)
        if offset > 0:
            self._queue = [u for u in self._queue if u["update_id"] >= offset]
        if params.get("allowed_updates") is not None:
            self.allowed_updates = params["allowed_updates"]
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        self._polling = True
        try:
            with anyio.move_on_after(timeout):
                while not self._pending():
                    await self._queued.wait()
        finally:
            self._polling = False
        return self._pending()[:limit]

    def _pending(self) -> list[dict[str, Any]]:
        allowed = self.allowed_updates
        if not allowed:
            return list(self._queue)
        return [u for u in self._queue if any(kind in u for kind in allowed)]

    async def _do_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._failing_sends is not None:
            through, failing = self._failing_sends
            if through > 0:
                self._failing_sends = (through - 1, failing)
            elif failing > 0:
                self._failing_sends = (0, failing - 1)
                raise ApiError(502, "Bad Gateway")
        stall = self._stalling_after == 0
        if self._stalling_after is not None:
            self._stalling_after -= 1
        chat_id = self._chat(params)
        text, entities = self._parse_text(params, allow_empty=False)
        reply = params.get("reply_parameters") or {}
        message = SentMessage(
            chat_id=chat_id,
            message_id=self._new_message_id(chat_id),
            text=text,
            raw=params["text"],
            parse_mode=params.get("parse_mode"),
            entities=entities,
            thread_id=params.get("message_thread_id"),
            reply_to=reply.get("message_id") if isinstance(reply, dict) else None,
        )
        self.messages.append(message)
        if stall:
            self.stalled.set()
            with anyio.move_on_after(60):  # the sender is stopped long before this
                await self.unstall.wait()
        return self._message_json(message)

    async def _do_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat(params)
        message_id = params.get("message_id")
        found = next(
            (m for m in self.messages if m.chat_id == chat_id and m.message_id == message_id),
            None,
        )
        if found is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        text, entities = self._parse_text(params, allow_empty=False)
        if text == found.text and entities == found.entities:
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup of "
                "the message",
            )
        found.text, found.raw, found.entities = text, params["text"], entities
        found.parse_mode = params.get("parse_mode")
        found.edits += 1
        return self._message_json(found)

    async def _do_sendMessageDraft(self, params: dict[str, Any]) -> bool:
        chat_id = self._chat(params)
        if chat_id < 0:
            raise ApiError(400, "Bad Request: drafts can be sent only to private chats")
        if not params.get("draft_id"):
            raise ApiError(400, "Bad Request: draft_id must be non-zero")
        self._parse_text(params, allow_empty=True, draft=True)
        return True

    async def _do_sendChatAction(self, params: dict[str, Any]) -> bool:
        self._chat(params)
        if params.get("action") not in ("typing", "upload_photo", "upload_document"):
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    async def _do_setMyCommands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise ApiError(400, "Bad Request: too many commands")
        for command in commands:
            if not _COMMAND.match(str(command.get("command", ""))):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise ApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        scope = params.get("scope") or {"type": "default"}
        self.commands[(scope["type"], params.get("language_code") or "")] = commands
        return True

    async def _do_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        if not params.get("callback_query_id"):
            raise ApiError(400, "Bad Request: query is too old and response timeout expired")
        return True

    async def _do_getFile(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = params.get("file_id")
        if file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        path, content = self.files[file_id]
        return {
            "file_id": file_id,
            "file_unique_id": f"u{abs(hash(file_id)) % 10**8}",
            "file_size": len(content),
            "file_path": path,
        }

    # --- checks shared by the sending methods ----------------------------------------------

    def _chat(self, params: Mapping[str, Any]) -> int:
        chat_id = params.get("chat_id")
        if isinstance(chat_id, str) and re.fullmatch(r"-?\d+", chat_id):
            chat_id = int(chat_id)
        if not isinstance(chat_id, int):
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self.migrations:
            raise ApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=self.migrations[chat_id],
            )
        if chat_id in self.missing_chats:
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat_id

    def _parse_text(
        self, params: Mapping[str, Any], *, allow_empty: bool, draft: bool = False
    ) -> tuple[str, list[telegram_markup.Entity]]:
        raw = params.get("text")
        if not isinstance(raw, str):
            if allow_empty:
                return "", []
            raise ApiError(400, "Bad Request: message text is empty")
        parse_mode = params.get("parse_mode")
        if parse_mode and self.reject_formatting > 0 and not draft:
            self.reject_formatting -= 1
            raise ApiError(
                400,
                "Bad Request: can't parse entities: Can't find end of the entity starting "
                "at byte offset 0",
            )
        try:
            text, entities = telegram_markup.parse(raw, parse_mode)
        except telegram_markup.ParseError as error:
            raise ApiError(400, str(error)) from None
        shown = text.strip()
        if not shown and not allow_empty:
            raise ApiError(400, "Bad Request: message text is empty")
        if telegram_markup.utf16_length(shown) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        return shown, entities

    def _new_message_id(self, chat_id: int) -> int:
        self._next_message_id[chat_id] = self._next_message_id.get(chat_id, 1000) + 1
        return self._next_message_id[chat_id]

    def _message_json(self, message: SentMessage) -> dict[str, Any]:
        chat_type = "private" if message.chat_id > 0 else "supergroup"
        body: dict[str, Any] = {
            "message_id": message.message_id,
            "from": {
                "id": self.bot_id,
                "is_bot": True,
                "first_name": "Agenthost Test",
                "username": self.username,
            },
            "chat": {"id": message.chat_id, "type": chat_type},
            "date": int(time.time()),
            "text": message.text,
        }
        if message.thread_id is not None:
            body["message_thread_id"] = message.thread_id
        return body


def _error(status: int, description: str, parameters: Mapping[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = dict(parameters)
    return JSONResponse(body, status_code=status)
