"""The encoders built once write exactly what the standard library's encoder writes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agenthost.sansio_core.json_encoders import compact_encoder

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and infinities included: refused or written as the options say
    st.text(),  # any code point, lone surrogates too
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)
options = st.fixed_dictionaries(
    {"ensure_ascii": st.booleans(), "allow_nan": st.booleans(), "sort_keys": st.booleans()}
)


def _written(encode: Any, value: Any) -> str | type[Exception]:
    try:
        return str(encode(value))
    except ValueError as refused:  # NaN or an infinity with allow_nan=False
        return type(refused)


@given(values, options)
def test_it_writes_what_the_standard_encoder_writes(value: Any, chosen: dict[str, bool]) -> None:
    reference = json.JSONEncoder(separators=(",", ":"), **chosen).encode
    assert _written(compact_encoder(**chosen), value) == _written(reference, value)


def test_a_value_json_cannot_write_is_refused_as_by_the_standard_encoder() -> None:
    encode = compact_encoder()
    with pytest.raises(TypeError):
        encode({"when": object()})
    with pytest.raises(ValueError, match="Out of range float"):
        compact_encoder(allow_nan=False)([math.inf])
    assert encode([math.nan]) == "[NaN]"
