"""Compact JSON encoders, built once, for the text the host writes on every request.

A request writes several JSON texts: its answer, and on a durable store its session state,
its lease and its channel's records. The standard library's C encoder builds every piece
of its output as a string object of its own and joins them at the end; for the host's
values (a Responses record or answer is about 1.5 KB) that cost ~70k instructions a text,
a fifth of what the host spent on a Responses create on SQLite. ``msgspec`` (which the
Agent Framework already depends on) writes into one buffer at several times that speed.

What the encoders write: compact JSON (``,`` and ``:`` separators), UTF-8 (no ASCII
escaping), dict keys sorted when asked; it reads back as the value. The standard library's
encoder writes, with the same options and ASCII escapes, any value that holds

1. a float that is not finite: ``msgspec`` writes ``null`` for it, which would read back as
   another value; the standard library writes ``NaN``/``Infinity`` or, with
   ``allow_nan=False``, raises ``ValueError``, as it always did here. Such a float shows
   in the value's MessagePack form (which ``msgspec`` writes in a fraction of the JSON's
   time) as a float64 whose exponent bits are all set, the check made on every value;
2. anything else ``msgspec`` will not write: a lone surrogate (escaped as ``\\ud800``, which
   reads back, where UTF-8 cannot hold the code point), a dict key that is not a string or
   a number (``None``, ``True``), a non-string key when sorting, an integer past 64 bits,
   an object JSON cannot hold (``TypeError`` from the standard library too).

Floats are written in the shortest form that reads back exactly, as both libraries do,
with ``msgspec``'s spelling of exponents (``1e16`` rather than ``1e+16``). ``msgspec``
also writes some Python types the standard library refuses (``datetime``, ``UUID``, sets,
dataclasses, ``bytes`` as base64); the host's own values hold none of them.

This module is pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgspec

# A float64 in MessagePack is 0xcb and its 8 big-endian bytes: NaN and the infinities have
# all 11 exponent bits set. A match elsewhere (inside an integer's bytes, say; never in
# UTF-8 text) only sends the value to the standard library's encoder, which is exact.
_NON_FINITE_FLOAT = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")
# What msgspec raises for a value it will not write: a type it does not know or a dict key
# it does not take (TypeError), a lone surrogate (UnicodeEncodeError, a ValueError), an
# integer past 64 bits in MessagePack (OverflowError).
_NOT_WRITTEN = (TypeError, ValueError, OverflowError)
_PACK = msgspec.msgpack.Encoder().encode


def compact_bytes_encoder(
    *, sort_keys: bool = False, allow_nan: bool = True
) -> Callable[[Any], bytes]:
    """An encoder writing compact UTF-8 JSON bytes (see the module's rules)."""
    fast = msgspec.json.Encoder(order="sorted" if sort_keys else None).encode
    standard = json.JSONEncoder(
        ensure_ascii=True, allow_nan=allow_nan, sort_keys=sort_keys, separators=(",", ":")
    ).encode
    pack, non_finite = _PACK, _NON_FINITE_FLOAT.search

    def encode(value: Any) -> bytes:
        try:
            if non_finite(pack(value)) is None:
                return fast(value)
        except _NOT_WRITTEN:
            pass
        return standard(value).encode()

    return encode


def compact_encoder(*, sort_keys: bool = False, allow_nan: bool = True) -> Callable[[Any], str]:
    """An encoder writing compact JSON text (see the module's rules)."""
    encode_bytes = compact_bytes_encoder(sort_keys=sort_keys, allow_nan=allow_nan)

    def encode(value: Any) -> str:
        return encode_bytes(value).decode()

    return encode
