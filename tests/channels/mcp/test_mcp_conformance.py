"""The MCP project's own conformance suite (``@modelcontextprotocol/conformance``) against the
channel, for the scenarios that fit a server exposing one agent as a tool.

The suite is a Node program; it is installed outside the Python environment with
``make mcp-conformance`` (npm, into ``.mcp-conformance/``) or found through
``MCP_CONFORMANCE=/path/to/conformance``. Without it these tests are skipped. Version
0.1.13 is pinned because later releases need Node 22 (``fs.globSync``).

Its other scenarios call fixture tools, prompts and resources of the SDKs' reference
servers (``test_simple_text``, ``test_image_content`` ...), which an agent host does not
have, so they are not run. The conformance client sends no credentials, so the channel
here admits every caller through its ``authenticate`` hook.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import anyio
import pytest

from agenthost.channels.mcp import MCPChannel
from tests.channels.mcp.conftest import Recorder, make_host
from tests.served import served

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = (
    "server-initialize",
    "ping",
    "tools-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
)
SCENARIO_SECONDS = 60.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def conformance_binary() -> Path | None:
    configured = os.environ.get("MCP_CONFORMANCE")
    candidate = (
        Path(configured)
        if configured
        else ROOT / ".mcp-conformance" / "node_modules" / ".bin" / "conformance"
    )
    if not candidate.exists() or shutil.which("node") is None:
        return None
    return candidate


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_conformance_scenario(tmp_path: Path, scenario: str) -> None:
    binary = conformance_binary()
    if binary is None:
        if os.environ.get("CI"):  # `make test` installs it: under CI, missing is a failure
            pytest.fail("the MCP conformance suite is not installed (make mcp-conformance)")
        pytest.skip("the MCP conformance suite is not installed (make mcp-conformance)")
    channel = MCPChannel(authenticate=lambda connection: "conformance")
    host = make_host(Recorder(), tmp_path, channels=[channel])
    with anyio.fail_after(SCENARIO_SECONDS + 15.0):
        async with served(host.app) as base:
            # The suite's clients treat "localhost" as the server's own name.
            url = base.replace("127.0.0.1", "localhost") + "/mcp"
            with anyio.fail_after(SCENARIO_SECONDS):
                finished = await anyio.run_process(
                    [str(binary), "server", "--url", url, "--scenario", scenario],
                    check=False,
                    cwd=tmp_path,
                )
    output = _ANSI.sub("", finished.stdout.decode(errors="replace"))
    summary = re.search(r"Passed: (\d+)/(\d+), (\d+) failed", output)
    assert summary is not None, output[-2000:]
    passed, total, failed = (int(n) for n in summary.groups())
    assert total > 0 and passed == total and failed == 0, output[-2000:]
    assert finished.returncode == 0, output[-2000:]
