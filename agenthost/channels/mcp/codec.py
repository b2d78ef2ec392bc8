"""The MCP channel's wire shapes and its small decisions, both ways, with no I/O.

Inbound: the arguments of a ``tools/call`` (the hosted target's tool and the host-command
tools), the ``Authorization``, ``Host`` and ``Origin`` headers, and which conversation a
call continues (:func:`session_for`). Outbound: the tool catalog (``tools/list``) and every
``CallToolResult`` the channel answers, including a turn's outcome
(:func:`render_outcome`). A tool's failure is a result with ``isError: true`` and a bland
message the model can read; protocol failures (an unknown tool) are the SDK's JSON-RPC
errors. Which tools exist depends on the host's command catalog, read once at start-up.

The types are the MCP SDK's own (``mcp_types``); nothing here awaits or reads a clock.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
import mcp_types as types

from agenthost.sansio_core.commands import CommandReply
from agenthost.sansio_core.turns import (
    RefusalReason,
    TurnCompleted,
    TurnFailed,
    TurnOutcome,
    TurnRefused,
)
from agenthost.sansio_core.types import ChannelSession, RunStatus

# JSON Schema patterns (ECMA-262) for the catalog; the checks here use ``fullmatch``, since
# Python's ``$`` would also accept a trailing newline.
CONVERSATION_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
RUN_PATTERN = r"^[A-Za-z0-9._:\-]{1,256}$"
_CONVERSATION = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_RUN = re.compile(r"[A-Za-z0-9._:\-]{1,256}")
MAX_MESSAGE_CHARS = 100_000

# Host command -> the tool that offers it. ``help`` has no tool: ``tools/list`` is an MCP
# client's help, and "/help" sent as a message still answers the host's command list.
NEW_CONVERSATION = "new_conversation"
LINK_ACCOUNT = "link_account"
UNLINK_ACCOUNT = "unlink_account"
CHECK_RUN = "check_run"
CANCEL_RUN = "cancel_run"
COMMAND_TOOLS: Mapping[str, str] = {
    "new": NEW_CONVERSATION,
    "link": LINK_ACCOUNT,
    "unlink": UNLINK_ACCOUNT,
}

FAILED_MESSAGE = "The agent could not answer this request."
CANCELLED_MESSAGE = "The run was cancelled before it finished."
NO_RUN_MESSAGE = "No run has that id (or it expired)."


class ToolInputError(Exception):
    """The arguments do not fit the tool: answered as a tool error the model can correct."""


@attrs.frozen
class ToolSettings:
    """What the channel's configuration says about its tools."""

    name: str
    title: str
    description: str
    background_runs: bool


# --- the catalog -----------------------------------------------------------------------

_CONVERSATION_PROPERTY = {
    "type": "string",
    "pattern": CONVERSATION_PATTERN,
    "description": (
        "Optional. The name of a conversation to continue (1-128 letters, digits, '.', "
        "'_', ':' or '-'); names are yours alone. Every answer gives the name of the "
        "conversation it used."
    ),
}

ANSWER_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "status": {
            "type": "string",
            "enum": [status.value for status in RunStatus],
            "description": "'completed' when text is the agent's reply.",
        },
        "text": {"type": "string", "description": "The agent's reply, or what happened."},
        "conversation": {
            "type": "string",
            "description": "Pass this as 'conversation' to continue this conversation.",
        },
        "run": {
            "type": "string",
            "description": f"A background run's id, for {CHECK_RUN} and {CANCEL_RUN}.",
        },
    },
    "required": ["status", "text"],
}


