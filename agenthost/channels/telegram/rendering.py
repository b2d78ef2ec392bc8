"""The agent's Markdown as Telegram messages: MarkdownV2 or HTML, in parts of at most 4096.

Theory of operation. Markdown is parsed once into a *document*: a tuple of spans, each a
run of visible text with its formatting (bold, italic, strikethrough, spoiler, a link, an
inline code span, a code block, a quote line). Everything else works on documents:

- splitting cuts the *visible* text (Telegram's limit is counted after entity parsing, in
  UTF-16 units) on the best boundary that fits: paragraph, then line, then sentence, then
  word, outside code first; only then a line inside a code block, and only then anywhere.
  Each part is a document of its own, so formatting cut by a split is closed at the end of
  one part and opened again in the next: no part ever breaks an entity or an escape;
- rendering writes one document as MarkdownV2 or HTML, escaping every character the format
  reserves (protocols §3), so any text at all comes out well formed;
- the plain-text fallback is the same document without formatting (a link keeps its URL
  in brackets), for when Telegram refuses the formatted text anyway.

Telegram's nesting rules are respected by construction: code and code blocks carry no other
formatting; quotes carry only text styles (code and links in a quote become plain text);
every style is closed at each line end and opened again after it, so nothing spans a quote's
edge. Underline is never produced, so ``__`` can never be ambiguous.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence

import attrs

MAX_MESSAGE_UNITS = 4096  # telegram.constants.MessageLimit.MAX_TEXT_LENGTH, in UTF-16 units

MARKDOWN_V2 = "MarkdownV2"
HTML = "HTML"

_V2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!\\")
_MD_ESCAPABLE = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
# Both always fullmatch(): with match(), "$" also accepts a trailing newline.
_SAFE_URL = re.compile(r"(?:https?://|tg://|mailto:)[^\s<>\"]{1,2048}", re.IGNORECASE)
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")


class Style(enum.Enum):
    BOLD = "bold"
    ITALIC = "italic"
    STRIKE = "strike"
    SPOILER = "spoiler"


_STYLE_ORDER = (Style.BOLD, Style.ITALIC, Style.STRIKE, Style.SPOILER)
_V2_MARK = {Style.BOLD: "*", Style.ITALIC: "_", Style.STRIKE: "~", Style.SPOILER: "||"}
_HTML_TAG = {Style.BOLD: "b", Style.ITALIC: "i", Style.STRIKE: "s", Style.SPOILER: "tg-spoiler"}


@attrs.frozen
class Span:
    """A run of visible text and its formatting.

    ``pre`` is the language of a code block ("" for none); ``code`` an inline code span.
    Neither carries styles or a link.
    """

    text: str
    styles: frozenset[Style] = frozenset()
    url: str | None = None
    code: bool = False
    pre: str | None = None
    quote: bool = False

    @property
    def is_code(self) -> bool:
        return self.code or self.pre is not None

    def with_text(self, text: str) -> Span:
        return attrs.evolve(self, text=text)


Document = tuple[Span, ...]


def utf16_length(text: str) -> int:
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def visible_text(document: Document) -> str:
    return "".join(span.text for span in document)


# --- Markdown in ---------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_QUOTE = re.compile(r"^ {0,3}> ?(.*)$")
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+(.*)$")


def parse_markdown(markdown: str) -> Document:
    """The document for Markdown as models write it (CommonMark's common subset)."""
    lines = markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[list[Span]] = []  # one per output line group, joined with newlines
    paragraph: list[str] = []
    i = 0

    def end_paragraph() -> None:
        if paragraph:
            blocks.append(_inline("\n".join(paragraph)))
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            end_paragraph()
            marker = fence.group(1)
            body: list[str] = []
            i += 1
            while i < len(lines) and not _closes_fence(lines[i], marker):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence (or the end of the text)
            language = fence.group(2) if _LANGUAGE.fullmatch(fence.group(2) or "") else ""
            code = "\n".join(body)
            blocks.append([Span(code, pre=language)] if code else [])
            continue
        if _RULE.match(line):
            end_paragraph()
            blocks.append([Span("———")])
        elif heading := _HEADING.match(line):
            end_paragraph()
            blocks.append(_styled(_inline(heading.group(1)), Style.BOLD))
        elif _QUOTE.match(line):
            end_paragraph()
            quoted: list[str] = []
            while i < len(lines) and (match := _QUOTE.match(lines[i])):
                quoted.append(match.group(1))
                i += 1
            blocks.append(_quoted(_inline("\n".join(quoted))))
            continue
        elif bullet := _BULLET.match(line):
            end_paragraph()
            indent = " " * (len(bullet.group(1).expandtabs(4)) // 2 * 2)
            blocks.append([Span(f"{indent}• "), *_inline(bullet.group(2))])
        elif not line.strip():
            end_paragraph()
            blocks.append([])
        else:
            paragraph.append(line)
        i += 1
    end_paragraph()

    spans: list[Span] = []
    for index, block in enumerate(blocks):
        if index:
            spans.append(Span("\n"))
        spans.extend(block)
    return normalize(spans)


def _closes_fence(line: str, marker: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(marker[0] * len(marker)) and set(stripped) == {marker[0]}


def _styled(spans: list[Span], style: Style) -> list[Span]:
    return [s if s.is_code else attrs.evolve(s, styles=s.styles | {style}) for s in spans]


def _quoted(spans: list[Span]) -> list[Span]:
    result = []
    for span in spans:
        if span.url is not None and span.url != span.text:
            span = attrs.evolve(span, text=f"{span.text} ({span.url})", url=None)
        result.append(Span(span.text, span.styles, quote=True))
    return result


def _inline(
    text: str, styles: frozenset[Style] = frozenset(), url: str | None = None
) -> list[Span]:
    spans: list[Span] = []
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            spans.append(Span("".join(buffer), styles, url))
            buffer.clear()

    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n and text[i + 1] in _MD_ESCAPABLE:
            buffer.append(text[i + 1])
            i += 2
            continue
        if char == "`":
            run = _run(text, i, "`")
            close = _backtick_close(text, i + run, run)
            if close < 0:
                buffer.append("`" * run)
                i += run
                continue
            flush()
            code = text[i + run : close]
            if len(code) > 2 and code[0] == code[-1] == " " and code.strip():
                code = code[1:-1]
            if code:
                # Code carries no other entity; inside a link it is the link's text.
                spans.append(Span(code, code=True) if url is None else Span(code, styles, url))
            i = close + run
            continue
        delimiter = _opening(text, i)
        if delimiter is not None:
            close = _closing(text, i, delimiter)
            if close >= 0:
                flush()
                style = _DELIMITER_STYLE[delimiter]
                spans.extend(_inline(text[i + len(delimiter) : close], styles | {style}, url))
                i = close + len(delimiter)
                continue
        if char == "[" and url is None:
            link = _link(text, i)
            if link is not None:
                label, target, end = link
                flush()
                if _SAFE_URL.fullmatch(target):
                    spans.extend(_inline(label, styles, target))
                else:
                    spans.extend(_inline(label, styles))
                    spans.append(Span(f" ({target})", styles))
                i = end
                continue
        buffer.append(char)
        i += 1
    flush()
    return spans


_DELIMITER_STYLE = {
    "**": Style.BOLD,
    "__": Style.BOLD,
    "~~": Style.STRIKE,
    "||": Style.SPOILER,
    "*": Style.ITALIC,
    "_": Style.ITALIC,
}


def _run(text: str, start: int, char: str) -> int:
    end = start
    while end < len(text) and text[end] == char:
        end += 1
    return end - start


def _backtick_close(text: str, start: int, run: int) -> int:
    i = start
    while (i := text.find("`" * run, i)) >= 0:
        if _run(text, i, "`") == run:
            return i
        i += _run(text, i, "`")
    return -1


def _opening(text: str, i: int) -> str | None:
    for delimiter in ("**", "__", "~~", "||", "*", "_"):
        if not text.startswith(delimiter, i):
            continue
        after = i + len(delimiter)
        if after >= len(text) or text[after].isspace():
            return None
        if delimiter[0] == "_" and i > 0 and text[i - 1].isalnum():
            return None  # snake_case is not emphasis
        return delimiter
    return None


def _closing(text: str, start: int, delimiter: str) -> int:
    size = len(delimiter)
    i = start + size + 1  # emphasis holds at least one character
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "`":
            run = _run(text, i, "`")
            close = _backtick_close(text, i + run, run)
            i = close + run if close >= 0 else i + run
            continue
        if text.startswith(delimiter, i) and not text[i - 1].isspace():
            if size == 1 and i + 1 < n and text[i + 1] == delimiter:
                i += 2  # a doubled delimiter belongs to nested strong emphasis
                continue
            if delimiter[0] == "_" and i + size < n and text[i + size].isalnum():
                i += 1
                continue
            return i
        i += 1
    return -1


def _link(text: str, start: int) -> tuple[str, str, int] | None:
    """``[label](target)`` at ``start``: the label, the target and the end index."""
    depth, i, n = 0, start, len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                break
        i += 1
    else:
        return None
    if i + 1 >= n or text[i + 1] != "(":
        return None
    label_end = i
    depth, j = 0, i + 1
    while j < n:
        char = text[j]
        if char == "\\":
            j += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                break
        elif char == "\n":
            return None
        j += 1
    else:
        return None
    target = text[i + 2 : j].strip()
    if " " in target:  # [label](url "title")
        target = target.split(" ", 1)[0]
    label = text[start + 1 : label_end]
    if not label or not target:
        return None
    return label, target.replace("\\)", ")").replace("\\(", "("), j + 1


def normalize(spans: Sequence[Span]) -> Document:
    """Drop empty spans, cut spans at line ends, merge neighbours formatted alike."""
    result: list[Span] = []
    for span in spans:
        if not span.text:
            continue
        pieces = [span.text] if span.pre is not None else _lines(span.text)
        for piece in pieces:
            current = span.with_text(piece)
            if piece == "\n" and span.pre is None:
                current = Span("\n")  # a line end carries no formatting
            previous = result[-1] if result else None
            if (
                previous is not None
                and previous.text != "\n"
                and current.text != "\n"
                and previous.pre is None
                and current.pre is None
                and previous.with_text("") == current.with_text("")
            ):
                result[-1] = previous.with_text(previous.text + piece)
            else:
                result.append(current)
    return tuple(result)


def _lines(text: str) -> list[str]:
    return [piece for piece in re.split(r"(\n)", text) if piece]


def plain_document(document: Document) -> Document:
    """The same text with no formatting at all (a link keeps its URL in brackets)."""
    spans = []
    for span in document:
        text = span.text
        if span.url is not None and span.url != span.text:
            text = f"{text} ({span.url})"
        spans.append(Span(text))
    return normalize(spans)


# --- splitting -----------------------------------------------------------------------

_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),  # paragraph
    re.compile(r"\n"),  # line
    re.compile(r"(?<=[.!?…])[ \t]+"),  # sentence
    re.compile(r"\s+"),  # word
)


def split_ranges(document: Document, limit: int = MAX_MESSAGE_UNITS) -> list[tuple[int, int]]:
    """Contiguous ``(start, end)`` ranges of the visible text, each at most ``limit`` units.

    The boundary (the blank line, the space) ends the part before it; rendering trims it.
    """
    if limit < 2:
        raise ValueError("a part must hold at least two UTF-16 units")
    text = visible_text(document)
    offsets = [0]
    for char in text:
        offsets.append(offsets[-1] + (2 if ord(char) > 0xFFFF else 1))
    code = _code_ranges(document)
    ranges = []
    start = 0
    while offsets[len(text)] - offsets[start] > limit:
        end = _furthest(offsets, start, limit)
        ranges.append((start, _cut(text, start, end, code)))
        start = ranges[-1][1]
    ranges.append((start, len(text)))
    return ranges


def _furthest(offsets: list[int], start: int, limit: int) -> int:
    low, high = start, len(offsets) - 1
    while low < high:  # the largest end with offsets[end] - offsets[start] <= limit
        middle = (low + high + 1) // 2
        if offsets[middle] - offsets[start] <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _cut(text: str, start: int, end: int, code: list[tuple[int, int, bool]]) -> int:
    floor = start + max(1, (end - start) // 2)  # a part is never cut to less than half
    window = text[floor:end]
    for pattern in _BOUNDARIES:
        for match in reversed(list(pattern.finditer(window))):
            left, right = floor + match.start(), floor + match.end()
            if not _touches_code(left, right, code):
                return right
    for match in reversed(list(_BOUNDARIES[1].finditer(window))):
        return floor + match.end()  # a line inside a code block
    return end


def _code_ranges(document: Document) -> list[tuple[int, int, bool]]:
    ranges, position = [], 0
    for span in document:
        if span.is_code:
            ranges.append((position, position + len(span.text), span.pre is not None))
        position += len(span.text)
    return ranges


def _touches_code(left: int, right: int, code: list[tuple[int, int, bool]]) -> bool:
    return any(start < right and left < end for start, end, _ in code)


def slice_document(document: Document, start: int, end: int) -> Document:
    spans, position = [], 0
    for span in document:
        span_end = position + len(span.text)
        if span_end > start and position < end:
            piece = span.text[max(start - position, 0) : min(end, span_end) - position]
            spans.append(span.with_text(piece))
        position = span_end
    return normalize(spans)


def trim(document: Document) -> Document:
    """Without leading and trailing white space (Telegram drops it anyway), code kept."""
    spans = list(document)
    while spans and not spans[0].is_code and not spans[0].text.strip():
        spans.pop(0)
    while spans and not spans[-1].is_code and not spans[-1].text.strip():
        spans.pop()
    if spans and not spans[0].is_code:
        spans[0] = spans[0].with_text(spans[0].text.lstrip())
    if spans and not spans[-1].is_code:
        spans[-1] = spans[-1].with_text(spans[-1].text.rstrip())
    return normalize(spans)


def split_document(document: Document, limit: int = MAX_MESSAGE_UNITS) -> list[Document]:
    """The document in trimmed, non-empty parts of at most ``limit`` visible units."""
    parts = (trim(slice_document(document, a, b)) for a, b in split_ranges(document, limit))
    return [part for part in parts if part]


# --- rendering -----------------------------------------------------------------------


def to_markdown_v2(document: Document) -> str:
    return "".join(_render(document, _MarkdownV2()))


def to_html(document: Document) -> str:
    return "".join(_render(document, _Html()))


def to_plain(document: Document) -> str:
    return visible_text(plain_document(document))


def render(document: Document, parse_mode: str) -> str:
    if parse_mode == MARKDOWN_V2:
        return to_markdown_v2(document)
    if parse_mode == HTML:
        return to_html(document)
    raise ValueError(f"parse_mode must be {MARKDOWN_V2!r} or {HTML!r}, not {parse_mode!r}")


def escape_markdown_v2(text: str) -> str:
    return "".join(f"\\{char}" if char in _V2_RESERVED else char for char in text)


def escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


Frame = tuple[str, object]  # ("link", url) or ("style", Style)


class _Syntax:
    def open(self, frame: Frame) -> str:
        raise NotImplementedError

    def close(self, frame: Frame) -> str:
        raise NotImplementedError

    def text(self, text: str) -> str:
        raise NotImplementedError

    def code(self, text: str) -> str:
        raise NotImplementedError

    def pre(self, text: str, language: str) -> str:
        raise NotImplementedError

    def quote(self, line_start: bool, entering: bool, leaving: bool) -> str:
        raise NotImplementedError


class _MarkdownV2(_Syntax):
    def open(self, frame: Frame) -> str:
        kind, value = frame
        return "[" if kind == "link" else _V2_MARK[value]  # type: ignore[index]

    def close(self, frame: Frame) -> str:
        kind, value = frame
        if kind == "link":
            url = str(value).replace("\\", "\\\\").replace(")", "\\)")
            return f"]({url})"
        return _V2_MARK[value]  # type: ignore[index]

    def text(self, text: str) -> str:
        return escape_markdown_v2(text)

    def code(self, text: str) -> str:
        return "`" + _escape_code(text) + "`"

    def pre(self, text: str, language: str) -> str:
        return f"```{language}\n{_escape_code(text)}```"

    def quote(self, line_start: bool, entering: bool, leaving: bool) -> str:
        return ">" if line_start else ""


class _Html(_Syntax):
    def open(self, frame: Frame) -> str:
        kind, value = frame
        if kind == "link":
            href = escape_html(str(value)).replace('"', "&quot;")
            return f'<a href="{href}">'
        return f"<{_HTML_TAG[value]}>"  # type: ignore[index]

    def close(self, frame: Frame) -> str:
        kind, value = frame
        return "</a>" if kind == "link" else f"</{_HTML_TAG[value]}>"  # type: ignore[index]

    def text(self, text: str) -> str:
        return escape_html(text)

    def code(self, text: str) -> str:
        return f"<code>{escape_html(text)}</code>"

    def pre(self, text: str, language: str) -> str:
        if language:
            return f'<pre><code class="language-{language}">{escape_html(text)}</code></pre>'
        return f"<pre>{escape_html(text)}</pre>"

    def quote(self, line_start: bool, entering: bool, leaving: bool) -> str:
        return ("</blockquote>" if leaving else "") + ("<blockquote>" if entering else "")


def _escape_code(text: str) -> str:
    return text.replace("\\", "\\\\").replace("`", "\\`")


def _frames(span: Span) -> list[Frame]:
    frames: list[Frame] = [("link", span.url)] if span.url is not None else []
    return frames + [("style", style) for style in _STYLE_ORDER if style in span.styles]


def _render(document: Document, syntax: _Syntax) -> Iterator[str]:
    stack: list[Frame] = []
    line_start = True
    in_quote = False
    for span in document:
        if span.text == "\n":
            yield from (syntax.close(frame) for frame in reversed(stack))
            stack.clear()
            yield "\n"
            line_start = True
            continue
        if line_start or span.quote != in_quote:
            if span.quote != in_quote:
                yield from (syntax.close(frame) for frame in reversed(stack))
                stack.clear()
            yield syntax.quote(
                line_start and span.quote,
                entering=span.quote and not in_quote,
                leaving=in_quote and not span.quote,
            )
            in_quote = span.quote
        line_start = False
        wanted = [] if span.is_code else _frames(span)
        keep = 0
        while keep < len(stack) and stack[keep] in wanted:
            keep += 1
        yield from (syntax.close(frame) for frame in reversed(stack[keep:]))
        del stack[keep:]
        for frame in wanted:
            if frame not in stack:
                stack.append(frame)
                yield syntax.open(frame)
        if span.pre is not None:
            yield syntax.pre(span.text, span.pre)
        elif span.code:
            yield syntax.code(span.text)
        else:
            yield syntax.text(span.text)
    yield from (syntax.close(frame) for frame in reversed(stack))
    if in_quote:
        yield syntax.quote(False, entering=False, leaving=True)
