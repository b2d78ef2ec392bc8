"""Compact JSON encoders, built once, for the text the host writes on every request.

A request writes several JSON texts: its answer, and on a durable store its session state,
its lease and its channel's records. The standard library's C encoder builds every piece
of its output as a string object of its own and joins them at the end; for the host's
values (a Responses record or answer is about 1.5 KB) that costs ~70k instructions a text,
a fifth of what the host spends on a Responses create on SQLite. ``msgspec`` (which the
Agent Framework already depends on) writes into one buffer at several times that speed.

What the encoders write: compact JSON (``,`` and ``:`` separators), UTF-8 (no ASCII
escaping), dict keys sorted when asked. Values that are JSON to the standard library read
back equal with ``json.loads``. Where the two libraries differ, the rules are:

1. ``NaN`` and the infinities are written as ``null``, as JavaScript's ``JSON.stringify``
   writes them: JSON has no spelling for them, and the standard library either writes the
   invalid tokens ``NaN``/``Infinity`` (which PostgreSQL's ``jsonb`` and most parsers
   refuse) or raises. Every value from the wire is finite already (``strict_json``).
2. A value ``msgspec`` cannot write, and only that value, is written by the standard
   library's encoder with the same options and ASCII escaping, which raises ``TypeError``
   for what it cannot write either (an arbitrary object) and escapes a lone surrogate as
   ``\\ud800`` (an escape that reads back, where UTF-8 cannot hold the code point);
   ``msgspec`` refuses such strings, and dicts whose keys are not strings or numbers
   (``None``, ``True``) or, when sorting, not strings. Rule 1 holds there too.
3. Floats are written in the shortest form that reads back exactly, as both libraries
   do, with ``msgspec``'s spelling of exponents (``1e16`` rather than ``1e+16``).

``msgspec`` also writes some Python types the standard library refuses (``datetime``,
``UUID``, sets, dataclasses, ``bytes`` as base64); the host's own values hold none of them.

This module is pure: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import msgspec

# What msgspec raises for a value it will not write (rule 2): a type it does not know or a
# dict key it does not take (TypeError), a lone surrogate (UnicodeEncodeError, a ValueError).
_NOT_WRITTEN = (TypeError, ValueError)


def compact_bytes_encoder(*, sort_keys: bool = False) -> Callable[[Any], bytes]:
    """An encoder writing compact UTF-8 JSON bytes (see the module's rules)."""
    fast, fallback = _encoders(sort_keys)

    def encode(value: Any) -> bytes:
        try:
            return fast(value)
        except _NOT_WRITTEN:
            return fallback(value).encode()

    return encode


def compact_encoder(*, sort_keys: bool = False) -> Callable[[Any], str]:
    """An encoder writing compact JSON text (see the module's rules)."""
    fast, fallback = _encoders(sort_keys)

    def encode(value: Any) -> str:
        try:
            return fast(value).decode()
        except _NOT_WRITTEN:
            return fallback(value)

    return encode


def _encoders(sort_keys: bool) -> tuple[Callable[[Any], bytes], Callable[[Any], str]]:
    fast = msgspec.json.Encoder(order="sorted" if sort_keys else None).encode
    standard = json.JSONEncoder(
        ensure_ascii=True, allow_nan=False, sort_keys=sort_keys, separators=(",", ":")
    ).encode

    def fallback(value: Any) -> str:
        try:
            return standard(value)
        except ValueError:  # a NaN or an infinity: written as null (rule 1)
            return standard(_non_finite_as_null(value))

    return fast, fallback


def _non_finite_as_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_non_finite_as_null(item) for item in value]
    if isinstance(value, dict):
        return {key: _non_finite_as_null(item) for key, item in value.items()}
    return value
