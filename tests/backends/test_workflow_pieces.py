"""The pure pieces of the workflow target: how outputs render, and the checkpoint storage
that keeps a run's checkpoints until they are saved with the session."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import attrs
import pydantic
import pytest
from agent_framework import AgentResponse, Content, Message, WorkflowCheckpoint
from agent_framework.exceptions import WorkflowCheckpointException

from agenthost.backends.workflow_checkpoints import (
    SessionCheckpointStorage,
    StoredWorkflow,
    declared_type_keys,
)
from agenthost.backends.workflow_outputs import (
    WorkflowTurn,
    output_text,
    question_text,
    structured_output,
)
from tests.backends.workflow_fixtures import NameQuestion, greeter_factory

pytestmark = pytest.mark.anyio


class Weather(pydantic.BaseModel):
    city: str
    celsius: float


@attrs.frozen
class Ticket:
    id: int
    tags: tuple[str, ...]


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Opaque:
    def __str__(self) -> str:
        return "opaque thing"


@pytest.mark.parametrize(
    ("value", "data"),
    [
        (Weather(city="Oslo", celsius=-3.5), {"city": "Oslo", "celsius": -3.5}),
        (Ticket(4, ("a", "b")), {"id": 4, "tags": ["a", "b"]}),
        (Point(1, 2), {"x": 1, "y": 2}),
        ({"k": [1, 2]}, {"k": [1, 2]}),
        ([1, "two"], [1, "two"]),
    ],
)
def test_structured_outputs_are_json_and_their_text_is_that_json(value: Any, data: Any) -> None:
    assert structured_output(value) == data
    assert json.loads(output_text(value)) == data


def test_text_outputs_carry_no_data() -> None:
    response = AgentResponse(
        messages=[Message(role="assistant", contents=[Content.from_text("hi")])]
    )
    assert structured_output("plain") is None
    assert output_text("plain") == "plain"
    assert output_text(response) == "hi"
    assert structured_output(Opaque()) is None
    assert output_text(Opaque()) == "opaque thing"


def test_a_question_shows_its_own_words() -> None:
    assert question_text("Approve?") == "Approve?"
    assert question_text(NameQuestion("Who?", "x")) == "Who?"
    assert json.loads(question_text(Point(3, 4))) == {"x": 3, "y": 4}


def test_a_turn_with_a_question_is_input_required() -> None:
    from agenthost.backends.workflow_outputs import InputRequest

    asking = WorkflowTurn(outputs=(), text="Who?", input_requests=(InputRequest("r1", "Who?"),))
    done = WorkflowTurn(outputs=("ok",), text="ok")
    assert (asking.status, asking.finish_reason) == ("input_required", "input_required")
    assert (done.status, done.finish_reason) == ("completed", None)
    assert asking.to_dict()["input_requests"] == [
        {"request_id": "r1", "text": "Who?", "data": None}
    ]
    # Stored like an agent's answer, so channels render a background turn the same way.
    assert asking.to_dict()["messages"] == [
        {"role": "assistant", "contents": [{"type": "text", "text": "Who?"}]}
    ]
    assert asking.to_dict()["finish_reason"] == "input_required"


def checkpoint(value: Any, **fields: Any) -> WorkflowCheckpoint:
    return WorkflowCheckpoint(
        workflow_name="greeter", graph_signature_hash="g", state={"value": value}, **fields
    )


async def test_checkpoints_round_trip_through_their_stored_form() -> None:
    allowed = declared_type_keys(greeter_factory())
    assert "tests.backends.workflow_fixtures:NameQuestion" in allowed
    storage = SessionCheckpointStorage(allowed)
    saved = await storage.save(checkpoint(NameQuestion("Who?", "party")))
    sealed = storage.seal()
    assert sealed is not None and sealed[0] == saved
    # What the session keeps is plain JSON; a new storage seeded with it restores the value.
    stored = StoredWorkflow("greeter", "g", saved, json.loads(json.dumps(sealed[1])), ("r1",))
    again = StoredWorkflow.from_state(json.loads(json.dumps(stored.to_state())))
    assert again == stored
    seeded = SessionCheckpointStorage(allowed, seed=again)
    restored = await seeded.load(saved)
    assert restored.state == {"value": NameQuestion("Who?", "party")}
    assert await seeded.list_checkpoint_ids(workflow_name="greeter") == [saved]
    assert seeded.seal() is None  # the run saved nothing new: the session keeps what it had


async def test_a_checkpoint_that_could_not_be_restored_fails_the_run() -> None:
    storage = SessionCheckpointStorage(frozenset())
    await storage.save(checkpoint(Point(1, 2)))  # saving never fails: the framework would
    with pytest.raises(WorkflowCheckpointException):  # only log it and run on
        storage.seal()


async def test_a_run_keeps_only_its_newest_checkpoints() -> None:
    storage = SessionCheckpointStorage(frozenset())
    ids = [await storage.save(checkpoint(n)) for n in range(5)]
    assert await storage.list_checkpoint_ids(workflow_name="greeter") == ids[-2:]
    assert (await storage.get_latest(workflow_name="greeter")).state == {"value": 4}
    with pytest.raises(WorkflowCheckpointException):
        await storage.load(ids[0])
    assert await storage.delete(ids[-1]) is True
    sealed = storage.seal()
    assert sealed is not None and sealed[0] == ids[-2]


def test_a_foreign_or_broken_state_is_no_stored_workflow() -> None:
    assert StoredWorkflow.from_state(None) is None
    assert StoredWorkflow.from_state({"messages": []}) is None
    assert StoredWorkflow.from_state({"workflow": {"name": "x"}}) is None


def test_an_agents_answer_in_a_turn_keeps_its_own_messages() -> None:
    said = Message(role="assistant", contents=[Content.from_text("hi")], message_id="m1")
    turn = WorkflowTurn(outputs=(AgentResponse(messages=[said]), Point(1, 2)), text="")
    assert turn.messages[0] is said
    assert turn.messages[1] == {
        "role": "assistant",
        "contents": [{"type": "text", "text": '{"x": 1, "y": 2}'}],
    }
    stored = turn.to_dict()["messages"][0]
    assert stored["message_id"] == "m1" and stored["contents"][0]["text"] == "hi"
