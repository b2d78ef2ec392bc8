"""Turning a finished run's ``ResponseTarget`` into scheduled deliveries.

This module gathers what ``routing.resolve_destinations`` needs (where the user was seen,
their linked identities, which channels can push, the link policy), logs every dropped
destination with its reason (ids and reasons only, never content) and builds the
deliveries with ``delivery.plan``. The decisions are the core's; scheduling them is the
caller's (in the same transaction that completes the run).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from agenthost.backends.channel import Channel
from agenthost.backends.configuration import ConfigurationError
from agenthost.backends.push import ChannelPush
from agenthost.sansio_core import delivery, routing
from agenthost.sansio_core.delivery import Delivery, RetryPolicy
from agenthost.sansio_core.link_policy import LinkRules
from agenthost.sansio_core.routing import Destination, LastSeen, Routing
from agenthost.sansio_core.types import ChannelIdentity, ChannelRequest, HostMessage, ResponseTarget
from agenthost.stores.base import Store

log = logging.getLogger("agenthost.delivery")


def retry_by_channel(
    retry: RetryPolicy | Mapping[str, RetryPolicy], channels: Mapping[str, Channel]
) -> dict[str, RetryPolicy]:
    """One policy per channel: ``retry`` itself, or a mapping by channel name whose
    ``"*"`` entry (default ``RetryPolicy()``) covers the channels it does not name."""
    if isinstance(retry, RetryPolicy):
        return {name: retry for name in channels}
    unknown = sorted(set(retry) - set(channels) - {"*"})
    if unknown:
        raise ConfigurationError(
            f"delivery_retry names channels the host does not have: {', '.join(unknown)}"
        )
    default = retry.get("*", RetryPolicy())
    return {name: retry.get(name, default) for name in channels}


def can_push(channel: Channel) -> bool:
    return isinstance(channel, ChannelPush)


def display_name(channel: Channel) -> str:
    """How an echo names the channel the user wrote on ("You, via Telegram: ...")."""
    name = getattr(channel, "display_name", None)
    return name if isinstance(name, str) and name else channel.name.replace("_", " ").title()


def input_text(request: ChannelRequest) -> str | None:
    """The user's words in a request, or ``None`` when its input is not messages."""
    if isinstance(request.input, tuple) and all(isinstance(m, HostMessage) for m in request.input):
        texts = [m.text for m in request.input if m.role == "user" and m.text]
        return "\n".join(texts) if texts else None
    return None


@attrs.frozen
class Plan:
    routing: Routing
    deliveries: tuple[Delivery, ...]

    @property
    def intended(self) -> list[dict[str, str]]:
        """The destinations, for the run's record (intent only; the outbox holds the rest)."""
        return [
            {"channel": d.channel, "native_id": d.identity.native_id}
            for d in self.routing.destinations
        ]


