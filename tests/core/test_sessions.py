"""Session resolution: scopes, caller-supplied keys, modes and resets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import leases, sessions
from agenthost.sansio_core.sessions import (
    DIRECT,
    CreateSession,
    ScopeKey,
    SessionAlias,
    SessionNotFound,
    Stateless,
    UseSession,
)
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ConversationScope,
    HostMessage,
    SessionMode,
)


def request(
    channel: str = "telegram",
    *,
    native_id: str = "123",
    session: ChannelSession | None = None,
    mode: SessionMode = SessionMode.AUTO,
    scope: ConversationScope = ConversationScope.PER_USER_PER_CONVERSATION,
) -> ChannelRequest:
    return ChannelRequest(
        channel=channel,
        identity=ChannelIdentity(channel, native_id),
        input=(HostMessage.user("hello"),),
        session=session or ChannelSession(),
        session_mode=mode,
        conversation_scope=scope,
    )


GROUP = ChannelSession(conversation_id="chat-9", is_direct=False)


# --- scope_for --------------------------------------------------------------------------


def test_disabled_is_stateless_whatever_the_session_says() -> None:
    keyed = ChannelSession(key="resp_1", caller_keyed=True)
    for session in (ChannelSession(), keyed, GROUP):
        got = sessions.scope_for(
            request(session=session, mode=SessionMode.DISABLED), fresh_key="s_new"
        )
        assert got == (None, None)


def test_caller_key_is_namespaced_by_channel() -> None:
    req = request("responses", session=ChannelSession(key="resp_1", caller_keyed=True))
    assert sessions.scope_for(req, fresh_key="s_new") == (
        ScopeKey(None, "responses:key:resp_1"),
        "resp_1",
    )


def test_a_key_alone_makes_the_request_caller_keyed() -> None:
    req = request("a2a", session=ChannelSession(key="ctx-7"))
    assert sessions.scope_for(req, fresh_key="s_new") == (ScopeKey(None, "a2a:key:ctx-7"), "ctx-7")


def test_caller_keyed_without_a_key_gets_the_fresh_key() -> None:
    req = request("responses", session=ChannelSession(caller_keyed=True))
    assert sessions.scope_for(req, fresh_key="s_new") == (
        ScopeKey(None, "responses:key:s_new"),
        "s_new",
    )


def test_one_to_one_keys_on_the_user() -> None:
    for session in (ChannelSession(), ChannelSession(conversation_id="dm-1", is_direct=True)):
        for scope in ConversationScope:
            got = sessions.scope_for(request(session=session, scope=scope), fresh_key="s_new")
            assert got == (ScopeKey(None, DIRECT), None)


def test_group_without_a_conversation_id_keys_on_the_user() -> None:
    session = ChannelSession(is_direct=False)
    got = sessions.scope_for(request(session=session), fresh_key="s_new")
    assert got == (ScopeKey(None, DIRECT), None)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (ConversationScope.PER_USER, ScopeKey(None, DIRECT)),
        (
            ConversationScope.PER_USER_PER_CONVERSATION,
            ScopeKey(None, "telegram:conversation:chat-9"),
        ),
        (ConversationScope.PER_CONVERSATION, ScopeKey("conversation:telegram:chat-9", "shared")),
    ],
)
def test_group_scopes(scope: ConversationScope, expected: ScopeKey) -> None:
    assert sessions.scope_for(request(session=GROUP, scope=scope), fresh_key="s_new") == (
        expected,
        None,
    )


def test_per_conversation_is_shared_by_every_member() -> None:
    a = request(session=GROUP, scope=ConversationScope.PER_CONVERSATION, native_id="1")
    b = request(session=GROUP, scope=ConversationScope.PER_CONVERSATION, native_id="2")
    scope_a, _ = sessions.scope_for(a, fresh_key="x")
    scope_b, _ = sessions.scope_for(b, fresh_key="y")
    assert scope_a is not None and scope_b is not None
    assert scope_a.owned_by("ik_1") == scope_b.owned_by("ik_2")
    assert scope_a.owned_by("ik_1").owner == "conversation:telegram:chat-9"


def test_per_user_per_conversation_is_owned_by_each_member() -> None:
    scope, _ = sessions.scope_for(request(session=GROUP), fresh_key="x")
    assert scope is not None
    assert scope.owned_by("ik_1") != scope.owned_by("ik_2")
    assert scope.owned_by("ik_1") == ScopeKey("ik_1", "telegram:conversation:chat-9")


def test_owned_by_keeps_an_explicit_owner() -> None:
    assert ScopeKey("conv", "shared").owned_by("ik_1") == ScopeKey("conv", "shared")
    assert ScopeKey(None, DIRECT).owned_by("ik_1") == ScopeKey("ik_1", DIRECT)


def test_a_caller_key_naming_a_telegram_user_never_reaches_their_session() -> None:
    telegram_scope, _ = sessions.scope_for(request("telegram", native_id="123"), fresh_key="x")
    sneaky = request(
        "responses",
        native_id="anonymous",
        session=ChannelSession(key="telegram:123", caller_keyed=True),
    )
    sneaky_scope, key = sessions.scope_for(sneaky, fresh_key="y")
    assert key == "telegram:123"
    assert telegram_scope is not None and sneaky_scope is not None
    # even were both resolved to the very same isolation key, the aliases differ
    for owner in ("ik_tg", "ik_caller"):
        assert sneaky_scope.owned_by(owner) != telegram_scope.owned_by("ik_tg")
    assert sneaky_scope.qualifier == "responses:key:telegram:123"


def test_one_caller_cannot_continue_another_callers_key() -> None:
    keyed = ChannelSession(key="resp_1", caller_keyed=True)
    scope_a, _ = sessions.scope_for(
        request("responses", native_id="a", session=keyed), fresh_key="x"
    )
    scope_b, _ = sessions.scope_for(
        request("responses", native_id="b", session=keyed), fresh_key="y"
    )
    assert scope_a is not None and scope_b is not None
    assert scope_a.owned_by("ik_a") != scope_b.owned_by("ik_b")


channel_names = st.sampled_from(["telegram", "responses", "a2a", "teams", "discord", "mcp"])
keys = st.text(min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    caller_channel=channel_names,
    key=keys,
    other_channel=channel_names,
    other_session=st.sampled_from(
        [ChannelSession(), GROUP, ChannelSession(conversation_id="c:key:x", is_direct=False)]
    ),
    other_scope=st.sampled_from(list(ConversationScope)),
    owner=st.sampled_from(["ik_1", "ik_2"]),
)
def test_a_caller_key_never_names_a_host_tracked_session(
    caller_channel: str,
    key: str,
    other_channel: str,
    other_session: ChannelSession,
    other_scope: ConversationScope,
    owner: str,
) -> None:
    keyed = request(caller_channel, session=ChannelSession(key=key, caller_keyed=True))
    tracked = request(other_channel, session=other_session, scope=other_scope)
    keyed_scope, _ = sessions.scope_for(keyed, fresh_key="f")
    tracked_scope, _ = sessions.scope_for(tracked, fresh_key="g")
    assert keyed_scope is not None and tracked_scope is not None
    assert keyed_scope.owned_by(owner) != tracked_scope.owned_by(owner)


@settings(max_examples=100, deadline=None)
@given(a=channel_names, b=channel_names, key=keys)
def test_the_same_key_on_two_channels_names_two_sessions(a: str, b: str, key: str) -> None:
    scope_a, _ = sessions.scope_for(request(a, session=ChannelSession(key=key)), fresh_key="f")
    scope_b, _ = sessions.scope_for(request(b, session=ChannelSession(key=key)), fresh_key="f")
    assert (scope_a == scope_b) == (a == b)


# --- resolve ----------------------------------------------------------------------------

OWNED = ScopeKey("ik_1", DIRECT)
ALIAS = SessionAlias("ik_1", DIRECT, "s_old", generation=2, created_at=5.0)


def test_auto_uses_an_existing_alias() -> None:
    decision = sessions.resolve(SessionMode.AUTO, OWNED, ALIAS, new_session_id="s_new", now=9.0)
    assert decision == UseSession(ALIAS)


def test_auto_creates_a_session_when_none_exists() -> None:
    decision = sessions.resolve(SessionMode.AUTO, OWNED, None, new_session_id="s_new", now=9.0)
    assert decision == CreateSession(
        SessionAlias("ik_1", DIRECT, "s_new", generation=1, created_at=9.0)
    )


def test_required_uses_an_existing_alias() -> None:
    decision = sessions.resolve(SessionMode.REQUIRED, OWNED, ALIAS, new_session_id="s", now=9.0)
    assert decision == UseSession(ALIAS)


def test_required_never_creates() -> None:
    decision = sessions.resolve(SessionMode.REQUIRED, OWNED, None, new_session_id="s", now=9.0)
    assert decision == SessionNotFound()


@pytest.mark.parametrize("alias", [None, ALIAS])
def test_disabled_is_stateless(alias: SessionAlias | None) -> None:
    decision = sessions.resolve(SessionMode.DISABLED, OWNED, alias, new_session_id="s", now=9.0)
    assert decision == Stateless()


def test_no_scope_is_stateless() -> None:
    assert sessions.resolve(SessionMode.AUTO, None, None, new_session_id="s", now=9.0) == (
        Stateless()
    )


def test_resolve_refuses_to_create_without_an_owner() -> None:
    with pytest.raises(ValueError, match="owner"):
        sessions.resolve(
            SessionMode.AUTO, ScopeKey(None, DIRECT), None, new_session_id="s", now=9.0
        )


# --- rotate, records --------------------------------------------------------------------


def test_rotate_moves_to_a_fresh_session_one_generation_on() -> None:
    rotated = sessions.rotate(OWNED, ALIAS, new_session_id="s_fresh", now=20.0)
    assert rotated == SessionAlias("ik_1", DIRECT, "s_fresh", generation=3, created_at=20.0)
    assert rotated.session_id != ALIAS.session_id


def test_rotate_without_a_current_alias_starts_at_one() -> None:
    rotated = sessions.rotate(OWNED, None, new_session_id="s_fresh", now=20.0)
    assert rotated.generation == 1
    assert rotated.session_id == "s_fresh"


def test_rotate_needs_an_owner() -> None:
    with pytest.raises(ValueError, match="owner"):
        sessions.rotate(ScopeKey(None, DIRECT), ALIAS, new_session_id="s", now=1.0)


def test_new_record_and_successful_run() -> None:
    record = sessions.new_session_record(ALIAS, now=7.0)
    assert record.session_id == "s_old"
    assert (record.owner, record.qualifier, record.generation) == ("ik_1", DIRECT, 2)
    assert record.state is None
    assert record.turns == 0
    after = sessions.after_successful_run(record, {"messages": ["hi"]}, now=8.0)
    assert after.state == {"messages": ["hi"]}
    assert after.turns == 1
    assert after.updated_at == 8.0
    assert after.created_at == 7.0
    assert record.state is None  # frozen: the old record is untouched


# --- idle states expire (rule 7) -----------------------------------------------------------

TTL = 100.0
SAVED = 1000.0


def test_a_run_marks_its_state_as_expiring_only_when_it_saves_one() -> None:
    record = sessions.new_session_record(ALIAS, now=7.0)
    marked = sessions.after_successful_run(
        record, {"workflow": {}}, now=8.0, expires_when_idle=True
    )
    assert marked.state_expires_when_idle
    # Nothing to drop: a run that saved no state is not marked.
    assert not sessions.after_successful_run(
        record, None, 8.0, expires_when_idle=True
    ).state_expires_when_idle
    assert not sessions.after_successful_run(marked, {"workflow": {}}, 9.0).state_expires_when_idle
    assert not sessions.new_session_record(ALIAS, now=7.0).state_expires_when_idle


def test_a_fork_keeps_the_mark_of_its_source() -> None:
    source = sessions.after_successful_run(
        sessions.new_session_record(ALIAS, now=7.0), {"workflow": {}}, 8.0, expires_when_idle=True
    )
    fork = sessions.forked_record(source, SessionAlias("ik_1", "k", "s_fork", 1, 9.0), now=9.0)
    assert fork.state == source.state
    assert fork.state_expires_when_idle
    assert fork.updated_at == 9.0  # a fork is a save: its idle time starts now


def lease(holder: str | None = None, until: float = 0.0, waiter_until: float | None = None) -> Any:
    waiters = () if waiter_until is None else (leases.Waiter("w", waiter_until),)
    return leases.LeaseState("s", holder=holder, expires_at=until, waiters=waiters)


@pytest.mark.parametrize(
    ("marked", "now", "stored_lease", "expired"),
    [
        (True, SAVED + TTL, None, True),  # idle exactly the TTL, never leased
        (True, SAVED + TTL - 0.5, None, False),  # not idle long enough
        (False, SAVED + 10 * TTL, None, False),  # not marked: never expires
        (True, SAVED + TTL, lease(), True),  # released
        (True, SAVED + TTL, lease("run-1", until=SAVED + TTL + 5), False),  # a turn runs
        (True, SAVED + TTL, lease("run-1", until=SAVED + TTL - 5), True),  # its holder died
        (True, SAVED + TTL, lease(waiter_until=SAVED + TTL + 5), False),  # a turn waits
        (True, SAVED + TTL, lease(waiter_until=SAVED + TTL - 5), True),  # a dead waiter
    ],
)
def test_a_marked_state_expires_when_idle_for_the_ttl_and_the_lease_is_free(
    marked: bool, now: float, stored_lease: Any, expired: bool
) -> None:
    decided = sessions.idle_state_expired(
        expires_when_idle=marked, saved_at=SAVED, lease=stored_lease, now=now, ttl=TTL
    )
    assert decided is expired


@settings(max_examples=200, deadline=None)
@given(
    # Whole seconds, so that the arithmetic of the test itself is exact.
    idle=st.integers(min_value=0, max_value=10**6),
    holder_left=st.integers(min_value=-1000, max_value=1000),
    waiter_left=st.none() | st.integers(min_value=-1000, max_value=1000),
)
def test_a_state_is_never_dropped_under_a_turn_and_always_once_idle_and_free(
    idle: int, holder_left: int, waiter_left: int | None
) -> None:
    now = SAVED + idle
    stored = lease(
        "run-1",
        until=now + holder_left,
        waiter_until=None if waiter_left is None else now + waiter_left,
    )
    decided = sessions.idle_state_expired(
        expires_when_idle=True, saved_at=SAVED, lease=stored, now=now, ttl=TTL
    )
    in_use = holder_left > 0 or (waiter_left is not None and waiter_left > 0)
    assert decided is (not in_use and idle >= TTL)
