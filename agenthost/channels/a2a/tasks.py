"""The A2A task lifecycle, as the channel keeps it: pure functions over v1.0 protobuf values.

Rules:

1. One message from a user becomes one task; its id is the server's, its ``contextId`` is
   the caller's (or minted when absent) and names the session the run continues.
2. States move only along :data:`TRANSITIONS`: ``submitted -> working -> completed |
   failed | canceled``, and ``submitted -> completed | failed | canceled`` for a run that
   ended before its first update (a host command's reply, a run cancelled or failed
   early). A run that ends with a workflow's open question leaves the task
   ``input-required`` (from ``submitted`` or ``working``); the caller's next message on
   the task moves it back to ``working`` as the next turn of the same session, and a
   task waiting for input may be canceled. The table is drawn in ``docs/channels/a2a.md``
   (a test keeps the two equal). A terminal state is final: a later update of a finished
   task is ignored, so a late chunk can never reopen a cancelled task.
3. The reply is one artifact (``response``), streamed as ``artifact-update`` events: the
   first chunk of an attempt replaces the artifact (``append`` false), later chunks
   append; a re-run after a crash starts the artifact again. The finished task holds the
   final text, whatever was streamed.
4. The history is the user's message followed by the agent's reply; ``historyLength``
   keeps the most recent ``n`` messages (unset: all of them). A question is the
   ``input-required`` status's message (its text, and a data part listing the open
   requests); when the caller answers, the question joins the history, then the answer.
   An answer whose run fails leaves the task asking the same question again (the
   workflow still waits for it), so a wrong answer can be corrected.
5. A failure or cancellation is described to the caller blandly; the reason stays in the
   host's logs.

Time comes in as ``now`` (seconds); ids come in as arguments.
"""

from __future__ import annotations

from typing import Any

from a2a.types import a2a_pb2 as pb
from google.protobuf import json_format

COMPLETED = pb.TASK_STATE_COMPLETED
FAILED = pb.TASK_STATE_FAILED
CANCELED = pb.TASK_STATE_CANCELED
INPUT_REQUIRED = pb.TASK_STATE_INPUT_REQUIRED
ARTIFACT_ID = "response"
ARTIFACT_NAME = "response"

_ENDS = (pb.TASK_STATE_COMPLETED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELED)
TRANSITIONS: frozenset[tuple[int, int]] = frozenset(
    {
        (pb.TASK_STATE_SUBMITTED, pb.TASK_STATE_WORKING),
        *((pb.TASK_STATE_SUBMITTED, end) for end in _ENDS),
        *((pb.TASK_STATE_WORKING, end) for end in _ENDS),
        (pb.TASK_STATE_SUBMITTED, pb.TASK_STATE_INPUT_REQUIRED),
        (pb.TASK_STATE_WORKING, pb.TASK_STATE_INPUT_REQUIRED),
        (pb.TASK_STATE_INPUT_REQUIRED, pb.TASK_STATE_WORKING),
        (pb.TASK_STATE_INPUT_REQUIRED, pb.TASK_STATE_CANCELED),
    }
)

FAILED_TEXT = "The agent could not complete this task."
CANCELED_TEXT = "The task was canceled."


def _timestamp(now: float) -> Any:
    status = pb.TaskStatus()
    status.timestamp.FromNanoseconds(int(now * 1_000_000_000))
    return status.timestamp


def new_task(task_id: str, context_id: str, message: Any, now: float) -> Any:
    """A submitted task holding the user's message (with its task and context ids set)."""
    incoming = pb.Message()
    incoming.CopyFrom(message)
    incoming.task_id = task_id
    incoming.context_id = context_id
    task = pb.Task(id=task_id, context_id=context_id, history=[incoming])
    task.status.state = pb.TASK_STATE_SUBMITTED
    task.status.timestamp.CopyFrom(_timestamp(now))
    return task


def can_move(task: Any, state: int) -> bool:
    return (task.status.state, state) in TRANSITIONS


def status_event(task: Any) -> Any:
    """The ``status-update`` event announcing ``task``'s current status."""
    event = pb.StreamResponse()
    event.status_update.task_id = task.id
    event.status_update.context_id = task.context_id
    event.status_update.status.CopyFrom(task.status)
    return event


def working(task: Any, now: float) -> Any:
    """``task`` moved to ``working`` (unchanged if it cannot move there)."""
    if not can_move(task, pb.TASK_STATE_WORKING):
        return task
    moved = pb.Task()
    moved.CopyFrom(task)
    moved.status.Clear()
    moved.status.state = pb.TASK_STATE_WORKING
    moved.status.timestamp.CopyFrom(_timestamp(now))
    return moved


def chunk_event(task: Any, text: str, *, append: bool) -> Any:
    """One streamed piece of the reply."""
    return chunk(task.id, task.context_id, text, append=append)


def chunk(task_id: str, context_id: str, text: str, *, append: bool) -> Any:
    """:func:`chunk_event` of the task ``task_id`` in ``context_id``."""
    event = pb.StreamResponse()
    update = event.artifact_update
    update.task_id = task_id
    update.context_id = context_id
    update.append = append
    update.artifact.artifact_id = ARTIFACT_ID
    update.artifact.name = ARTIFACT_NAME
    update.artifact.parts.add().text = text
    return event


