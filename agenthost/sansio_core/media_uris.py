"""Which URIs a caller may hand the target as an image or a file, checked at the codec.

A ``UriPart`` reaches the target as is, and a URI the target cannot read makes the run
fail after it started (a 500 and a wasted turn). So the codecs accept only what every
target can read, and refuse the rest with a 4xx before anything runs:

1. ``https://`` or ``http://`` with a host name, at most ``MAX_URL_CHARS`` characters, no
   spaces or control characters;
2. ``data:<type>/<subtype>[;param=value...];base64,<payload>`` whose payload is valid
   base64 (``data:`` without ``;base64`` is not accepted: targets expect base64).

Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048

_DATA_URL = re.compile(
    r"data:(?P<type>[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+)?"
    r"(?:;[A-Za-z0-9!#$&^_.+-]+=[A-Za-z0-9!#$&^_.+-]+)*;base64,(?P<payload>.*)",
    re.DOTALL,
)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


def media_uri_problem(uri: str) -> str | None:
    """``None`` when ``uri`` is acceptable, else a caller-safe sentence saying why not."""
    if uri.startswith("data:"):
        match = _DATA_URL.fullmatch(uri)
        if match is None:
            return "a data URL must read data:<media type>;base64,<base64 data>"
        try:
            base64.b64decode(match["payload"], validate=True)
        except (binascii.Error, ValueError):
            return "the data URL's payload is not valid base64"
        return None
    if len(uri) > MAX_URL_CHARS:
        return f"a URL may be at most {MAX_URL_CHARS} characters"
    if _UNSAFE.search(uri):
        return "a URL may not contain spaces or control characters"
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "the URL is malformed"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "the URL must be an http(s) URL with a host, or a base64 data URL"
    return None
