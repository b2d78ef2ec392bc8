"""The host's command catalog: ``/new`` and ``/help`` on every channel, ``/link`` and
``/unlink`` too when the host can link.

Rules:

1. A message is a command only when its whole text is ``/name args`` (or ``/name@bot
   args`` where ``bot`` is this channel's bot name) and ``name`` is in the channel's
   catalog. Anything else is a message for the target, ``/start`` included.
2. A command never reaches the target: the host answers it, and the channel renders the
   answer like a completed turn.
3. Commands are authorized like messages, per message: ``/link`` and ``/help`` are open
   to a user who must link first; a denied user gets the denial, whatever the command.
4. A link challenge is never shown in a group conversation: ``/link`` there (with or
   without a code) answers "write to me directly" and neither issues nor completes.
5. ``/new`` and ``/help`` are in every channel's catalog; ``/link`` and ``/unlink`` join
   it only when the host can link (without a linker ``/link`` is a message for the
   target). A channel may opt out of them all (``offers_link_commands = False``), and
   then its messages all go to the target.

The generator that performs a command lives with the turns (``turns.run_command``); this
module parses, holds the catalog and words the answers.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence

import attrs

from agenthost.sansio_core.authorization import AccessDecision, Allowed, LinkRequired
from agenthost.sansio_core.linking import LinkChallenge, LinkReason, LinkResult
from agenthost.sansio_core.types import ChannelCommand, ChannelRequest, HostMessage

LINK = "link"
UNLINK = "unlink"
NEW = "new"
HELP = "help"

_COMMAND = re.compile(
    r"^/(?P<name>[A-Za-z0-9_]{1,32})(?:@(?P<bot>[A-Za-z0-9_]{1,64}))?(?:\s+(?P<args>.*))?$",
    re.DOTALL,
)


@attrs.frozen
class CommandSpec:
    name: str
    description: str
    usage: str


LINKING_COMMANDS = (
    CommandSpec(
        LINK,
        "Link this account with your account elsewhere, so both share one conversation",
        "/link (get a code) or /link CODE (use a code)",
    ),
    CommandSpec(UNLINK, "Unlink this account from your other accounts", "/unlink"),
)

#: In every channel's catalog, whether or not the host can link.
SESSION_COMMANDS = (
    CommandSpec(NEW, "Start a new conversation", "/new"),
    CommandSpec(HELP, "List the commands", "/help"),
)

#: The whole catalog of a host that can link.
LINK_COMMANDS = LINKING_COMMANDS + SESSION_COMMANDS


def host_commands(*, can_link: bool) -> tuple[CommandSpec, ...]:
    """The host's commands: ``/new`` and ``/help`` always, ``/link`` and ``/unlink`` with a
    linker (rule 5)."""
    return LINK_COMMANDS if can_link else SESSION_COMMANDS


# Open to a user who has to link before anything else.
_OPEN_BEFORE_LINKING = frozenset({LINK, HELP})


def _names(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@attrs.frozen
class CommandCatalog:
    """The host's commands, and the channels that opted out of them."""

    commands: tuple[CommandSpec, ...] = ()
    opted_out: frozenset[str] = attrs.field(default=frozenset(), converter=_names)

    def for_channel(self, channel: str) -> tuple[CommandSpec, ...]:
        return () if channel in self.opted_out else self.commands

    def channel_commands(self, channel: str) -> tuple[ChannelCommand, ...]:
        """The catalog as ``ChannelCommand`` values (for menus such as ``setMyCommands``)."""
        return tuple(
            ChannelCommand(spec.name, spec.description, metadata={"usage": spec.usage})
            for spec in self.for_channel(channel)
        )


@attrs.frozen
class ParsedCommand:
    name: str  # lower case, without the slash
    args: str = ""


@attrs.frozen
class CommandReply:
    """The result a command hands the channel (as ``HostedRunResult.result``)."""

    command: str
    text: str


