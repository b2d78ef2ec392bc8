"""Pushing a delivery to Discord with the bot token (the ``ChannelPush`` side).

Rules:

1. By default a delivery goes to the user's DM with the bot: ``POST /users/@me/channels``
   with the user as recipient (Discord answers the existing DM channel; its id is kept in
   memory, bounded), then a message there. With ``push_to="conversation"`` it goes to the
   guild channel or thread the user was last seen in (``"<guild>:<channel>"``) and to the
   DM otherwise; private channels of user-installed apps are never posted to.
2. The text is split like a reply (2,000 characters a part) and pings nobody. An echo
   (``silent``) is sent with ``SUPPRESS_NOTIFICATIONS``.
3. A delivery of several parts remembers, in a channel record keyed by its
   ``delivery_id``, how many parts went out, so a retry after a rate limit does not send
   them twice. (A crash between a part and its record still repeats that part: Discord
   has no idempotency key, so the channel is not idempotent.)
4. Failures are classified for the delivery worker: 429 is transient with Discord's
   ``retry_after`` (a bucket known to be exhausted is not even called: Discord counts
   refused requests towards a ban); 5xx and network failures are transient; 403 (DMs
   closed, or no permission in the channel), 404 (unknown user or channel), any other 4xx
   and a refused bot token are permanent, and go to the dead letters with the reason.
"""

from __future__ import annotations

from agenthost.backends.channel import HostServices
from agenthost.backends.push import PushMessage, PushOutcome
from agenthost.channels.discord import rendering
from agenthost.channels.discord.api import DiscordApi, DiscordError, RateLimited
from agenthost.recent import RecentMap
from agenthost.sansio_core.routing import Destination
from agenthost.stores.base import ChannelRecord

PROGRESS = "push"
PROGRESS_SECONDS = 7 * 24 * 3600.0


class Pusher:
    """Sends deliveries for one channel; remembers DM channel ids (bounded)."""

    _MAX_DMS = 10_000

    def __init__(self, api: DiscordApi, host: HostServices, *, channel: str, push_to: str) -> None:
        self._api = api
        self._host = host
        self._channel = channel
        self._push_to = push_to
        self._dms: RecentMap[str, str] = RecentMap(self._MAX_DMS)

    async def push(self, destination: Destination, message: PushMessage) -> PushOutcome:
        parts = rendering.split_message(message.text)
        if not parts:
            return PushOutcome.ok()
        try:
            channel_id = self._channel_in(destination.conversation_id)
            if channel_id is None:
                channel_id = await self._dm(destination.identity.native_id)
            sent = await self._progress(message.delivery_id) if len(parts) > 1 else 0
            for index in range(sent, len(parts)):
                body = rendering.message_payload(parts[index])
                if message.silent:
                    body["flags"] = rendering.SUPPRESS_NOTIFICATIONS
                await self._api.create_message(channel_id, body, wait=False)
                if len(parts) > 1:
                    await self._record_progress(message.delivery_id, index + 1)
        except RateLimited as limited:
            return PushOutcome.transient(str(limited), retry_after=limited.retry_after)
        except DiscordError as error:
            if error.permanent:
                return PushOutcome.permanent(str(error))
            return PushOutcome.transient(str(error))
        if len(parts) > 1:
            await self._host.store.delete_channel_records(
                self._channel, PROGRESS, prefix=_progress_key(message.delivery_id)
            )
        return PushOutcome.ok()

    def _channel_in(self, conversation: str | None) -> str | None:
        """The guild channel to post in (rule 1), or ``None`` for the user's DM."""
        if self._push_to != "conversation" or not conversation:
            return None
        guild, _, channel = conversation.partition(":")
        if guild.isdigit() and channel.isdigit():
            return channel
        return None

    async def _dm(self, user_id: str) -> str:
        if not user_id.isdigit():
            raise DiscordError("POST /users/@me/channels", None, None, "not a Discord user id")
        channel_id = self._dms.get(user_id)
        if channel_id is None:
            channel_id = await self._api.open_dm(user_id, wait=False)
            self._dms.put(user_id, channel_id)
        return channel_id

    async def _progress(self, delivery_id: str) -> int:
        record = await self._host.store.get_channel_record(
            self._channel, PROGRESS, _progress_key(delivery_id)
        )
        sent = record.value.get("sent") if record is not None else None
        return sent if isinstance(sent, int) and sent >= 0 else 0

    async def _record_progress(self, delivery_id: str, sent: int) -> None:
        now = self._host.now()
        await self._host.store.put_channel_records(
            [
                ChannelRecord(
                    self._channel,
                    PROGRESS,
                    _progress_key(delivery_id),
                    {"sent": sent},
                    created_at=now,
                    expires_at=now + PROGRESS_SECONDS,
                )
            ]
        )


def _progress_key(delivery_id: str) -> str:
    # The terminator keeps one delivery's key from being a prefix of another's
    # ("…:12#" against "…:123#"), since records are deleted by prefix.
    return f"{delivery_id}#"
