"""Builders of Telegram updates for end-to-end tests, shaped like the recorded fixtures
(``fixtures/*.json``), with fresh ``update_id`` and ``message_id`` values."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
BOT_USERNAME = "agenthost_test_bot"
BOT_TOKEN = "7012345678:AAH-test_token-not-real-0123456789abcd"

_message_ids = itertools.count(2000)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def user(user_id: int, first_name: str = "Ada") -> dict[str, Any]:
    return {
        "id": user_id,
        "is_bot": False,
        "first_name": first_name,
        "username": f"{first_name.lower()}_{user_id % 1000}",
        "language_code": "en",
    }


def private_chat(user_id: int, first_name: str = "Ada") -> dict[str, Any]:
    return {"id": user_id, "first_name": first_name, "type": "private"}


def group_chat(chat_id: int, *, forum: bool = False) -> dict[str, Any]:
    chat: dict[str, Any] = {"id": chat_id, "title": "Test group", "type": "supergroup"}
    if forum:
        chat["is_forum"] = True
    return chat


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def entities_for(text: str) -> list[dict[str, Any]]:
    """The entities Telegram would attach: a leading command, mentions of usernames."""
    found = []
    words = text.split(" ")
    position = 0
    for index, word in enumerate(words):
        if index == 0 and word.startswith("/") and len(word) > 1:
            found.append({"offset": 0, "length": _utf16(word), "type": "bot_command"})
        elif word.startswith("@") and len(word) > 1:
            mention = word.rstrip(",.:;!?")
            found.append(
                {"offset": _utf16(text[:position]), "length": _utf16(mention), "type": "mention"}
            )
        position += len(word) + 1
    return found


def message(
    update_id: int,
    *,
    user_id: int,
    chat: dict[str, Any],
    text: str | None = None,
    thread_id: int | None = None,
    first_name: str = "Ada",
    edited: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": next(_message_ids),
        "from": user(user_id, first_name),
        "chat": chat,
        "date": int(time.time()),
    }
    if thread_id is not None:
        body["message_thread_id"] = thread_id
        body["is_topic_message"] = True
    if text is not None:
        body["text"] = text
        entities = entities_for(text)
        if entities:
            body["entities"] = entities
    body.update(extra)
    if edited:
        body["edit_date"] = body["date"] + 5
        return {"update_id": update_id, "edited_message": body}
    return {"update_id": update_id, "message": body}
