"""Telegram updates in, ``ChannelRequest`` values out, with no I/O.

Rules:

1. The user is ``from.id`` (never the chat); the conversation is the chat id, plus the
   ``message_thread_id`` of a forum topic (``"<chat>:<topic>"``). A private chat is a 1:1
   conversation, which the host always keys on the user.
2. Messages, edited messages (with their captions) and callback queries are understood;
   every other update (channel posts, reactions, member changes ...) is ignored, and so is
   anything a bot sent (that includes a group's anonymous administrators, who write as
   ``GroupAnonymousBot``). An edited message was answered already as it first was: it is
   ignored unless the channel asks for edits to be answered (``answer_edits``).
3. A command is a ``bot_command`` entity at the start of the text. ``/name@OtherBot`` is
   another bot's command and is ignored entirely, in every chat; ``/name@ThisBot`` loses
   its ``@ThisBot`` before the text goes on, so the host sees ``/name args``.
4. In a private chat every message is addressed to the bot. In a group the addressing mode
   decides: ``mention_only`` (a ``mention`` of the bot's username, a ``text_mention`` of the
   bot, a reply to one of the bot's messages, or a command that names the bot),
   ``command_only`` (a command not meant for another bot), ``mention_or_command``, or
   ``all``. A callback query is always addressed: the button was the bot's.
5. A leading mention of the bot is removed from the text; the target reads what the user
   said to it, not the bot's name.

A group upgraded to a supergroup gets a new chat id; :func:`migration_of` reads the
service message that says so, so the channel can keep the conversation on the old id.

Entity offsets are UTF-16 code units (Telegram's unit), so they are converted before any
slicing. Parsing goes through python-telegram-bot's ``Update.de_json(data, None)``, which
needs no bot and does no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from telegram import Message, MessageEntity, Update, User
from telegram.constants import ChatType, MessageEntityType

from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ContentPart,
    ConversationScope,
    HostMessage,
    MultitaskStrategy,
    TextPart,
)

_GROUPS = frozenset({ChatType.GROUP, ChatType.SUPERGROUP})


class Addressing(enum.Enum):
    """Which group messages are for the bot (private chats are always)."""

    MENTION_ONLY = "mention_only"
    COMMAND_ONLY = "command_only"
    MENTION_OR_COMMAND = "mention_or_command"
    ALL = "all"


class IgnoreReason(enum.Enum):
    UNSUPPORTED = "unsupported_update"
    FROM_BOT = "from_a_bot"
    NO_CONTENT = "no_content"
    NOT_ADDRESSED = "not_addressed"
    OTHER_BOT = "command_for_another_bot"
    EDITED = "edited_message"


class MalformedUpdate(ValueError):
    """The payload is not a Telegram update (no integer ``update_id``, or unparseable)."""


@attrs.frozen
class BotProfile:
    """Who this bot is: its numeric id and its username (without ``@``)."""

    id: int
    username: str

    def is_named(self, name: str) -> bool:
        return name.lstrip("@").lower() == self.username.lower()


@attrs.frozen
class Command:
    name: str  # as typed, without the slash and without ``@bot``
    args: str
    names_bot: bool  # written ``/name@ThisBot``


@attrs.frozen
class TelegramFile:
    """A file the user sent; the model gets a signed host URL for it, never Telegram's."""

    file_id: str
    kind: str  # photo, document, audio, voice, video, animation, video_note
    media_type: str | None = None
    size: int | None = None


@attrs.frozen
class Inbound:
    """One update the bot should answer."""

    update_id: int
    kind: str  # message, edited_message or callback_query
    user_id: int
    chat_id: int
    chat_type: str
    thread_id: int | None  # the forum topic, when the message is in one
    message_id: int | None
    text: str
    command: Command | None = None
    files: tuple[TelegramFile, ...] = ()
    callback_query_id: str | None = None
    user_attributes: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    @property
    def is_direct(self) -> bool:
        return self.chat_type == ChatType.PRIVATE

    @property
    def conversation_id(self) -> str:
        if self.thread_id is not None:
            return f"{self.chat_id}:{self.thread_id}"
        return str(self.chat_id)

    def identity(self, channel: str) -> ChannelIdentity:
        return ChannelIdentity(channel, str(self.user_id), self.user_attributes)

    def session(self) -> ChannelSession:
        return ChannelSession(conversation_id=self.conversation_id, is_direct=self.is_direct)


@attrs.frozen
class Ignored:
    update_id: int
    reason: IgnoreReason


def update_id_of(data: Any) -> int:
    """The ``update_id`` of a payload, or :class:`MalformedUpdate`."""
    if not isinstance(data, Mapping):
        raise MalformedUpdate("an update is a JSON object")
    update_id = data.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or update_id < 0:
        raise MalformedUpdate("an update has a non-negative integer update_id")
    return update_id


