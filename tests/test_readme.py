"""The README's Python example runs as written (short of serving forever)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from agenthost import Host
from tests.conftest import BACKEND

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "the README has a Python example"
    code: str = blocks[0]
    assert "host.serve(" in code
    # Everything but the last step, which would serve until interrupted.
    return "\n".join(line for line in code.splitlines() if not line.startswith("host.serve("))


def test_the_readme_example_builds_a_host_that_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # its SQLite state goes under ./.agenthost/
    namespace: dict[str, Any] = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    host = namespace["host"]
    assert isinstance(host, Host)
    with TestClient(namespace["app"], backend=BACKEND) as client:
        answer = client.post(
            "/responses/v1/responses",
            json={"input": "hello"},
            headers={"authorization": "Bearer readme"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["output"][0]["content"][0]["text"] == "you said: hello"
        code = client.post(
            "/responses/v1/responses",
            json={"input": "/link"},
            headers={"authorization": "Bearer readme"},
        )
        assert re.search(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", code.text)
