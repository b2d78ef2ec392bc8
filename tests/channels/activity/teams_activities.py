"""Activities shaped like the ones Teams posts (fields, casing and nesting as Teams sends
them: ``conversation.tenantId``, ``channelData.tenant``, ``<at>`` markup in ``text``
with a matching ``mention`` entity, ``clientInfo``), built per test with fresh ids."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import attrs

from tests.channels.activity.fake_bot_framework import APP_ID

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BOT = {"id": f"28:{APP_ID}", "name": "Helper"}

_ids = itertools.count(1_733_000_000_001)


@attrs.frozen
class TeamsUser:
    id: str  # the channel account id (29:…)
    aad_object_id: str
    name: str

    def account(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "aadObjectId": self.aad_object_id}


def new_user(name: str = "Ada Lovelace") -> TeamsUser:
    return TeamsUser(f"29:1{uuid.uuid4().hex}", str(uuid.uuid4()), name)


def personal_conversation() -> dict[str, Any]:
    return {
        "conversationType": "personal",
        "tenantId": TENANT,
        "id": f"a:1{uuid.uuid4().hex}{uuid.uuid4().hex}",
    }


def group_conversation() -> dict[str, Any]:
    return {
        "isGroup": True,
        "conversationType": "groupChat",
        "tenantId": TENANT,
        "id": f"19:{uuid.uuid4().hex}@thread.v2",
    }


def channel_conversation(root_message_id: str = "1733000000000") -> dict[str, Any]:
    return {
        "isGroup": True,
        "conversationType": "channel",
        "tenantId": TENANT,
        "id": f"19:{uuid.uuid4().hex}@thread.tacv2;messageid={root_message_id}",
    }


def next_id() -> str:
    return str(next(_ids))


def message(
    user: TeamsUser,
    conversation: dict[str, Any],
    text: str,
    *,
    service_url: str,
    mention_bot: bool = False,
    activity_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    entities: list[dict[str, Any]] = [
        {
            "locale": "en-GB",
            "country": "GB",
            "platform": "Web",
            "timezone": "Europe/London",
            "type": "clientInfo",
        }
    ]
    if mention_bot:
        text = f"<at>{BOT['name']}</at> {text}"
        entities.insert(
            0, {"type": "mention", "text": f"<at>{BOT['name']}</at>", "mentioned": dict(BOT)}
        )
    channel_data: dict[str, Any] = {"tenant": {"id": TENANT}}
    if conversation.get("conversationType") == "channel":
        channel_data.update(
            {
                "teamsChannelId": conversation["id"].split(";")[0],
                "teamsTeamId": "19:team@thread.tacv2",
                "channel": {"id": conversation["id"].split(";")[0]},
                "team": {"id": "19:team@thread.tacv2"},
            }
        )
    activity: dict[str, Any] = {
        "text": text,
        "textFormat": "plain",
        "attachments": [{"contentType": "text/html", "content": f"<p>{text}</p>"}],
        "type": "message",
        "timestamp": "2026-11-30T10:15:04.5291542Z",
        "localTimestamp": "2026-11-30T10:15:04.5291542+00:00",
        "id": activity_id or next_id(),
        "channelId": "msteams",
        "serviceUrl": service_url,
        "from": user.account(),
        "conversation": dict(conversation),
        "recipient": dict(BOT),
        "entities": entities,
        "channelData": channel_data,
        "locale": "en-GB",
        "localTimezone": "Europe/London",
    }
    activity.update(extra)
    return activity


def card_action(
    user: TeamsUser, conversation: dict[str, Any], *, service_url: str, verb: str, data: Any
) -> dict[str, Any]:
    """An Adaptive Card ``Action.Execute`` press (an ``adaptiveCard/action`` invoke)."""
    return {
        "name": "adaptiveCard/action",
        "type": "invoke",
        "timestamp": "2026-11-30T10:16:00.000Z",
        "id": f"f:{uuid.uuid4().int % 10**19}",
        "channelId": "msteams",
        "serviceUrl": service_url,
        "from": user.account(),
        "conversation": dict(conversation),
        "recipient": dict(BOT),
        "entities": [{"locale": "en-GB", "type": "clientInfo"}],
        "channelData": {"tenant": {"id": TENANT}, "source": {"name": "message"}},
        "replyToId": "1733000000099",
        "value": {
            "action": {"type": "Action.Execute", "title": "Approve", "verb": verb, "data": data},
            "trigger": "manual",
        },
        "locale": "en-GB",
    }


def installed(conversation: dict[str, Any], user: TeamsUser, *, service_url: str) -> dict[str, Any]:
    """The ``conversationUpdate`` Teams sends when the app is installed for a user."""
    return {
        "membersAdded": [{"id": BOT["id"]}],
        "type": "conversationUpdate",
        "timestamp": "2026-11-30T10:00:00.000Z",
        "id": f"f:{uuid.uuid4().int % 10**19}",
        "channelId": "msteams",
        "serviceUrl": service_url,
        "from": {"id": user.id, "aadObjectId": user.aad_object_id},
        "conversation": dict(conversation),
        "recipient": dict(BOT),
        "channelData": {"tenant": {"id": TENANT}},
    }
