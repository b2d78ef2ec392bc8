"""Pushing a delivery into a Telegram chat (the ``ChannelPush`` side of the channel).

Rules:

1. The destination's conversation names the chat: ``"<chat>"`` or ``"<chat>:<topic>"``
   (a forum topic, sent with ``message_thread_id``). Without one, the identity's own
   private chat is used (in Telegram a user's private chat has the user's id).
2. An answer is rendered like a reply (the agent's Markdown in the channel's parse mode,
   split into parts of at most 4096 characters, plain text from the part Telegram
   refuses to parse on). An echo is the user's own words and goes as plain text.
   ``silent`` sends without a notification (``disable_notification``).
3. Failures are classified for the delivery worker: 429 is transient with Telegram's
   ``retry_after`` (not waited out here: the worker reschedules); 5xx and network
   failures are transient; a blocked bot (403), a missing chat or any other 400 and a
   refused token are permanent. A chat upgraded to a supergroup is followed
   (``migrate_to_chat_id``) by the API client, which remembers the new id.
4. Telegram does not drop repeated sends, so the channel is not idempotent. Each part of
   a reply is reported as it goes out (``message.on_part_sent``) and the parts already
   out (``message.parts_sent``) are skipped, so a retry, a recovery or a replay resumes
   after the last part Telegram took instead of sending it again.
"""

from __future__ import annotations

import logging

from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.channels.telegram import rendering
from agenthost.channels.telegram.api import (
    BotApi,
    FormattingRejected,
    RateLimited,
    TelegramError,
)
from agenthost.sansio_core.routing import Destination

log = logging.getLogger("agenthost.channels.telegram")


def chat_of(destination: Destination) -> tuple[int, int | None] | None:
    """``(chat_id, thread_id)`` the destination names, or ``None`` when it names none."""
    conversation = destination.conversation_id
    if not conversation:
        conversation = destination.identity.native_id
    chat, _, thread = conversation.partition(":")
    try:
        return int(chat), int(thread) if thread else None
    except ValueError:
        return None


async def push(
    api: BotApi, destination: Destination, message: PushMessage, *, parse_mode: str
) -> PushOutcome:
    target = chat_of(destination)
    if target is None:
        return PushOutcome.permanent("no telegram chat for this destination")
    chat, thread = target

    async def send(text: str, mode: str | None) -> None:
        await api.send_message(
            chat,
            text,
            parse_mode=mode,
            thread_id=thread,
            silent=message.silent,
            wait_out_rate_limits=False,
        )

    try:
        if message.is_echo:
            document = rendering.normalize([rendering.Span(message.text)])
            for part in rendering.split_document(document):
                await send(rendering.to_plain(part), None)
        else:
            plain = False
            parts = rendering.split_document(rendering.parse_markdown(message.text))
            for index, part in enumerate(parts):
                if index < message.parts_sent:
                    continue  # Telegram has it already
                if not plain:
                    try:
                        await send(rendering.render(part, parse_mode), parse_mode)
                        await _part_sent(message, index + 1)
                        continue
                    except FormattingRejected:
                        plain = True
                        log.warning(
                            "telegram refused the formatting; pushing plain text",
                            extra={"delivery_id": message.delivery_id, "parse_mode": parse_mode},
                        )
                for piece in rendering.split_document(rendering.plain_document(part)):
                    await send(rendering.to_plain(piece), None)
                await _part_sent(message, index + 1)
    except RateLimited as limited:
        return PushOutcome.transient(str(limited), retry_after=limited.retry_after)
    except TelegramError as error:
        if error.permanent:
            return PushOutcome.permanent(str(error))
        return PushOutcome.transient(str(error))
    return PushOutcome.ok()


async def _part_sent(message: PushMessage, count: int) -> None:
    if message.on_part_sent is not None:
        await message.on_part_sent(count)