def parse(text: str, bot_name: str | None) -> ParsedCommand | None:
    """``/name args`` or ``/name@bot args`` (only when ``bot`` is ``bot_name``), else ``None``."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    bot = match["bot"]
    if bot is not None and (bot_name is None or bot.lower() != bot_name.lower().lstrip("@")):
        return None
    return ParsedCommand(match["name"].lower(), (match["args"] or "").strip())


def command_of(
    request: ChannelRequest, catalog: CommandCatalog, bot_name: str | None
) -> ParsedCommand | None:
    """The catalog command a request carries, if its input is one user message naming one."""
    specs = catalog.for_channel(request.channel)
    if not specs:
        return None
    text = _single_text(request.input)
    if text is None:
        return None
    parsed = parse(text, bot_name)
    if parsed is None or all(spec.name != parsed.name for spec in specs):
        return None
    return parsed


def command_named(
    request: ChannelRequest, names: Collection[str], bot_name: str | None
) -> ParsedCommand | None:
    """Like :func:`command_of`, against a channel's catalog given by command names (what a
    channel sees through ``HostServices.command_catalog``)."""
    text = _single_text(request.input)
    if not names or text is None:
        return None
    parsed = parse(text, bot_name)
    return parsed if parsed is not None and parsed.name in names else None


def _single_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if (
        isinstance(value, tuple)
        and len(value) == 1
        and isinstance(value[0], HostMessage)
        and value[0].role == "user"
    ):
        return value[0].text
    return None


def permitted(command: ParsedCommand, decision: AccessDecision) -> bool:
    """Whether the sender may run ``command`` (rule 3)."""
    if isinstance(decision, Allowed):
        return True
    return isinstance(decision, LinkRequired) and command.name in _OPEN_BEFORE_LINKING


# --- what the user reads ------------------------------------------------------------

WRITE_TO_ME_DIRECTLY = (
    "For your safety I only link accounts in a direct conversation: write to me directly "
    "and send /link there."
)
NOT_A_CODE = "That is not a link code. Codes look like ABCD-EFGH-JKMN; send /link to get one."
NO_LINKER_COMPLETES_HERE = "Codes are not used here: send /link to see how to link."
NEW_CONVERSATION = "Started a new conversation. The earlier one is kept."
NOTHING_TO_RESET = "There is no conversation to reset here."

_LINK_ANSWERS: dict[LinkReason, str] = {
    LinkReason.LINKED: (
        "Linked. This account now shares your conversations with the account that asked "
        "for the code."
    ),
    LinkReason.ALREADY_LINKED: "These accounts are already linked.",
    LinkReason.CLAIMS_RECORDED: "Your account is verified and linked.",
    LinkReason.LINK_POLICY: (
        "This host does not allow linking these two accounts, so nothing was linked."
    ),
    LinkReason.CONFLICTING_CLAIMS: (
        "This account cannot be linked automatically; ask the operator for help."
    ),
    LinkReason.WRONG_CODE: "That code is not valid. Check it, or send /link to get a new one.",
    LinkReason.EXPIRED: "That code has expired. Send /link where you got it for a new one.",
    LinkReason.CODE_LOCKED: (
        "That code was tried wrongly too often and no longer works. Send /link where you "
        "got it for a new one."
    ),
    LinkReason.CODE_USED: "That code was already used. Send /link where you got it for a new one.",
    LinkReason.OWN_CODE: (
        "Send this code from the other account you want to link, not from this one."
    ),
    LinkReason.RATE_LIMITED: "Too many wrong codes. Please wait a while before trying again.",
    LinkReason.UNLINKED: (
        "Unlinked. This account now has a conversation of its own; your other accounts keep "
        "the shared one."
    ),
    LinkReason.NOT_LINKED: "This account is not linked to any other.",
}


def link_answer(result: LinkResult) -> str:
    return _LINK_ANSWERS[result.reason]


NO_WAY_TO_LINK = "Linking is not available here."


def challenge_answer(challenges: Sequence[LinkChallenge]) -> str:
    if not challenges:
        return NO_WAY_TO_LINK
    if len(challenges) == 1:
        return challenges[0].instructions
    options = "\n".join(f"- {challenge.instructions}" for challenge in challenges)
    return f"You can link this account in either of these ways:\n{options}"


def help_answer(specs: Iterable[CommandSpec]) -> str:
    lines = [f"{spec.usage}: {spec.description}." for spec in specs]
    return "Commands:\n" + "\n".join(lines)
