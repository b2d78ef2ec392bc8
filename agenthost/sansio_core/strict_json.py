"""The one JSON loader every channel codec uses for what arrives on the wire.

A value is accepted only if it can be stored and rendered back unchanged, so nothing that
would fail later (when it is saved, rendered, or re-read) gets past a codec:

1. The text is UTF-8 (bytes are decoded strictly: an encoded surrogate such as
   ``ED A0 80`` is refused, where ``json.loads`` would let it through).
2. No string (value or key) holds an unpaired surrogate (``"\\ud800"``): such a string
   cannot be encoded as UTF-8, so it could be stored but never rendered.
3. Numbers are finite (``NaN``, ``Infinity`` and a float literal that overflows, such as
   ``1e400``, are refused: JSON has no spelling for them) and an integer has at most
   ``MAX_NUMBER_CHARS`` digits (Python itself refuses to convert or print integers of
   more than a few thousand digits).
4. Containers nest at most ``MAX_DEPTH`` levels: deeper values overflow the recursion of
   the parser, the encoder and the store's converter.

Everything refused raises :class:`JsonRefused`, whose message is safe to show a caller
(it names the rule, never the content). This module is pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from itertools import repeat
from typing import Any

MAX_DEPTH = 64
MAX_NUMBER_CHARS = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonRefused(ValueError):
    """The text is not JSON this host accepts; ``reason`` is a bland, caller-safe sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _constant(name: str) -> Any:
    raise JsonRefused(f"'{name}' is not a JSON value: numbers must be finite.")


def _integer(literal: str) -> int:
    if len(literal) - literal.startswith("-") > MAX_NUMBER_CHARS:
        raise JsonRefused(f"A number in the JSON body is longer than {MAX_NUMBER_CHARS} digits.")
    return int(literal)


def _float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # a literal that overflows, such as 1e400
        raise JsonRefused("Numbers in the JSON body must be finite.")
    return value


# Built once. Numbers are checked as they are parsed (bodies hold few), so what is left for
# a walk over the value is depth and surrogates, and most texts show they need neither.
_DECODER = json.JSONDecoder(parse_constant=_constant, parse_int=_integer, parse_float=_float)
_MAX_INTEGER = 10**MAX_NUMBER_CHARS


def loads(raw: bytes | str) -> Any:
    """Parse ``raw`` as strict JSON (see the module's rules), or raise :class:`JsonRefused`."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise JsonRefused("The body is not valid UTF-8.") from None
    else:
        text = raw
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark is tolerated, as RFC 8259 allows parsers to
    try:
        value = _DECODER.decode(text)
    except JsonRefused:
        raise
    except RecursionError:
        raise JsonRefused(f"The JSON body nests deeper than {MAX_DEPTH} levels.") from None
    except ValueError:  # JSONDecodeError
        raise JsonRefused("The body is not valid JSON.") from None
    if _needs_walk(text):
        check_value(value)
    return value


def _needs_walk(text: str) -> bool:
    """Whether the value parsed from ``text`` may break the depth or surrogate rules.

    A surrogate in a value needs a ``\\u`` escape naming one (or, in a ``str`` given
    here, the raw code point: UTF-8 bytes cannot carry one past the strict decoding), and
    nesting needs as many ``[`` or ``{``. Matches inside strings are false alarms only:
    the value then goes through the full walk.
    """
    return (
        text.count("[") + text.count("{") > MAX_DEPTH
        or "\\ud" in text
        or "\\uD" in text
        or (not text.isascii() and _SURROGATE.search(text) is not None)
    )


def check_value(value: Any) -> None:
    """Apply the rules to an already parsed value (iteratively: a deep value must not
    overflow this check either)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        kind = type(node)
        if kind is str:
            _check_string(node)
        elif kind is dict:
            if depth > MAX_DEPTH:
                raise JsonRefused(f"The JSON body nests deeper than {MAX_DEPTH} levels.")
            for key in node:
                _check_string(key)
            pending.extend(zip(node.values(), repeat(depth + 1)))
        elif kind is list:
            if depth > MAX_DEPTH:
                raise JsonRefused(f"The JSON body nests deeper than {MAX_DEPTH} levels.")
            pending.extend(zip(node, repeat(depth + 1)))
        elif kind is int:
            if not -_MAX_INTEGER < node < _MAX_INTEGER:
                raise JsonRefused(
                    f"A number in the JSON body is longer than {MAX_NUMBER_CHARS} digits."
                )
        elif kind is float and not math.isfinite(node):
            raise JsonRefused("Numbers in the JSON body must be finite.")


def _check_string(text: str) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise JsonRefused("A string in the JSON body holds an unpaired surrogate.")