def chunk_value(task_id: str, context_id: str, text: str, *, append: bool) -> dict[str, Any]:
    """:func:`chunk`'s event in ProtoJSON, as ``codec.to_dict`` writes it, built directly.

    A reply is stored one event a streamed piece, and protobuf's pure-Python converters
    cost some hundred times what building this dict does (their field walk per message).
    As the converter does, a field at its default (an empty id, ``append`` false) is left
    out, and text protobuf refuses (a lone surrogate) raises ``UnicodeEncodeError``.
    """
    text.encode()  # protobuf's check of a string field: UTF-8 or an error
    update: dict[str, Any] = {}
    if task_id:
        update["taskId"] = task_id
    if context_id:
        update["contextId"] = context_id
    update["artifact"] = {
        "artifactId": ARTIFACT_ID,
        "name": ARTIFACT_NAME,
        "parts": [{"text": text}],
    }
    if append:  # after the artifact: the converter writes fields in their numbers' order
        update["append"] = True
    return {"artifactUpdate": update}


def whole_reply_event(task: Any, text: str) -> Any:
    """The whole reply as one replacing, last chunk (when it was not streamed)."""
    event = chunk_event(task, text, append=False)
    event.artifact_update.last_chunk = True
    return event


def finished(task: Any, state: pb.TaskState, *, reply_text: str | None, now: float) -> Any:
    """``task`` in a terminal ``state``; a completed one carries the reply (artifact and
    history), a failed or canceled one a bland status message. Unchanged if already final."""
    if not can_move(task, state):
        return task
    done = pb.Task()
    done.CopyFrom(task)
    done.status.Clear()
    done.status.state = state
    done.status.timestamp.CopyFrom(_timestamp(now))
    if state == pb.TASK_STATE_COMPLETED:
        text = reply_text or ""
        del done.artifacts[:]
        artifact = done.artifacts.add(artifact_id=ARTIFACT_ID, name=ARTIFACT_NAME)
        artifact.parts.add().text = text
        reply = _agent_message(done, text)
        done.history.append(reply)
    else:
        note = FAILED_TEXT if state == pb.TASK_STATE_FAILED else CANCELED_TEXT
        done.status.message.CopyFrom(_agent_message(done, note))
    return done


def asking(task: Any, question: str, requests: list[dict[str, Any]], *, now: float) -> Any:
    """``task`` waiting for input: its status message is the question (text, and the open
    requests as a data part). Unchanged if it cannot move there."""
    if not can_move(task, pb.TASK_STATE_INPUT_REQUIRED):
        return task
    waiting = pb.Task()
    waiting.CopyFrom(task)
    waiting.status.Clear()
    waiting.status.state = pb.TASK_STATE_INPUT_REQUIRED
    waiting.status.timestamp.CopyFrom(_timestamp(now))
    message = _agent_message(waiting, question)
    if requests:
        json_format.ParseDict({"inputRequests": requests}, message.parts.add().data)
    waiting.status.message.CopyFrom(message)
    return waiting


def asked_again(task: Any, now: float) -> Any | None:
    """``task``, whose answer's run failed, waiting for input again with the question it
    asked last (the workflow's question is still open: a failed turn saves nothing);
    ``None`` when it has no question to ask again."""
    questions = [m for m in task.history if m.role == pb.ROLE_AGENT]
    if not questions or not can_move(task, pb.TASK_STATE_INPUT_REQUIRED):
        return None
    waiting = pb.Task()
    waiting.CopyFrom(task)
    waiting.status.Clear()
    waiting.status.state = pb.TASK_STATE_INPUT_REQUIRED
    waiting.status.timestamp.CopyFrom(_timestamp(now))
    message = _agent_message(waiting, "")
    del message.parts[:]
    message.parts.extend(questions[-1].parts)
    waiting.status.message.CopyFrom(message)
    return waiting


def resumed(task: Any, message: Any, now: float) -> Any:
    """``task``, waiting for input, moved to ``working`` by the caller's answer ``message``:
    the question and the answer join the history. Unchanged if it was not waiting."""
    if task.status.state != pb.TASK_STATE_INPUT_REQUIRED:
        return task
    moved = pb.Task()
    moved.CopyFrom(task)
    if task.status.HasField("message"):
        moved.history.append(task.status.message)
    answer = pb.Message()
    answer.CopyFrom(message)
    answer.task_id = task.id
    answer.context_id = task.context_id
    moved.history.append(answer)
    moved.status.Clear()
    moved.status.state = pb.TASK_STATE_WORKING
    moved.status.timestamp.CopyFrom(_timestamp(now))
    return moved


def _agent_message(task: Any, text: str) -> Any:
    # A task that asked before has several agent messages: each gets an id of its own.
    asked = sum(1 for message in task.history if message.role == pb.ROLE_AGENT)
    message = pb.Message(
        message_id=f"{task.id}-reply" + (f"-{asked + 1}" if asked else ""),
        role=pb.ROLE_AGENT,
        task_id=task.id,
        context_id=task.context_id,
    )
    message.parts.add().text = text
    return message


def with_history(task: Any, history_length: int | None) -> Any:
    """``task`` with only its last ``history_length`` messages (``None``: all)."""
    if history_length is None or history_length >= len(task.history):
        return task
    trimmed = pb.Task()
    trimmed.CopyFrom(task)
    keep = list(task.history)[len(task.history) - history_length :] if history_length else []
    del trimmed.history[:]
    trimmed.history.extend(keep)
    return trimmed


def without_artifacts(task: Any) -> Any:
    bare = pb.Task()
    bare.CopyFrom(task)
    del bare.artifacts[:]
    return bare
