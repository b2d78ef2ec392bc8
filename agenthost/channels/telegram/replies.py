"""Answering one update: the typing action, the streamed preview, and the reply itself.

- While the target runs the chat shows "typing…" (``sendChatAction`` lasts about five
  seconds, so it is repeated) until the first streamed text appears; it starts after a
  short delay, so an instant answer costs no extra call.
- Streaming: in a private chat the text so far is shown with ``sendMessageDraft`` (an
  ephemeral preview, so the answer is still sent as a message at the end); elsewhere the
  first piece is sent as a message and then edited. Either is throttled (one update per
  ``stream_interval``, and an edit only when the chat's send budget allows it without
  waiting), and stops once the text no longer fits one message. A preview is best
  effort: a 429 on it is never waited out; previews are skipped until its
  ``retry_after`` has passed, and the run goes on.
- The reply is the agent's Markdown rendered for Telegram, split into parts of at most
  4096 characters. When Telegram rejects the formatting, that part and the rest of the
  reply are sent as plain text instead. In a group the first part answers the user's
  message (``reply_parameters``); in a forum topic every part goes to that topic.
- Host answers (a command's reply, a refusal's message) are plain text.
- A failure to deliver is logged with its class (a blocked bot is permanent) and ends the
  reply; it never fails the turn, which has already run and been saved. When the
  failure is transient (a 429 longer than the client waits out, a network error, a 5xx)
  the reply is handed to the durable outbox (``hand_over``) with the number of parts
  already sent, so the rest still arrives, once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import anyio
from telegram.constants import ChatAction

from agenthost.backends.targets import StreamUpdate
from agenthost.channels.telegram import rendering
from agenthost.channels.telegram.api import (
    BotApi,
    FormattingRejected,
    NotModified,
    RateLimited,
    TelegramError,
)
from agenthost.channels.telegram.codec import Inbound
from agenthost.channels.telegram.rendering import Document

log = logging.getLogger("agenthost.channels.telegram")

TYPING_EVERY = 4.0  # seconds; Telegram shows the action for about five

#: ``hand_over(markdown, parts_sent)``: schedule what is left of a reply on the outbox
HandOver = Callable[[str, int], Awaitable[None]]


class Reply:
    def __init__(
        self,
        api: BotApi,
        inbound: Inbound,
        *,
        parse_mode: str,
        stream_interval: float,
        hand_over: HandOver | None = None,
    ) -> None:
        self._api = api
        self.hand_over = hand_over  # set once the run is done (it needs the user's key)
        self._previews_paused_until = -float("inf")  # a 429 on a preview: skip until then
        self._inbound = inbound
        self._parse_mode = parse_mode
        self._stream_interval = stream_interval
        self._plain = False  # Telegram refused our formatting once: plain from then on
        self._streamed = ""
        self._streaming = True
        self._last_push = -float("inf")
        self._preview_id: int | None = None  # the message edited while streaming (groups)
        self._preview_rendered: str | None = None
        self._shown = anyio.Event()  # streamed text is visible: stop typing
        self._replied = False  # the first part went out (it carries the reply reference)
        self._draft_id = inbound.update_id % 2_000_000_000 + 1

    @property
    def _chat(self) -> int:
        return self._api.chat_id(self._inbound.chat_id)

    @property
    def _reply_to(self) -> int | None:
        if self._inbound.is_direct or self._replied:
            return None
        return self._inbound.message_id

    # --- while the target runs ---------------------------------------------------------

    async def keep_typing(self, delay: float = 0.0) -> None:
        """Show "typing…" from ``delay`` seconds on until text is shown (an answer that
        comes sooner needs no indicator, and costs no call)."""
        with anyio.move_on_after(delay):
            await self._shown.wait()
        while not self._shown.is_set():
            try:
                await self._api.send_chat_action(
                    self._chat, ChatAction.TYPING, thread_id=self._inbound.thread_id
                )
            except Exception as error:  # typing is a courtesy: it never disturbs the run
                log.debug("typing action failed", extra={"error_type": type(error).__name__})
                return
            with anyio.move_on_after(TYPING_EVERY):
                await self._shown.wait()

    async def on_update(self, update: StreamUpdate) -> None:
        """The target's streamed text (deltas); never raises into the run."""
        if not update.text:
            return
        self._streamed += update.text
        if not self._streaming:
            return
        now = anyio.current_time()
        if now - self._last_push < self._stream_interval or now < self._previews_paused_until:
            return
        parts = rendering.split_document(rendering.parse_markdown(self._streamed))
        if len(parts) != 1:
            self._streaming = False  # longer than one message: the final answer splits it
            return
        self._last_push = now
        try:
            await self._preview(parts[0])
        except RateLimited as limited:  # best effort: skipped, never waited out
            self._previews_paused_until = now + limited.retry_after
            log.info("streaming paused by a rate limit", extra={"retry_after": limited.retry_after})
        except Exception as error:  # a preview is a courtesy: it never fails the run
            self._streaming = False
            log.info("streaming stopped", extra={"error_type": type(error).__name__})

    async def _preview(self, part: Document) -> None:
        text, mode = self._rendered(part)
        inbound = self._inbound
        if inbound.is_direct:
            await self._api.send_message_draft(
                self._chat,
                self._draft_id,
                text,
                parse_mode=mode,
                thread_id=inbound.thread_id,
                wait_out_rate_limits=False,
            )
        elif self._preview_id is None:
            sent = await self._api.send_message(
                self._chat,
                text,
                parse_mode=mode,
                thread_id=inbound.thread_id,
                reply_to=self._reply_to,
                wait_out_rate_limits=False,
            )
            self._replied = True
            message_id = sent.get("message_id")
            self._preview_id = message_id if isinstance(message_id, int) else None
        elif text != self._preview_rendered:
            if not self._api.pacer.try_acquire(self._chat):
                return  # no budget to spare: the final answer shows it
            await self._api.call(
                "editMessageText",
                {
                    "chat_id": self._chat,
                    "message_id": self._preview_id,
                    "text": text,
                    "parse_mode": mode,
                    "link_preview_options": {"is_disabled": True},
                },
            )
        self._preview_rendered = text
        self._shown.set()

    def _rendered(self, part: Document) -> tuple[str, str | None]:
        if self._plain:
            return rendering.to_plain(part), None
        return rendering.render(part, self._parse_mode), self._parse_mode

    # --- the answer --------------------------------------------------------------------

    async def send_markdown(self, markdown: str) -> None:
        self._shown.set()
        parts = rendering.split_document(rendering.parse_markdown(markdown))
        done = 0
        try:
            for index, part in enumerate(parts):
                if index == 0 and self._preview_id is not None:
                    await self._edit_preview(part)
                else:
                    await self._send_part(part)
                done = index + 1
        except TelegramError as error:
            self._undelivered(error)
            if not error.permanent and self.hand_over is not None:
                await self.hand_over(markdown, done)

    async def send_plain(self, text: str) -> None:
        self._shown.set()
        document = rendering.normalize([rendering.Span(text)])
        try:
            for part in rendering.split_document(document):
                await self._send(rendering.to_plain(part), None)
        except TelegramError as error:
            self._undelivered(error)

    async def _send_part(self, part: Document) -> None:
        if not self._plain:
            try:
                await self._send(rendering.render(part, self._parse_mode), self._parse_mode)
                return
            except FormattingRejected:
                self._fall_back_to_plain()
        for piece in rendering.split_document(rendering.plain_document(part)):
            await self._send(rendering.to_plain(piece), None)

    async def _edit_preview(self, part: Document) -> None:
        assert self._preview_id is not None
        pieces = [part]
        text, mode = self._rendered(part)
        if text != self._preview_rendered:
            try:
                await self._api.edit_message_text(
                    self._chat, self._preview_id, text, parse_mode=mode
                )
            except NotModified:
                pass
            except FormattingRejected:
                self._fall_back_to_plain()
                pieces = rendering.split_document(rendering.plain_document(part))
                plain = rendering.to_plain(pieces[0])
                with contextlib.suppress(NotModified):
                    await self._api.edit_message_text(self._chat, self._preview_id, plain)
        for piece in pieces[1:]:
            await self._send(rendering.to_plain(piece), None)

    async def _send(self, text: str, parse_mode: str | None) -> None:
        inbound = self._inbound
        await self._api.send_message(
            self._chat,
            text,
            parse_mode=parse_mode,
            thread_id=inbound.thread_id,
            reply_to=self._reply_to,
        )
        self._replied = True

    def _fall_back_to_plain(self) -> None:
        self._plain = True
        log.warning(
            "telegram refused the formatting; sending plain text",
            extra={"update_id": self._inbound.update_id, "parse_mode": self._parse_mode},
        )

    def _undelivered(self, error: TelegramError) -> None:
        log.warning(
            "telegram reply not delivered",
            extra={
                "update_id": self._inbound.update_id,
                "chat_id": self._inbound.chat_id,
                "error_type": type(error).__name__,
                "permanent": error.permanent,
                "status": error.code,
            },
        )