class DeliveryRouter:
    def __init__(
        self,
        *,
        store: Store,
        channels: Sequence[Channel],
        link_rules: LinkRules,
        retry: RetryPolicy | Mapping[str, RetryPolicy],
    ) -> None:
        self._store = store
        self._channels = {channel.name: channel for channel in channels}
        self._can_push = {channel.name: can_push(channel) for channel in channels}
        # Looked up for every send: a runtime protocol check walks the protocol's members
        # each time, so it is done once here.
        self._pushers = {c.name: c for c in channels if isinstance(c, ChannelPush)}
        self._link_rules = link_rules
        self._retry = retry_by_channel(retry, self._channels)

    def check_lease(self, lease_seconds: float) -> None:
        """Refuse a delivery lease a single push request could outlast: another worker
        would take the send for a dead one and send it again."""
        for name, channel in self._channels.items():
            timeout = getattr(channel, "push_timeout_seconds", None)
            if can_push(channel) and isinstance(timeout, int | float) and timeout >= lease_seconds:
                raise ConfigurationError(
                    f"delivery_lease_seconds={lease_seconds:g} is not longer than channel "
                    f"{name!r}'s push timeout ({timeout:g}s): raise delivery_lease_seconds "
                    f"or lower the channel's timeout"
                )

    @property
    def any_can_push(self) -> bool:
        return any(self._can_push.values())

    def retry_for(self, channel: str) -> RetryPolicy:
        return self._retry.get(channel) or RetryPolicy()

    def pusher(self, name: str) -> ChannelPush | None:
        return self._pushers.get(name)

    async def plan_reply(
        self,
        *,
        key_prefix: str,
        request: ChannelRequest,
        target: ResponseTarget,
        isolation_key: str,
        reply_text: str,
        now: float,
        answered_on_wire: bool = False,
    ) -> Plan:
        """Deliveries of a run's reply to ``target``, with the user's words when echoing.

        ``answered_on_wire``: the originating wire carries the reply already (a foreground
        run whose hook chose the target), so the originating destination is not pushed to.
        """
        originating = Destination(
            request.channel, request.identity, request.session.conversation_id
        )
        decided = await self._route(target, isolation_key, originating, key_prefix)
        echo = None
        words = input_text(request)
        channel = self._channels.get(request.channel)
        if target.echo_input and words is not None and channel is not None:
            echo = {"text": delivery.echo_text(display_name(channel), words)}
        if answered_on_wire:
            rest = tuple(d for d in decided.destinations if d != originating)
            decided = attrs.evolve(decided, destinations=rest)
        return self._plan(decided, key_prefix, isolation_key, reply_text, echo, now, originating)

    async def plan_message(
        self, *, key_prefix: str, isolation_key: str, target: ResponseTarget, text: str, now: float
    ) -> Plan:
        """Deliveries of an application's proactive message (``Host.deliver``).

        There is no originating wire: no link is crossed, and a target that finds no
        destination delivers nothing.
        """
        nowhere = Destination("", ChannelIdentity("", ""), None)
        decided = await self._route(target, isolation_key, nowhere, key_prefix, crossing=False)
        return self._plan(decided, key_prefix, isolation_key, text, None, now, None)

    async def _route(
        self,
        target: ResponseTarget,
        isolation_key: str,
        originating: Destination,
        key_prefix: str,
        *,
        crossing: bool = True,
    ) -> Routing:
        seen = await self._store.list_last_seen(isolation_key)
        linked = await self._store.list_identities(isolation_key)
        decided = routing.resolve_destinations(
            target,
            originating=originating,
            last_seen=[*seen, *self._every_user_addresses(isolation_key, seen)],
            linked=linked,
            can_push=self._can_push,
            link_allowed=self._link_rules.permits if crossing else (lambda a, b: True),
        )
        for dropped in decided.dropped:
            log.info(
                "delivery destination dropped",
                extra={
                    "key": key_prefix,
                    "channel": dropped.channel,
                    "reason": dropped.reason.value,
                },
            )
        if decided.fell_back:
            log.info("delivery fell back to the originating wire", extra={"key": key_prefix})
        return decided

    def _every_user_addresses(self, isolation_key: str, seen: Sequence[LastSeen]) -> list[LastSeen]:
        # A push-only channel that reaches every user (an application's webhook) has no
        # conversations to be seen in: it is addressed by the user's key, and counts as the
        # oldest sighting, so ``active`` never prefers it over a channel the user spoke on.
        already = {s.channel for s in seen}
        return [
            LastSeen(name, ChannelIdentity(name, isolation_key), None, 0.0)
            for name, channel in self._channels.items()
            if getattr(channel, "addresses_every_user", False) and name not in already
        ]

    def _plan(
        self,
        decided: Routing,
        key_prefix: str,
        isolation_key: str,
        text: str,
        echo: Mapping[str, Any] | None,
        now: float,
        originating: Destination | None,
    ) -> Plan:
        if decided.originating_only:
            return Plan(decided, ())
        deliveries = delivery.plan(
            decided.destinations,
            key_prefix=key_prefix,
            isolation_key=isolation_key,
            reply={"text": text},
            echo=echo,
            now=now,
            retry=self._retry,
            originating=originating,
        )
        return Plan(decided, deliveries)