def chat_of(data: Mapping[str, Any]) -> int | None:
    """The chat an update belongs to, read straight from the payload (for ordering)."""
    for field in ("message", "edited_message"):
        message = data.get(field)
        if isinstance(message, Mapping):
            return _chat_id(message)
    query = data.get("callback_query")
    if isinstance(query, Mapping) and isinstance(query.get("message"), Mapping):
        return _chat_id(query["message"])
    return None


def _chat_id(message: Mapping[str, Any]) -> int | None:
    chat = message.get("chat")
    chat_id = chat.get("id") if isinstance(chat, Mapping) else None
    return chat_id if isinstance(chat_id, int) else None


def migration_of(data: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(old_chat_id, new_chat_id)`` when the update announces a group's upgrade to a
    supergroup (``migrate_to_chat_id`` in the old chat, ``migrate_from_chat_id`` in the
    new one), else ``None``."""
    message = data.get("message")
    if not isinstance(message, Mapping):
        return None
    chat = _chat_id(message)
    moved_to, moved_from = message.get("migrate_to_chat_id"), message.get("migrate_from_chat_id")
    if chat is None:
        return None
    if isinstance(moved_to, int) and not isinstance(moved_to, bool) and moved_to != chat:
        return chat, moved_to
    if isinstance(moved_from, int) and not isinstance(moved_from, bool) and moved_from != chat:
        return moved_from, chat
    return None


def parse_update(
    data: Any,
    *,
    bot: BotProfile,
    addressing: Addressing = Addressing.MENTION_ONLY,
    answer_edits: bool = False,
) -> Inbound | Ignored:
    """Decide what an update means for this bot (see the module rules)."""
    update_id = update_id_of(data)
    # python-telegram-bot builds its objects without checking field types (a list where
    # ``text`` belongs passes), so a wrongly typed field surfaces while the update is
    # interpreted: that is a malformed update too, never an error of the host.
    try:
        update = Update.de_json(dict(data), None)
        if update.callback_query is not None:
            return _callback(update_id, update, bot)
        if update.message is not None:
            return _message(update_id, "message", update.message, bot, addressing)
        if update.edited_message is not None:
            if not answer_edits:
                return Ignored(update_id, IgnoreReason.EDITED)
            return _message(update_id, "edited_message", update.edited_message, bot, addressing)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise MalformedUpdate(f"update {update_id} does not parse") from error
    return Ignored(update_id, IgnoreReason.UNSUPPORTED)


def _message(
    update_id: int, kind: str, message: Message, bot: BotProfile, addressing: Addressing
) -> Inbound | Ignored:
    sender = message.from_user
    chat = message.chat
    if sender is None or chat.type not in (ChatType.PRIVATE, *_GROUPS):
        return Ignored(update_id, IgnoreReason.UNSUPPORTED)
    if sender.is_bot:
        return Ignored(update_id, IgnoreReason.FROM_BOT)
    text = message.text if message.text is not None else (message.caption or "")
    entities = message.entities if message.text is not None else message.caption_entities
    files = _files(message)

    command = _command(text, entities, bot)
    if isinstance(command, Ignored):
        return Ignored(update_id, IgnoreReason.OTHER_BOT)
    mention = _bot_mention(text, entities, bot)
    replying_to_bot = _replies_to_bot(message, bot)
    if chat.type in _GROUPS and not _addressed(
        addressing, command, mentioned=mention is not None or replying_to_bot
    ):
        return Ignored(update_id, IgnoreReason.NOT_ADDRESSED)

    if command is not None:
        text = f"/{command.name} {command.args}".rstrip()
    elif mention is not None:
        text = _without_leading_mention(text, mention)
    if not text.strip() and not files:
        return Ignored(update_id, IgnoreReason.NO_CONTENT)
    return Inbound(
        update_id=update_id,
        kind=kind,
        user_id=sender.id,
        chat_id=chat.id,
        chat_type=str(chat.type),
        thread_id=_topic(message),
        message_id=message.message_id,
        text=text,
        command=command,
        files=files,
        user_attributes=_user_attributes(sender),
    )


def _callback(update_id: int, update: Update, bot: BotProfile) -> Inbound | Ignored:
    query = update.callback_query
    assert query is not None
    message = query.message
    if query.from_user.is_bot:
        return Ignored(update_id, IgnoreReason.FROM_BOT)
    if message is None:  # a button under an inline-mode message: there is no chat to answer
        return Ignored(update_id, IgnoreReason.UNSUPPORTED)
    if message.chat.type not in (ChatType.PRIVATE, *_GROUPS):
        return Ignored(update_id, IgnoreReason.UNSUPPORTED)
    if not query.data:
        return Ignored(update_id, IgnoreReason.NO_CONTENT)
    thread = _topic(message) if isinstance(message, Message) else None
    return Inbound(
        update_id=update_id,
        kind="callback_query",
        user_id=query.from_user.id,
        chat_id=message.chat.id,
        chat_type=str(message.chat.type),
        thread_id=thread,
        message_id=message.message_id,
        text=query.data,
        callback_query_id=query.id,
        user_attributes=_user_attributes(query.from_user),
    )


def _addressed(addressing: Addressing, command: Command | None, *, mentioned: bool) -> bool:
    if addressing is Addressing.ALL:
        return True
    if addressing is Addressing.COMMAND_ONLY:
        return command is not None
    if addressing is Addressing.MENTION_OR_COMMAND:
        return mentioned or command is not None
    return mentioned or (command is not None and command.names_bot)


def _command(
    text: str, entities: Sequence[MessageEntity], bot: BotProfile
) -> Command | Ignored | None:
    """The command the text starts with; ``Ignored`` when it names another bot."""
    first = next(
        (e for e in entities if e.type == MessageEntityType.BOT_COMMAND and e.offset == 0), None
    )
    if first is None:
        return None
    start, end = _span(text, first.offset, first.length)
    written = text[start + 1 : end]  # without the slash
    name, _, target = written.partition("@")
    if not name:
        return None
    if target and not bot.is_named(target):
        return Ignored(0, IgnoreReason.OTHER_BOT)
    return Command(name=name, args=text[end:].strip(), names_bot=bool(target))


def _bot_mention(
    text: str, entities: Sequence[MessageEntity], bot: BotProfile
) -> tuple[int, int] | None:
    """Where the first mention of the bot is (Python indices), if the text has one."""
    for entity in entities:
        if entity.type == MessageEntityType.MENTION:
            start, end = _span(text, entity.offset, entity.length)
            if bot.is_named(text[start:end]):
                return start, end
        elif (
            entity.type == MessageEntityType.TEXT_MENTION
            and entity.user is not None
            and entity.user.id == bot.id
        ):
            return _span(text, entity.offset, entity.length)
    return None


def _replies_to_bot(message: Message, bot: BotProfile) -> bool:
    replied = message.reply_to_message
    if replied is None or replied.from_user is None or replied.from_user.id != bot.id:
        return False
    # In a forum every message "replies" to its topic's first message: that is no reply.
    return not (message.is_topic_message and replied.message_id == message.message_thread_id)


def _without_leading_mention(text: str, mention: tuple[int, int]) -> str:
    start, end = mention
    if text[:start].strip():
        return text  # the bot is named mid-sentence: the sentence stays as written
    return text[end:].lstrip(" \t\n,:;").strip()


def _topic(message: Message) -> int | None:
    if message.is_topic_message and message.message_thread_id is not None:
        return message.message_thread_id
    return None


def _files(message: Message) -> tuple[TelegramFile, ...]:
    found: list[TelegramFile] = []
    if message.photo:
        largest = message.photo[-1]  # Telegram lists the sizes smallest first
        found.append(TelegramFile(largest.file_id, "photo", "image/jpeg", largest.file_size))
    for kind in ("document", "audio", "voice", "video", "animation", "video_note"):
        item = getattr(message, kind, None)
        if item is not None:
            media_type = getattr(item, "mime_type", None)
            if kind == "video_note":
                media_type = "video/mp4"
            found.append(TelegramFile(item.file_id, kind, media_type, item.file_size))
    return tuple(found)


def _user_attributes(user: User) -> dict[str, Any]:
    # Display hints only (identity equality is the id); never used for decisions.
    hints = {
        "username": user.username,
        "first_name": user.first_name,
        "language_code": user.language_code,
    }
    return {key: value for key, value in hints.items() if value}


def _span(text: str, offset: int, length: int) -> tuple[int, int]:
    """Python indices of a UTF-16 ``(offset, length)`` range of ``text``."""
    start = end = None
    units = 0
    for index, char in enumerate(text):
        if start is None and units >= offset:
            start = index
        if units >= offset + length:
            end = index
            break
        units += 2 if ord(char) > 0xFFFF else 1
    if start is None:
        start = len(text)
    if end is None:
        end = len(text)
    return start, end


# --- the request ---------------------------------------------------------------------


def channel_request(
    inbound: Inbound,
    *,
    channel: str,
    file_parts: Sequence[ContentPart] = (),
    conversation_scope: ConversationScope = ConversationScope.PER_USER_PER_CONVERSATION,
    multitask: MultitaskStrategy | None = None,
    stream: bool = False,
) -> ChannelRequest:
    """The host request for an inbound update; ``file_parts`` stand for its files."""
    parts: list[ContentPart] = []
    if inbound.text:
        parts.append(TextPart(inbound.text))
    parts.extend(file_parts)
    attributes: dict[str, Any] = {
        "update_id": inbound.update_id,
        "chat_id": inbound.chat_id,
        "chat_type": inbound.chat_type,
        "kind": inbound.kind,
    }
    if inbound.message_id is not None:
        attributes["message_id"] = inbound.message_id
    if inbound.thread_id is not None:
        attributes["thread_id"] = inbound.thread_id
    return ChannelRequest(
        channel=channel,
        identity=inbound.identity(channel),
        input=(HostMessage(role="user", parts=tuple(parts)),),
        session=inbound.session(),
        conversation_scope=conversation_scope,
        multitask=multitask,
        stream=stream,
        attributes=attributes,
    )
