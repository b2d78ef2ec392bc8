"""Frozen value classes that are as cheap to build as mutable ones.

This module owns one decorator, :func:`builds_fast`, for the ``attrs.frozen`` classes a turn
or a routing decision builds many of. It must not change what such a class is: attrs builds
the class exactly as usual (fields, ``__eq__``, ``__hash__``, ``__repr__``, ``evolve``,
``attrs.fields``, cattrs all unchanged, and the instances stay frozen); only ``__init__`` is
replaced.

Why: a frozen attrs ``__init__`` writes every field through ``object.__setattr__``, a C call
per field that costs about three plain slot writes. A returning turn builds some twenty
values of about a hundred fields in all, so on the core's hot path the writes alone were a
fifth of a turn. The replacement writes the fields with plain slot stores while the new
instance briefly has an *unlocked* subclass (the same slots, no frozen ``__setattr__``) as
its class, and gives it back its own class before it returns: the instance is never seen
unlocked outside ``__init__``. A class of one or two slots calls each slot's own setter
instead, which costs less than the two class changes.

Only the simple shapes are taken (plain defaults, factories without ``takes_self``, plain
converter functions, ``cache_hash``); a class with validators, ``__attrs_post_init__`` or
fields outside ``__init__`` is refused at import time, so a new field can never be skipped
silently. A plain (non-attrs) subclass of such a class gets attrs' own ``__init__`` back.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FunctionType
from typing import Any, ParamSpec, TypeVar

import attrs

_Value = TypeVar("_Value", bound=type)
_Params = ParamSpec("_Params")
_Built = TypeVar("_Built")

# Each builds_fast class's builder (see ``builder``).
_BUILDERS: dict[type, Callable[..., Any]] = {}

# The converters marked with ``converts_inline``, and their expressions.
_INLINE_CONVERTERS: dict[Callable[[Any], Any], str] = {}

# ``instance.__class__ = ...`` on an instance whose own ``__setattr__`` refuses it; called
# through the descriptor, it costs less than ``object.__setattr__(instance, "__class__", ...)``.
_SET_CLASS = object.__dict__["__class__"].__set__

# Up to this many slots, __init__ calls each slot's setter instead of changing the class twice
# (measured: a class change costs about two setter calls, a plain slot store next to nothing).
_MOST_SLOT_SETTER_CALLS = 2

# The slot where attrs keeps a ``cache_hash=True`` class's hash; ``None`` until first asked.
_CACHED_HASH = "_attrs_cached_hash"


def converts_inline(converter: Callable[[Any], Any], expression: str) -> None:
    """Record that ``converter``'s whole body is ``expression`` (``{value}`` standing for its
    argument, braces doubled): a builds_fast ``__init__`` then writes the expression where it
    would call the function. A request has three such fields, and calling a function costs
    more than what these conversions do. attrs itself (and ``evolve``) still calls it.

    Record it before decorating the classes that use the converter.
    """
    _INLINE_CONVERTERS[converter] = expression


def builds_fast(cls: _Value) -> _Value:
    """Give a slotted ``attrs.frozen`` class a faster ``__init__`` (see the module doc).

    Apply it above ``@attrs.frozen``, so type checkers still see the attrs class.
    """
    _check_supported(cls)
    value_class: Any = cls  # the class is rewritten below: past what a type checker follows
    attrs_init = value_class.__init__
    # Same slots (it adds none), plain attribute stores; compatible for ``__class__``. Its
    # ``__init__`` is object's own, so ``unlocked()`` allocates a blank instance at C speed:
    # about half what ``object.__new__(unlocked)`` costs, which packs its arguments first.
    unlocked = type(
        f"_Unlocked{cls.__name__}",
        (cls,),
        {
            "__slots__": (),
            "__init__": object.__init__,
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            "__module__": cls.__module__,
        },
    )
    namespace: dict[str, Any] = {
        "_set_class": _SET_CLASS,
        "_unlocked": unlocked,
        "_cls": cls,
        "NOTHING": attrs.NOTHING,
    }
    params: list[str] = []
    keyword_only: list[str] = []
    writes: list[tuple[str, str]] = []  # (slot, expression)
    for field in attrs.fields(cls):
        arg = field.alias
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            # A factory that is itself a builds_fast class (a request's default session) is
            # called through its builder: the same value, without the trip through the class.
            factory = default.factory
            if isinstance(factory, type) and factory in _BUILDERS:  # (a class: hashable)
                factory = _BUILDERS[factory]
            namespace[f"_factory_{arg}"] = factory
            param = f"{arg}=NOTHING"
            value = f"({arg} if {arg} is not NOTHING else _factory_{arg}())"
        elif default is not attrs.NOTHING:
            namespace[f"_default_{arg}"] = default
            param = f"{arg}=_default_{arg}"
            value = arg
        else:
            param = value = arg
        if field.converter is not None:
            namespace[f"_convert_{arg}"] = field.converter
            inline = None
            if isinstance(field.converter, FunctionType):  # (a function: hashable)
                inline = _INLINE_CONVERTERS.get(field.converter)
            # Only over the bare argument: a factory's call must not be written twice.
            if inline is not None and value == arg:
                value = "(" + inline.format(value=arg) + ")"
            else:
                value = f"_convert_{arg}({value})"
        (keyword_only if field.kw_only else params).append(param)
        writes.append((field.name, value))
    if _CACHED_HASH in value_class.__slots__:
        writes.append((_CACHED_HASH, "None"))  # attrs computes the hash on first use
    if keyword_only:
        params += ["*", *keyword_only]
    stores = [f"    self.{slot} = {value}" for slot, value in writes]
    if len(writes) <= _MOST_SLOT_SETTER_CALLS:
        # Few fields: a slot's own setter per field costs less than two class changes.
        init_body = []
        for slot, value in writes:
            namespace[f"_set_{slot}"] = _slot_descriptor(cls, slot).__set__
            init_body.append(f"    _set_{slot}(self, {value})")
    else:
        init_body = ["    _set_class(self, _unlocked)", *stores, "    self.__class__ = _cls"]
    # Built unlocked from the start: one class change (cheaper than even one slot setter
    # call), and no trip through type.__call__.
    build_body = [
        "    self = _unlocked()",
        *stores,
        "    self.__class__ = _cls",
        "    return self",
    ]
    signature = ", ".join(params)
    source = "\n".join(
        [
            f"def __init__(self, {signature}):",
            *init_body,
            f"def build({signature}):",
            *build_body,
        ]
    )
    exec(compile(source, f"<builds_fast {cls.__qualname__}>", "exec"), namespace)  # noqa: S102
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = attrs_init.__doc__
    init.__annotations__ = getattr(attrs_init, "__annotations__", {})
    value_class.__init__ = init
    build = namespace["build"]
    build.__qualname__ = build.__name__ = f"build_{cls.__name__}"
    _BUILDERS[cls] = build

    def __init_subclass__(subclass: Any, /, **kwargs: Any) -> None:
        # The fast __init__ would turn a subclass's instance into ``cls``: a subclass that
        # does not write its own __init__ (attrs writes one) builds the attrs way.
        super(value_class, subclass).__init_subclass__(**kwargs)
        if "__init__" not in subclass.__dict__:
            subclass.__init__ = attrs_init

    value_class.__init_subclass__ = classmethod(__init_subclass__)
    return cls


def builder(cls: Callable[_Params, _Built]) -> Callable[_Params, _Built]:
    """A function that builds a :func:`builds_fast` class's value the way ``cls(...)`` does,
    for the hottest paths: it skips ``type.__call__`` and one class change, about a third of
    what building the value costs. The value is the same (``==``, ``type``, frozen)."""
    try:
        return _BUILDERS[cls]  # type: ignore[index]
    except KeyError:
        raise TypeError(f"builder needs a class decorated with builds_fast, not {cls!r}") from None


def _slot_descriptor(cls: type, slot: str) -> Any:
    for klass in cls.__mro__:
        if slot in klass.__dict__:
            return klass.__dict__[slot]
    raise TypeError(f"{cls.__qualname__} has no slot {slot!r}")  # pragma: no cover - attrs made it


def _check_supported(cls: Any) -> None:
    name = cls.__qualname__
    if not attrs.has(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"builds_fast takes a slotted attrs class; {name} is not one")
    if cls.__setattr__ is object.__setattr__:
        raise TypeError(f"builds_fast takes a frozen attrs class; {name} is not frozen")
    if cls.__new__ is not object.__new__:
        # a builder allocates with ``object``'s own __new__, so it would skip this one
        raise TypeError(f"builds_fast does not run __new__; {name} has one")
    for hook in ("__attrs_pre_init__", "__attrs_post_init__", "__attrs_init_subclass__"):
        if hasattr(cls, hook):
            raise TypeError(f"builds_fast does not run {hook}; {name} has one")
    # Every slot must be one __init__ writes (or the weakref slot), so none is left unset.
    known = {field.name for field in attrs.fields(cls)} | {"__weakref__", _CACHED_HASH}
    unknown = sorted(set(cls.__dict__["__slots__"]) - known)
    if unknown:
        raise TypeError(f"builds_fast does not know the slots {unknown} of {name}")
    for field in attrs.fields(cls):
        where = f"{name}.{field.name}"
        if not field.init:
            raise TypeError(f"builds_fast needs every field in __init__; {where} is not")
        if field.validator is not None:
            raise TypeError(f"builds_fast does not run validators; {where} has one")
        default = field.default
        if isinstance(default, attrs.Factory) and default.takes_self:  # type: ignore[arg-type]
            raise TypeError(f"builds_fast does not pass self to factories; {where} asks")
        converter = field.converter
        if converter is not None and isinstance(converter, attrs.Converter):
            raise TypeError(f"builds_fast calls plain converter functions; {where} has a Converter")
