"""What chat channels tell the user when a turn ends (``sansio_core.chat_replies``)."""

from __future__ import annotations

import pytest

from agenthost.sansio_core import chat_replies
from agenthost.sansio_core.authorization import Denied
from agenthost.sansio_core.chat_replies import ChatReply, reply_for
from agenthost.sansio_core.commands import CommandReply
from agenthost.sansio_core.turns import RefusalReason, TurnCompleted, TurnFailed, TurnRefused
from agenthost.sansio_core.types import ContinuationToken, HostedRunResult, RunStatus, SessionRef

SESSION = SessionRef("key-1", "s1")


def completed(result: object, text: str) -> TurnCompleted:
    return TurnCompleted(HostedRunResult(result, SESSION, text), saved=True)


def test_the_targets_reply_is_markdown_and_a_commands_answer_plain() -> None:
    assert reply_for(completed({"raw": 1}, "**hi**")) == ChatReply("**hi**", markdown=True)
    answer = completed(
        CommandReply("new", "Started a new conversation."), "Started a new conversation."
    )
    assert reply_for(answer) == ChatReply("Started a new conversation.", markdown=False)
    assert reply_for(completed(None, "  \n")) is None  # a blank reply says nothing


def test_a_refusal_says_the_access_decisions_words_else_its_own_else_nothing() -> None:
    denied = TurnRefused(RefusalReason.DENIED, "not on the list", Denied("x", "Not for you."))
    assert reply_for(denied) == ChatReply("Not for you.", markdown=False)
    busy = TurnRefused(RefusalReason.SESSION_BUSY, "busy")
    assert reply_for(busy) == ChatReply(
        chat_replies.REFUSALS[RefusalReason.SESSION_BUSY], markdown=False
    )
    assert reply_for(TurnRefused(RefusalReason.TARGET_NOT_ALLOWED, "caller error")) is None


@pytest.mark.parametrize(("cancelled", "said"), [(False, chat_replies.FAILED), (True, None)])
def test_a_failure_says_so_unless_it_was_cancelled(cancelled: bool, said: str | None) -> None:
    reply = reply_for(TurnFailed("boom", SESSION, cancelled=cancelled))
    assert (reply.text if reply else None) == said


def test_a_background_run_is_acknowledged() -> None:
    token = ContinuationToken("run-1", RunStatus.QUEUED, "key-1", created_at=1.0)
    assert reply_for(token) == ChatReply(chat_replies.ACKNOWLEDGED, markdown=False)
