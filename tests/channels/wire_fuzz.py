"""Generated bad input for the channels' wire tests: JSON fragments that must be refused,
and odd but well-formed values that must never make a 5xx.

A test builds a valid body, puts a marker where a value goes, and splices a fragment into
the serialized text, so the fragment reaches the server exactly as written (Python's
``json.dumps`` could not write most of them).
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

MARK = "\u2063marker\u2063"

#: Fragments no channel may accept: non-finite numbers, unrenderable strings, overlong
#: numbers and nesting deeper than any codec takes.
bad_fragments = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]),
    st.sampled_from(['"\\ud800"', '"\\udfff"', '"ok \\ud83d"', '{"\\udc00": 1}', '["\\ud800"]']),
    st.just(b'"\xed\xa0\x80"'),  # a surrogate as raw (CESU-8) bytes
    st.just(b'"\xff\xfe"'),  # not UTF-8
    st.integers(min_value=65, max_value=6000).map(lambda n: "9" * n),
    st.integers(min_value=65, max_value=1500).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=65, max_value=400).map(lambda n: '{"a":' * n + "1" + "}" * n),
)


def splice(body: Any, fragment: str | bytes) -> bytes:
    """``body`` serialized, with its one :data:`MARK` value replaced by ``fragment``."""
    text = json.dumps(body, ensure_ascii=False).encode()
    quoted = json.dumps(MARK, ensure_ascii=False).encode()
    assert text.count(quoted) == 1
    raw = fragment.encode() if isinstance(fragment, str) else fragment
    return text.replace(quoted, raw)


def with_mark(body: Any, path: tuple[str | int, ...]) -> Any:
    """A copy of ``body`` with :data:`MARK` at ``path`` (created as needed)."""
    if not path:
        return MARK
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(body) if isinstance(body, list) else []
        while len(items) <= head:
            items.append({})
        items[head] = with_mark(items[head], rest)
        return items
    copy = dict(body) if isinstance(body, dict) else {}
    copy[head] = with_mark(copy.get(head), rest)
    return copy


#: Well-formed JSON of any shape: a codec may accept it or refuse it with a 4xx, never 5xx.
odd_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
    | st.sampled_from(["", "user", "message", "input_text", "text", "data:,", "https://x/"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "role", "content", "text", "id", "image_url", "x"]),
            children,
            max_size=3,
        )
    ),
    max_leaves=12,
).map(lambda value: json.dumps(value))


#: What a one-time link code looks like (``ABCD-EFGH-JKMN``).
LINK_CODE = re.compile(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}")


def stored_text(db: Path) -> str:
    """Every value in every table of a SQLite store, as one text (to look for secrets)."""
    with sqlite3.connect(db) as connection:
        query = "select name from sqlite_master where type = 'table'"
        tables = [row[0] for row in connection.execute(query)]
        rows = [row for table in tables for row in connection.execute(f'select * from "{table}"')]
    return "\n".join(repr(row) for row in rows)
