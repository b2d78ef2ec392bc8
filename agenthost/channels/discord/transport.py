"""The Discord channel: its route, its start-up, and the turn per interaction.

Route: ``POST {path}`` (default ``/discord/interactions``), the application's
"Interactions Endpoint URL". Start-up: register the command menu with one bulk overwrite
(globally, or per guild while developing), queue what the inbox still holds.

An interaction is answered in this order (``verifier``, ``codec``, ``inbox``, ``replies``):

1. The body is read (bounded) and its Ed25519 signature and timestamp are checked before
   it is parsed; any failure is 401 and nothing else happens.
2. ``PING`` is answered ``PONG``. Autocomplete is answered at once with the application's
   choices (none by default). An interaction the channel cannot serve (a context-menu
   command, a command it does not know) gets a short ephemeral message: never an error.
3. Anything else becomes a turn: it is recorded in the inbox (de-duplicated by id), then
   deferred (callback type 5: ephemeral for the host's commands), all within Discord's
   three seconds; the turn runs afterwards and its reply edits the deferred message.
   A repeated id is deferred again and runs nothing.

Identity, authorization, sessions and commands are the host's: the channel hands it the
user, the conversation and the text, and renders what comes back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agenthost.backends.bodies import BodyTooLarge, OversizedBodyResponse, read_limited
from agenthost.backends.channel import INHERIT, Channel, HostServices, Inherit
from agenthost.backends.configuration import ConfigurationError, choice
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.channels.discord import codec, rendering, verifier
from agenthost.channels.discord.api import (
    DEFAULT_API_BASE_URL,
    DiscordApi,
    DiscordError,
    Unauthorized,
)
from agenthost.channels.discord.codec import (
    AutocompleteQuery,
    CallbackType,
    CommandNames,
    InteractionType,
    Turn,
    Unsupported,
)
from agenthost.channels.discord.inbox import Accepted, Inbox
from agenthost.channels.discord.pushes import Pusher
from agenthost.channels.discord.replies import Reply
from agenthost.channels.discord.verifier import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureVerifier,
    Verdict,
)
from agenthost.sansio_core import chat_replies
from agenthost.sansio_core.authorization import Allowlist
from agenthost.sansio_core.link_policy import DEFAULT_TIER
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.turns import (
    TurnCompleted,
    TurnFailed,
    TurnOutcome,
)
from agenthost.sansio_core.types import (
    ChannelCommand,
    ContinuationToken,
    ConversationScope,
    MultitaskStrategy,
)

log = logging.getLogger("agenthost.channels.discord")

#: ``autocomplete(query) -> [(name, value), ...]``: choices for a focused option.
Autocomplete = Callable[[AutocompleteQuery], Awaitable[Sequence[tuple[str, str]]]]

AUTOCOMPLETE_SECONDS = 2.0  # Discord waits three seconds for the choices

_STOPPED = "(stopped)"
_UNSUPPORTED = "Sorry, I can't answer that here."
_BUSY = "I'm busy right now. Please try again in a moment."
_REFUSED_LOG = {
    Verdict.MISSING: "discord interaction refused: no signature",
    Verdict.MALFORMED: "discord interaction refused: malformed signature",
    Verdict.FORGED: "discord interaction refused: signature does not verify",
    Verdict.STALE: "discord interaction refused: timestamp outside the replay window",
}


def _error(status: int, message: str, code: int = 0) -> JSONResponse:
    """An error in Discord's own shape (``{"message", "code"}``)."""
    return JSONResponse({"message": message, "code": code}, status_code=status)


