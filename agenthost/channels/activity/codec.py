"""Bot Framework activities in, ``ChannelRequest`` values and outbound activities out, no I/O.

Rules:

1. Parsing goes through the maintained Activity models (``microsoft-agents-activity``);
   anything they refuse, or an activity without a type, conversation, sender or service
   URL, is :class:`MalformedActivity` (a 400, nothing recorded).
2. The user is ``from.aadObjectId`` on Teams (stable across the user's chats and apps)
   and ``from.id`` elsewhere; the tenant rides along as an attribute. The conversation is
   ``conversation.id``, which in a Teams channel already names the reply chain
   (``…;messageid=…``). A Teams ``personal`` chat, or a non-group conversation elsewhere,
   is a 1:1 conversation, which the host keys on the user.
3. ``message`` activities become turns. In a group chat or a channel the addressing mode
   decides (``mention_only`` by default: a ``mention`` entity naming the bot); the bot's
   ``<at>…</at>`` markup is removed from the text, other people's mentions keep their
   names. An ``Action.Submit`` card (a message with a ``value`` and no text) and an
   ``adaptiveCard/action`` invoke become turns whose text is the card's data.
4. Messages sent by a bot, and activity types the channel does not answer, are ignored.
   A ``conversationUpdate`` or ``installationUpdate`` that adds the bot is a greeting.
5. Outbound activities are plain JSON built here: replies carry ``textFormat`` markdown
   (the agent's answer) or plain (the host's own messages), and a text longer than the
   platform takes (about 80 KB, counted in UTF-16 like Teams does) is split at paragraph,
   line or word boundaries.
6. Teams streaming (1:1 chats only): an ``informative`` typing activity opens the stream,
   ``streaming`` typing activities carry the cumulative text with increasing
   ``streamSequence``, and a ``message`` with ``streamType: final`` closes it; the stream
   fields go in a ``streaminfo`` entity and, as teams.py does, in ``channelData``.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from microsoft_agents.activity import Activity, ActivityTypes
from pydantic import ValidationError

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

TEAMS = "msteams"
MAX_MESSAGE_UNITS = 80_000  # UTF-16 code units; Teams refuses ~100 KB (413)
ADAPTIVE_CARD_ACTION = "adaptiveCard/action"
CARD_RESPONSE_TYPE = "application/vnd.microsoft.activity.message"

_AT_TAG = re.compile(r"<at>(.*?)</at>", re.DOTALL | re.IGNORECASE)


class _DropSdkValidationLogs(logging.Filter):
    """The Activity model logs a refused payload with its input values (the user's text,
    their ids) at error level before re-raising; the codec reports refusals itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Validation error for Activity")


logging.getLogger("microsoft_agents.activity.activity").addFilter(_DropSdkValidationLogs())


class Addressing(enum.Enum):
    """Which group and channel messages are for the bot (1:1 chats always are)."""

    MENTION_ONLY = "mention_only"
    COMMAND_ONLY = "command_only"
    MENTION_OR_COMMAND = "mention_or_command"
    ALL = "all"


class IgnoreReason(enum.Enum):
    UNSUPPORTED = "unsupported_activity"
    FROM_BOT = "from_a_bot"
    NO_CONTENT = "no_content"
    NOT_ADDRESSED = "not_addressed"


class MalformedActivity(ValueError):
    """The body is not an activity this channel can read."""


@attrs.frozen
class Inbound:
    """One activity the bot should answer with a turn."""

    activity_id: str
    kind: str  # message or card_action
    channel_id: str
    service_url: str
    user_id: str  # the native identity (aadObjectId on Teams, else from.id)
    from_id: str  # the channel account id (what the connector addresses)
    conversation_id: str
    conversation_type: str  # personal, groupChat, channel (or "group"/"personal" elsewhere)
    text: str
    tenant_id: str | None = None
    aad_object_id: str | None = None
    locale: str | None = None
    attachments: tuple[AttachmentRef, ...] = ()
    user_attributes: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    @property
    def is_direct(self) -> bool:
        return self.conversation_type == "personal"

    @property
    def streams(self) -> bool:
        """Whether the chat takes Teams streaming (1:1 Teams chats only)."""
        return self.channel_id == TEAMS and self.is_direct

    def identity(self, channel: str) -> ChannelIdentity:
        return ChannelIdentity(channel, self.user_id, self.user_attributes)

    def session(self) -> ChannelSession:
        return ChannelSession(conversation_id=self.conversation_id, is_direct=self.is_direct)


