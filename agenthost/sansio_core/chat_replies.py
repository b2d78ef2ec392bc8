"""What a chat channel tells the user when a turn ends: one decision for every chat channel.

Telegram, Discord and the Activity channel (Teams) answer every message the user sends:
with the target's reply, a host command's answer, why the turn was refused, that it
failed, or that a background run will answer where the user asked. Which of these, in
which words, and whether the text is the target's own (rendered as Markdown by the
channel) or the host's (sent as it is) is decided here, the same for all of them.

Rules:

1. A completed turn says its text: the target's as Markdown, a host command's as plain
   text. A blank reply says nothing.
2. A refused turn says what the access decision gave the user (``user_message``), else
   the refusal's own words; a refusal with neither (a caller error a chat cannot make)
   says nothing.
3. A failed turn says it failed, unless it was cancelled (the user or the host stopped
   it: nothing more to say).
4. A turn handed to a background run says that the answer will come where it was asked.
"""

from __future__ import annotations

import attrs

from agenthost.sansio_core.commands import CommandReply
from agenthost.sansio_core.turns import (
    RefusalReason,
    TurnCompleted,
    TurnFailed,
    TurnOutcome,
    TurnRefused,
)
from agenthost.sansio_core.types import ContinuationToken

ACKNOWLEDGED = "Got it. The answer will be delivered where you asked for it."
FAILED = "Sorry, something went wrong while answering. Please try again."
REFUSALS = {
    RefusalReason.SESSION_BUSY: (
        "I'm still answering your previous message. Please try again in a moment."
    ),
    RefusalReason.IDENTITY_REFUSED: "Sorry, this bot is not available to you.",
    RefusalReason.SESSION_NOT_FOUND: "There is no conversation to continue here.",
}


@attrs.frozen
class ChatReply:
    text: str
    markdown: bool  # the target's own words (render them); else the host's, sent as they are


def reply_for(outcome: TurnOutcome | ContinuationToken) -> ChatReply | None:
    """What the user is told when ``outcome`` ends their turn (``None``: nothing)."""
    if isinstance(outcome, ContinuationToken):
        return ChatReply(ACKNOWLEDGED, markdown=False)
    if isinstance(outcome, TurnCompleted):
        result = outcome.result
        if isinstance(result.result, CommandReply):
            return ChatReply(result.text, markdown=False)
        return ChatReply(result.text, markdown=True) if result.text.strip() else None
    if isinstance(outcome, TurnRefused):
        message = outcome.user_message or REFUSALS.get(outcome.reason)
        return ChatReply(message, markdown=False) if message else None
    if isinstance(outcome, TurnFailed) and not outcome.cancelled:
        return ChatReply(FAILED, markdown=False)
    return None
