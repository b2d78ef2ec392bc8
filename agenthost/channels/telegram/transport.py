"""The Telegram channel: its routes, its start-up, the poller, and the turn per update.

Routes: ``POST {webhook_path}`` (webhook mode) and ``GET {files_path}/{file_id}`` (the
signed file proxy). Start-up: learn the bot's username (``getMe``) unless it was given,
register the command menu (``setMyCommands``), queue what the inbox still holds, then
either ``setWebhook`` with the secret token or ``deleteWebhook`` and start polling.

The webhook checks ``X-Telegram-Bot-Api-Secret-Token`` in constant time before it reads
the body; a wrong or missing secret is answered 401 and nothing is parsed or recorded.
Decisions about identity, sessions and commands are the host's: the channel hands it the
addressed text (``/new@ThisBot`` arrives as ``/new``) and renders what comes back.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import attrs
import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from agenthost.backends.bodies import BodyRefused, ClientGone, read_json_body
from agenthost.backends.channel import INHERIT, Channel, HostServices, Inherit
from agenthost.backends.configuration import choice
from agenthost.backends.election import run_while_elected
from agenthost.backends.host import ConfigurationError
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.channels.telegram import codec, media, pushes
from agenthost.channels.telegram.api import (
    DEFAULT_API_BASE_URL,
    BadRequest,
    BotApi,
    Pacing,
    TelegramError,
    Unauthorized,
)
from agenthost.channels.telegram.codec import Addressing, BotProfile, Inbound
from agenthost.channels.telegram.inbox import Inbox
from agenthost.channels.telegram.rendering import HTML, MARKDOWN_V2
from agenthost.channels.telegram.replies import HandOver, Reply
from agenthost.sansio_core import chat_replies, strict_json
from agenthost.sansio_core.authorization import Allowlist
from agenthost.sansio_core.link_policy import DEFAULT_TIER
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.turns import (
    TurnCompleted,
    TurnOutcome,
)
from agenthost.sansio_core.types import (
    ChannelCommand,
    ContentPart,
    ContinuationToken,
    ConversationScope,
    MultitaskStrategy,
    TextPart,
    UriPart,
)
from agenthost.stores.base import ChannelRecord

log = logging.getLogger("agenthost.channels.telegram")

SECRET_HEADER = "x-telegram-bot-api-secret-token"  # noqa: S105 - a header name
DEFAULT_ALLOWED_UPDATES = ("message", "edited_message", "callback_query")
MIGRATIONS = "chat-migration"  # channel records: key the group's old id, value {"to": new}

# Always fullmatch(): with match(), "$" also accepts a trailing newline.
_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{1,200}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
_COMMAND = re.compile(r"[a-z0-9_]{1,32}")
_USERNAME = re.compile(r"@?[A-Za-z0-9_]{3,64}")
_DIRECT_ONLY_COMMANDS = frozenset({"link", "unlink"})  # challenges never go to groups


class TelegramChannel(Channel):
    """A Telegram bot for the hosted target (``pip install 'agenthost[telegram]'``).

    ``mode="webhook"`` needs ``webhook_url``: the public https URL of this host's
    ``webhook_path``; ``secret_token`` (1-256 of ``A-Z a-z 0-9 _ -``) is generated when not
    given. ``mode="polling"`` long-polls ``getUpdates`` instead (one poller per bot).
    ``addressing`` decides which group messages are for the bot; ``conversation_scope``
    which session a group message belongs to. Files users send reach the target as signed
    URLs on ``public_url`` (default: the webhook URL's origin; without either, files are
    described in text instead). ``api_base_url`` points the channel at another Bot API
    server (a local one, or a test fake). ``commands`` are the application's own commands
    for the menu (they reach the target as text); the host's commands are added.

    The channel can push (``ChannelPush``): a delivery goes to the chat the user was last
    seen in (a forum topic included), rendered like a reply; see ``telegram.pushes``.

    Several replicas of one bot must share ``secret_token`` and ``file_url_key`` (each
    start registers the webhook with its secret, and any replica may serve a file URL);
    leaving them out generates fresh ones per process, which suits a single process only.

    Durability: ``request_timeout`` bounds one Bot API request (it is the channel's
    ``push_timeout_seconds``, which the host's delivery lease must exceed). A reply that
    fails on the wire for a passing reason is handed to the outbox and still arrives. A
    group upgraded to a supergroup keeps its conversation (the mapping is stored). An
    edited message is not answered again unless ``answer_edits=True``.
    """

    def __init__(
        self,
        bot_token: str,
        *,
        mode: Literal["webhook", "polling"] = "webhook",
        webhook_url: str | None = None,
        secret_token: str | None = None,
        bot_username: str | None = None,
        addressing: Addressing | str = Addressing.MENTION_ONLY,
        conversation_scope: ConversationScope | str = ConversationScope.PER_USER_PER_CONVERSATION,
        api_base_url: str = DEFAULT_API_BASE_URL,
        name: str = "telegram",
        parse_mode: str = MARKDOWN_V2,
        public_url: str | None = None,
        webhook_path: str = "/telegram/webhook",
        files_path: str = "/telegram/files",
        file_url_ttl_seconds: float = 600.0,
        file_url_key: bytes | None = None,
        max_file_bytes: int = 20 * 1024 * 1024,
        allowed_updates: Sequence[str] = DEFAULT_ALLOWED_UPDATES,
        poll_timeout: int = 25,
        dedupe_seconds: float = 24 * 3600.0,
        max_concurrent_chats: int = 16,
        stream: bool = True,
        stream_interval: float = 1.0,
        typing_delay: float = 0.5,
        pacing: Pacing | None = None,
        commands: Sequence[ChannelCommand] = (),
        command_languages: Mapping[str, Mapping[str, str]] | None = None,
        register_commands: bool = True,
        drop_pending_updates: bool = False,
        max_connections: int | None = None,
        max_body_bytes: int = 1024 * 1024,
        multitask: MultitaskStrategy | None = None,
        require_link: bool | Inherit = INHERIT,
        allowlist: Allowlist | Inherit | None = INHERIT,
        confidentiality_tier: str = DEFAULT_TIER,
        offers_link_commands: bool = True,
        answer_edits: bool = False,
        request_timeout: float = 30.0,
    ) -> None:
        if not isinstance(bot_token, str) or not _TOKEN.fullmatch(bot_token):
            raise ConfigurationError(
                "bot_token must be the token @BotFather gave (digits, ':', then letters, "
                "digits, '_' or '-')"
            )
        if mode not in ("webhook", "polling"):
            raise ConfigurationError(f"mode must be 'webhook' or 'polling', not {mode!r}")
        if mode == "webhook" and not webhook_url:
            raise ConfigurationError(
                "TelegramChannel(mode='webhook') needs webhook_url=, the public https URL "
                f"Telegram posts updates to (this host's {webhook_path}); or use "
                "mode='polling'"
            )
        if (
            mode == "webhook"
            and webhook_url
            and api_base_url == DEFAULT_API_BASE_URL
            and not webhook_url.startswith("https://")
        ):
            raise ConfigurationError(
                "Telegram posts updates only to https URLs (on port 443, 80, 88 or 8443): "
                "give webhook_url='https://...' or use mode='polling'"
            )
        if secret_token is not None and not _SECRET.fullmatch(secret_token):
            raise ConfigurationError(
                "secret_token must be 1-256 characters of A-Z, a-z, 0-9, '_' or '-'"
            )
        if bot_username is not None and not _USERNAME.fullmatch(bot_username):
            raise ConfigurationError(f"bot_username {bot_username!r} is not a Telegram username")
        if parse_mode not in (MARKDOWN_V2, HTML):
            raise ConfigurationError(f"parse_mode must be {MARKDOWN_V2!r} or {HTML!r}")
        for path in (webhook_path, files_path):
            if not path.startswith("/") or path.endswith("/"):
                raise ConfigurationError(f"{path!r} must start with '/' and not end with one")
        if poll_timeout < 1 or max_concurrent_chats < 1 or max_body_bytes < 1:
            raise ConfigurationError(
                "poll_timeout, max_concurrent_chats and max_body_bytes must be at least 1"
            )
        if dedupe_seconds <= 0 or file_url_ttl_seconds <= 0 or request_timeout <= 0:
            raise ConfigurationError(
                "dedupe_seconds, file_url_ttl_seconds and request_timeout must be positive"
            )
        if stream_interval < 0 or typing_delay < 0:
            raise ConfigurationError("stream_interval and typing_delay must not be negative")
        for command in commands:
            _check_command(command)
        self.addressing = choice(Addressing, addressing, "addressing")
        self.conversation_scope = choice(
            ConversationScope, conversation_scope, "conversation_scope"
        )

        self.name = name
        self.mode = mode
        self.webhook_url = webhook_url
        self.webhook_path = webhook_path
        self.files_path = files_path
        self.api_base_url = api_base_url
        self.parse_mode = parse_mode
        self.allowed_updates = tuple(allowed_updates)
        self.poll_timeout = poll_timeout
        self.dedupe_seconds = dedupe_seconds
        self.max_concurrent_chats = max_concurrent_chats
        self.stream = stream
        self.stream_interval = stream_interval
        self.typing_delay = typing_delay
        self.pacing = pacing or Pacing()
        self.command_languages = dict(command_languages or {})
        self.register_commands = register_commands
        self.drop_pending_updates = drop_pending_updates
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.max_file_bytes = max_file_bytes
        self.multitask = multitask
        self.require_link = require_link
        self.allowlist = allowlist
        self.confidentiality_tier = confidentiality_tier
        self.offers_link_commands = offers_link_commands
        self.answer_edits = answer_edits
        self.push_timeout_seconds = request_timeout
        self.bot_name = bot_username.lstrip("@") if bot_username else None
        self._token = bot_token
        self._secret = secret_token or secrets.token_urlsafe(32)
        self._own_commands = tuple(commands)
        origin = public_url or (_origin(webhook_url) if webhook_url else None)
        self._files = (
            media.SignedFiles(
                key=file_url_key or secrets.token_bytes(32),
                base_url=f"{origin.rstrip('/')}{files_path}",
                ttl_seconds=file_url_ttl_seconds,
            )
            if origin
            else None
        )
        self._bot = (
            BotProfile(int(bot_token.split(":", 1)[0]), self.bot_name) if self.bot_name else None
        )
        self._host: HostServices | None = None
        self._api: BotApi | None = None
        self._inbox: Inbox | None = None
        self._poller_stop: anyio.Event | None = None
        self._moved_from: dict[int, int] = {}  # supergroup id -> the group's original id
        self._migrations_stored: set[int] = set()  # supergroup ids whose mapping is stored

    def __repr__(self) -> str:  # the token and the secret stay out of reprs and logs
        return f"TelegramChannel(name={self.name!r}, mode={self.mode!r})"

    # --- the Channel seam --------------------------------------------------------------

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        routes: list[BaseRoute] = [
            Route(f"{self.files_path}/{{file_id}}", self._serve_file, methods=["GET"])
        ]
        if self.mode == "webhook":
            routes.append(Route(self.webhook_path, self._webhook, methods=["POST"]))
        return routes

    def commands(self) -> Sequence[ChannelCommand]:
        return self._own_commands

    async def check_credentials(self, http: httpx.AsyncClient) -> str | None:
        api = BotApi(http, self._token, base_url=self.api_base_url, clock=time.time, max_attempts=1)
        try:
            me = await api.get_me()
        except TelegramError as error:
            raise ConfigurationError(
                f"Telegram refused the bot token (getMe answered {error.code}); check "
                "bot_token against @BotFather"
            ) from None
        return f"bot @{me.get('username')} (id {me.get('id')})"

    async def startup(self, host: HostServices) -> None:
        api = BotApi(
            host.http,
            self._token,
            base_url=self.api_base_url,
            clock=host.now,
            pacing=self.pacing,
            timeout=self.push_timeout_seconds,
        )
        self._host, self._api = host, api
        await self._load_migrations(host, api)
        api.on_migrated = self._chat_migrated
        if self._bot is None:
            me = await api.get_me()
            username = me.get("username")
            if not isinstance(username, str) or not isinstance(me.get("id"), int):
                raise ConfigurationError("getMe did not answer the bot's id and username")
            self._bot = BotProfile(me["id"], username)
        if self.register_commands:
            await self._register_commands(host, api)
        inbox = Inbox(
            host,
            channel=self.name,
            handle=self._handle,
            chat_of=codec.chat_of,
            dedupe_seconds=self.dedupe_seconds,
            max_concurrent_chats=self.max_concurrent_chats,
        )
        await inbox.recover()
        self._inbox = inbox
        host.start_task(inbox.run, name=f"{self.name} inbox")
        if self.mode == "webhook":
            assert self.webhook_url is not None
            await api.set_webhook(
                self.webhook_url,
                secret_token=self._secret,
                allowed_updates=self.allowed_updates,
                max_connections=self.max_connections,
                drop_pending_updates=self.drop_pending_updates,
            )
        else:
            await api.delete_webhook(drop_pending_updates=self.drop_pending_updates)
            self._poller_stop = anyio.Event()
            host.start_task(
                partial(self._poll_while_elected, host, self._poller_stop),
                name=f"{self.name} poller",
            )
        log.info(
            "telegram channel started",
            extra={"channel": self.name, "mode": self.mode, "bot_id": self._bot.id},
        )

    async def shutdown(self) -> None:
        # The webhook stays registered: Telegram keeps updates for the next start. Until
        # then, deliveries are answered 503 and Telegram retries them. The poller stops
        # and gives up its election, so another replica polls at once; the updates being
        # handled finish (within the host's grace) and what stayed queued is taken over.
        inbox, self._inbox = self._inbox, None
        if self._poller_stop is not None:
            self._poller_stop.set()
            self._poller_stop = None
        if inbox is not None:
            await inbox.stop()

    async def wait_idle(self) -> None:
        """Until every recorded update has been handled (tests and benchmarks use it)."""
        if self._inbox is not None:
            await self._inbox.wait_idle()

    # --- pushing (ChannelPush) --------------------------------------------------------

    push_is_idempotent = False  # Telegram does not drop a repeated send

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        """Send a delivery to the destination's chat (see ``pushes``)."""
        api = self._api
        if api is None:
            return PushOutcome.transient("the telegram channel has not started")
        return await pushes.push(api, destination, message, parse_mode=self.parse_mode)

    # --- inbound -----------------------------------------------------------------------

    async def _webhook(self, request: Request) -> Response:
        presented = request.headers.get(SECRET_HEADER, "").encode("latin-1")
        if not hmac.compare_digest(presented, self._secret.encode("ascii")):
            log.warning("telegram webhook refused: wrong secret token")
            return PlainTextResponse("Unauthorized", status_code=401)
        inbox, bot = self._inbox, self._bot
        if inbox is None or bot is None:
            return PlainTextResponse("Starting", status_code=503)
        try:
            raw = await read_json_body(request, self.max_body_bytes)
            update = strict_json.loads(raw)
            update_id = codec.update_id_of(update)
        except BodyRefused as refused:
            return refused.response({"error": refused.message})
        except ClientGone:
            log.debug("telegram webhook abandoned: the client left before its body arrived")
            return Response(status_code=400)
        except (ValueError, codec.MalformedUpdate):  # strict_json.JsonRefused is a ValueError
            return PlainTextResponse("Not a Telegram update", status_code=400)
        await self._follow_migration(update)
        parsed = self._wanted(update, bot)
        if parsed is not None:
            await inbox.accept([(update_id, update, parsed)])
        return Response(status_code=200)

    def _wanted(self, update: Mapping[str, Any], bot: BotProfile) -> Inbound | None:
        """The update parsed, if it needs handling (an ignored one is acknowledged, not
        stored)."""
        try:
            parsed = codec.parse_update(
                update, bot=bot, addressing=self.addressing, answer_edits=self.answer_edits
            )
        except codec.MalformedUpdate:
            log.warning(
                "telegram update does not parse", extra={"update_id": update.get("update_id")}
            )
            return None
        if isinstance(parsed, codec.Ignored):
            log.debug(
                "telegram update ignored",
                extra={"update_id": parsed.update_id, "reason": parsed.reason.value},
            )
            return None
        return parsed

    async def _poll_while_elected(self, host: HostServices, stop: anyio.Event) -> None:
        """Poll while this replica holds the bot's election (design §10), until ``stop``."""
        assert self._bot is not None
        async with anyio.create_task_group() as tasks:

            async def stop_polling() -> None:
                await stop.wait()
                tasks.cancel_scope.cancel()  # the election's lease is released on the way

            tasks.start_soon(stop_polling)
            await run_while_elected(
                host.store, f"telegram:{self._bot.id}", self._poll, clock=host.now
            )
            tasks.cancel_scope.cancel()

    async def _poll(self) -> None:
        inbox, api, bot = self._inbox, self._api, self._bot
        assert inbox is not None and api is not None and bot is not None
        await inbox.recover()  # what a previous poller (another replica) left unhandled
        offset = await inbox.load_offset()
        delay = 1.0
        while True:
            try:
                updates = await api.get_updates(
                    offset=offset,
                    poll_seconds=self.poll_timeout,
                    allowed_updates=self.allowed_updates,
                )
                batch: list[tuple[int, Mapping[str, Any], Inbound]] = []
                highest = -1
                for update in updates:
                    try:
                        update_id = codec.update_id_of(update)
                    except codec.MalformedUpdate:
                        continue
                    highest = max(highest, update_id)
                    await self._follow_migration(update)
                    parsed = self._wanted(update, bot)
                    if parsed is not None:
                        batch.append((update_id, update, parsed))
                if highest >= 0:
                    # Recorded before the next call confirms them (offset = last + 1).
                    await inbox.accept(batch, offset=highest + 1)
                    offset = highest + 1
                delay = 1.0
            except Unauthorized:
                log.error("telegram polling stopped: the bot token was refused")
                raise
            except (TelegramError, OSError, httpx.HTTPError) as error:
                # 409: another poller (or a webhook) holds the bot. Store errors land here too.
                log.warning(
                    "telegram polling failed; retrying",
                    extra={
                        "error_type": type(error).__name__,
                        "status": getattr(error, "code", None),
                        "retry_in": delay,
                    },
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # --- one update ----------------------------------------------------------------------

    async def _handle(self, update: Mapping[str, Any], received: Inbound | None) -> None:
        host, api, bot = self._host, self._api, self._bot
        assert host is not None and api is not None and bot is not None
        parsed = received or codec.parse_update(
            update, bot=bot, addressing=self.addressing, answer_edits=self.answer_edits
        )
        if isinstance(parsed, codec.Ignored):
            return
        original = self._moved_from.get(parsed.chat_id)
        if original is not None:
            # An upgraded group: the conversation (and its session) stays on the first id;
            # the API client sends to the new one.
            parsed = attrs.evolve(parsed, chat_id=original)
        if parsed.callback_query_id is not None:
            try:
                await api.answer_callback_query(parsed.callback_query_id)
            except TelegramError as error:
                log.debug("callback answer failed", extra={"error_type": type(error).__name__})
        request = codec.channel_request(
            parsed,
            channel=self.name,
            file_parts=self._file_parts(parsed, host),
            conversation_scope=self.conversation_scope,
            multitask=self.multitask,
            stream=self.stream,
        )
        reply = Reply(api, parsed, parse_mode=self.parse_mode, stream_interval=self.stream_interval)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reply.keep_typing, self.typing_delay)
            # A run the hook sends elsewhere comes back as a continuation token: the chat gets
            # a short acknowledgement, and the reply goes where it was sent.
            outcome = await host.run_or_continue(
                request, on_update=reply.on_update if self.stream else None
            )
            tasks.cancel_scope.cancel()
        if isinstance(outcome, TurnCompleted):
            reply.hand_over = self._hand_over_to_outbox(
                host, parsed, outcome.result.session.isolation_key
            )
        await _answer(reply, outcome)

    def _hand_over_to_outbox(
        self, host: HostServices, inbound: Inbound, isolation_key: str
    ) -> HandOver:
        destination = Destination(self.name, inbound.identity(self.name), inbound.conversation_id)

        async def hand_over(markdown: str, parts_sent: int) -> None:
            key = f"tg_{self.name}_{inbound.update_id}"  # one update, one reply
            await host.push_later(
                destination, markdown, key=key, isolation_key=isolation_key,
                parts_sent=parts_sent,
            )  # fmt: skip

        return hand_over

    # --- supergroup migrations -------------------------------------------------------------

    async def _load_migrations(self, host: HostServices, api: BotApi) -> None:
        after: str | None = None
        while True:
            found = await host.store.list_channel_records(
                self.name, MIGRATIONS, after=after, limit=500
            )
            for record in found:
                new = record.value.get("to")
                if isinstance(new, int):
                    self._remember_migration(int(record.key), new, api)
                    self._migrations_stored.add(new)
            if len(found) < 500:
                return
            after = found[-1].key

    def _remember_migration(self, old: int, new: int, api: BotApi) -> None:
        api.remember_migration(old, new)
        self._moved_from[new] = self._moved_from.get(old, old)

    async def _chat_migrated(self, old: int, new: int) -> None:
        host, api = self._host, self._api
        if host is None or api is None or new in self._migrations_stored:
            return
        self._remember_migration(old, new, api)
        record = ChannelRecord(self.name, MIGRATIONS, str(old), {"to": new}, created_at=host.now())
        try:
            await host.store.put_channel_records([record])
        except Exception as error:
            # The send goes on to the new chat; the service message in the supergroup (or
            # the next refused send) tries to store it again.
            log.error(
                "telegram group migration not stored",
                extra={"chat_id": old, "new_chat_id": new, "error_type": type(error).__name__},
            )
            return
        self._migrations_stored.add(new)
        log.info("telegram group migration stored", extra={"chat_id": old, "new_chat_id": new})

    async def _follow_migration(self, update: Mapping[str, Any]) -> None:
        moved = codec.migration_of(update)
        if moved is not None:
            await self._chat_migrated(*moved)

    def _file_parts(self, inbound: Inbound, host: HostServices) -> list[ContentPart]:
        parts: list[ContentPart] = []
        for file in inbound.files:
            if self._files is None:
                parts.append(TextPart(f"[The user sent a {file.kind} that cannot be shown here.]"))
            else:
                media_type = file.media_type or "application/octet-stream"
                parts.append(UriPart(self._files.url(file.file_id, host.now()), media_type))
        return parts

    # --- files ---------------------------------------------------------------------------

    async def _serve_file(self, request: Request) -> Response:
        files, api, host = self._files, self._api, self._host
        if files is None or api is None or host is None:
            return PlainTextResponse("Not found", status_code=404)
        file_id = request.path_params["file_id"]
        verdict = files.check(
            file_id, request.query_params.get("exp"), request.query_params.get("sig"), host.now()
        )
        if verdict == "invalid":
            return PlainTextResponse("Forbidden", status_code=403)
        if verdict == "expired":
            return PlainTextResponse("This link has expired", status_code=410)
        try:
            info = await api.get_file(file_id)
        except BadRequest:
            return PlainTextResponse("Not found", status_code=404)
        except TelegramError:
            return PlainTextResponse("Telegram is unavailable", status_code=502)
        path, size = info.get("file_path"), info.get("file_size")
        if not isinstance(path, str) or not path:
            return PlainTextResponse("Not found", status_code=404)
        if isinstance(size, int) and size > self.max_file_bytes:
            return PlainTextResponse("Too large", status_code=413)
        try:
            upstream = await api.open_file(path)
        except TelegramError:
            return PlainTextResponse("Telegram is unavailable", status_code=502)
        headers = {
            "x-content-type-options": "nosniff",
            "content-security-policy": "sandbox",
            "cache-control": "private, max-age=60",
        }
        length = upstream.headers.get("content-length")
        if length and length.isdigit() and int(length) <= self.max_file_bytes:
            headers["content-length"] = length
        return StreamingResponse(
            _capped(upstream, self.max_file_bytes),
            media_type=media.served_media_type(path),
            headers=headers,
            background=BackgroundTask(upstream.aclose),
        )

    # --- the command menu ------------------------------------------------------------------

    async def _register_commands(self, host: HostServices, api: BotApi) -> None:
        merged: dict[str, ChannelCommand] = {}
        for command in (*host.command_catalog(self.name), *self.commands()):
            if command.expose_in_ui and command.name not in merged:
                if _COMMAND.fullmatch(command.name):
                    merged[command.name] = command
                else:
                    log.warning("command not registered: bad name", extra={"command": command.name})
        menus = {
            "all_private_chats": list(merged.values())[:100],
            "all_group_chats": [c for c in merged.values() if c.name not in _DIRECT_ONLY_COMMANDS][
                :100
            ],
        }
        try:
            for scope, listed in menus.items():
                for language in (None, *self.command_languages):
                    names = self.command_languages.get(language, {}) if language else {}
                    await api.set_my_commands(
                        [
                            {
                                "command": c.name,
                                "description": (names.get(c.name) or c.description)[:256],
                            }
                            for c in listed
                        ],
                        scope={"type": scope},
                        language_code=language,
                    )
        except TelegramError as error:
            # The bot works without a menu; say so and carry on.
            log.warning(
                "telegram command menu not registered",
                extra={"error_type": type(error).__name__, "status": error.code},
            )


async def _answer(reply: Reply, outcome: TurnOutcome | ContinuationToken) -> None:
    said = chat_replies.reply_for(outcome)
    if said is None:
        return
    if said.markdown:
        await reply.send_markdown(said.text)
    else:
        await reply.send_plain(said.text)


async def _capped(upstream: httpx.Response, limit: int) -> AsyncIterator[bytes]:
    sent = 0
    try:
        async for chunk in upstream.aiter_raw():
            sent += len(chunk)
            if sent > limit:
                return
            yield chunk
    finally:
        await upstream.aclose()


def _check_command(command: ChannelCommand) -> None:
    if not isinstance(command, ChannelCommand) or not _COMMAND.fullmatch(command.name):
        raise ConfigurationError(
            f"command {getattr(command, 'name', command)!r}: names are 1-32 of a-z, 0-9 and '_'"
        )
    if not 1 <= len(command.description) <= 256:
        raise ConfigurationError(f"command {command.name!r}: the description must be 1-256 long")


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"