class DiscordChannel(Channel):
    """A Discord application answering slash commands over HTTP interactions.

    ``application_id``, ``public_key`` (hex, from the developer portal) and ``bot_token``
    are required. Point the application's Interactions Endpoint URL at this host's
    ``path``. ``ask_command`` names the slash command whose ``message`` option goes to the
    target; ``/new``, ``/help``, ``/link`` and ``/unlink`` come from the host's catalog
    and ``commands`` are the application's own (they reach the target as ``/name text``).
    The menu is registered at start-up with one bulk overwrite: globally, or in each of
    ``command_guild_ids`` (instant, for development). ``autocomplete`` supplies choices
    for the application's own options (none by default).

    Signatures older or newer than ``replay_window_seconds`` are refused and interaction
    ids are de-duplicated for ``dedupe_seconds``. Replies stream by editing the deferred
    message every ``stream_interval`` seconds. ``push_to`` chooses where deliveries go:
    ``"dm"`` (the user's DM) or ``"conversation"`` (the guild channel the user was last
    seen in); see ``discord.pushes``. ``api_base_url`` points the channel at another API
    (a test fake).
    """

    push_is_idempotent = False  # Discord has no idempotency key for messages

    def __init__(
        self,
        *,
        application_id: str,
        public_key: str,
        bot_token: str,
        name: str = "discord",
        path: str = "/discord/interactions",
        api_base_url: str = DEFAULT_API_BASE_URL,
        ask_command: str = "ask",
        ask_description: str = "Ask the agent something",
        commands: Sequence[ChannelCommand] = (),
        register_commands: bool = True,
        command_guild_ids: Sequence[str] = (),
        autocomplete: Autocomplete | None = None,
        replay_window_seconds: float = 300.0,
        dedupe_seconds: float = 3600.0,
        conversation_scope: ConversationScope | str = ConversationScope.PER_USER_PER_CONVERSATION,
        multitask: MultitaskStrategy | None = None,
        stream: bool = True,
        stream_interval: float = 1.0,
        push_to: Literal["dm", "conversation"] = "dm",
        max_body_bytes: int = 1024 * 1024,
        max_concurrent_channels: int = 16,
        max_pending: int = 1000,
        require_link: bool | Inherit = INHERIT,
        allowlist: Allowlist | Inherit | None = INHERIT,
        confidentiality_tier: str = DEFAULT_TIER,
        offers_link_commands: bool = True,
    ) -> None:
        if not isinstance(application_id, str) or not application_id.isdigit():
            raise ConfigurationError(
                "application_id must be the application's id (digits) from the developer portal"
            )
        try:
            key = verifier.public_key(public_key)
        except ValueError:
            raise ConfigurationError(
                "public_key must be the application's public key from the developer portal "
                "(64 hex characters)"
            ) from None
        if (
            not isinstance(bot_token, str)
            or len(bot_token) < 20
            or any(c.isspace() for c in bot_token)
        ):
            raise ConfigurationError(
                "bot_token must be the bot's token (Bot page of the developer portal)"
            )
        if not path.startswith("/") or path.endswith("/"):
            raise ConfigurationError(f"path {path!r} must start with '/' and not end with one")
        for command_name in (ask_command, *(c.name for c in commands)):
            if not codec.valid_command_name(command_name):
                raise ConfigurationError(
                    f"command {command_name!r}: names are 1-32 of a-z, 0-9, '-' and '_'"
                )
        for command in commands:
            if not 1 <= len(command.description) <= 100:
                raise ConfigurationError(
                    f"command {command.name!r}: the description must be 1-100 characters"
                )
        if not 1 <= len(ask_description) <= 100:
            raise ConfigurationError("ask_description must be 1-100 characters")
        if any(not isinstance(g, str) or not g.isdigit() for g in command_guild_ids):
            raise ConfigurationError("command_guild_ids must be guild ids (digits)")
        if replay_window_seconds <= 0 or dedupe_seconds < replay_window_seconds:
            raise ConfigurationError(
                "replay_window_seconds must be positive and dedupe_seconds at least as long "
                "(an id must be remembered for as long as its signature is accepted)"
            )
        if stream_interval < 0:
            raise ConfigurationError("stream_interval must not be negative")
        if push_to not in ("dm", "conversation"):
            raise ConfigurationError(f"push_to must be 'dm' or 'conversation', not {push_to!r}")
        if max_body_bytes < 1 or max_concurrent_channels < 1 or max_pending < 1:
            raise ConfigurationError(
                "max_body_bytes, max_concurrent_channels and max_pending must be at least 1"
            )
        self.conversation_scope = choice(
            ConversationScope, conversation_scope, "conversation_scope"
        )

        self.name = name
        self.path = path
        self.application_id = application_id
        self.api_base_url = api_base_url
        self.ask_command = ask_command
        self.ask_description = ask_description
        self.register_commands = register_commands
        self.command_guild_ids = tuple(command_guild_ids)
        self.dedupe_seconds = dedupe_seconds
        self.multitask = multitask
        self.stream = stream
        self.stream_interval = stream_interval
        self.push_to = push_to
        self.max_body_bytes = max_body_bytes
        self.max_concurrent_channels = max_concurrent_channels
        self.max_pending = max_pending
        self.require_link = require_link
        self.allowlist = allowlist
        self.confidentiality_tier = confidentiality_tier
        self.offers_link_commands = offers_link_commands
        self._verifier = SignatureVerifier(key, window=replay_window_seconds)
        self._public_key_hex = public_key.strip().lower()
        self._token = bot_token
        self._own_commands = tuple(commands)
        self._autocomplete = autocomplete
        self._names = CommandNames(ask_command, own=frozenset(c.name for c in commands))
        self._host: HostServices | None = None
        self._api: DiscordApi | None = None
        self._inbox: Inbox | None = None
        self._pusher: Pusher | None = None

    def __repr__(self) -> str:  # the token stays out of reprs and logs
        return f"DiscordChannel(name={self.name!r}, application_id={self.application_id!r})"

    # --- the Channel seam --------------------------------------------------------------

    def routes(self, host: HostServices) -> Sequence[BaseRoute]:
        return [Route(self.path, self._interactions, methods=["POST"])]

    def commands(self) -> Sequence[ChannelCommand]:
        return self._own_commands

    async def check_credentials(self, http: httpx.AsyncClient) -> str | None:
        """Ask Discord which application the bot token belongs to (``GET
        /applications/@me``), and compare its id and public key with the settings: a
        wrong public key would refuse every interaction, a wrong id every command menu."""
        api = DiscordApi(
            http,
            self._token,
            application_id=self.application_id,
            base_url=self.api_base_url,
            clock=time.monotonic,
            max_attempts=1,
        )
        try:
            application = await api.current_application()
        except Unauthorized:
            raise ConfigurationError(
                "Discord refused the bot token (GET /applications/@me answered 401); copy "
                "bot_token from the Bot page of the developer portal (Reset Token there if "
                "it is lost)"
            ) from None
        actual_id = application.get("id")
        if actual_id != self.application_id:
            raise ConfigurationError(
                f"application_id {self.application_id} is not the application the bot token "
                f"belongs to ({actual_id}); copy both from the same application in the "
                "developer portal"
            )
        verify_key = application.get("verify_key")
        if not isinstance(verify_key, str) or verify_key.lower() != self._public_key_hex:
            raise ConfigurationError(
                "public_key is not the application's public key, so every interaction would "
                "be refused 401; copy it from the General Information page of the developer "
                "portal"
            )
        bot = application.get("bot")
        if isinstance(bot, Mapping) and bot.get("username"):
            return (
                f"bot {bot.get('username')} (id {bot.get('id')}) of application "
                f"{application.get('name')} ({actual_id}); public key matches"
            )
        return f"application {application.get('name')} ({actual_id}); public key matches"

    async def startup(self, host: HostServices) -> None:
        api = DiscordApi(
            host.http,
            self._token,
            application_id=self.application_id,
            base_url=self.api_base_url,
            clock=host.now,
        )
        self._host, self._api = host, api
        catalog = host.command_catalog(self.name)
        self._names = CommandNames(
            self.ask_command,
            host=frozenset(c.name for c in catalog) - {self.ask_command},
            own=frozenset(c.name for c in self._own_commands),
        )
        if self.register_commands:
            await self._register_commands(api, catalog)
        inbox = Inbox(
            host,
            channel=self.name,
            handle=self._handle,
            dedupe_seconds=self.dedupe_seconds,
            max_concurrent_channels=self.max_concurrent_channels,
            max_pending=self.max_pending,
        )
        await inbox.recover()
        self._inbox = inbox
        self._pusher = Pusher(api, host, channel=self.name, push_to=self.push_to)
        host.start_task(inbox.run, name=f"{self.name} inbox")
        log.info(
            "discord channel started",
            extra={"channel": self.name, "application_id": self.application_id},
        )

    async def shutdown(self) -> None:
        # Interactions arriving now are answered 503 (Discord shows the user a failure);
        # recorded ones stay in the inbox for the next start.
        # The ones being handled finish (within the host's grace); recorded ones not yet
        # started stay in the inbox for another replica or the next start.
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            await inbox.stop()

    async def wait_idle(self) -> None:
        """Until every recorded interaction has been handled (tests and benchmarks)."""
        if self._inbox is not None:
            await self._inbox.wait_idle()

    # --- pushing (ChannelPush) --------------------------------------------------------

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        """Send a delivery with the bot token (see ``pushes``)."""
        pusher = self._pusher
        if pusher is None:
            return PushOutcome.transient("the discord channel has not started")
        return await pusher.push(destination, message)

    # --- inbound -----------------------------------------------------------------------

    async def _interactions(self, request: Request) -> Response:
        host, inbox = self._host, self._inbox
        if host is None or inbox is None:
            return _error(503, "Starting")
        try:
            raw = await read_limited(request, self.max_body_bytes)
        except BodyTooLarge as too_large:
            return OversizedBodyResponse({"message": str(too_large), "code": 0})
        verdict = self._verifier.verify(
            request.headers.get(SIGNATURE_HEADER),
            request.headers.get(TIMESTAMP_HEADER),
            raw,
            now=host.now(),
        )
        if verdict is not Verdict.VALID:
            log.warning(_REFUSED_LOG[verdict], extra={"reason": verdict.value})
            return _error(401, "invalid request signature")
        try:
            payload = json.loads(raw)
            interaction = codec.parse_interaction(payload)
        except ValueError:  # JSON or codec.MalformedInteraction
            return _error(400, "Not an interaction", 50035)
        if interaction.application_id != self.application_id:
            return _error(400, "Not an interaction for this application", 50035)
        if interaction.type == InteractionType.PING:
            return JSONResponse({"type": CallbackType.PONG})
        asked = codec.understand(interaction, self._names)
        if isinstance(asked, AutocompleteQuery):
            return JSONResponse(
                {
                    "type": CallbackType.APPLICATION_COMMAND_AUTOCOMPLETE_RESULT,
                    "data": {"choices": await self._choices(asked)},
                }
            )
        if isinstance(asked, Unsupported):
            log.info(
                "discord interaction not supported",
                extra={"interaction_id": interaction.id, "reason": asked.reason},
            )
            return _message(_UNSUPPORTED)
        try:
            accepted = await inbox.accept(interaction.id, payload)
        except Exception as error:  # the store is down: Discord shows the user a failure
            log.error(
                "discord interaction not recorded", extra={"error_type": type(error).__name__}
            )
            return _error(503, "Unavailable")
        if accepted is Accepted.BUSY:
            return _message(_BUSY)
        if accepted is Accepted.REPEATED:
            log.info("discord interaction repeated", extra={"interaction_id": interaction.id})
        body: dict[str, Any] = {"type": CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE}
        if asked.host_command:
            body["data"] = {"flags": rendering.EPHEMERAL}
        return JSONResponse(body)

    async def _choices(self, query: AutocompleteQuery) -> list[dict[str, str]]:
        if self._autocomplete is None:
            return []
        try:
            with anyio.fail_after(AUTOCOMPLETE_SECONDS):
                offered = await self._autocomplete(query)
        except Exception as error:  # no choices beats a failed interaction
            log.warning("discord autocomplete failed", extra={"error_type": type(error).__name__})
            return []
        return [
            {"name": str(name)[:100], "value": str(value)[:100]}
            for name, value in list(offered)[:25]
            if str(name)
        ]

    # --- one interaction ----------------------------------------------------------------

    async def _handle(self, payload: Mapping[str, Any], received_at: float) -> None:
        host, api = self._host, self._api
        assert host is not None and api is not None
        interaction = codec.parse_interaction(payload)
        asked = codec.understand(interaction, self._names)
        if not isinstance(asked, Turn):
            return
        request = codec.channel_request(
            interaction,
            asked.text,
            channel=self.name,
            conversation_scope=self.conversation_scope,
            multitask=self.multitask,
            stream=self.stream,
        )
        reply = Reply(
            api,
            interaction,
            received_at=received_at,
            clock=host.now,
            stream_interval=self.stream_interval,
            ephemeral=asked.host_command,
        )
        # A run the hook sends elsewhere comes back as a continuation token: the user gets
        # a short acknowledgement, and the reply goes where it was sent.
        outcome = await host.run_or_continue(
            request, on_update=reply.on_update if self.stream else None
        )
        await reply.send(_answer_text(outcome))

    # --- the command menu ------------------------------------------------------------------

    async def _register_commands(self, api: DiscordApi, catalog: Sequence[ChannelCommand]) -> None:
        payloads = codec.command_payloads(
            ask=self.ask_command,
            ask_description=self.ask_description,
            host_commands=[c for c in catalog if codec.valid_command_name(c.name)],
            own_commands=self._own_commands,
            autocomplete=self._autocomplete is not None,
        )
        try:
            if self.command_guild_ids:
                for guild_id in self.command_guild_ids:
                    await api.overwrite_commands(payloads, guild_id=guild_id)
            else:
                await api.overwrite_commands(payloads)
        except DiscordError as error:
            # The endpoint works without a menu (commands registered earlier stay); say so.
            log.warning(
                "discord command menu not registered",
                extra={
                    "error_type": type(error).__name__,
                    "status": error.status,
                    "code": error.code,
                },
            )


def _message(text: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": CallbackType.CHANNEL_MESSAGE_WITH_SOURCE,
            "data": rendering.message_payload(text, ephemeral=True),
        }
    )


def _answer_text(outcome: TurnOutcome | ContinuationToken) -> str:
    """What the deferred message becomes: it must become something, so where other chat
    channels say nothing, Discord's says the reply as it is, "(stopped)" or that it failed."""
    if isinstance(outcome, TurnCompleted):
        return outcome.result.text  # a reply, or a host command's answer (CommandReply)
    said = chat_replies.reply_for(outcome)
    if said is not None:
        return said.text
    if isinstance(outcome, TurnFailed) and outcome.cancelled:
        return _STOPPED
    return chat_replies.FAILED
