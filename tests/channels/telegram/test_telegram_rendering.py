"""Rendering Markdown for Telegram, checked against Telegram's own parsing rules.

The fake Bot API's parsers (``telegram_markup.py``, written from the Bot API's formatting
rules, not from the renderer) are the judge: whatever the model writes, the rendered text
must parse, show exactly the visible text of the document, and fit in one message.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agenthost.channels.telegram import rendering
from agenthost.channels.telegram.rendering import (
    HTML,
    MARKDOWN_V2,
    Span,
    Style,
    parse_markdown,
    plain_document,
    render,
    split_document,
    split_ranges,
    to_markdown_v2,
    trim,
    utf16_length,
    visible_text,
)
from tests.channels.telegram import telegram_markup
from tests.channels.telegram.telegram_markup import ParseError, parse

MODES = [MARKDOWN_V2, HTML]


def shown(markdown: str, mode: str = MARKDOWN_V2) -> str:
    text, _ = parse(render(trim(parse_markdown(markdown)), mode), mode)
    return text


def entity_types(markdown: str, mode: str = MARKDOWN_V2) -> list[str]:
    _, entities = parse(render(trim(parse_markdown(markdown)), mode), mode)
    return [entity.type for entity in entities]


# --- examples ------------------------------------------------------------------------


def test_every_reserved_character_is_escaped() -> None:
    text = "_*[]()~`>#+-=|{}.!\\ and 3.5 - 1 = 2.5!"
    markdown = "".join(f"\\{c}" if c in "_*[]()~`>#+-=|{}.!\\" else c for c in text)
    rendered = to_markdown_v2(parse_markdown(markdown))
    assert rendered == "".join(f"\\{c}" if c in "_*[]()~`>#+-=|{}.!\\" else c for c in text)
    assert parse(rendered, MARKDOWN_V2)[0] == text


def test_formatting_examples() -> None:
    assert to_markdown_v2(parse_markdown("**bold** and *it* and `x_y`")) == (
        "*bold* and _it_ and `x_y`"
    )
    assert to_markdown_v2(parse_markdown("[a.b](https://e.com/x_(y))")) == (
        "[a\\.b](https://e.com/x_(y\\))"
    )
    assert rendering.to_html(parse_markdown("**a < b** & [l](https://e.com/?a=1&b=2)")) == (
        '<b>a &lt; b</b> &amp; <a href="https://e.com/?a=1&amp;b=2">l</a>'
    )
    assert entity_types("# Title\n\n~~old~~ ||secret||") == ["bold", "strikethrough", "spoiler"]
    assert shown("- one\n- two") == "• one\n• two"


def test_snake_case_and_lone_markers_stay_text() -> None:
    for mode in MODES:
        assert shown("call my_func_name with a * b", mode) == "call my_func_name with a * b"
        assert shown("unclosed **bold and `tick", mode) == "unclosed **bold and `tick"


def test_code_blocks_keep_their_text_and_language() -> None:
    markdown = "Run:\n```python\nprint('a_b') # `x` \\ y\n```\ndone."
    for mode in MODES:
        text, entities = parse(render(parse_markdown(markdown), mode), mode)
        assert text == "Run:\nprint('a_b') # `x` \\ y\ndone."
        pre = [e for e in entities if e.type == "pre"]
        assert len(pre) == 1 and pre[0].language == "python"


def test_quotes_and_links_inside_them() -> None:
    markdown = "> a **b** `c` [d](https://e.com)\n> f\n\nafter"
    for mode in MODES:
        text, entities = parse(render(parse_markdown(markdown), mode), mode)
        assert text == "a b c d (https://e.com)\nf\n\nafter"
        assert "blockquote" in [e.type for e in entities]
        assert "code" not in [e.type for e in entities]  # no code inside a quote


def test_unsafe_link_targets_are_shown_not_linked() -> None:
    assert shown("[click](javascript:alert(1))") == "click (javascript:alert(1))"
    assert "text_link" not in entity_types("[click](javascript:alert(1))")


def test_the_fake_refuses_what_telegram_refuses() -> None:
    for bad in ["a.b", "*open", "[x](y", "`a\\b`", "a_b"]:
        with pytest.raises(ParseError, match="can't parse entities"):
            telegram_markup.parse_markdown_v2(bad)
    for bad in ["a < b", "<blink>x</blink>", "<b>x", "a & b"]:
        with pytest.raises(ParseError, match="can't parse entities"):
            telegram_markup.parse_html(bad)


def test_plain_fallback_keeps_the_words_and_the_urls() -> None:
    document = parse_markdown("See **[the docs](https://e.com/d)** and `code`.")
    plain = plain_document(document)
    assert all(not s.styles and s.url is None and not s.is_code for s in plain)
    assert visible_text(plain) == "See the docs (https://e.com/d) and code."


# --- splitting ---------------------------------------------------------------------------


def test_a_5000_character_answer_splits_on_a_paragraph() -> None:
    first = "First paragraph. " * 150  # 2550 characters
    second = "Second paragraph, longer. " * 95  # 2470 characters
    markdown = f"{first.strip()}\n\n{second.strip()}"
    assert len(markdown) > 4096
    parts = split_document(parse_markdown(markdown))
    assert [visible_text(p) for p in parts] == [first.strip(), second.strip()]


def test_a_long_paragraph_splits_on_a_sentence_then_a_word() -> None:
    sentences = " ".join(f"Sentence number {i} ends here." for i in range(300))
    parts = split_document(parse_markdown(sentences))
    assert len(parts) == 3
    for part in parts[:-1]:
        assert visible_text(part).endswith("here.")
    words = " ".join(["word"] * 2000)
    parts = split_document(parse_markdown(words))
    assert all(
        visible_text(p).startswith("word") and visible_text(p).endswith("word") for p in parts
    )


def test_formatting_is_closed_and_reopened_across_a_split() -> None:
    bold = "**" + " ".join(["strong"] * 1000) + "**"
    parts = split_document(parse_markdown(bold))
    assert len(parts) == 2
    for part in parts:
        text, entities = parse(to_markdown_v2(part), MARKDOWN_V2)
        assert [(e.type, e.offset, e.length) for e in entities] == [("bold", 0, utf16_length(text))]


def test_a_long_code_block_splits_between_its_lines() -> None:
    code = "\n".join(f"line_{i} = {i} * 2  # `tick`" for i in range(300))
    parts = split_document(parse_markdown(f"Here:\n\n```python\n{code}\n```"))
    assert len(parts) >= 3
    lines: list[str] = []
    for part in parts:
        text, entities = parse(to_markdown_v2(part), MARKDOWN_V2)
        assert utf16_length(text) <= 4096
        assert any(e.type == "pre" for e in entities)
        lines += [line for line in text.split("\n") if line.startswith("line_")]
    assert lines == code.split("\n")


def test_astral_characters_count_twice() -> None:
    text = "😀" * 3000  # 6000 UTF-16 units
    parts = split_document(parse_markdown(text))
    assert len(parts) == 2
    assert all(utf16_length(visible_text(p)) <= 4096 for p in parts)
    assert "".join(visible_text(p) for p in parts) == text


# --- properties --------------------------------------------------------------------------

TOKENS = [
    "a",
    "b",
    "word",
    " ",
    " ",
    "\n",
    "\n\n",
    "*",
    "**",
    "_",
    "__",
    "~~",
    "||",
    "`",
    "```",
    "```py\n",
    "\n```",
    "[",
    "]",
    "(",
    ")",
    "[link](https://example.com/x_(1))",
    "> ",
    "\n> ",
    "- ",
    "\n- ",
    "# ",
    "\n# ",
    ".",
    "!",
    "\\",
    "#",
    "+",
    "-",
    "=",
    "|",
    "{",
    "}",
    "<",
    ">",
    "&",
    '"',
    "é",
    "😀",
    "\t",
    "1.",
    "snake_case",
    "**bold**",
    "`code`",
]
markdown_texts = st.lists(st.sampled_from(TOKENS), max_size=80).map("".join) | st.text(max_size=200)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(markdown_texts)
def test_any_text_renders_to_what_telegram_accepts(markdown: str) -> None:
    document = trim(parse_markdown(markdown))
    expected = visible_text(document)
    for mode in MODES:
        text, _ = parse(render(document, mode), mode)
        assert text == expected
    assert visible_text(plain_document(document)) == rendering.to_plain(document)


@PROPERTY
@given(markdown_texts, st.integers(min_value=8, max_value=120))
def test_splitting_keeps_everything_and_breaks_nothing(markdown: str, limit: int) -> None:
    document = parse_markdown(markdown)
    text = visible_text(document)
    ranges = split_ranges(document, limit)
    # Contiguous and complete: concatenating the parts gives the text back.
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert "".join(text[a:b] for a, b in ranges) == text
    for (start, end), part in zip(
        ranges, (trim(rendering.slice_document(document, a, b)) for a, b in ranges), strict=True
    ):
        assert utf16_length(text[start:end]) <= limit
        for mode in MODES:
            shown_text, _ = parse(render(part, mode), mode)
            assert shown_text == visible_text(part)
            assert shown_text.strip() == text[start:end].strip() or any(s.is_code for s in part)


@PROPERTY
@given(markdown_texts)
def test_styles_survive_rendering(markdown: str) -> None:
    document = trim(parse_markdown(markdown))
    _, entities = parse(to_markdown_v2(document), MARKDOWN_V2)
    styled = sum(len(s.text) for s in document if Style.BOLD in s.styles and not s.quote)
    bold = [e for e in entities if e.type == "bold"]
    if styled:
        assert bold
    assert all(isinstance(s, Span) for s in document)