@attrs.frozen
class AttachmentRef:
    """A file the user sent. Its URL is fetched through the host (with the bot token where
    the channel needs it); the target never sees the URL or the token."""

    url: str
    media_type: str
    name: str | None = None


@attrs.frozen
class Greeting:
    """The bot was added to a conversation (installed, or joined a chat)."""

    conversation_id: str
    conversation_type: str


@attrs.frozen
class Ignored:
    reason: IgnoreReason


def parse(data: Any) -> Activity:
    """The activity in a JSON body (rule 1)."""
    if not isinstance(data, Mapping):
        raise MalformedActivity("an activity is a JSON object")
    try:
        activity = Activity.model_validate(dict(data))
    except (ValidationError, ValueError, TypeError) as error:
        raise MalformedActivity("the activity does not parse") from error
    if (
        activity.conversation is None
        or activity.from_property is None
        or not activity.from_property.id
        or not activity.service_url
        or not activity.channel_id
    ):
        raise MalformedActivity("an activity names its conversation, sender and service URL")
    return activity


def channel_of(activity: Activity) -> str:
    """The base channel id (``msteams`` of ``msteams:copilot-web``)."""
    return str(activity.channel_id).split(":", 1)[0]


def conversation_type_of(activity: Activity) -> str:
    conversation = activity.conversation
    if conversation.conversation_type in ("personal", "groupChat", "channel"):
        return conversation.conversation_type
    return "group" if conversation.is_group else "personal"


def tenant_of(activity: Activity) -> str | None:
    if activity.conversation.tenant_id:
        return activity.conversation.tenant_id
    data = activity.channel_data
    tenant = data.get("tenant") if isinstance(data, Mapping) else None
    tenant_id = tenant.get("id") if isinstance(tenant, Mapping) else None
    return tenant_id if isinstance(tenant_id, str) and tenant_id else None


def dedupe_key(activity: Activity) -> str | None:
    """What identifies a redelivery of this activity (``None``: it has no id)."""
    if not activity.id:
        return None
    return json.dumps([channel_of(activity), activity.conversation.id, activity.id])


def reference_of(activity: Activity) -> dict[str, Any]:
    """The ``ConversationReference`` of an activity, as JSON (what a push needs)."""
    reference = activity.get_conversation_reference()
    dumped: dict[str, Any] = reference.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def interpret(
    activity: Activity, *, addressing: Addressing = Addressing.MENTION_ONLY
) -> Inbound | Greeting | Ignored:
    """Decide what an activity means for the bot (rules 2-4)."""
    kind = activity.type
    if kind in (ActivityTypes.conversation_update, ActivityTypes.installation_update):
        return _greeting(activity)
    if kind == ActivityTypes.invoke:
        if activity.name != ADAPTIVE_CARD_ACTION:
            return Ignored(IgnoreReason.UNSUPPORTED)
        return _card_action(activity)
    if kind != ActivityTypes.message:
        return Ignored(IgnoreReason.UNSUPPORTED)
    sender = activity.from_property
    if sender.role == "bot":
        return Ignored(IgnoreReason.FROM_BOT)
    mentioned = _mentions_bot(activity)
    direct = conversation_type_of(activity) == "personal"
    if not (activity.text or "").strip() and activity.value is not None:
        return _inbound(activity, "card_action", _card_text(activity.value))
    text = strip_bot_mention(activity)
    is_command = text.lstrip().startswith("/")
    if not direct and not _addressed(addressing, mentioned=mentioned, command=is_command):
        return Ignored(IgnoreReason.NOT_ADDRESSED)
    attachments = _attachments(activity)
    if not text.strip() and not attachments:
        return Ignored(IgnoreReason.NO_CONTENT)
    return _inbound(activity, "message", text.strip(), attachments)


