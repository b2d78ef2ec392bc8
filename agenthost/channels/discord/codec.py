"""Discord interactions in, ``ChannelRequest`` values and the command menu out, with no I/O.

Rules:

1. The user is ``member.user.id`` in a guild and ``user.id`` elsewhere (never the channel).
   Snowflakes stay strings: they pass 2**53, so a JSON number would lose digits.
2. The conversation is the channel the interaction came from, a thread included (a thread
   is a channel with its own id): ``"<guild>:<channel>"`` in a guild, ``"dm:<channel>"`` in
   the bot's DM with the user (a 1:1 conversation, keyed on the user by the host), and
   ``"private:<channel>"`` for a DM or group DM between users, where a user-installed app
   runs (several people read it, so it is not direct).
3. What an interaction asks for:
   - the ask command (its name is the channel's; its ``message`` option is the text) is a
     turn; a host command (``/new``, ``/help``, ``/link [code]``, ``/unlink``) becomes the
     text ``/name args`` the host parses; an application's own command becomes
     ``/name text`` for the target;
   - a button is its ``custom_id``; a select menu is ``custom_id`` and the chosen values;
     a modal is the values of its text inputs, after its ``custom_id`` when that is a
     command (``/link`` and the code typed into the modal, say);
   - autocomplete asks for choices for the focused option;
   - anything else (a context-menu command, a command this bot does not know) is
     unsupported: the channel answers it with a short ephemeral message, never an error.
4. The command menu is the ask command (a required ``message`` option), the host's
   commands (``/link`` with an optional ``code``) and the application's (an optional
   ``text``, autocompleted when the application supplies choices), as one bulk-overwrite
   body; descriptions are cut to Discord's 100.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from agenthost.sansio_core.types import (
    ChannelCommand,
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ConversationScope,
    HostMessage,
    MultitaskStrategy,
    TextPart,
)

MESSAGE_OPTION = "message"

_SNOWFLAKE = re.compile(r"^[0-9]{1,20}$")
_COMMAND_NAME = re.compile(r"^[-_a-z0-9]{1,32}$")


class InteractionType(enum.IntEnum):
    PING = 1
    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    AUTOCOMPLETE = 4
    MODAL_SUBMIT = 5


class CallbackType(enum.IntEnum):
    PONG = 1
    CHANNEL_MESSAGE_WITH_SOURCE = 4
    DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE = 5
    DEFERRED_UPDATE_MESSAGE = 6
    UPDATE_MESSAGE = 7
    APPLICATION_COMMAND_AUTOCOMPLETE_RESULT = 8
    MODAL = 9


class Context(enum.IntEnum):
    """Where an interaction happened (``context``)."""

    GUILD = 0
    BOT_DM = 1
    PRIVATE_CHANNEL = 2


_CHAT_INPUT = 1  # application command type: a slash command
_STRING_OPTION = 3
_SUBCOMMAND_TYPES = (1, 2)  # options that hold options
_TEXT_INPUT = 4  # component type inside a modal


class MalformedInteraction(ValueError):
    """The payload is not an interaction this channel can read."""


@attrs.frozen
class Interaction:
    """The parts of an interaction the channel uses. ``data`` is Discord's, unchanged."""

    id: str
    type: int
    application_id: str
    token: str
    user_id: str | None
    guild_id: str | None
    channel_id: str | None
    context: int | None
    data: Mapping[str, Any] = attrs.field(factory=dict, eq=False)
    locale: str | None = None
    user_attributes: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    @property
    def is_direct(self) -> bool:
        return self.guild_id is None and self.context != Context.PRIVATE_CHANNEL

    @property
    def conversation_id(self) -> str | None:
        if self.channel_id is None:
            return None
        if self.guild_id is not None:
            return f"{self.guild_id}:{self.channel_id}"
        if self.context == Context.PRIVATE_CHANNEL:
            return f"private:{self.channel_id}"
        return f"dm:{self.channel_id}"

    def identity(self, channel: str) -> ChannelIdentity:
        if self.user_id is None:
            raise MalformedInteraction("this interaction has no user")
        return ChannelIdentity(channel, self.user_id, self.user_attributes)

    def session(self) -> ChannelSession:
        return ChannelSession(conversation_id=self.conversation_id, is_direct=self.is_direct)


