"""Generated bad input for the Telegram webhook's parsing path (strict JSON, then the
codec): every payload is taken or refused as malformed (a 400), never an exception, and
what is taken can be stored and rendered back."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agenthost.channels.telegram.codec import (
    Addressing,
    BotProfile,
    MalformedUpdate,
    parse_update,
    update_id_of,
)
from agenthost.sansio_core import strict_json
from tests.channels.telegram.telegram_updates import BOT_USERNAME, fixture
from tests.channels.wire_fuzz import bad_fragments, odd_values, splice, with_mark

BOT = BotProfile(7012345678, BOT_USERNAME)
FIXTURES = ["private_message", "group_mention", "forum_topic", "photo_with_caption"]
PLACES: list[tuple[str | int, ...]] = [
    ("update_id",),
    ("message",),
    ("message", "text"),
    ("message", "from"),
    ("message", "from", "id"),
    ("message", "chat", "id"),
    ("message", "entities"),
    ("message", "entities", 0, "offset"),
    ("message", "message_thread_id"),
    ("message", "caption"),
    ("message", "photo"),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def webhook_parse(raw: bytes) -> Any:
    """What the webhook does with a verified body: ``None`` when it answers 400."""
    try:
        update = strict_json.loads(raw)
        update_id_of(update)
        return parse_update(update, bot=BOT, addressing=Addressing.MENTION_ONLY)
    except (strict_json.JsonRefused, MalformedUpdate):
        return None


@FUZZ
@given(name=st.sampled_from(FIXTURES), place=st.sampled_from(PLACES), fragment=bad_fragments)
def test_unrenderable_payloads_are_refused(
    name: str, place: tuple[str | int, ...], fragment: Any
) -> None:
    raw = splice(with_mark(fixture(name), place), fragment)
    assert webhook_parse(raw) is None


@FUZZ
@given(name=st.sampled_from(FIXTURES), place=st.sampled_from(PLACES), fragment=odd_values)
def test_odd_payloads_are_taken_or_refused_never_an_error(
    name: str, place: tuple[str | int, ...], fragment: str
) -> None:
    raw = splice(with_mark(fixture(name), place), fragment)
    parsed = webhook_parse(raw)
    if parsed is not None:
        # What is taken is stored as the update it came from: that must render back.
        json.dumps(strict_json.loads(raw), allow_nan=False, ensure_ascii=False).encode()
