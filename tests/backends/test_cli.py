"""``agenthost serve module:attribute``: found from the working directory, clear errors
for what is not a host, and help that shows its defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agenthost import Host
from agenthost.cli import build_parser, load_host

APP = """
from agenthost import Host
from agenthost.channels.invocations import InvocationsChannel

async def reply(messages):
    return "hi"

def needs_settings(path):
    return Host(reply, channels=[InvocationsChannel()])

def broken():
    return Host(reply, channels=[])

host = Host(reply, channels=[InvocationsChannel()], state_dir={state_dir!r})
"""


@pytest.fixture
def app_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A folder holding an app module, as the working directory of a console-script run
    (whose import path starts at the script's folder, not the working directory)."""
    name = f"cli_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(APP.format(state_dir=str(tmp_path / "state")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_serve_finds_the_module_in_the_working_directory(app_folder: str) -> None:
    assert isinstance(load_host(f"{app_folder}:host"), Host)


@pytest.mark.parametrize(
    ("attribute", "says"),
    [
        ("reply", "async function"),
        ("needs_settings", "needs arguments"),
        ("broken", "misconfigured: a Host needs at least one channel"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_what_is_not_a_host_is_a_clear_error(app_folder: str, attribute: str, says: str) -> None:
    with pytest.raises(SystemExit) as exited:
        load_host(f"{app_folder}:{attribute}")
    assert isinstance(exited.value.code, str)
    assert exited.value.code.startswith("agenthost: ")
    assert says in exited.value.code


def test_help_shows_defaults_in_plain_words() -> None:
    parser = build_parser()
    top = parser.format_help()
    serve = parser._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for text in (top, serve):
        assert "``" not in text
    for default in ("(default: 127.0.0.1)", "(default: 8000)", "(default: asyncio)"):
        assert default in serve
    assert parser.parse_args(["serve", "m:h", "--log-level", "WARNING"]).log_level == "warning"
