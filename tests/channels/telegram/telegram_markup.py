"""Telegram's formatting parsers, as the fake Bot API applies them to what the bot sends.

Written from the Bot API's "Formatting options" (core.telegram.org/bots/api#formatting-
options), independently of the channel's renderer, so a test that round-trips the
renderer's output through these parsers checks the renderer against the rules, not against
itself. Both answer the visible text and its entities, or raise :class:`ParseError` with
the description Telegram gives (``Bad Request: can't parse entities: ...``).

MarkdownV2 rules applied:
- any character with code 1..126 may be escaped with ``\\``; a ``\\`` before anything else
  is an error;
- outside entities' delimiters, ``_ * [ ] ( ) ~ ` > # + - = | { } . !`` must be escaped;
- inside ``pre`` and ``code`` only ``\\``-escapes of `` ` `` and ``\\`` are allowed;
- inside a link's ``(...)`` only ``)`` and ``\\`` must be escaped;
- ``__`` is always underline; ``>`` at a line start opens or continues a blockquote;
- entities must nest properly and be closed; code and pre contain nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs


class ParseError(ValueError):
    """Telegram's 400 for a text it cannot parse."""


@attrs.frozen
class Entity:
    type: str
    offset: int  # in UTF-16 units, as Telegram counts
    length: int
    url: str | None = None
    language: str | None = None


def utf16_length(text: str) -> int:
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


_RESERVED = set("_*[]()~`>#+-=|{}.!")
_MARKERS = {"*": "bold", "_": "italic", "__": "underline", "~": "strikethrough", "||": "spoiler"}


def parse_markdown_v2(source: str) -> tuple[str, list[Entity]]:
    out: list[str] = []
    entities: list[Entity] = []
    stack: list[tuple[str, int, int]] = []  # (type, visible offset, byte offset of the marker)
    quote_start: int | None = None
    i, n = 0, len(source)

    def position() -> int:
        return utf16_length("".join(out))

    def fail(message: str) -> ParseError:
        return ParseError(f"Bad Request: can't parse entities: {message}")

    def close_quote(end: int) -> None:
        nonlocal quote_start
        if quote_start is not None:
            if stack:
                raise fail("an entity crosses the end of a blockquote")
            entities.append(Entity("blockquote", quote_start, end - quote_start))
            quote_start = None

    while i < n:
        char = source[i]
        line_start = i == 0 or source[i - 1] == "\n"
        if line_start and quote_start is not None and char != ">":
            # The quote ended with the line before; the newline that ended it is outside it.
            close_quote(position() - 1)
        if char == "\\":
            if i + 1 >= n or not 1 <= ord(source[i + 1]) <= 126:
                raise fail(f"a backslash at byte offset {i} escapes nothing")
            out.append(source[i + 1])
            i += 2
            continue
        if char == ">" and line_start:
            if quote_start is None:
                if stack:
                    raise fail("a blockquote cannot start inside another entity")
                quote_start = position()
            i += 1
            continue
        if source.startswith("```", i):
            if stack:
                raise fail("pre cannot be nested in another entity")
            end, text = _code_body(source, i + 3, "```", fail)
            language = None
            if "\n" in text:
                first, rest = text.split("\n", 1)
                if first and not re.fullmatch(r"[A-Za-z0-9_+#.-]+", first):
                    raise fail("a bad language of a pre entity")
                language, text = first or None, rest
            start = position()
            out.append(text)
            entities.append(Entity("pre", start, utf16_length(text), language=language))
            i = end
            continue
        if char == "`":
            if stack:
                raise fail("code cannot be nested in another entity")
            end, text = _code_body(source, i + 1, "`", fail)
            start = position()
            out.append(text)
            entities.append(Entity("code", start, utf16_length(text)))
            i = end
            continue
        marker = (
            "__" if source.startswith("__", i) else "||" if source.startswith("||", i) else char
        )
        if marker in _MARKERS:
            kind = _MARKERS[marker]
            if stack and stack[-1][0] == kind:
                _, start, _ = stack.pop()
                entities.append(Entity(kind, start, position() - start))
            elif any(open_kind == kind for open_kind, _, _ in stack):
                raise fail(f"entity {kind} is not closed in order")
            else:
                stack.append((kind, position(), i))
            i += len(marker)
            continue
        if char == "[":
            stack.append(("link", position(), i))
            i += 1
            continue
        if char == "]":
            if not stack or stack[-1][0] != "link":
                raise fail(f"character ']' is reserved and must be escaped (byte offset {i})")
            if i + 1 >= n or source[i + 1] != "(":
                raise fail("a link has no URL")
            j = i + 2
            url: list[str] = []
            while j < n and source[j] != ")":
                if source[j] == "\\":
                    if j + 1 >= n or source[j + 1] not in ")\\":
                        raise fail("in a URL only ')' and '\\' may be escaped")
                    url.append(source[j + 1])
                    j += 2
                    continue
                url.append(source[j])
                j += 1
            if j >= n:
                raise fail("can't find end of a URL")
            _, start, _ = stack.pop()
            target = "".join(url)
            if not re.match(r"^(https?://|tg://|mailto:)\S+$", target):
                raise fail("wrong HTTP URL")
            entities.append(Entity("text_link", start, position() - start, url=target))
            i = j + 1
            continue
        if char in _RESERVED:
            raise fail(
                f"Character '{char}' is reserved and must be escaped with the preceding '\\'"
            )
        out.append(char)
        i += 1
    if stack:
        kind, _, byte = stack[-1]
        raise fail(f"Can't find end of {kind} entity at byte offset {byte}")
    close_quote(position())
    return "".join(out), sorted(entities, key=lambda e: (e.offset, -e.length))


