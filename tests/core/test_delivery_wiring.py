"""The core's side of delivery wiring: last-seen records in a turn, which requests run in
the background, and how routed destinations become deliveries. Pure: no I/O."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from agenthost.channels.invocations import codec
from agenthost.sansio_core import delivery, turns
from agenthost.sansio_core import effects as fx
from agenthost.sansio_core.authorization import AccessSettings, ChannelAccess, NativeIdAllowlist
from agenthost.sansio_core.routing import Destination
from agenthost.sansio_core.turns import TurnCompleted, TurnRefused, TurnSettings
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelSession,
    ResponseTarget,
    TargetKind,
)
from tests.core.test_turns import World, message, turn

ALICE = ChannelIdentity("telegram", "111")
SEEN = TurnSettings(record_last_seen=True)


@attrs.define
class SeeingWorld(World):
    """Records the step-by-step path's last-seen writes too (``seen``, as ``OpenTurn``'s)."""

    def answer(self, effect: fx.Effect) -> Any:
        if isinstance(effect, fx.RecordLastSeen):
            self.seen.append((effect.isolation_key, effect.seen))
            return None
        return super().answer(effect)


def test_an_authorized_request_records_where_its_user_was_seen_once() -> None:
    world = SeeingWorld()
    request = attrs.evolve(
        message("hi", ALICE), session=ChannelSession(conversation_id="chat-1", is_direct=False)
    )
    first = turn(world, request, "r1", SEEN)
    assert isinstance(first.outcome, TurnCompleted)
    # written in the trip that opens the turn, with the key issued there: one per request
    assert first.kinds[0] == "OpenTurn" and "RecordLastSeen" not in first.kinds
    second = turn(world, request, "r2", SEEN)
    assert second.kinds[0] == "OpenTurn"
    key = world.identities[("telegram", "111")]
    assert [(k, s.conversation_id, s.seen_at) for k, s in world.seen] == [
        (key, "chat-1", world.now),
        (key, "chat-1", world.now),
    ]
    assert world.seen[0][1].identity == ALICE and world.seen[0][1].channel == "telegram"


def test_a_refused_request_records_nothing_and_the_setting_can_be_off() -> None:
    world = SeeingWorld()
    closed = TurnSettings(
        record_last_seen=True,
        access=AccessSettings(ChannelAccess(allowlist=NativeIdAllowlist({}))),
    )
    refused = turn(world, message("hi"), "r1", closed)
    assert isinstance(refused.outcome, TurnRefused)
    assert world.seen == []
    turn(world, message("hi"), "r2")  # record_last_seen off: no push channel
    assert world.seen == []


def test_a_non_originating_target_runs_in_the_background() -> None:
    request = message("hi")
    assert not turns.runs_in_background(request)
    assert turns.runs_in_background(attrs.evolve(request, background=True))
    assert turns.runs_in_background(attrs.evolve(request, response_target=ResponseTarget.none()))


def test_plan_makes_one_delivery_per_destination_with_stable_ids() -> None:
    home = Destination("invocations", ChannelIdentity("invocations", "u"), None)
    chat = Destination("chat", ChannelIdentity("chat", "c1"), "group")
    args: dict[str, Any] = {
        "key_prefix": "run_1",
        "isolation_key": "k",
        "reply": {"text": "answer"},
        "echo": {"text": "You, via Invocations: hi"},
        "now": 5.0,
        "retry": delivery.RetryPolicy(max_attempts=2),
        "originating": home,
    }
    planned = delivery.plan([chat, home], **args)
    assert [d.delivery_id for d in planned] == ["run_1:chat:c1", "run_1:invocations:u"]
    assert planned[0].echo == {"text": "You, via Invocations: hi"}
    assert planned[1].echo is None  # the user wrote it there
    assert planned[1].reply == {"text": "answer", "originating": True}
    assert planned[0].reply == {"text": "answer"}
    assert planned[0].conversation_id == "group" and planned[0].retry.max_attempts == 2
    assert all(d.status is delivery.DeliveryStatus.SCHEDULED and d.is_due(5.0) for d in planned)
    assert delivery.plan([chat, home], **args) == planned  # a retried completion: same ids
    assert delivery.echo_text("Telegram", "hi") == "You, via Telegram: hi"


@pytest.mark.parametrize(
    ("wire", "kind", "echo"),
    [
        (None, TargetKind.ORIGINATING, False),
        ("active", TargetKind.ACTIVE, False),
        ({"kind": "none"}, TargetKind.NONE, False),
        ({"kind": "channel", "channel": "chat", "echo_input": True}, TargetKind.CHANNELS, True),
        ({"kind": "channels", "channels": ["a", "b"]}, TargetKind.CHANNELS, False),
        ({"kind": "all_linked", "echo_input": True}, TargetKind.ALL_LINKED, True),
        (
            {"kind": "identities", "identities": [{"channel": "chat", "native_id": "1"}]},
            TargetKind.IDENTITIES,
            False,
        ),
    ],
)
def test_invocations_reads_response_targets(wire: Any, kind: TargetKind, echo: bool) -> None:
    target = codec.parse_response_target(wire)
    assert target.kind is kind and target.echo_input is echo


@pytest.mark.parametrize(
    "wire",
    [
        {"kind": "elsewhere"},
        {"kind": "channels", "channels": []},
        {"kind": "channels", "channels": [1]},
        {"kind": "identities", "identities": [{"channel": "chat"}]},
        {"kind": "active", "echo_input": "yes"},
        42,
    ],
)
def test_invocations_refuses_malformed_targets(wire: Any) -> None:
    with pytest.raises(codec.InvocationError) as refused:
        codec.parse_response_target(wire)
    assert refused.value.status == 422


def test_a_streamed_invocation_cannot_be_pushed() -> None:
    body = b'{"input": "x", "stream": true, "response_target": "active"}'
    with pytest.raises(codec.InvocationError):
        codec.parse_body(body)
