"""The one JSON loader of every codec: what it accepts can always be stored and rendered."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agenthost.sansio_core import strict_json
from agenthost.sansio_core.strict_json import MAX_DEPTH, JsonRefused


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "raw",
    [
        b'{"input": "\\ud800"}',  # an escaped lone high surrogate
        b'{"input": "\\udfff tail"}',  # a lone low surrogate
        b'{"input": "\\uD800"}',  # the escape in upper case, as JSON allows
        b'{"\\ud800": "key"}',  # in a key
        b'{"input": "\xed\xa0\x80"}',  # the surrogate encoded as raw bytes (CESU-style)
        b'{"input": "\xff"}',  # not UTF-8 at all
        b'{"temperature": NaN}',
        b'{"temperature": Infinity}',
        b'{"temperature": -Infinity}',
        b'{"temperature": 1e400}',  # a literal that overflows to inf
        b'{"n": ' + b"9" * 5000 + b"}",  # Python's int() refuses this with ValueError
        b'{"n": ' + b"9" * 65 + b"}",  # one digit past the bound
        b'{"n": -' + b"9" * 65 + b"}",
        nested(MAX_DEPTH + 1).encode(),
        nested(400).encode(),  # deep enough to overflow the store's converter
        nested(5000).encode(),  # deep enough to overflow the parser itself
        b'{"a": 1',
        b"",
    ],
)
def test_refuses_what_cannot_be_rendered_back(raw: bytes) -> None:
    with pytest.raises(JsonRefused) as refused:
        strict_json.loads(raw)
    assert "ud800" not in refused.value.reason  # bland: it names the rule, not the content


def test_accepts_ordinary_json_at_the_limits() -> None:
    assert strict_json.loads(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))
    assert strict_json.loads('{"emoji": "\\ud83d\\ude00"}') == {"emoji": "\U0001f600"}
    assert strict_json.loads("\ufeff[1]") == [1]
    assert strict_json.loads(b'{"n": -' + b"9" * 63 + b"}") == {"n": -int("9" * 63)}
    assert strict_json.loads('{"x": 1.5e10, "y": null, "z": [true, false]}') == {
        "x": 1.5e10,
        "y": None,
        "z": [True, False],
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def renders(value: Any) -> bytes:
    """Rendered as the channels do (strict JSON, UTF-8): raises if it cannot be."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_anything_accepted_renders_back_unchanged(value: Any) -> None:
    try:
        text = json.dumps(value)  # Python writes NaN, Infinity and lone surrogate escapes
    except RecursionError:
        return
    try:
        accepted = strict_json.loads(text.encode())
    except JsonRefused:
        return
    assert strict_json.loads(renders(accepted)) == accepted


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_accepted_or_refused_never_an_error(raw: bytes) -> None:
    try:
        accepted = strict_json.loads(raw)
    except JsonRefused:
        return
    renders(accepted)


near_the_bounds = st.recursive(
    st.integers(min_value=-(10**70), max_value=10**70)  # both sides of the 64-digit bound
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(categories=["Cs", "Ll", "Nd"]), max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_the_bounds, st.integers(min_value=0, max_value=MAX_DEPTH + 2))
def test_loads_refuses_exactly_what_the_rules_refuse(value: Any, depth: int) -> None:
    # Most texts skip the walk over the parsed value: that shortcut must never let through
    # a value the walk would refuse, at any depth, size or escape.
    for _ in range(depth):
        value = [value]
    try:
        text = json.dumps(value)  # NaN, Infinity, 1e400-style floats and \ud800 escapes
    except (RecursionError, ValueError):
        return
    try:
        strict_json.check_value(json.loads(text))
        by_the_rules = True
    except (JsonRefused, RecursionError):
        by_the_rules = False
    try:
        strict_json.loads(text)
        loaded = True
    except JsonRefused:
        loaded = False
    assert loaded == by_the_rules