def parse_interaction(data: Any) -> Interaction:
    """The interaction a verified body holds, or :class:`MalformedInteraction`."""
    if not isinstance(data, Mapping):
        raise MalformedInteraction("an interaction is a JSON object")
    kind = data.get("type")
    if not isinstance(kind, int) or isinstance(kind, bool):
        raise MalformedInteraction("an interaction has an integer type")
    interaction_id = _snowflake(data.get("id"), "id")
    application_id = _snowflake(data.get("application_id"), "application_id")
    token = data.get("token")
    if not isinstance(token, str) or not token or len(token) > 1000:
        raise MalformedInteraction("an interaction has a token")
    if kind == InteractionType.PING:
        return Interaction(interaction_id, kind, application_id, token, None, None, None, None)
    member = data.get("member")
    user = member.get("user") if isinstance(member, Mapping) else data.get("user")
    if not isinstance(user, Mapping):
        raise MalformedInteraction("an interaction has a member.user or a user")
    user_id = _snowflake(user.get("id"), "user.id")
    guild_id = data.get("guild_id")
    channel_id = data.get("channel_id")
    if channel_id is None and isinstance(data.get("channel"), Mapping):
        channel_id = data["channel"].get("id")
    context = data.get("context")
    payload = data.get("data")
    locale = data.get("locale")
    return Interaction(
        id=interaction_id,
        type=kind,
        application_id=application_id,
        token=token,
        user_id=user_id,
        guild_id=_snowflake(guild_id, "guild_id") if guild_id is not None else None,
        channel_id=_snowflake(channel_id, "channel_id") if channel_id is not None else None,
        context=context if isinstance(context, int) and not isinstance(context, bool) else None,
        data=payload if isinstance(payload, Mapping) else {},
        locale=locale if isinstance(locale, str) else None,
        user_attributes=_user_attributes(user),
    )


def _snowflake(value: Any, field: str) -> str:
    if isinstance(value, str) and _SNOWFLAKE.match(value):
        return value
    raise MalformedInteraction(f"{field} is a snowflake string")


def _user_attributes(user: Mapping[str, Any]) -> dict[str, Any]:
    # Display hints only (identity equality is the id); never used for decisions.
    hints = {"username": user.get("username"), "global_name": user.get("global_name")}
    return {key: value for key, value in hints.items() if isinstance(value, str) and value}


# --- what an interaction asks for ---------------------------------------------------------


@attrs.frozen
class Turn:
    """Text for the host: a message for the target, or ``/name args`` for a command."""

    text: str
    host_command: bool = False  # one of the host's commands: its answer is ephemeral


@attrs.frozen
class AutocompleteQuery:
    command: str
    option: str
    value: str


@attrs.frozen
class Unsupported:
    reason: str


Asked = Turn | AutocompleteQuery | Unsupported


@attrs.frozen
class CommandNames:
    """The commands this channel answers: the ask command, the host's, the application's."""

    ask: str
    host: frozenset[str] = frozenset()
    own: frozenset[str] = frozenset()


def understand(interaction: Interaction, names: CommandNames) -> Asked:
    """What ``interaction`` asks of the host (module rule 3)."""
    data = interaction.data
    if interaction.type == InteractionType.APPLICATION_COMMAND:
        return _command(data, names)
    if interaction.type == InteractionType.MESSAGE_COMPONENT:
        return _as_host_command(_component(data), names)
    if interaction.type == InteractionType.MODAL_SUBMIT:
        return _as_host_command(_modal(data), names)
    if interaction.type == InteractionType.AUTOCOMPLETE:
        focused = _focused(data.get("options"))
        if focused is None:
            return AutocompleteQuery(str(data.get("name", "")), "", "")
        return AutocompleteQuery(str(data.get("name", "")), *focused)
    return Unsupported(f"interaction type {interaction.type}")


def _command(data: Mapping[str, Any], names: CommandNames) -> Asked:
    name = data.get("name")
    if data.get("type", _CHAT_INPUT) != _CHAT_INPUT or not isinstance(name, str):
        return Unsupported("not a slash command")
    values = _string_values(data.get("options"))
    if name == names.ask:
        text = values.get(MESSAGE_OPTION, "").strip() or " ".join(values.values()).strip()
        return Turn(text) if text else Unsupported("an empty question")
    if name in names.host:
        return Turn(f"/{name} {' '.join(values.values())}".rstrip(), host_command=True)
    if name in names.own:
        return Turn(f"/{name} {' '.join(values.values())}".rstrip())
    return Unsupported("a command this bot does not know")


def _as_host_command(asked: Asked, names: CommandNames) -> Asked:
    """A component or modal whose text is one of the host's commands answers privately too."""
    if isinstance(asked, Turn) and asked.text.startswith("/"):
        name = asked.text[1:].split(maxsplit=1)[0].lower() if asked.text[1:].strip() else ""
        if name in names.host:
            return Turn(asked.text, host_command=True)
    return asked


