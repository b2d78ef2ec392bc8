"""Answering one interaction after its deferral: streamed edits, the reply, the fallback.

Rules:

1. The interaction was deferred (callback type 5) when it was received, so Discord shows
   "thinking…" and ``@original`` is that message. While the target streams, the text so
   far replaces it (``PATCH …/messages/@original``), at most once per ``stream_interval``,
   only while the edit's rate-limit bucket has room (a preview never makes the run wait)
   and only while it fits one message; past that the final reply splits it.
2. The reply is split into parts of at most 2,000 characters (``rendering.split_message``):
   the first part becomes ``@original``, every other part is a follow-up message, in
   order. An empty reply still replaces "thinking…", so the user is never left waiting.
3. The interaction token lives 15 minutes. When the reply is ready after that (a long
   run, or an interaction recovered after a restart), or Discord says the token is gone
   or refuses another follow-up (it caps them for user-installed apps), the rest of the
   reply is posted with the bot's own token instead: to the channel the interaction came
   from, or to the user's DM when that is not possible (a private channel of a
   user-installed app, a channel the bot may not post in) or when the reply was private
   (ephemeral: a host command's answer never lands in a shared channel).
4. Every message pings nobody (``allowed_mentions`` is empty). A host command's answer is
   ephemeral, like its deferral.
5. A failure to answer is logged with its class and ends the reply; it never fails the
   turn, which has already run and been saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio

from agenthost.backends.targets import StreamUpdate
from agenthost.channels.discord import rendering
from agenthost.channels.discord.api import (
    BadRequest,
    DiscordApi,
    DiscordError,
    Forbidden,
    NotFound,
    TokenExpired,
)
from agenthost.channels.discord.codec import Context, Interaction

log = logging.getLogger("agenthost.channels.discord")

TOKEN_SECONDS = 15 * 60.0
TOKEN_MARGIN = 20.0  # a call started this close to the end might land after it
EMPTY_REPLY = "(no reply)"


class Reply:
    def __init__(
        self,
        api: DiscordApi,
        interaction: Interaction,
        *,
        received_at: float,
        clock: Callable[[], float],
        stream_interval: float,
        ephemeral: bool = False,
    ) -> None:
        self._api = api
        self._interaction = interaction
        self._deadline = received_at + TOKEN_SECONDS - TOKEN_MARGIN
        self._clock = clock
        self._stream_interval = stream_interval
        self._ephemeral = ephemeral
        self._streamed = ""
        self._streaming = True
        self._last_edit = -float("inf")
        self._shown: str | None = None  # what @original shows now
        self._token_alive = True

    @property
    def token_alive(self) -> bool:
        return self._token_alive and self._clock() < self._deadline

    # --- while the target runs ---------------------------------------------------------

    async def on_update(self, update: StreamUpdate) -> None:
        """The target's streamed text (deltas); never raises into the run."""
        if not update.text:
            return
        self._streamed += update.text
        if not self._streaming:
            return
        now = anyio.current_time()
        if now - self._last_edit < self._stream_interval:
            return
        parts = rendering.split_message(self._streamed)
        if len(parts) != 1:
            self._streaming = False  # longer than one message: the reply splits it
            return
        if not self.token_alive:
            self._streaming = False
            return
        if self._api.edit_would_wait(self._interaction.token):
            return  # a preview never holds up the run: the next update or the reply shows it
        self._last_edit = now
        try:
            await self._edit_original(parts[0])
        except TokenExpired:
            self._token_alive = self._streaming = False
        except DiscordError as error:  # a preview is a courtesy: it never fails the run
            self._streaming = False
            log.info("discord streaming stopped", extra={"error_type": type(error).__name__})

    # --- the answer --------------------------------------------------------------------

    async def send(self, text: str) -> None:
        """The reply (rules 2-5)."""
        parts = rendering.split_message(text) or [EMPTY_REPLY]
        try:
            await self._send_parts(parts)
        except DiscordError as error:
            log.warning(
                "discord reply not delivered",
                extra={
                    "interaction_id": self._interaction.id,
                    "error_type": type(error).__name__,
                    "status": error.status,
                    "code": error.code,
                },
            )

    async def _send_parts(self, parts: Sequence[str]) -> None:
        for index, part in enumerate(parts):
            if self.token_alive:
                try:
                    if index == 0:
                        if part != self._shown:
                            await self._edit_original(part)
                    else:
                        await self._api.create_followup(
                            self._interaction.token,
                            rendering.message_payload(part, ephemeral=self._ephemeral),
                        )
                    continue
                except TokenExpired:
                    self._token_alive = False
                    log.info(
                        "discord interaction token expired; answering with the bot token",
                        extra={"interaction_id": self._interaction.id},
                    )
                except BadRequest as refused:
                    if index == 0:
                        raise
                    # Discord caps follow-ups (five for a user-installed app outside a
                    # guild): the rest of the reply goes the bot's way instead.
                    self._token_alive = False
                    log.info(
                        "discord refused a follow-up; answering with the bot token",
                        extra={"interaction_id": self._interaction.id, "code": refused.code},
                    )
            await self._fallback(parts[index:])
            return

    async def _edit_original(self, content: str) -> None:
        await self._api.edit_original(self._interaction.token, rendering.message_payload(content))
        self._shown = content

    async def _fallback(self, parts: Sequence[str]) -> None:
        interaction = self._interaction
        channel_id = interaction.channel_id
        shared = interaction.context != Context.PRIVATE_CHANNEL and channel_id is not None
        if shared and not self._ephemeral and channel_id is not None:
            try:
                for part in parts:
                    await self._api.create_message(channel_id, rendering.message_payload(part))
                return
            except (Forbidden, NotFound) as error:
                log.info(
                    "discord channel refused the reply; sending it by DM",
                    extra={"interaction_id": interaction.id, "error_type": type(error).__name__},
                )
                # Parts already posted stay: a DM repeats the whole reply in one place.
        if interaction.user_id is None:
            return
        dm = await self._api.open_dm(interaction.user_id)
        for part in parts:
            await self._api.create_message(dm, rendering.message_payload(part))
