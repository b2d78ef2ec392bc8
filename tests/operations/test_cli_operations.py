"""``agenthost links list|revoke`` and ``agenthost doctor``, run as operators run them.

``links`` works on a SQLite store a real host wrote; ``doctor`` runs as a separate process
(``python -m agenthost doctor module:host``) against a host module whose Telegram channel
points at the fake Bot API, served on loopback by the test.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from agenthost import Host
from agenthost.channels.invocations import InvocationsChannel
from agenthost.cli import main
from agenthost.sansio_core.types import ChannelIdentity
from agenthost.stores.sqlite import SQLiteStore
from tests.channels.telegram.conftest import fake_bot_api
from tests.channels.telegram.telegram_updates import BOT_TOKEN
from tests.conftest import BACKEND

ROOT = Path(__file__).resolve().parents[2]
ALICE = ChannelIdentity("telegram", "1001")
ALICE_API = ChannelIdentity("invocations", "alice")


async def _answer(messages: object) -> str:
    return "ok"


def _linked_store(tmp_path: Path) -> None:
    async def link() -> None:
        host = Host(
            _answer,
            channels=[InvocationsChannel()],
            store=SQLiteStore(tmp_path / "state.db"),
            state_dir=tmp_path,
        )
        async with host.running():
            await host.store.issue_isolation_key(ALICE, "ik_alice", host.now())
            result = await host.link_identities(ALICE, ALICE_API)
            assert result.linked

    anyio.run(link, backend=BACKEND)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, object]]]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out = capsys.readouterr().out
    code = exited.value.code
    return int(code if isinstance(code, int) else 1), [json.loads(x) for x in out.splitlines()]


def test_links_list_shows_who_joined_whom_and_revoke_parts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _linked_store(tmp_path)
    where = ("--state-dir", str(tmp_path))
    code, rows = _cli(capsys, "links", "list", "--channel", "invocations", "--native-id",
                      "alice", *where)  # fmt: skip
    assert code == 0
    assert {(r["channel"], r["native_id"]) for r in rows} == {
        ("telegram", "1001"),
        ("invocations", "alice"),
    }
    [joined] = [r for r in rows if r["native_id"] == "alice"]
    assert joined["linked_to"] == "telegram:1001" and joined["source"] == "operator"
    assert all(r["isolation_key"] == "ik_alice" for r in rows)

    code, [revoked] = _cli(capsys, "links", "revoke", "--channel", "invocations",
                           "--native-id", "alice", *where)  # fmt: skip
    assert code == 0 and revoked["isolation_key"] != "ik_alice"
    code, rows = _cli(capsys, "links", "list", "--key", "ik_alice", *where)
    assert code == 0 and [(r["channel"], r["native_id"]) for r in rows] == [("telegram", "1001")]

    code, _ = _cli(capsys, "links", "list", "--channel", "x", "--native-id", "y", *where)
    assert code == 1
    code, _ = _cli(capsys, "links", "revoke", *where)
    assert code == 2


def _host_module(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


async def _doctor(tmp_path: Path, reference: str) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = await anyio.run_process(
        [sys.executable, "-m", "agenthost", "doctor", reference],
        cwd=tmp_path,
        env=env,
        check=False,
    )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


@pytest.mark.anyio
async def test_doctor_checks_configuration_store_and_credentials(tmp_path: Path) -> None:
    async with fake_bot_api() as (_, api_url):
        common = f"""
            from agenthost import Host
            from agenthost.channels.console import ConsoleChannel
            from agenthost.channels.telegram import TelegramChannel

            async def agent(messages):
                return "ok"

            def channel(token):
                return TelegramChannel(token, mode="polling", api_base_url={api_url!r})
        """
        _host_module(tmp_path, "good_host", common + f"""
            host = Host(agent, channels=[channel({BOT_TOKEN!r}), ConsoleChannel()],
                        state_dir="state")
        """)  # fmt: skip
        _host_module(tmp_path, "bad_token", common + """
            host = Host(agent, channels=[channel("7012345678:AAH-some-other-token-000000000")],
                        state_dir="state")
        """)  # fmt: skip
        _host_module(tmp_path, "bad_config", common + """
            host = Host(agent, channels=[ConsoleChannel(), ConsoleChannel()], state_dir="state")
        """)  # fmt: skip

        code, out = await _doctor(tmp_path, "good_host:host")
        assert code == 0, out
        assert "ok    credentials telegram: bot @agenthost_test_bot" in out
        assert "ok    store: SQLiteStore, schema version" in out
        assert "ok    credentials console: nothing to verify" in out

        code, out = await _doctor(tmp_path, "bad_token:host")
        assert code == 1, out
        assert "FAIL  credentials telegram: Telegram refused the bot token" in out
        assert "some-other-token" not in out

        code, out = await _doctor(tmp_path, "bad_config:host")
        assert code == 1, out
        assert "FAIL  configuration: two channels are named 'console'" in out
