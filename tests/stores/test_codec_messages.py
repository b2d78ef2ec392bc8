"""Messages keep every field through the store's codec: a client tool call and its output
read back as they were written, and a plain message keeps the shape older records have."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agenthost.sansio_core import leases
from agenthost.sansio_core.types import FunctionCall, HostMessage, TextPart, UriPart
from agenthost.stores import codec

texts = st.text(max_size=20)
parts = st.one_of(
    st.builds(TextPart, texts),
    st.builds(UriPart, texts, st.one_of(st.none(), texts)),
)
messages = st.builds(
    HostMessage,
    st.sampled_from(["user", "assistant", "tool", "system"]),
    st.lists(parts, max_size=3).map(tuple),
    st.lists(st.builds(FunctionCall, texts, texts, texts), max_size=2).map(tuple),
    st.one_of(st.none(), texts),
)


@given(st.lists(messages, max_size=4))
def test_messages_round_trip_through_the_codec(history: list[HostMessage]) -> None:
    stored = codec.unstructure_messages(history)
    assert codec.structure_messages(stored) == history
    assert codec.converter.structure(codec.converter.unstructure(history), list[HostMessage]) == (
        history
    )


def test_a_plain_message_keeps_the_old_shape() -> None:
    assert codec.unstructure_message(HostMessage.user("hi")) == {
        "role": "user",
        "parts": [{"type": "text", "text": "hi"}],
    }
    assert codec.structure_message({"role": "user", "parts": []}) == HostMessage("user", ())


waiters = st.builds(leases.Waiter, texts, st.floats(allow_nan=False))
lease_states = st.builds(
    leases.LeaseState,
    texts,
    st.one_of(st.none(), texts),
    st.one_of(st.floats(allow_nan=False), st.integers(-(2**40), 2**40)),
    st.booleans(),
    st.lists(waiters, max_size=3).map(tuple),
    st.integers(0, 2**40),
)


@given(lease_states)
def test_a_lease_is_stored_as_the_generic_codec_stores_it(state: leases.LeaseState) -> None:
    # dump_lease and load_lease are written out by hand for speed: their text and their
    # reading must stay those of the converter, which older rows were written with.
    text = codec.dump_lease(state)
    assert text == codec.dump(state)
    assert codec.load_lease(text) == codec.load(text, leases.LeaseState)


def test_a_lease_row_without_later_fields_reads_with_their_defaults() -> None:
    text = '{"session_id":"s1","holder":null,"expires_at":3,"waiters":[]}'
    assert codec.load_lease(text) == codec.load(text, leases.LeaseState)
    assert codec.load_lease(text) == leases.LeaseState("s1", expires_at=3.0)
