"""The encoders built once write compact JSON that reads back as the value (json_encoders'
rules), and leave to the standard library what msgspec would write otherwise or not at all."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agenthost.sansio_core.json_encoders import compact_bytes_encoder, compact_encoder

finite = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),  # any code point, lone surrogates too
)


def _values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=20,
    )


def _outside_strings(text: str) -> str:
    """``text`` with every JSON string literal removed (what is left is syntax)."""
    kept, inside, escaped = [], False, False
    for char in text:
        if inside:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                inside = False
        elif char == '"':
            inside = True
        else:
            kept.append(char)
    return "".join(kept)


@given(_values(finite), st.booleans())
def test_a_json_value_reads_back_equal_and_compact(value: Any, sort_keys: bool) -> None:
    text = compact_encoder(sort_keys=sort_keys)(value)
    assert json.loads(text) == value
    assert compact_bytes_encoder(sort_keys=sort_keys)(value) == text.encode()
    syntax = _outside_strings(text)
    assert " " not in syntax and "\n" not in syntax


@given(st.dictionaries(st.text(max_size=8), st.integers(), min_size=2, max_size=6))
def test_keys_are_sorted_when_asked_and_kept_in_order_otherwise(value: dict[str, int]) -> None:
    assert list(json.loads(compact_encoder(sort_keys=True)(value))) == sorted(value)
    assert list(json.loads(compact_encoder()(value))) == list(value)


def test_text_is_written_as_utf8_and_a_lone_surrogate_as_an_escape() -> None:
    encode = compact_encoder()
    assert encode({"text": "caf\u00e9 \u2603"}) == '{"text":"caf\u00e9 \u2603"}'
    written = encode(["ok \u00e9", "half \ud800 pair"])
    assert written.isascii()  # the standard library's escaping, for the whole value
    assert json.loads(written) == ["ok \u00e9", "half \ud800 pair"]
    written.encode()  # storable and sendable as UTF-8


def test_keys_that_are_not_strings_are_written_as_the_standard_library_writes_them() -> None:
    value = {None: 1, True: 2, 3: 3}
    assert compact_encoder()(value) == json.dumps(value, separators=(",", ":"))
    assert compact_encoder(sort_keys=True)({2: "b", 1: "a"}) == '{"1":"a","2":"b"}'


options = st.fixed_dictionaries({"sort_keys": st.booleans(), "allow_nan": st.booleans()})


def _written(encode: Any, value: Any) -> Any:
    try:
        return encode(value)
    except ValueError as refused:  # a NaN or an infinity with allow_nan=False
        return type(refused)


@given(_values(st.one_of(finite, st.floats())), options)
def test_a_value_with_nan_or_an_infinity_is_written_as_the_standard_library_writes_it(
    value: Any, chosen: dict[str, bool]
) -> None:
    # Never null (which reads back as another value): NaN and Infinity tokens, or refused.
    reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, **chosen).encode
    expected = _written(reference, value)
    written = _written(compact_encoder(**chosen), value)
    if expected is ValueError or _has_non_finite(value):
        assert written == expected
    else:
        assert json.loads(written) == json.loads(expected)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(item) for item in value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    return False


def test_nan_and_the_infinities_are_tokens_or_refused_never_null() -> None:
    value = {"score": math.nan, "limits": (math.inf, -math.inf, 1.5)}
    assert compact_encoder()(value) == '{"score":NaN,"limits":[Infinity,-Infinity,1.5]}'
    assert compact_bytes_encoder()(value) == b'{"score":NaN,"limits":[Infinity,-Infinity,1.5]}'
    for refusing in (compact_encoder(allow_nan=False), compact_bytes_encoder(allow_nan=False)):
        with pytest.raises(ValueError):
            refusing(value)
        with pytest.raises(ValueError):
            refusing([1.0, [2.0, {"deep": math.nan}]])


@pytest.mark.parametrize("number", [2**63, -(2**63) - 1, 2**64 + 1, -(10**30)])
def test_integers_past_64_bits_are_written_whole(number: int) -> None:
    assert compact_encoder()({"n": [number, math.nan]}) == f'{{"n":[{number},NaN]}}'
    assert json.loads(compact_encoder()({"n": number})) == {"n": number}


def test_a_value_json_cannot_write_is_refused_with_a_type_error() -> None:
    for encode in (compact_encoder(), compact_encoder(sort_keys=True), compact_bytes_encoder()):
        with pytest.raises(TypeError):
            encode({"when": object()})
