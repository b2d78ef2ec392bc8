"""Interaction payloads shaped like Discord's, for the tests: recorded fixtures and builders.

``fixture(name)`` loads ``fixtures/<name>.json`` (captured shapes: a slash command in a
guild, in the bot's DM, in a private channel of a user-installed app, in a thread, a
button, a select menu, a modal, autocomplete, a message context-menu command, a PING).
The builders make fresh interactions with new ids and tokens for end-to-end tests.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
from functools import cache
from pathlib import Path
from typing import Any

APPLICATION_ID = "1187411200000000001"
BOT_TOKEN = "MTE4NzQxMTIwMDAwMDAwMDAwMQ.G0aBcD.fake_bot_token_for_tests_only_0123456"
GUILD = "1187400000000000100"
GENERAL = "1187400000000000200"  # a text channel in GUILD

_FIXTURES = Path(__file__).parent / "fixtures"
_ids = itertools.count(1_400_000_000_000_000_000)
_users = itertools.count(600_000_000_000_000_001)


@cache
def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((_FIXTURES / f"{name}.json").read_text())
    return data


def fixture(name: str) -> dict[str, Any]:
    return copy.deepcopy(_load(name))


def next_id() -> str:
    return str(next(_ids))


def new_user() -> str:
    return str(next(_users))


def _user(user_id: str) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": f"user{user_id[-4:]}",
        "global_name": f"User {user_id[-4:]}",
        "discriminator": "0",
        "avatar": None,
        "public_flags": 0,
    }


def _base(
    kind: int, data: dict[str, Any], *, user: str, guild: str | None, channel: str
) -> dict[str, Any]:
    interaction_id = next_id()
    body: dict[str, Any] = {
        "id": interaction_id,
        "application_id": APPLICATION_ID,
        "type": kind,
        "data": data,
        "channel_id": channel,
        "channel": {"id": channel, "type": 0 if guild else 1},
        "token": f"aW50ZXJhY3Rpb246{interaction_id}{secrets.token_urlsafe(48)}",
        "version": 1,
        "locale": "en-US",
        "entitlements": [],
        "app_permissions": "562949953601536",
        "context": 0 if guild else 1,
    }
    if guild:
        body["guild_id"] = guild
        body["guild_locale"] = "en-US"
        body["member"] = {
            "user": _user(user),
            "roles": [],
            "permissions": "2251799813685247",
            "joined_at": "2024-01-01T00:00:00.000000+00:00",
            "deaf": False,
            "mute": False,
            "pending": False,
            "nick": None,
        }
        body["authorizing_integration_owners"] = {"0": guild}
    else:
        body["user"] = _user(user)
        body["authorizing_integration_owners"] = {"0": GUILD}
    return body


def dm_channel_of(user: str) -> str:
    """The bot's DM channel with ``user`` (the fake answers the same id)."""
    return str(int(user) + 10**18)


def slash(
    name: str,
    options: dict[str, str] | None = None,
    *,
    user: str,
    guild: str | None = None,
    channel: str | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"id": "1311000000000000500", "name": name, "type": 1}
    if options:
        data["options"] = [{"name": k, "type": 3, "value": v} for k, v in options.items()]
    return _base(2, data, user=user, guild=guild, channel=channel or _where(user, guild))


def ask(
    text: str, *, user: str, guild: str | None = None, channel: str | None = None
) -> dict[str, Any]:
    return slash("ask", {"message": text}, user=user, guild=guild, channel=channel)


def button(
    custom_id: str, *, user: str, guild: str | None = None, channel: str | None = None
) -> dict[str, Any]:
    where = channel or _where(user, guild)
    body = _base(
        3, {"custom_id": custom_id, "component_type": 2}, user=user, guild=guild, channel=where
    )
    body["message"] = {
        "id": next_id(),
        "channel_id": where,
        "content": "Pick one",
        "type": 20,
        "components": [
            {
                "type": 1,
                "components": [{"type": 2, "style": 1, "label": "Go", "custom_id": custom_id}],
            }
        ],
    }
    return body


def modal(
    custom_id: str, values: dict[str, str], *, user: str, guild: str | None = None
) -> dict[str, Any]:
    rows = [
        {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]}
        for key, value in values.items()
    ]
    return _base(
        5,
        {"custom_id": custom_id, "components": rows},
        user=user,
        guild=guild,
        channel=_where(user, guild),
    )


def autocomplete(command: str, option: str, value: str, *, user: str) -> dict[str, Any]:
    data = {
        "id": "1311000000000000503",
        "name": command,
        "type": 1,
        "options": [{"name": option, "type": 3, "value": value, "focused": True}],
    }
    return _base(4, data, user=user, guild=GUILD, channel=GENERAL)


def ping() -> dict[str, Any]:
    body = fixture("ping")
    body["id"] = next_id()
    return body


def _where(user: str, guild: str | None) -> str:
    return GENERAL if guild else dm_channel_of(user)
