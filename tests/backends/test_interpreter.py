"""The interpreter's dispatch: each effect type reaches the performer made for it."""

from __future__ import annotations

import re
import typing

import attrs
import pytest

from agenthost.backends import interpreter
from agenthost.backends.interpreter import InterpreterSettings, LocalRuns, TurnInterpreter
from agenthost.backends.targets import CallableTarget
from agenthost.sansio_core import effects as fx
from agenthost.sansio_core.sessions import ScopeKey
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores.memory import MemoryStore


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


EFFECT_TYPES = typing.get_args(fx.Effect)


@pytest.mark.parametrize("kind", EFFECT_TYPES, ids=lambda kind: kind.__name__)
def test_every_effect_type_has_the_performer_named_after_it(kind: type) -> None:
    # A table entry pointing at another effect's performer would answer the core wrongly.
    assert interpreter._PERFORMERS[kind].__name__ == f"_{_snake(kind.__name__)}"
    assert interpreter._performer_of(kind) is interpreter._PERFORMERS[kind]


def test_the_table_holds_only_effect_types() -> None:
    assert set(interpreter._PERFORMERS) == set(EFFECT_TYPES)


def test_a_subclass_of_an_effect_is_performed_as_its_base() -> None:
    @attrs.frozen
    class Alias(fx.LoadAlias):
        pass

    assert interpreter._performer_of(Alias) is interpreter._PERFORMERS[fx.LoadAlias]


async def _echo(messages: list[object]) -> str:
    return "ok"


def _interpreter(store: MemoryStore) -> TurnInterpreter:
    return TurnInterpreter(
        store=store,
        target=CallableTarget(_echo),
        clock=lambda: 1.0,
        local_runs=LocalRuns(),
        settings=InterpreterSettings(),
    )


@pytest.mark.anyio
async def test_an_unknown_effect_is_a_type_error() -> None:
    def turn() -> typing.Generator[object, object, None]:
        yield object()

    with pytest.raises(TypeError, match="no interpreter for effect object"):
        await _interpreter(MemoryStore()).drive(turn())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_effects_are_answered_by_the_store() -> None:
    store = MemoryStore()
    scope = ScopeKey("key-1", "direct")
    identity = ChannelIdentity("app", "user-1")

    def turn() -> typing.Generator[fx.Effect, object, tuple[object, object]]:
        issued = yield fx.IssueIsolationKey(identity, "key-1", 1.0)
        alias = yield fx.LoadAlias(scope)
        return issued, alias

    assert await _interpreter(store).drive(turn()) == ("key-1", await store.load_alias(scope))
