"""What the channel sends Discord as a message, with no I/O.

Rules:

1. A message's ``content`` holds at most 2,000 characters, so longer text is split,
   preferring a paragraph break, then a line break, then a sentence end, then a space,
   within the second half of the window (so parts are not needlessly short), else cut
   hard. A code block cut in two is closed at the end of one part and reopened, with its
   language, at the start of the next. Nothing is dropped but the whitespace at a cut.
   Lengths are counted in UTF-16 code units (never fewer than characters), so a part fits
   however Discord counts.
2. ``allowed_mentions`` is empty on every message the channel sends, so model output that
   says ``@everyone`` or ``<@id>`` is shown but pings nobody.
3. The agent's Markdown is sent as it is: Discord renders Markdown itself.
"""

from __future__ import annotations

import re
from typing import Any

MAX_CONTENT = 2000
EPHEMERAL = 1 << 6
SUPPRESS_NOTIFICATIONS = 1 << 12

_FENCE = re.compile(r"^\s*(```+)(.*)$")


def message_payload(content: str, *, ephemeral: bool = False) -> dict[str, Any]:
    """A message body that pings nobody (rule 2)."""
    body: dict[str, Any] = {"content": content, "allowed_mentions": {"parse": []}}
    if ephemeral:
        body["flags"] = EPHEMERAL
    return body


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fitting(text: str, budget: int) -> int:
    """How many characters of ``text`` fit in ``budget`` UTF-16 code units."""
    if utf16_length(text[: budget + 1]) == len(text[: budget + 1]):
        return min(len(text), budget)  # no character outside the BMP: one unit each
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > budget:
            return index
    return len(text)


def _cut(text: str, budget: int) -> tuple[int, int]:
    """Where a part of at most ``budget`` units ends, and where the next one starts."""
    end = _fitting(text, budget)
    if end >= len(text):
        return len(text), len(text)
    window = text[:end]
    floor = end // 2  # a boundary in the first half would leave parts needlessly short
    for separator, keep in (("\n\n", 0), ("\n", 0), (". ", 1), ("! ", 1), ("? ", 1), (" ", 0)):
        at = window.rfind(separator)
        if at > floor:
            return at + keep, at + len(separator)
    return end, end


def _fence_after(text: str, fence: str | None) -> str | None:
    """The code fence still open at the end of ``text`` (its opening line), if any."""
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if match is None:
            continue
        fence = None if fence is not None else f"{match[1]}{match[2].strip()}"
    return fence


def split_message(text: str, limit: int = MAX_CONTENT) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-16 units each (rule 1)."""
    text = text.strip()
    if not text:
        return []
    parts: list[str] = []
    fence: str | None = None
    rest = text
    while rest:
        opener = f"{fence}\n" if fence else ""
        budget = limit - utf16_length(opener)
        if utf16_length(rest) <= budget:
            parts.append(opener + rest)
            break
        end, resume = _cut(rest, budget - 8)  # room to close a fence ("\n```", or longer)
        if end == 0:  # nothing fits before the first boundary: cut hard
            end = resume = max(1, _fitting(rest, budget - 8))
        chunk = rest[:end].rstrip()
        fence = _fence_after(chunk, fence)
        closer = "\n" + fence[: len(fence) - len(fence.lstrip("`"))] if fence else ""
        parts.append(opener + chunk + closer)
        rest = rest[resume:]
        if not fence:
            rest = rest.lstrip("\n")
    return [part for part in parts if part.strip()]