def _code_body(
    source: str, start: int, fence: str, fail: Callable[[str], ParseError]
) -> tuple[int, str]:
    text: list[str] = []
    i, n = start, len(source)
    while i < n:
        if source.startswith(fence, i):
            return i + len(fence), "".join(text)
        char = source[i]
        if char == "\\":
            if i + 1 >= n or source[i + 1] not in "`\\":
                raise fail("in code only '`' and '\\' may be escaped")
            text.append(source[i + 1])
            i += 2
            continue
        if char == "`":
            raise fail("character '`' must be escaped in code")
        text.append(char)
        i += 1
    raise fail(f"Can't find end of code entity at byte offset {start}")


_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}
_TAG = re.compile(r"<(/?)([a-z-]+)((?:\s+[a-z-]+(?:=\"[^\"]*\")?)*)\s*>")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#\d{1,7}|#x[0-9a-fA-F]{1,6});")


def parse_html(source: str) -> tuple[str, list[Entity]]:
    out: list[str] = []
    entities: list[Entity] = []
    stack: list[tuple[str, int, str | None]] = []
    i, n = 0, len(source)

    def fail(message: str) -> ParseError:
        return ParseError(f"Bad Request: can't parse entities: {message}")

    def position() -> int:
        return utf16_length("".join(out))

    while i < n:
        char = source[i]
        if char == "<":
            match = _TAG.match(source, i)
            if match is None:
                raise fail(f"Unexpected '<' at byte offset {i}")
            closing, name, attributes = match.group(1), match.group(2), match.group(3)
            if name not in _TAGS:
                raise fail(f'Unsupported start tag "{name}" at byte offset {i}')
            if closing:
                if not stack or stack[-1][0] != name:
                    raise fail(f"Unmatched end tag at byte offset {i}, expected another tag")
                _, start, value = stack.pop()
                kind = _TAGS[name]
                if kind == "code" and stack and stack[-1][0] == "pre":
                    stack[-1] = ("pre", stack[-1][1], value)  # the language moves to pre
                else:
                    url = value if kind == "text_link" else None
                    language = value if kind == "pre" else None
                    entities.append(Entity(kind, start, position() - start, url, language))
            else:
                value = None
                href = re.search(r'href="([^"]*)"', attributes)
                if name == "a":
                    if href is None:
                        raise fail("a link without href")
                    value = _unescape(href.group(1))
                    if not re.match(r"^(https?://|tg://|mailto:)\S+$", value):
                        raise fail("wrong HTTP URL")
                klass = re.search(r'class="language-([^"]*)"', attributes)
                if name == "code" and klass is not None:
                    value = klass.group(1)
                stack.append((name, position(), value))
            i = match.end()
            continue
        if char == ">":
            raise fail(f"Unexpected '>' at byte offset {i}")
        if char == "&":
            match = _ENTITY.match(source, i)
            if match is None:
                raise fail(f"Unsupported HTML entity at byte offset {i}")
            out.append(_unescape(match.group(0)))
            i = match.end()
            continue
        out.append(char)
        i += 1
    if stack:
        raise fail(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return "".join(out), sorted(entities, key=lambda e: (e.offset, -e.length))


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("#x"):
            return chr(int(name[2:], 16))
        if name.startswith("#"):
            return chr(int(name[1:]))
        return {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}[name]

    return _ENTITY.sub(one, text)


def parse(text: str, parse_mode: str | None) -> tuple[str, list[Entity]]:
    """What Telegram shows for ``text`` sent with ``parse_mode``."""
    if parse_mode is None:
        return text, []
    if parse_mode == "MarkdownV2":
        return parse_markdown_v2(text)
    if parse_mode == "HTML":
        return parse_html(text)
    raise ParseError(f"Bad Request: unsupported parse_mode {parse_mode!r}")