def catalog(settings: ToolSettings, commands: Collection[str]) -> list[types.Tool]:
    """The tools: the target's, one per host command in ``commands``, and the run tools."""
    properties: dict[str, Any] = {
        "message": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_MESSAGE_CHARS,
            "description": "What to say to the agent.",
        },
        "conversation": _CONVERSATION_PROPERTY,
    }
    if settings.background_runs:
        properties["background"] = {
            "type": "boolean",
            "description": (
                f"Run in the background and answer a run id at once; ask {CHECK_RUN} for "
                "the reply. For long requests."
            ),
        }
    tools = [
        types.Tool(
            name=settings.name,
            title=settings.title,
            description=settings.description,
            input_schema={
                "type": "object",
                "properties": properties,
                "required": ["message"],
                "additionalProperties": False,
            },
            output_schema=dict(ANSWER_SCHEMA),
            annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False),
        )
    ]
    if "new" in commands:
        tools.append(
            _command_tool(
                NEW_CONVERSATION,
                "New conversation",
                "Start the conversation over: the next message begins a fresh one (the "
                "named 'conversation', or this connection's).",
                {"conversation": _CONVERSATION_PROPERTY},
            )
        )
    if "link" in commands:
        tools.append(
            _command_tool(
                LINK_ACCOUNT,
                "Link account",
                "Link this account with the user's account on another channel, so both "
                "share one conversation. Without 'code' it answers a one-time code to send "
                "as '/link CODE' on the other channel; with a code shown elsewhere, it "
                "completes that link.",
                {"code": {"type": "string", "minLength": 1, "maxLength": 64}},
            )
        )
    if "unlink" in commands:
        tools.append(
            _command_tool(
                UNLINK_ACCOUNT,
                "Unlink account",
                "Unlink this account from the user's other accounts.",
                {},
            )
        )
    if settings.background_runs:
        run_property = {"run": {"type": "string", "pattern": RUN_PATTERN}}
        tools.append(
            types.Tool(
                name=CHECK_RUN,
                title="Check a background run",
                description=f"The status of a background run of {settings.name}, and its "
                "reply once it has completed.",
                input_schema=_object_schema(run_property, required=["run"]),
                output_schema=dict(ANSWER_SCHEMA),
                annotations=types.ToolAnnotations(read_only_hint=True),
            )
        )
        tools.append(
            types.Tool(
                name=CANCEL_RUN,
                title="Cancel a background run",
                description=f"Stop a background run of {settings.name}.",
                input_schema=_object_schema(run_property, required=["run"]),
                output_schema=dict(ANSWER_SCHEMA),
                annotations=types.ToolAnnotations(destructive_hint=True, idempotent_hint=True),
            )
        )
    return tools


def _command_tool(
    name: str, title: str, description: str, properties: Mapping[str, Any]
) -> types.Tool:
    return types.Tool(
        name=name,
        title=title,
        description=description,
        input_schema=_object_schema(properties),
        annotations=types.ToolAnnotations(read_only_hint=False),
    )


