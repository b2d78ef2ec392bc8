"""The Invocations codec's parsed body: every field as the wire gave it, defaults otherwise
(``InvocationBody`` builds fast: it must still be the frozen attrs value it declares)."""

from __future__ import annotations

import attrs
import pytest

from agenthost.channels.invocations import codec
from agenthost.sansio_core.types import HostMessage, ResponseTarget, SessionMode


def test_a_bare_input_gets_every_default() -> None:
    body = codec.parse_body(b'{"input": "hi"}')
    assert attrs.asdict(body, recurse=False) == {
        "input": (HostMessage.user("hi"),),
        "session_id": None,
        "session_mode": SessionMode.AUTO,
        "stream": False,
        "background": False,
        "response_target": ResponseTarget.originating(),
    }
    assert body == codec.InvocationBody((HostMessage.user("hi"),))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        body.stream = True  # type: ignore[misc]


def test_every_field_the_wire_sets_is_kept() -> None:
    body = codec.parse_body(
        b'{"input": "hi", "session_id": "s-1", "session_mode": "required",'
        b' "background": true, "response_target": "active"}'
    )
    assert body == codec.InvocationBody(
        input=(HostMessage.user("hi"),),
        session_id="s-1",
        session_mode=SessionMode.REQUIRED,
        background=True,
        response_target=ResponseTarget.active(),
    )
    assert (body.stream, body.background) == (False, True)
