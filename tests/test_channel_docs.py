"""The per-channel pages stay true to the code: one page per channel package, every
setting a page's configuration table names is a parameter of that channel, and every
relative link in the pages and the README leads to a file.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from agenthost.backends.channel import Channel

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "channels"
PACKAGES = sorted(
    path.name
    for path in (ROOT / "agenthost" / "channels").iterdir()
    if (path / "__init__.py").exists()
)


def _channel_class(package: str) -> type[Channel]:
    module = importlib.import_module(f"agenthost.channels.{package}")
    exported = [getattr(module, name) for name in getattr(module, "__all__", ())]
    classes = [c for c in exported if inspect.isclass(c) and issubclass(c, Channel)]
    assert len(classes) == 1, f"agenthost.channels.{package} should export one channel class"
    return classes[0]


def _configured_settings(page: str) -> list[str]:
    """The names in the first column of the page's ``## Configuration`` table."""
    section = re.search(r"^## Configuration\n(.*?)(?=^## |\Z)", page, re.DOTALL | re.MULTILINE)
    assert section is not None, "the page has no ## Configuration section"
    names: list[str] = []
    for line in section.group(1).splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([a-z_][a-z0-9_]*)`", line.split("|")[1])
    return names


def test_every_channel_package_has_a_page() -> None:
    missing = [p for p in PACKAGES if not (PAGES / f"{p}.md").exists()]
    assert not missing, f"docs/channels/ has no page for {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_setting_a_page_names_is_a_parameter_of_its_channel(package: str) -> None:
    page = (PAGES / f"{package}.md").read_text(encoding="utf-8")
    settings = _configured_settings(page)
    assert settings, "the configuration table names no setting"
    parameters = inspect.signature(_channel_class(package)).parameters
    unknown = [name for name in settings if name not in parameters]
    assert not unknown, f"docs/channels/{package}.md names settings the channel lacks: {unknown}"


@pytest.mark.parametrize(
    "document",
    [ROOT / "README.md", *sorted(PAGES.glob("*.md"))],
    ids=lambda path: path.relative_to(ROOT).as_posix(),
)
def test_relative_links_lead_to_files(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", text)
    broken = [t for t in targets if "://" not in t and not (document.parent / t).exists()]
    assert not broken, f"{document.name} links to missing files: {broken}"


def test_the_readme_links_every_channel_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [p for p in PACKAGES if f"docs/channels/{p}.md" not in readme]
    assert not unlinked, f"the README's channel table does not link {unlinked}"