def _object_schema(
    properties: Mapping[str, Any], *, required: Sequence[str] = ()
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": dict(properties),
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


# --- calls -----------------------------------------------------------------------------


@attrs.frozen
class Ask:
    """A message for the target."""

    message: str
    conversation: str | None = None
    background: bool = False


@attrs.frozen
class Command:
    """A host command, as the text the host parses (``/new``, ``/link CODE``)."""

    command: str
    text: str
    conversation: str | None = None


@attrs.frozen
class RunQuery:
    """``check_run`` (``cancel=False``) or ``cancel_run``."""

    run: str
    cancel: bool = False


Call = Ask | Command | RunQuery


def parse_call(
    name: str,
    arguments: Mapping[str, Any] | None,
    *,
    settings: ToolSettings,
    tools: Collection[str],
) -> Call | None:
    """The call, ``None`` for a tool this channel does not offer, or :class:`ToolInputError`."""
    if name not in tools:
        return None
    args = dict(arguments or {})
    if name == settings.name:
        allowed = {"message", "conversation"}
        if settings.background_runs:
            allowed.add("background")
        _only(args, allowed)
        message = args.get("message")
        if not isinstance(message, str) or not message.strip():
            raise ToolInputError("'message' must be a non-empty string.")
        if len(message) > MAX_MESSAGE_CHARS:
            raise ToolInputError(f"'message' may hold at most {MAX_MESSAGE_CHARS} characters.")
        background = args.get("background", False)
        if not isinstance(background, bool):
            raise ToolInputError("'background' must be true or false.")
        return Ask(message, _conversation(args), background)
    if name == NEW_CONVERSATION:
        _only(args, {"conversation"})
        return Command("new", "/new", _conversation(args))
    if name == LINK_ACCOUNT:
        _only(args, {"code"})
        code = args.get("code")
        if code is None:
            return Command("link", "/link")
        if not isinstance(code, str) or not code.strip() or len(code) > 64 or "\n" in code:
            raise ToolInputError("'code' must be the one-time code shown on the other channel.")
        return Command("link", f"/link {code.strip()}")
    if name == UNLINK_ACCOUNT:
        _only(args, set())
        return Command("unlink", "/unlink")
    _only(args, {"run"})
    run = args.get("run")
    if not isinstance(run, str) or not _RUN.fullmatch(run):
        raise ToolInputError("'run' must be the run id a background call answered.")
    return RunQuery(run, cancel=name == CANCEL_RUN)


def _only(args: Mapping[str, Any], allowed: Collection[str]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ToolInputError(f"Unknown argument: {', '.join(repr(a) for a in unknown)}.")


def _conversation(args: Mapping[str, Any]) -> str | None:
    value = args.get("conversation")
    if value is None:
        return None
    if not isinstance(value, str) or not _CONVERSATION.fullmatch(value):
        raise ToolInputError("'conversation' must be 1-128 letters, digits, '.', '_', ':' or '-'.")
    return value


def session_for(
    conversation: str | None,
    *,
    mcp_session: str | None,
    direct: bool,
    fresh: str | None = None,
    answered_at_end: bool = False,
) -> ChannelSession:
    """Which conversation a call continues.

    A named one is caller-keyed: the host namespaces the name by channel and binds it to
    the caller. Without a name: the caller's direct conversation (``direct``), else the
    MCP session's own (session era), else a new conversation named ``fresh`` (so the
    answer, even a background run's, can say how to continue it).

    ``answered_at_end``: the call's result, after the run, is the first place its
    conversation's name is shown (a foreground call; progress notifications carry only
    the reply's text). A fresh conversation is then one nobody else can name while the
    run goes on, and the host writes it with the turn's save.
    """
    if conversation is not None:
        return ChannelSession(key=conversation, caller_keyed=True)
    if direct:
        return ChannelSession()
    if mcp_session is not None:
        return ChannelSession(key=f"session-{mcp_session}", caller_keyed=True)
    return ChannelSession(
        key=fresh, caller_keyed=True, private_until_reply=fresh is not None and answered_at_end
    )


# --- results ---------------------------------------------------------------------------

_REFUSALS: Mapping[RefusalReason, str] = {
    RefusalReason.IDENTITY_REFUSED: "This caller may not use this agent.",
    RefusalReason.SESSION_NOT_FOUND: "No conversation has that name.",
    RefusalReason.SESSION_BUSY: (
        "The conversation is busy with another request; try again when it has finished."
    ),
    RefusalReason.DENIED: "This caller may not use this agent.",
    RefusalReason.LINK_REQUIRED: f"Link this account first: call {LINK_ACCOUNT}.",
    RefusalReason.TARGET_NOT_ALLOWED: "This caller may not choose where replies go.",
}


def render_outcome(outcome: TurnOutcome) -> types.CallToolResult:
    """A turn's outcome as the call's result: the reply, or a tool error saying little."""
    if isinstance(outcome, TurnCompleted):
        result = outcome.result
        # A command (a command tool, or "/new" sent to the target's tool) names no
        # conversation; its reply still fits the target tool's outputSchema.
        conversation = None if isinstance(result.result, CommandReply) else result.session.key
        return answer(result.text, conversation=conversation)
    if isinstance(outcome, TurnRefused):
        # For a denial the host's message is bland on purpose; details are only logged.
        return tool_error(outcome.user_message or _REFUSALS[outcome.reason])
    if isinstance(outcome, TurnFailed) and outcome.cancelled:
        return tool_error(CANCELLED_MESSAGE)
    return tool_error(FAILED_MESSAGE)


def answer(text: str, *, conversation: str | None) -> types.CallToolResult:
    """A completed reply: the text, and the same as ``structuredContent``."""
    structured: dict[str, Any] = {"status": RunStatus.COMPLETED.value, "text": text}
    if conversation is not None:
        structured["conversation"] = conversation
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=structured
    )


def run_answer(
    run: str, status: RunStatus, *, text: str | None, conversation: str | None = None
) -> types.CallToolResult:
    """A background run's state; ``text`` is its reply once completed."""
    if status is RunStatus.COMPLETED:
        shown = text or ""
    elif status is RunStatus.FAILED:
        shown = FAILED_MESSAGE
    elif status is RunStatus.CANCELLED:
        shown = CANCELLED_MESSAGE
    else:
        shown = f"The run is {status.value}; ask {CHECK_RUN} again for the reply."
    structured: dict[str, Any] = {"status": status.value, "text": shown, "run": run}
    if conversation is not None:
        structured["conversation"] = conversation
    return types.CallToolResult(
        content=[types.TextContent(text=shown)],
        structured_content=structured,
        is_error=status in (RunStatus.FAILED, RunStatus.CANCELLED),
    )


def tool_error(message: str) -> types.CallToolResult:
    """A failed call, told in words the model can act on (never an exception's text)."""
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


# --- headers ---------------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def origin_allowed(origin: str | None, allowed: Collection[str]) -> bool:
    """Whether a request's ``Origin`` may reach the endpoint.

    No ``Origin`` is allowed (clients outside a browser send none); ``"null"`` and every
    other value must match an entry exactly, or a ``scheme://host:*`` entry with any port.
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    for entry in allowed:
        entry = entry.lower()
        if origin == entry:
            return True
        if entry.endswith(":*"):
            base = entry[:-2]
            port = origin[len(base) + 1 :] if origin.startswith(base + ":") else ""
            if port.isdigit():
                return True
    return False


def host_allowed(host: str | None, allowed: Collection[str] | None) -> bool:
    """Whether the ``Host`` header names this server (``None``: any host)."""
    if allowed is None:
        return True
    if not host:
        return False
    host = host.strip().lower()
    for entry in allowed:
        entry = entry.lower()
        if host == entry:
            return True
        if entry.endswith(":*"):
            base = entry[:-2]
            port = host[len(base) + 1 :] if host.startswith(base + ":") else ""
            if port.isdigit() or host == base:
                return True
    return False


def jsonrpc_error(code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC error body for a request refused before the SDK read it (``id`` null)."""
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
