"""``values.builds_fast``: a frozen attrs class built faster is still the same frozen class."""

from __future__ import annotations

import copy
import pickle
import types as stdlib_types
from typing import Any

import attrs
import pytest

from agenthost.sansio_core import effects, leases, opening, routing, sessions, types
from agenthost.sansio_core.values import builder, builds_fast, converts_inline


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value)


@builds_fast
@attrs.frozen
class Sample:
    name: str
    count: int = 3
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    extra: dict[str, int] = attrs.field(factory=dict, hash=False)
    _private: str = "p"
    flag: bool = attrs.field(default=False, kw_only=True)


@attrs.frozen
class Reference:
    """``Sample`` as plain attrs builds it."""

    name: str
    count: int = 3
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    extra: dict[str, int] = attrs.field(factory=dict, hash=False)
    _private: str = "p"
    flag: bool = attrs.field(default=False, kw_only=True)


def _fields(value: Any) -> dict[str, Any]:
    return {field.name: getattr(value, field.name) for field in attrs.fields(type(value))}


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("a",), {}),
        (("a", 5, ["x", "y"], {"k": 1}, "q"), {"flag": True}),
        ((), {"name": "a", "tags": ["z"], "private": "r"}),
    ],
)
def test_a_value_gets_the_fields_attrs_would_give_it(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    fast, reference = Sample(*args, **kwargs), Reference(*args, **kwargs)
    assert type(fast) is Sample
    assert _fields(fast) == _fields(reference)
    assert repr(fast).removeprefix("Sample") == repr(reference).removeprefix("Reference")


def test_a_value_is_frozen_once_built() -> None:
    value = Sample("a")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        value.name = "b"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        del value.count
    assert value.name == "a"


def test_each_value_gets_its_own_factory_default() -> None:
    assert Sample("a").extra is not Sample("a").extra


def test_equality_hash_and_evolve_are_attrs_own() -> None:
    value = Sample("a", tags=["x"])
    assert value == Sample("a", tags=("x",))
    assert hash(value) == hash(Sample("a", tags=("x",)))
    assert value != Sample("b", tags=("x",))
    changed = attrs.evolve(value, count=9)
    assert type(changed) is Sample and changed.count == 9 and changed.tags == ("x",)


def test_a_cached_hash_starts_empty_and_is_computed_once_asked() -> None:
    identity = types.ChannelIdentity("telegram", "1", {"name": "A"})
    assert identity == types.ChannelIdentity("telegram", "1")
    assert hash(identity) == hash(types.ChannelIdentity("telegram", "1"))
    assert {identity: 1}[types.ChannelIdentity("telegram", "1")] == 1


def test_a_plain_subclass_keeps_its_own_class() -> None:
    class Named(Sample):
        __slots__ = ()

    value = Named("a", 4)
    assert type(value) is Named
    assert _fields(value) == _fields(Sample("a", 4))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        value.name = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    "value_class",
    [
        types.ChannelIdentity,
        types.ChannelSession,
        types.ChannelRequest,
        types.SessionRef,
        types.HostedRunResult,
        sessions.SessionAlias,
        sessions.SessionRecord,
        leases.LeaseState,
        leases.Arrive,
        opening.Opening,
        opening.Loaded,
        opening.Writes,
        effects.RunTarget,
        effects.TargetSucceeded,
        effects.FinishRun,
        routing.LastSeen,
        routing.Destination,
        routing.Routing,
    ],
)
def test_the_core_values_built_fast_are_still_frozen(value_class: Any) -> None:
    required = {
        field.alias: f"v{i}"
        for i, field in enumerate(attrs.fields(value_class))
        if field.default is attrs.NOTHING
    }
    value = value_class(**required)
    first = attrs.fields(value_class)[0].name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(value, first, "changed")
    assert type(value) is value_class


def _refused(**field: Any) -> type:
    return attrs.frozen(
        type("Refused", (), {"__annotations__": {"x": "int"}, "x": attrs.field(**field)})
    )