def _string_values(options: Any) -> dict[str, str]:
    """The string options a slash command was given (subcommands flattened), in order."""
    found: dict[str, str] = {}
    for option in options if isinstance(options, list) else ():
        if not isinstance(option, Mapping):
            continue
        if option.get("type") in _SUBCOMMAND_TYPES:
            found.update(_string_values(option.get("options")))
        elif isinstance(option.get("name"), str) and option.get("value") is not None:
            value = option["value"]
            found[option["name"]] = value if isinstance(value, str) else str(value)
    return found


def _focused(options: Any) -> tuple[str, str] | None:
    for option in options if isinstance(options, list) else ():
        if not isinstance(option, Mapping):
            continue
        if option.get("type") in _SUBCOMMAND_TYPES:
            nested = _focused(option.get("options"))
            if nested is not None:
                return nested
        elif option.get("focused") is True:
            return str(option.get("name", "")), str(option.get("value", ""))
    return None


def _component(data: Mapping[str, Any]) -> Asked:
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id.strip():
        return Unsupported("a component without a custom_id")
    values = [str(v) for v in data.get("values") or () if isinstance(v, str | int)]
    if values:
        return Turn(f"{custom_id} {', '.join(values)}")
    return Turn(custom_id)


def _modal(data: Mapping[str, Any]) -> Asked:
    custom_id = data.get("custom_id")
    values = [value for value in _text_inputs(data.get("components")) if value.strip()]
    typed = "\n\n".join(values)
    if isinstance(custom_id, str) and custom_id.startswith("/"):
        return Turn(f"{custom_id} {typed}".rstrip())
    return Turn(typed) if typed else Unsupported("an empty modal")


def _text_inputs(components: Any) -> Iterable[str]:
    """Text input values in a modal, through action rows (``components``) and labels
    (``component``) alike."""
    for component in components if isinstance(components, list) else ():
        if not isinstance(component, Mapping):
            continue
        if component.get("type") == _TEXT_INPUT and isinstance(component.get("value"), str):
            yield component["value"]
        yield from _text_inputs(component.get("components"))
        if isinstance(component.get("component"), Mapping):
            yield from _text_inputs([component["component"]])


# --- the request ---------------------------------------------------------------------------


def channel_request(
    interaction: Interaction,
    text: str,
    *,
    channel: str,
    conversation_scope: ConversationScope = ConversationScope.PER_USER_PER_CONVERSATION,
    multitask: MultitaskStrategy | None = None,
    stream: bool = False,
) -> ChannelRequest:
    attributes: dict[str, Any] = {"interaction_id": interaction.id, "type": interaction.type}
    for key in ("guild_id", "channel_id", "locale"):
        value = getattr(interaction, key)
        if value is not None:
            attributes[key] = value
    return ChannelRequest(
        channel=channel,
        identity=interaction.identity(channel),
        input=(HostMessage(role="user", parts=(TextPart(text),)),),
        session=interaction.session(),
        conversation_scope=conversation_scope,
        multitask=multitask,
        stream=stream,
        attributes=attributes,
    )


# --- the command menu -------------------------------------------------------------------------


def valid_command_name(name: str) -> bool:
    return bool(_COMMAND_NAME.match(name))


def command_payloads(
    *,
    ask: str,
    ask_description: str,
    host_commands: Sequence[ChannelCommand],
    own_commands: Sequence[ChannelCommand],
    autocomplete: bool = False,
) -> list[dict[str, Any]]:
    """The bulk-overwrite body: the ask command, then the host's and the application's.

    With ``autocomplete`` the application's ``text`` options ask Discord for choices as
    the user types (Discord sends autocomplete only for options flagged so)."""
    commands: list[dict[str, Any]] = [
        {
            "name": ask,
            "type": _CHAT_INPUT,
            "description": ask_description[:100],
            "options": [
                {
                    "type": _STRING_OPTION,
                    "name": MESSAGE_OPTION,
                    "description": "What to say",
                    "required": True,
                    "max_length": 6000,
                }
            ],
        }
    ]
    seen = {ask}
    for command in host_commands:
        if command.name in seen or not command.expose_in_ui:
            continue
        seen.add(command.name)
        body: dict[str, Any] = {
            "name": command.name,
            "type": _CHAT_INPUT,
            "description": command.description[:100],
        }
        if command.name == "link":
            body["options"] = [
                {
                    "type": _STRING_OPTION,
                    "name": "code",
                    "description": "The code /link showed on your other account",
                    "required": False,
                }
            ]
        commands.append(body)
    for command in own_commands:
        if command.name in seen or not command.expose_in_ui:
            continue
        seen.add(command.name)
        commands.append(
            {
                "name": command.name,
                "type": _CHAT_INPUT,
                "description": command.description[:100],
                "options": [
                    {
                        "type": _STRING_OPTION,
                        "name": "text",
                        "description": "Anything to add",
                        "required": False,
                        "autocomplete": autocomplete,
                    }
                ],
            }
        )
    return commands[:100]
