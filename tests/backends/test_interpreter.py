"""The interpreter: each effect type reaches the performer made for it, and a target's run
answers alike whether it holds a session lease (and may be stopped) or not."""

from __future__ import annotations

import re
import typing

import anyio
import attrs
import pytest

from agenthost.backends import interpreter
from agenthost.backends.interpreter import InterpreterSettings, LocalRuns, TurnInterpreter
from agenthost.backends.targets import CallableTarget, TargetCall
from agenthost.sansio_core import effects as fx
from agenthost.sansio_core import leases
from agenthost.sansio_core.sessions import ScopeKey
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    HostMessage,
    MultitaskStrategy,
    SessionRef,
)
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


# --- a run holding no lease runs without a cancel scope ------------------------------


def _run_target(run_id: str) -> fx.RunTarget:
    request = ChannelRequest("app", ChannelIdentity("app", "u"), (HostMessage.user("hi"),))
    return fx.RunTarget(request, SessionRef("key-1", "s1"), None, run_id)


def _turn(*, holding: bool, run_id: str = "run-1") -> typing.Generator[fx.Effect, object, object]:
    if holding:
        granted = yield fx.AcquireLease("s1", run_id, MultitaskStrategy.ENQUEUE)
        assert isinstance(granted, fx.LeaseAnswer)
        assert isinstance(granted.decision, leases.Granted)
    answer = yield _run_target(run_id)
    return answer


def _driving(target: typing.Callable[..., typing.Awaitable[str]]) -> TurnInterpreter:
    return TurnInterpreter(
        store=MemoryStore(),
        target=CallableTarget(target),
        clock=lambda: 1.0,
        local_runs=LocalRuns(),
        settings=InterpreterSettings(),
    )


async def _answer(*, holding: bool, fails: bool) -> object:
    registered: list[list[tuple[str, str]]] = []

    async def target(messages: list[HostMessage]) -> str:
        registered.append(local.holding())
        if fails:
            raise ValueError("no")
        return "ok"

    interpreter = _driving(target)
    local = interpreter._local
    answer = await interpreter.drive(_turn(holding=holding))
    # Only a holder is known to the machinery that stops runs; nothing is left after.
    assert registered == [[("run-1", "s1")] if holding else []]
    assert local.holding() == [] and local._scopes == {}
    return answer


@pytest.mark.anyio
@pytest.mark.parametrize("fails", [False, True])
async def test_a_run_answers_the_same_whether_it_holds_a_lease_or_not(fails: bool) -> None:
    without = await _answer(holding=False, fails=fails)
    assert without == await _answer(holding=True, fails=fails)
    assert isinstance(without, fx.TargetFailed if fails else fx.TargetSucceeded)


@pytest.mark.anyio
async def test_a_holder_is_stopped_by_its_lease_and_a_cancellation_from_outside_propagates() -> (
    None
):
    started = anyio.Event()

    async def slow(messages: list[HostMessage]) -> str:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    interpreter = _driving(slow)
    answers: list[object] = []

    async def drive() -> None:
        answers.append(await interpreter.drive(_turn(holding=True)))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(drive)
        await started.wait()
        assert interpreter._local.cancel("run-1")  # as a lost lease or an interrupt does
    [answer] = answers
    assert isinstance(answer, fx.TargetFailed) and answer.cancelled

    for holding in (False, True):
        started = anyio.Event()
        with anyio.move_on_after(5) as outer:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(interpreter.drive, _turn(holding=holding, run_id=f"r{holding}"))
                await started.wait()
                tasks.cancel_scope.cancel()  # the caller went away: not an interrupted run
        assert not outer.cancelled_caught
        assert interpreter._local.holding() == []


def test_a_target_call_holds_what_it_was_built_with() -> None:
    # TargetCall builds fast: still the frozen attrs value it declares, defaults included.
    run = _run_target("run-1")
    call = TargetCall(run.request, run.session_ref, None)
    assert attrs.asdict(call, recurse=False) == {
        "request": run.request,
        "session_ref": run.session_ref,
        "state": None,
        "on_update": None,
    }
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        call.state = {}  # type: ignore[misc]
