"""Conversation references, and pushing a delivery through one (``ChannelPush``).

Rules:

1. Every verified activity stores its conversation's ``ConversationReference`` (kind
   ``ref``, keyed by the conversation id) in the host store, and a 1:1 conversation is
   also remembered for its user (kind ``personal``, keyed by the user's native id). So
   a push works after a restart, on any replica.
2. A destination names the conversation the user was last seen in; without one, the
   user's 1:1 conversation is used. No stored reference: the delivery is dead at once
   (the bot cannot start a conversation it never saw; install the app for the user).
3. The message goes to the reference's ``serviceUrl`` (which passed token validation
   when stored, and the allowlist is checked again at the send). An answer is Markdown,
   an echo is plain and, where the platform allows, silent; text over the size limit is
   split.
4. Failures are classified for the delivery worker: 429 (with ``Retry-After``), 412,
   502, 504, other 5xx and network errors are transient; 403 (uninstalled, blocked), 404
   (conversation gone), 413 and other 4xx are permanent, with the reason. The connector
   does not drop repeated sends, so the channel is not idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.channels.activity import codec
from agenthost.channels.activity.connector import Connector, ConnectorError
from agenthost.sansio_core.routing import Destination
from agenthost.stores.base import ChannelRecord, Store

REFERENCE = "ref"
PERSONAL = "personal"


def reference_records(
    channel: str, reference: Mapping[str, Any], *, user_id: str | None, now: float
) -> list[ChannelRecord]:
    """The records that remember a conversation (rule 1)."""
    conversation = reference.get("conversation") or {}
    conversation_id = conversation.get("id")
    if not isinstance(conversation_id, str) or not conversation_id:
        return []
    records = [ChannelRecord(channel, REFERENCE, conversation_id, dict(reference), created_at=now)]
    personal = conversation.get("conversationType") == "personal" or not conversation.get("isGroup")
    if personal and user_id:
        records.append(
            ChannelRecord(
                channel, PERSONAL, user_id, {"conversation_id": conversation_id}, created_at=now
            )
        )
    return records


async def load_reference(
    store: Store, channel: str, destination: Destination
) -> Mapping[str, Any] | None:
    conversation = destination.conversation_id
    if not conversation:
        personal = await store.get_channel_record(channel, PERSONAL, destination.identity.native_id)
        found = personal.value.get("conversation_id") if personal is not None else None
        conversation = found if isinstance(found, str) else None
    if not conversation:
        return None
    record = await store.get_channel_record(channel, REFERENCE, conversation)
    return record.value if record is not None else None


async def push(
    connector: Connector,
    store: Store,
    channel: str,
    destination: Destination,
    message: PushMessage,
) -> PushOutcome:
    reference = await load_reference(store, channel, destination)
    if reference is None:
        return PushOutcome.permanent("no conversation reference stored for this destination")
    service_url = reference.get("serviceUrl")
    conversation_id = (reference.get("conversation") or {}).get("id")
    if not isinstance(service_url, str) or not isinstance(conversation_id, str):
        return PushOutcome.permanent("the stored conversation reference is incomplete")
    try:
        for part in codec.split_text(message.text):
            activity = codec.message(
                reference, part, markdown=not message.is_echo, silent=message.silent
            )
            await connector.send(service_url, conversation_id, activity)
    except ConnectorError as error:
        if error.permanent:
            return PushOutcome.permanent(str(error))
        return PushOutcome.transient(str(error), retry_after=error.retry_after)
    return PushOutcome.ok()
