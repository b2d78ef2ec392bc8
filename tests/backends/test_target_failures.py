"""A target that raises: the caller gets a bland 500, the operator the exception's type and
stack (to find the fault), and nobody the exception's message (it may quote the input)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agenthost import Host, HostMessage
from agenthost.channels.invocations import InvocationsChannel
from agenthost.stores.memory import MemoryStore
from tests.conftest import BACKEND

# Not digits alone: a record's numbers (its time since start-up, a thread id) could hold
# "4111" by chance, as one did in a nine-minute run.
SECRET = "card-4111-zebra"


class ToolBroke(RuntimeError):
    pass


def parse_order(text: str) -> int:
    try:
        return int(text)
    except ValueError as error:
        raise ToolBroke(f"cannot parse {text!r}") from error


async def fragile(messages: list[HostMessage]) -> str:
    return str(parse_order(messages[-1].text))


def test_a_failing_target_is_logged_with_its_stack_and_without_its_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    host = Host(fragile, channels=[InvocationsChannel()], store=MemoryStore(), state_dir=tmp_path)
    with TestClient(host.app, backend=BACKEND) as client:
        answer = client.post("/invocations/invoke", json={"input": f"my card is {SECRET}"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "run_failed"
    assert SECRET not in answer.text

    [failure] = [r for r in caplog.records if r.getMessage() == "the target raised"]
    stack: str = failure.stack  # type: ignore[attr-defined]
    assert failure.error_type == f"{ToolBroke.__module__}.ToolBroke"  # type: ignore[attr-defined]
    # Both exceptions of the chain, with the frames that raised them.
    assert "in parse_order" in stack and "in fragile" in stack
    assert "ValueError" in stack and "ToolBroke" in stack
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    assert [vars(r) for r in caplog.records if SECRET in str(vars(r))] == []
