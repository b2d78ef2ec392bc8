"""The generated lifecycle docs match the core's tables.

``docs/generate.py`` is loaded from its file (``docs/`` is not a package). The expected
diagram lines are rebuilt here straight from the tables, not through the generator's own
helpers, so a generator bug cannot hide a missing or invented edge.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from agenthost.sansio_core import background, delivery, leases, link_codes

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "docs" / "generate.py"
COMMITTED = ROOT / "docs" / "lifecycles.md"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered() -> str:
    text: str = _load_generator().render()
    return text


def _mermaid_blocks(text: str) -> list[list[str]]:
    blocks = re.findall(r"```mermaid\n(.*?)```", text, flags=re.DOTALL)
    return [[line.strip() for line in block.splitlines()] for block in blocks]


def _edges(block: list[str]) -> set[str]:
    """The block's transitions between states (start and end markers left out)."""
    return {line for line in block if "-->" in line and "[*]" not in line}


def _lease_lines() -> set[str]:
    return {
        f"{before.value} --> {after.value} : {event.__name__} / "
        + ", ".join(decision.__name__ for decision in decisions)
        for (before, event, after), decisions in leases.RUN_LEASE_TRANSITIONS.items()
    }


def _code_lines() -> set[str]:
    return {
        f"{before.value} --> {after.value} : {event.__name__} / "
        + ", ".join(decision.__name__ for decision in decisions)
        for (before, event, after), decisions in link_codes.CODE_TRANSITIONS.items()
    }


def _run_lines() -> set[str]:
    return {
        f"{before.value} --> {after.value} : {event.__name__}"
        for (before, event), afters in background.RUN_TRANSITIONS.items()
        for after in afters
    }


def _delivery_lines() -> set[str]:
    return {
        f"{before.value} --> {after.value} : {event.__name__}"
        for (before, event), afters in delivery.DELIVERY_TRANSITIONS.items()
        for after in afters
    }


def test_committed_lifecycles_are_current(rendered: str) -> None:
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    assert committed == rendered, (
        "docs/lifecycles.md is stale: the core's tables or rules changed. "
        "Run `python docs/generate.py` and commit the result."
    )


def test_render_is_deterministic(rendered: str) -> None:
    assert _load_generator().render() == rendered


def test_one_state_diagram_per_lifecycle(rendered: str) -> None:
    blocks = _mermaid_blocks(rendered)
    assert len(blocks) == 4
    assert all(block[0] == "stateDiagram-v2" for block in blocks)


def test_every_lease_transition_is_drawn_and_nothing_else(rendered: str) -> None:
    lease_block = _mermaid_blocks(rendered)[0]
    assert _edges(lease_block) == _lease_lines()


def test_every_run_transition_is_drawn_and_nothing_else(rendered: str) -> None:
    run_block = _mermaid_blocks(rendered)[1]
    assert _edges(run_block) == _run_lines()


def test_every_delivery_transition_is_drawn_and_nothing_else(rendered: str) -> None:
    delivery_block = _mermaid_blocks(rendered)[2]
    assert _edges(delivery_block) == _delivery_lines()


def test_every_link_code_transition_is_drawn_and_nothing_else(rendered: str) -> None:
    code_block = _mermaid_blocks(rendered)[3]
    assert _edges(code_block) == _code_lines()


def test_every_transition_has_a_table_row(rendered: str) -> None:
    for (before, event, after), decisions in leases.RUN_LEASE_TRANSITIONS.items():
        names = ", ".join(f"`{d.__name__}`" for d in decisions)
        row = f"| `{before.value}` | `{event.__name__}` | `{after.value}` | {names} |"
        assert row in rendered
    for (state, code_event, after), decisions in link_codes.CODE_TRANSITIONS.items():
        names = ", ".join(f"`{d.__name__}`" for d in decisions)
        row = f"| `{state.value}` | `{code_event.__name__}` | `{after.value}` | {names} |"
        assert row in rendered
    for (status, run_event), statuses in background.RUN_TRANSITIONS.items():
        for new_status in statuses:
            row = f"| `{status.value}` | `{run_event.__name__}` | `{new_status.value}` |"
            assert row in rendered
    for (state, delivery_event), states in delivery.DELIVERY_TRANSITIONS.items():
        for new_state in states:
            row = f"| `{state.value}` | `{delivery_event.__name__}` | `{new_state.value}` |"
            assert row in rendered


@pytest.mark.parametrize(
    "module", [leases, background, delivery, link_codes], ids=lambda m: m.__name__
)
def test_rules_are_shown(rendered: str, module: ModuleType) -> None:
    doc = module.__doc__ or ""
    numbered = re.findall(r"^(\d+)\. (.+)$", doc, flags=re.MULTILINE)
    assert numbered, f"{module.__name__} states no numbered rules"
    for number, first_line in numbered:
        # The generator rewrites ``x`` and :role:`x` as `x`: compare words, not markup.
        assert _words(f"{number}. {first_line}") in _words(rendered)


def _words(text: str) -> str:
    return re.sub(r":[a-z]+:|`", "", text)
