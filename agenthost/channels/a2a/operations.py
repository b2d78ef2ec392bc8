"""What each A2A operation does with the host and the channel's records.

:class:`TaskOperations` answers one parsed :class:`codec.Call` (v1.0 parameters, whatever
generation or binding it came in) with a value ready to render, or raises an
:mod:`a2a.utils.errors` error with a bland message. Sending a message records its task
(with the message's de-duplication mark, in one write) and starts it as a host
background run. A message naming a task that waits for input (a workflow asked a
question) answers it: the task moves back to ``working`` (with the mark, in one write)
and the answer runs as the next turn of the task's session, so the workflow resumes from
its checkpoint. Reading, listing and cancelling go through the caller's own records only.
HTTP (routes, bodies, authentication, JSON-RPC and REST framing, streams) is the
transport's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import attrs
from a2a.types import a2a_pb2 as pb
from a2a.utils import errors
from starlette.requests import Request

from agenthost.backends.channel import HostServices
from agenthost.channels.a2a import codec, tasks
from agenthost.channels.a2a.codec import V03, Call, Generation
from agenthost.channels.a2a.live import TASK_ATTRIBUTE, LiveTasks
from agenthost.channels.a2a.pushes import (
    PushTargetRefused,
    check_push_url,
    config_from_record,
    config_key,
    config_record,
    refused_config_error,
)
from agenthost.channels.a2a.records import (
    EVENT,
    MESSAGE,
    PUSH_CONFIG,
    TASK,
    WAITING,
    TaskRecords,
    event_key,
    message_key,
    new_context_id,
    new_task_id,
    task_key,
    waiting_key,
)
from agenthost.sansio_core.turns import RefusalReason, TurnRefused
from agenthost.sansio_core.types import (
    ChannelIdentity,
    ChannelRequest,
    ChannelSession,
    ContinuationToken,
    HostMessage,
    RunStatus,
)

if TYPE_CHECKING:
    from agenthost.channels.a2a.transport import A2AChannel

log = logging.getLogger("agenthost.channels.a2a")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_LISTED_TASKS = 5000
MAX_PUSH_CONFIGS_PER_TASK = 10
_CANCEL_SETTLE_SECONDS = 5.0

_REFUSALS: Mapping[RefusalReason, str] = {
    RefusalReason.IDENTITY_REFUSED: "This caller may not use this agent.",
    RefusalReason.DENIED: "This caller may not use this agent.",
    RefusalReason.LINK_REQUIRED: "This caller must link an account first.",
    RefusalReason.SESSION_BUSY: "This context is busy with another task; try again later.",
    RefusalReason.SESSION_NOT_FOUND: "No conversation matches this context.",
    RefusalReason.TARGET_NOT_ALLOWED: "This caller may not choose where replies go.",
}


class TaskOperations:
    """The A2A operations over one host's tasks (see the module docstring)."""

    def __init__(
        self, channel: A2AChannel, host: HostServices, records: TaskRecords, live: LiveTasks
    ) -> None:
        self._channel = channel
        self._host = host
        self.records = records
        self.live = live

    async def answer(self, call: Call, caller: str, request: Request) -> Any:
        try:
            return await self._operate(call, caller, request)
        except errors.A2AError:
            raise
        except Exception:
            log.exception("a2a request failed", extra={"operation": call.operation})
            raise codec.internal_error() from None

    async def _operate(self, call: Call, caller: str, request: Request) -> Any:
        op, params, generation = call.operation, call.params, call.generation
        if op == "send":
            task, _ = await self.submit(params, caller, request, generation)
            if not params.configuration.return_immediately and not codec.is_settled(task):
                task = await self.live.until_final(caller, task.id) or task
            task = tasks.with_history(task, _history_length(params.configuration))
            return codec.render_send_result(task, generation)
        if op == "get":
            task = await self.owned_task(caller, params.id)
            return codec.render_task(tasks.with_history(task, _history_length(params)), generation)
        if op == "list":
            return await self.list_tasks(params, caller)
        if op == "cancel":
            return codec.render_task(await self.cancel(params.id, caller), generation)
        if op == "push_set":
            return codec.render_push_config(
                await self.set_push(params, caller, generation), generation
            )
        if op == "push_get":
            return codec.render_push_config(await self.get_push(params, caller), generation)
        if op == "push_list":
            await self.owned_task(caller, params.task_id)
            configs = [
                config_from_record(r) for r in await self.records.push_configs(params.task_id)
            ]
            return codec.render_push_configs(configs, generation)
        if op == "push_delete":
            await self.owned_task(caller, params.task_id)
            self._require_push()
            await self.records.delete(PUSH_CONFIG, config_key(params.task_id, params.id))
            return None if generation == V03 else {}
        if op == "extended_card":
            raise errors.ExtendedAgentCardNotConfiguredError("This agent has no extended card.")
        raise errors.UnsupportedOperationError("This operation is not supported.")

    async def owned_task(self, caller: str, task_id: str) -> Any:
        loaded = await self.live.settled(caller, task_id) if task_id else None
        if loaded is None:
            raise errors.TaskNotFoundError("No task has that id.")
        return loaded[0]

    async def submit(
        self, params: Any, caller: str, request: Request, generation: Generation
    ) -> tuple[Any, int]:
        """The task a message becomes (a new one, or the one an earlier delivery of the
        same ``messageId`` made) and the number of the last event it reflects."""
        if not params.HasField("message"):
            raise errors.InvalidParamsError("The request has no message.")
        message = params.message
        configuration = params.configuration
        codec.check_output_modes(list(configuration.accepted_output_modes), self._channel.limits)
        inputs = codec.host_messages(message, self._channel.limits)
        push_config = None
        if configuration.HasField("task_push_notification_config"):
            self._require_push()
            push_config = pb.TaskPushNotificationConfig()
            push_config.CopyFrom(configuration.task_push_notification_config)
            await self._check_push_url(push_config.url)
        if message.task_id:
            return await self._answer_question(
                message, inputs, caller, request, push_config, generation
            )
        context_id = message.context_id or new_context_id()
        codec.check_identifier(context_id, "contextId")
        if message.context_id:
            await self._refuse_if_waiting(caller, context_id, message.message_id)

        now = self._host.now()
        task_id = new_task_id(now)
        mark = self.records.record(
            MESSAGE,
            message_key(caller, message.message_id),
            {"task_id": task_id},
            None,
            expires_at=self.records.expiry(),
        )
        task = tasks.new_task(task_id, context_id, message, now)
        companions = [
            self.live.task_record(
                caller, task, {"token": None, "number": 0, "pushes": bool(push_config)}, None,
                final=False,
            )
        ]  # fmt: skip
        if push_config is not None:
            push_config.task_id = task_id
            push_config.id = push_config.id or task_id
            # Its notifications take the shape of the generation the caller speaks.
            companions.append(
                config_record(self.records, push_config, generation, None, expires_at=None)
            )
        # One write: the message's mark and, when it is new, its task (and push config).
        if not await self.records.insert(mark, companions=companions):
            earlier = await self.records.get(MESSAGE, mark.key)
            loaded = (
                await self.live.load(caller, str(earlier.value["task_id"])) if earlier else None
            )
            if loaded is None:
                raise errors.InvalidParamsError("This messageId was already used.")
            return loaded[0], int(loaded[1].value.get("number", 0))

        answer = await self._start_run(caller, context_id, task_id, inputs, request)
        if not isinstance(answer, ContinuationToken):
            # Nothing will run: forget the task, so a retry of the message starts afresh.
            with anyio.CancelScope(shield=True):
                await self.records.delete(TASK, task_key(caller, task_id))
                await self.records.delete(MESSAGE, mark.key)
                await self.records.delete(PUSH_CONFIG, f"{task_id}:")
            _refuse(answer)
        return await self._note_run(caller, task_id, answer)

    async def _start_run(
        self,
        caller: str,
        context_id: str,
        task_id: str,
        inputs: tuple[HostMessage, ...],
        request: Request,
    ) -> ContinuationToken | TurnRefused | None:
        """Start a turn of ``task_id`` in the session ``context_id`` as a background run
        (``None``: it could not be started)."""
        channel_request = ChannelRequest(
            channel=self._channel.name,
            identity=ChannelIdentity(self._channel.name, caller),
            input=inputs,
            session=ChannelSession(key=context_id, caller_keyed=True),
            multitask=self._channel.multitask,
            stream=True,
            attributes={TASK_ATTRIBUTE: task_id},
        )
        try:
            answer = await self._host.run_in_background(channel_request, protocol_request=request)
        except Exception:
            log.exception("an a2a task could not be started")
            return None
        return answer if isinstance(answer, ContinuationToken | TurnRefused) else None

    async def _refuse_if_waiting(self, caller: str, context_id: str, message_id: str) -> None:
        """Refuse a new task on a context whose session waits for another task's answer:
        the workflow would take the message for that answer, under the wrong task."""
        waiting = await self.records.get(WAITING, waiting_key(caller, context_id))
        if waiting is None:
            return
        loaded = await self.live.load(caller, str(waiting.value.get("task_id", "")))
        if loaded is None or loaded[0].status.state not in codec.INTERRUPTED_STATES:
            return
        if await self.records.get(MESSAGE, message_key(caller, message_id)) is not None:
            return  # a retry of a message already taken: it finds its task as usual
        raise errors.InvalidParamsError(
            "This context waits for an answer on another task: send it with that taskId."
        )

    async def _answer_question(
        self,
        message: Any,
        inputs: tuple[HostMessage, ...],
        caller: str,
        request: Request,
        push_config: Any,
        generation: Generation,
    ) -> tuple[Any, int]:
        """A message on an existing task: the answer to the question it waits on, run as
        the next turn of the task's session (a workflow resumes from its checkpoint). A
        push config sent with it is added to the task's."""
        task_id = message.task_id
        loaded = await self.live.settled(caller, task_id)
        if loaded is None:
            raise errors.TaskNotFoundError("No task has that id.")
        mark = self.records.record(
            MESSAGE,
            message_key(caller, message.message_id),
            {"task_id": task_id},
            None,
            expires_at=self.records.expiry(),
        )
        async with self.live.lock(task_id):
            loaded = await self.live.load(caller, task_id)
            if loaded is None:
                raise errors.TaskNotFoundError("No task has that id.")
            task, record = loaded
            earlier = await self.records.get(MESSAGE, mark.key)
            if earlier is not None:
                if earlier.value.get("task_id") != task_id:
                    raise errors.InvalidParamsError("This messageId was already used.")
                return task, int(record.value.get("number", 0))  # a retry of the answer
            if codec.is_terminal(task):
                raise errors.UnsupportedOperationError("This task has already finished.")
            if message.context_id and message.context_id != task.context_id:
                raise errors.InvalidParamsError("'contextId' is not this task's context.")
            if task.status.state != tasks.INPUT_REQUIRED:
                raise errors.UnsupportedOperationError("This task is not waiting for input.")
            number = 1 + await self.records.last_event_number(task_id)
            moved = tasks.resumed(task, message, self._host.now())
            configs = await self.records.push_configs(task_id) if record.value.get("pushes") else []
            # Push configs outlive a waiting task's expiry again while it runs.
            kept = [attrs.evolve(config, expires_at=None) for config in configs]
            base = {**record.value, "token": None, "answered": record.value.get("token")}
            if push_config is not None:
                push_config.task_id = task_id
                push_config.id = push_config.id or task_id
                codec.check_identifier(push_config.id, "id")
                added = config_record(
                    self.records, push_config, generation, record.owner, expires_at=None
                )
                kept = [c for c in kept if c.key != added.key]
                if len(kept) >= MAX_PUSH_CONFIGS_PER_TASK:
                    raise errors.InvalidParamsError("This task has as many push configs as it may.")
                kept.append(added)
                base["pushes"] = True
            if not await self.live.resume(
                caller,
                moved,
                base=base,
                owner=record.owner,
                number=number,
                mark=mark,
                extra=kept,
            ):
                raise errors.InvalidParamsError("This messageId was already used.")
        if kept:
            await self.live.pushes.notify(
                moved, caller=caller, owner=record.owner, number=number, configs=kept
            )
        answer = await self._start_run(caller, task.context_id, task_id, inputs, request)
        if not isinstance(answer, ContinuationToken):
            # Nothing will run: the task waits for its answer again, as it did.
            with anyio.CancelScope(shield=True):
                await self.records.put([record, *configs])
                if push_config is not None and all(
                    c.key != config_key(task_id, push_config.id) for c in configs
                ):
                    await self.records.delete(PUSH_CONFIG, config_key(task_id, push_config.id))
                await self.records.delete(EVENT, event_key(task_id, number))
                await self.records.delete(MESSAGE, mark.key)
                self.live.wake(task_id)
            _refuse(answer)
        return await self._note_run(caller, task_id, answer)

    async def _note_run(
        self, caller: str, task_id: str, answer: ContinuationToken
    ) -> tuple[Any, int]:
        """Note the run's token on its task (unless the run already did) and answer the
        task as it stands and the number of the last event it reflects."""
        async with self.live.lock(task_id):
            loaded = await self.live.load(caller, task_id)
            if loaded is None:
                raise errors.TaskNotFoundError("No task has that id.")
            task, record = loaded
            if record.value.get("token") is None:
                await self.live.save(
                    caller,
                    task,
                    base={**record.value, "token": answer.token},
                    owner=answer.isolation_key,
                    final=codec.is_terminal(task),
                )
        return task, int(record.value.get("number", 0))

    async def cancel(self, task_id: str, caller: str) -> Any:
        loaded = await self.live.settled(caller, task_id) if task_id else None
        if loaded is None:
            raise errors.TaskNotFoundError("No task has that id.")
        task, record = loaded
        token = record.value.get("token")
        if codec.is_terminal(task) or not isinstance(token, str):
            raise errors.TaskNotCancelableError("This task can no longer be canceled.")
        if task.status.state == tasks.INPUT_REQUIRED:
            # No run is going on: the task stops waiting for its answer.
            ended = ContinuationToken(
                token=token,
                status=RunStatus.CANCELLED,
                isolation_key=record.owner or "",
                created_at=self._host.now(),
            )
            await self.live.finish_task(caller, task_id, ended)
            loaded = await self.live.load(caller, task_id)
            if loaded is None or loaded[0].status.state != tasks.CANCELED:
                raise errors.TaskNotCancelableError("This task can no longer be canceled.")
            return loaded[0]
        await self._host.cancel_continuation(token)
        with anyio.move_on_after(_CANCEL_SETTLE_SECONDS):
            task = await self.live.until_final(caller, task_id) or task
        if task.status.state != tasks.CANCELED:
            raise errors.TaskNotCancelableError("This task can no longer be canceled.")
        return task

    async def list_tasks(self, params: Any, caller: str) -> dict[str, Any]:
        page_size = params.page_size or DEFAULT_PAGE_SIZE
        if page_size < 1 or page_size > MAX_PAGE_SIZE:
            raise errors.InvalidParamsError(f"'pageSize' must be 1-{MAX_PAGE_SIZE}.")
        history = params.history_length if params.HasField("history_length") else None
        if history is not None and history < 0:
            raise errors.InvalidParamsError("'historyLength' must not be negative.")
        include_artifacts = params.HasField("include_artifacts") and params.include_artifacts
        matching: list[Any] = []
        after: str | None = None
        scanned = 0
        while scanned < MAX_LISTED_TASKS:
            page = await self.records.tasks(caller, after=after, limit=500)
            for record in page:
                if self.records.expired(record):
                    continue
                task = codec.task_from_dict(record.value["task"])
                if params.context_id and task.context_id != params.context_id:
                    continue
                if params.status and task.status.state != params.status:
                    continue
                matching.append(task)
            scanned += len(page)
            if len(page) < 500:
                break
            after = page[-1].key
        start = 0
        if params.page_token:
            ids = [task.id for task in matching]
            if params.page_token not in ids:
                raise errors.InvalidParamsError("'pageToken' is not valid.")
            start = ids.index(params.page_token) + 1
        chosen = matching[start : start + page_size]
        next_token = chosen[-1].id if start + page_size < len(matching) and chosen else ""
        shaped = [
            tasks.with_history(
                task if include_artifacts else tasks.without_artifacts(task), history
            )
            for task in chosen
        ]
        return codec.render_task_list(
            shaped, next_page_token=next_token, page_size=page_size, total_size=len(matching)
        )

    async def set_push(self, config: Any, caller: str, generation: Generation) -> Any:
        self._require_push()
        await self.owned_task(caller, config.task_id)
        await self._check_push_url(config.url)
        config.id = config.id or config.task_id
        codec.check_identifier(config.id, "id")
        existing = await self.records.push_configs(config.task_id)
        key = config_key(config.task_id, config.id)
        if len(existing) >= MAX_PUSH_CONFIGS_PER_TASK and all(r.key != key for r in existing):
            raise errors.InvalidParamsError("This task has as many push configs as it may.")
        async with self.live.lock(config.task_id):
            loaded = await self.live.load(caller, config.task_id)
            if loaded is None:
                raise errors.TaskNotFoundError("No task has that id.")
            task, record = loaded
            stored = config_record(self.records, config, generation, record.owner, expires_at=None)
            if record.value.get("pushes"):
                await self.records.put([stored])
            else:
                # The task notes that it has configs, so runs without any never look.
                await self.live.save(
                    caller,
                    task,
                    base={**record.value, "pushes": True},
                    owner=record.owner,
                    final=codec.is_terminal(task),
                    extra=[stored],
                )
        return config

    async def get_push(self, params: Any, caller: str) -> Any:
        await self.owned_task(caller, params.task_id)
        configs = await self.records.push_configs(params.task_id)
        wanted = config_key(params.task_id, params.id) if params.id else None
        for record in configs:
            if wanted is None or record.key == wanted:
                return config_from_record(record)
        raise errors.TaskNotFoundError("No push config has that id.")

    def _require_push(self) -> None:
        if not self._channel.push_notifications:
            raise errors.PushNotificationNotSupportedError(
                "This agent does not send push notifications."
            )

    async def _check_push_url(self, url: str) -> None:
        try:
            await check_push_url(url, allow_private=self._channel.allow_private_push_targets)
        except PushTargetRefused:
            raise refused_config_error() from None

    async def subscription(self, task_id: str, caller: str) -> tuple[Any, int]:
        """The task a resubscribe starts with and the number of the last event it reflects."""
        loaded = await self.live.settled(caller, task_id) if task_id else None
        if loaded is None:
            raise errors.TaskNotFoundError("No task has that id.")
        task, record = loaded
        if codec.is_terminal(task):
            raise errors.UnsupportedOperationError("This task has already finished.")
        return task, int(record.value.get("number", 0))


def _history_length(params: Any) -> int | None:
    if not params.HasField("history_length"):
        return None
    if params.history_length < 0:
        raise errors.InvalidParamsError("'historyLength' must not be negative.")
    return int(params.history_length)


def _refuse(answer: TurnRefused | None) -> NoReturn:
    if answer is None:
        raise codec.internal_error()
    raise errors.InvalidRequestError(_refusal_message(answer))


def _refusal_message(outcome: TurnRefused) -> str:
    if (
        outcome.reason in (RefusalReason.DENIED, RefusalReason.LINK_REQUIRED)
        and outcome.user_message
    ):
        return outcome.user_message  # the host's own, bland by design
    return _REFUSALS[outcome.reason]