def _inbound(
    activity: Activity, kind: str, text: str, attachments: tuple[AttachmentRef, ...] = ()
) -> Inbound:
    sender = activity.from_property
    channel_id = channel_of(activity)
    aad = sender.aad_object_id
    user_id = aad if channel_id == TEAMS and aad else sender.id
    tenant = tenant_of(activity)
    hints = {"name": sender.name, "tenant_id": tenant, "from_id": sender.id}
    return Inbound(
        activity_id=activity.id or "",
        kind=kind,
        channel_id=channel_id,
        service_url=activity.service_url,
        user_id=user_id,
        from_id=sender.id,
        conversation_id=activity.conversation.id,
        conversation_type=conversation_type_of(activity),
        text=text,
        tenant_id=tenant,
        aad_object_id=aad,
        locale=activity.locale,
        attachments=attachments,
        # Display and routing hints only: identity equality is the native id.
        user_attributes={key: value for key, value in hints.items() if value},
    )


def _greeting(activity: Activity) -> Greeting | Ignored:
    bot_id = activity.recipient.id if activity.recipient else None
    added = any(member.id == bot_id for member in activity.members_added or ())
    installed = activity.type == ActivityTypes.installation_update and activity.action in (
        "add",
        "add-upgrade",
    )
    if bot_id and (added or installed):
        return Greeting(activity.conversation.id, conversation_type_of(activity))
    return Ignored(IgnoreReason.UNSUPPORTED)


def _card_action(activity: Activity) -> Inbound | Ignored:
    value = activity.value if isinstance(activity.value, Mapping) else {}
    action = value.get("action") if isinstance(value, Mapping) else None
    data = action.get("data") if isinstance(action, Mapping) else None
    verb = action.get("verb") if isinstance(action, Mapping) else None
    payload: dict[str, Any] = {}
    if isinstance(verb, str) and verb:
        payload["verb"] = verb
    if data is not None:
        payload["data"] = data
    if not payload:
        return Ignored(IgnoreReason.NO_CONTENT)
    return _inbound(activity, "card_action", _card_text(payload))


def _card_text(value: Any) -> str:
    # The target reads what the card submitted; JSON keeps it exact and unambiguous.
    return "[card action] " + json.dumps(value, sort_keys=True, ensure_ascii=False)


def _mentions_bot(activity: Activity) -> bool:
    if activity.recipient is None or not activity.recipient.id:
        return False
    return activity.get_account_mention(activity.recipient.id) is not None


def strip_bot_mention(activity: Activity) -> str:
    """The activity's text without the bot's own ``<at>Name</at>``."""
    text = activity.text or ""
    if activity.recipient is None or not activity.recipient.id:
        return text
    mention = activity.get_account_mention(activity.recipient.id)
    if mention is not None and mention.text:
        text = text.replace(mention.text, " ")
    return _AT_TAG.sub(lambda m: m.group(1), text)


def _addressed(addressing: Addressing, *, mentioned: bool, command: bool) -> bool:
    if addressing is Addressing.ALL:
        return True
    if addressing is Addressing.COMMAND_ONLY:
        return command
    if addressing is Addressing.MENTION_OR_COMMAND:
        return mentioned or command
    return mentioned


def _attachments(activity: Activity) -> tuple[AttachmentRef, ...]:
    found: list[AttachmentRef] = []
    for attachment in activity.attachments or ():
        content_type = attachment.content_type or ""
        content = attachment.content if isinstance(attachment.content, Mapping) else {}
        if content_type == "application/vnd.microsoft.teams.file.download.info":
            url = content.get("downloadUrl")
            file_type = content.get("fileType")
            media_type = _media_type_of_extension(file_type if isinstance(file_type, str) else "")
        else:
            url = attachment.content_url
            media_type = content_type
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            continue  # cards, HTML fragments and inline data are not files
        if "*" in media_type:  # Teams sends inline images as "image/*"
            media_type = "application/octet-stream"
        if media_type.startswith("text/html") or media_type.startswith("application/vnd."):
            continue
        found.append(AttachmentRef(url, media_type or "application/octet-stream", attachment.name))
    return tuple(found)


_EXTENSIONS = {
    "pdf": "application/pdf",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "txt": "text/plain",
    "csv": "text/csv",
    "json": "application/json",
}


def _media_type_of_extension(extension: str) -> str:
    return _EXTENSIONS.get(extension.lower(), "application/octet-stream")


# --- the request ------------------------------------------------------------------------