@pytest.mark.parametrize(
    ("value_class", "message"),
    [
        (_refused(validator=attrs.validators.instance_of(int)), "validators"),
        (_refused(init=False, default=1), "every field in __init__"),
        (_refused(default=attrs.Factory(lambda self: 1, takes_self=True)), "pass self"),
        (attrs.define(type("Mutable", (), {"__annotations__": {"x": "int"}})), "frozen"),
        (attrs.frozen(slots=False)(type("Dict", (), {"__annotations__": {"x": "int"}})), "slotted"),
    ],
)
def test_a_class_it_cannot_build_exactly_is_refused_at_import(
    value_class: type, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        builds_fast(value_class)


def test_a_class_with_its_own_new_is_refused() -> None:
    @attrs.frozen
    class Allocating:
        x: int

        def __new__(cls, *args: Any, **kwargs: Any) -> Allocating:
            return super().__new__(cls)

    with pytest.raises(TypeError, match="__new__"):
        builds_fast(Allocating)


def test_unhashable_factories_and_converters_are_called_as_given() -> None:
    defaults = ["d"]

    @builds_fast
    @attrs.frozen
    class Odd:
        items: list[str] = attrs.field(factory=defaults.copy)
        keys: tuple[str, ...] = attrs.field(default=(), converter=_Unhashable())

    value = Odd()
    assert value.items == ["d"] and value.items is not defaults
    assert Odd(keys=["k"]).keys == ("k",)


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __call__(self, value: Any) -> tuple[str, ...]:
        return tuple(value)


def test_a_post_init_hook_is_refused() -> None:
    @attrs.frozen
    class Hooked:
        x: int

        def __attrs_post_init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="__attrs_post_init__"):
        builds_fast(Hooked)


@builds_fast
@attrs.frozen
class Pair:
    left: str
    right: int = 0


@pytest.mark.parametrize(
    ("value_class", "args", "kwargs"),
    [
        (Sample, ("a", 5, ["x"], {"k": 1}, "q"), {"flag": True}),
        (Sample, ("a",), {}),
        (Pair, ("a",), {"right": 2}),
        (types.ChannelIdentity, ("telegram", "1"), {}),
    ],
)
def test_a_builder_builds_the_value_the_class_builds(
    value_class: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    built = builder(value_class)(*args, **kwargs)
    assert type(built) is value_class
    assert _fields(built) == _fields(value_class(*args, **kwargs))
    assert built == value_class(*args, **kwargs)
    first = attrs.fields(value_class)[0].name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(built, first, "changed")


def test_a_builder_needs_a_class_that_builds_fast() -> None:
    with pytest.raises(TypeError, match="builds_fast"):
        builder(Reference)


def test_a_value_copies_and_pickles_as_attrs_made_it() -> None:
    value = types.ChannelRequest("telegram", types.ChannelIdentity("telegram", "1"), ("hi",))
    for copied in (copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
        assert type(copied) is types.ChannelRequest
        assert copied == value
        assert hash(copied.identity) == hash(value.identity)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            copied.channel = "other"  # type: ignore[misc]


_factory_calls: list[int] = []


def _counted_factory() -> list[str]:
    _factory_calls.append(1)
    return ["made"]


def _inline_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value)


converts_inline(_inline_tuple, "tuple({value})")


@builds_fast
@attrs.frozen
class Converted:
    given: tuple[str, ...] = attrs.field(default=(), converter=_inline_tuple)
    made: tuple[str, ...] = attrs.field(factory=_counted_factory, converter=_inline_tuple)


@pytest.mark.parametrize("mapping", [None, {}, {"k": 1}, stdlib_types.MappingProxyType({"k": 2})])
def test_an_inline_converter_gives_what_its_function_gives(mapping: Any) -> None:
    request = types.ChannelRequest(
        "telegram", types.ChannelIdentity("telegram", "1", mapping), ("hi",), options=mapping
    )
    expected = types._frozen_mapping(mapping)
    for converted in (request.options, request.identity.attributes):
        assert type(converted) is type(expected) and converted == expected
        assert converted is not mapping  # still a private copy
    assert request.metadata == {} and type(request.metadata) is dict


def test_an_inline_converter_over_a_factory_calls_the_factory_once() -> None:
    _factory_calls.clear()
    value = Converted(["a"])
    assert value == Converted(("a",), ("made",))
    assert len(_factory_calls) == 1
