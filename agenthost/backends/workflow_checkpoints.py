"""Workflow checkpoints kept in the host's store, inside the session they belong to.

A workflow run saves a checkpoint at every superstep. The host keeps the newest one in the
session's state, next to what it asked the user, so it is written by ``FinishRun`` in the
turn's own transaction: saved only when the run succeeded, seen by a restarted process or
another replica, gone with the session. Nothing is written under the state directory. A
finished workflow's checkpoint (no open question) also goes when the session idles
(``WorkflowTarget`` marks it, ``backends.state_expiry`` drops it).

``SessionCheckpointStorage`` is the framework's ``CheckpointStorage`` for one run: it is
seeded with the session's stored checkpoint (so the run can resume from it) and keeps what
the run saves in memory; at the end the adapter ``seal``s the newest, encoded the way the
framework's own storages encode it, and returns it as the session's new state.

Checkpoints are decoded with the framework's restricted unpickler. Allowed are the
framework's own types, the types the workflow's executors declare (inputs, outputs,
requests and responses) and whatever the application registered with
``agent_framework.register_checkpoint_type``.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

# The framework's own codec for checkpoints: JSON structure with pickled values, decoded
# under an allowlist. Its storages use it the same way; it is not re-exported at the top.
from agent_framework._workflows._checkpoint_encoding import (
    decode_checkpoint_value,
    encode_checkpoint_value,
)
from agent_framework.exceptions import WorkflowCheckpointException

# Checkpoints one run keeps in memory (besides the seed): a run restores only the newest,
# so older supersteps' checkpoints are dropped as it advances.
_KEPT = 2

STATE_KEY = "workflow"


@attrs.frozen
class StoredWorkflow:
    """What a session remembers of its workflow between turns (its ``state["workflow"]``)."""

    name: str
    graph: str
    checkpoint_id: str
    checkpoint: Mapping[str, Any]  # encoded: JSON with pickled values, as the framework writes
    pending: tuple[str, ...] = ()  # request ids the workflow waits for, in the order asked

    def to_state(self) -> dict[str, Any]:
        return {
            STATE_KEY: {
                "name": self.name,
                "graph": self.graph,
                "checkpoint_id": self.checkpoint_id,
                "checkpoint": dict(self.checkpoint),
                "pending": list(self.pending),
            }
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> StoredWorkflow | None:
        """The stored workflow, or ``None`` for a session that has none (or a foreign one)."""
        value = (state or {}).get(STATE_KEY)
        if not isinstance(value, Mapping):
            return None
        try:
            return cls(
                name=str(value["name"]),
                graph=str(value["graph"]),
                checkpoint_id=str(value["checkpoint_id"]),
                checkpoint=dict(value["checkpoint"]),
                pending=tuple(str(p) for p in value.get("pending", ())),
            )
        except (KeyError, TypeError):
            return None


class SessionCheckpointStorage:
    """``agent_framework.CheckpointStorage`` for one run of one session's workflow.

    The framework saves a checkpoint after every superstep, and only the newest matters to
    the session, so saving keeps the checkpoint object as the framework built it (a fresh
    object each time, which the framework does not touch again) and ``seal`` encodes the
    newest once, at the end of the run. A checkpoint that could not be restored (a value of
    a type nobody allowed) fails the run at ``seal``: the framework only logs a failed save
    and runs on, which would leave the session with a checkpoint older than its question.
    """

    def __init__(self, allowed_types: frozenset[str], seed: StoredWorkflow | None = None) -> None:
        self._allowed = allowed_types
        self._seed = seed
        self._saved: dict[str, Any] = {}  # this run's checkpoints by id, oldest first

    async def save(self, checkpoint: Any) -> str:
        checkpoint_id = str(checkpoint.checkpoint_id)
        self._saved.pop(checkpoint_id, None)
        self._saved[checkpoint_id] = checkpoint
        while len(self._saved) > _KEPT:
            del self._saved[next(iter(self._saved))]
        return checkpoint_id

    def seal(self) -> tuple[str, dict[str, Any]] | None:
        """The id and stored form of the newest checkpoint this run saved (``None``: none)."""
        if not self._saved:
            return None
        checkpoint_id, checkpoint = next(reversed(self._saved.items()))
        try:
            encoded: dict[str, Any] = encode_checkpoint_value(checkpoint.to_dict())
            # Refuse now what could not be restored later, as the framework's storages do.
            decode_checkpoint_value(encoded, allowed_types=self._allowed)
        except Exception as exc:
            raise WorkflowCheckpointException(
                "the workflow's checkpoint holds a value the host could not restore; register "
                "its type with agent_framework.register_checkpoint_type"
            ) from exc
        return checkpoint_id, encoded

    async def load(self, checkpoint_id: str) -> Any:
        from agent_framework import WorkflowCheckpoint

        if checkpoint_id in self._saved:
            return copy.deepcopy(self._saved[checkpoint_id])
        if self._seed is None or checkpoint_id != self._seed.checkpoint_id:
            raise WorkflowCheckpointException(f"No checkpoint found with ID {checkpoint_id}")
        decoded = decode_checkpoint_value(self._seed.checkpoint, allowed_types=self._allowed)
        return WorkflowCheckpoint.from_dict(decoded)

    async def list_checkpoints(self, *, workflow_name: str) -> list[Any]:
        ids = await self.list_checkpoint_ids(workflow_name=workflow_name)
        return [await self.load(checkpoint_id) for checkpoint_id in ids]

    async def delete(self, checkpoint_id: str) -> bool:
        if self._seed is not None and checkpoint_id == self._seed.checkpoint_id:
            self._seed = None
            return True
        return self._saved.pop(checkpoint_id, None) is not None

    async def get_latest(self, *, workflow_name: str) -> Any:
        ids = await self.list_checkpoint_ids(workflow_name=workflow_name)
        return await self.load(ids[-1]) if ids else None

    async def list_checkpoint_ids(self, *, workflow_name: str) -> list[str]:
        # Oldest first: the seed, then what this run saved.
        ids = [i for i, c in self._saved.items() if c.workflow_name == workflow_name]
        if self._seed is not None and self._seed.name == workflow_name:
            ids.insert(0, self._seed.checkpoint_id)
        return ids


def declared_type_keys(workflow: Any) -> frozenset[str]:
    """``module:qualname`` of every type the workflow's executors declare, for decoding."""
    found: set[type[Any]] = set()
    for executor in getattr(workflow, "executors", {}).values():
        for name in ("input_types", "output_types", "workflow_output_types"):
            _collect(getattr(executor, name, ()), found)
        for request_type, response_type in getattr(executor, "_response_handlers", {}):
            _collect((request_type, response_type), found)
    return frozenset(
        f"{t.__module__}:{t.__qualname__}" for t in found if t.__module__ != "builtins"
    )


def _collect(annotations: Iterable[Any], found: set[type[Any]]) -> None:
    for annotation in annotations:
        if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
            found.add(annotation)
        _collect(typing.get_args(annotation), found)