def channel_request(
    inbound: Inbound,
    *,
    channel: str,
    file_parts: Sequence[ContentPart] = (),
    conversation_scope: ConversationScope = ConversationScope.PER_USER_PER_CONVERSATION,
    multitask: MultitaskStrategy | None = None,
    stream: bool = False,
) -> ChannelRequest:
    """The host request for an inbound activity; ``file_parts`` stand for its files."""
    parts: list[ContentPart] = []
    if inbound.text:
        parts.append(TextPart(inbound.text))
    parts.extend(file_parts)
    attributes: dict[str, Any] = {
        "activity_id": inbound.activity_id,
        "channel_id": inbound.channel_id,
        "conversation_type": inbound.conversation_type,
        "kind": inbound.kind,
    }
    if inbound.tenant_id:
        attributes["tenant_id"] = inbound.tenant_id
    return ChannelRequest(
        channel=channel,
        identity=inbound.identity(channel),
        input=(HostMessage(role="user", parts=tuple(parts)),),
        session=inbound.session(),
        conversation_scope=conversation_scope,
        multitask=multitask,
        stream=stream and inbound.streams,
        attributes=attributes,
    )


# --- outbound activities ------------------------------------------------------------------


def message(
    reference: Mapping[str, Any],
    text: str,
    *,
    markdown: bool,
    reply_to_id: str | None = None,
    silent: bool = False,
) -> dict[str, Any]:
    """A ``message`` activity into the referenced conversation."""
    activity: dict[str, Any] = {
        **_addressing(reference),
        "type": "message",
        "text": text,
        "textFormat": "markdown" if markdown else "plain",
    }
    if reply_to_id:
        activity["replyToId"] = reply_to_id
    if silent and reference.get("channelId") == TEAMS:
        # Teams posts it without a notification to the user's activity feed.
        activity["channelData"] = {"notification": {"alert": False}}
    return activity


def typing(reference: Mapping[str, Any]) -> dict[str, Any]:
    return {**_addressing(reference), "type": "typing"}


def stream_update(
    reference: Mapping[str, Any],
    text: str,
    *,
    sequence: int,
    stream_id: str | None,
    informative: bool = False,
) -> dict[str, Any]:
    """A Teams streaming ``typing`` activity (rule 6): informative or a cumulative chunk."""
    info: dict[str, Any] = {
        "streamType": "informative" if informative else "streaming",
        "streamSequence": sequence,
    }
    if stream_id is not None:
        info["streamId"] = stream_id
    return {
        **_addressing(reference),
        "type": "typing",
        "text": text,
        "entities": [{"type": "streaminfo", **info}],
        "channelData": dict(info),
    }


def stream_final(
    reference: Mapping[str, Any], text: str, *, stream_id: str, markdown: bool = True
) -> dict[str, Any]:
    """The ``message`` that ends a Teams stream with the whole answer."""
    info = {"streamId": stream_id, "streamType": "final"}
    return {
        **_addressing(reference),
        "type": "message",
        "text": text,
        "textFormat": "markdown" if markdown else "plain",
        "entities": [{"type": "streaminfo", **info}],
        "channelData": dict(info),
    }


def _addressing(reference: Mapping[str, Any]) -> dict[str, Any]:
    conversation = reference.get("conversation") or {}
    activity: dict[str, Any] = {"conversation": {"id": conversation.get("id")}}
    if reference.get("bot"):
        activity["from"] = dict(reference["bot"])
    if reference.get("user"):
        activity["recipient"] = dict(reference["user"])
    if reference.get("locale"):
        activity["locale"] = reference["locale"]
    return activity


def card_invoke_response(text: str) -> dict[str, Any]:
    """The ``InvokeResponse`` body for an ``adaptiveCard/action`` taken in as a turn."""
    return {"statusCode": 200, "type": CARD_RESPONSE_TYPE, "value": text}


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_MESSAGE_UNITS) -> list[str]:
    """``text`` in pieces of at most ``limit`` UTF-16 units, cut at the last paragraph,
    line or space break that fits (a hard cut only when a piece has none)."""
    if limit < 2:
        raise ValueError("limit must allow a character")
    pieces: list[str] = []
    rest = text
    while utf16_units(rest) > limit:
        # The longest prefix within the limit, in characters.
        end, units = 0, 0
        for char in rest:
            width = 2 if ord(char) > 0xFFFF else 1
            if units + width > limit:
                break
            units += width
            end += 1
        window = rest[:end]
        cut = -1
        for separator in ("\n\n", "\n", " "):
            cut = window.rfind(separator)
            if cut > 0:
                cut += len(separator)
                break
        if cut <= 0:
            cut = end
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    if rest.strip() or not pieces:
        pieces.append(rest)
    return pieces
