"""A run's output as Responses stream events and output items: a small state machine, no I/O.

Rules:

1. Every event carries ``sequence_number``, one more than the event before it (a stream
   can start later than 0: a background run re-run after a crash continues the numbers,
   so a client's resume cursor stays valid).
2. An output item is *open* from ``response.output_item.added`` to
   ``response.output_item.done``; at most one is open at a time. Text and reasoning
   items open a content part (``response.content_part.added``) and stream deltas into it.
3. An item closes when content of another kind arrives, when the framework's
   ``message_id`` or role changes, at :meth:`ResponseEvents.break_item`, and at the end.
   Closing emits the ``.done`` events, each carrying the whole text, part or item.
4. The end is exactly one of ``response.completed``, ``response.incomplete`` (the
   framework's ``finish_reason`` was ``length`` or ``content_filter``, or a workflow
   stopped to ask the user: ``input_required``) or ``response.failed``, carrying the full
   response; after it the machine accepts nothing.
5. A ``function_call`` item is only ever a call the *client* must run: one to a function
   tool the request declared (the response's ``tools``). To a client a ``function_call``
   means "run this and send me its output", so the agent's own, already executed tool
   calls are never rendered as one (nor their results as ``function_call_output``).
6. The agent's own tool calls are left out (``server_tool_calls="omit"``, the default) or
   rendered as ``mcp_call`` items (``"mcp_call"``), the item clients already treat as run
   by the server and informational (the openai SDK's output union, the OpenAI Agents SDK,
   LangChain and the Vercel AI SDK all take it as such). A call is held back until its
   result arrives and then rendered whole, so one item is open at a time and a streamed
   run renders exactly what its finished result renders; a call still without a result at
   the end is rendered ``incomplete``.
7. The framework repeats a client tool call as its "waiting for the caller" marker
   (``user_input_request``); a call already rendered is not rendered twice.

Input is what a run streams: Agent Framework ``AgentResponseUpdate``s (or their
``to_dict()`` form) whose ``contents`` are ``text``, ``text_reasoning``,
``function_call``, ``function_result`` and ``usage``; or plain text chunks for targets
that stream text only. A finished result (an ``AgentResponse``, a workflow's list of
outputs, a string) is rendered by feeding its messages the same way
(:func:`render_result`), so a streamed and a non-streamed run produce the same items; a
plain text result is built directly into the very object the machine would make.
Item ids come from an injected ``new_id`` and time arrives as arguments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from agenthost.channels.responses.codec import client_function_names, failed_error, usage
from agenthost.sansio_core.commands import CommandReply

NewId = Callable[[str], str]  # prefix -> a fresh id such as "msg_..."
ServerToolCalls = Literal["omit", "mcp_call"]
SERVER_TOOL_CALLS: tuple[ServerToolCalls, ...] = ("omit", "mcp_call")
SERVER_LABEL = "agenthost"  # the ``server_label`` of the agent's own calls as ``mcp_call``
_TOOL_FAILED = "The tool failed."  # never the exception's text: it may quote user data

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_INCOMPLETE_REASONS = {
    "length": "max_output_tokens",
    "content_filter": "content_filter",
    "input_required": "input_required",  # a workflow paused to ask the user (WorkflowTurn)
}


def field(value: Any, name: str) -> Any:
    """A field of a framework object or of its ``to_dict()`` form."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


class ResponseEvents:
    """The stream events of one response, built as its run produces updates."""

    def __init__(
        self,
        response: Mapping[str, Any],
        *,
        new_id: NewId,
        next_sequence: int = 0,
        stream_id: str | None = None,
        server_tool_calls: ServerToolCalls = "omit",
    ) -> None:
        self.response: dict[str, Any] = {**response, "output": list(response.get("output", []))}
        self._new_id = new_id
        self._client_tools = client_function_names(response)
        self._show_server_calls = server_tool_calls == "mcp_call"
        self._server_calls: dict[str, _ServerCall] = {}  # held back until their results
        self._last_server_call: _ServerCall | None = None
        self._client_calls: set[str] = set()  # call ids already rendered as function_call
        self._sequence = next_sequence
        self._stream_id = stream_id
        self._open: _OpenItem | None = None
        self._message: dict[str, Any] = {}  # the message_id and role updates last named
        self._usage: Mapping[str, Any] | None = None
        self._finish_reason: str | None = None
        self.finished = False

    @property
    def next_sequence(self) -> int:
        return self._sequence

    # --- the start --------------------------------------------------------------------

    def created(self) -> list[dict[str, Any]]:
        """``response.created`` (and ``response.queued`` for a queued response)."""
        events = [self._event("response.created", response=self._snapshot())]
        if self.response.get("status") == "queued":
            events.append(self._event("response.queued", response=self._snapshot()))
        return events

    def in_progress(self) -> list[dict[str, Any]]:
        self.response["status"] = "in_progress"
        return [self._event("response.in_progress", response=self._snapshot())]

    def started(self) -> list[dict[str, Any]]:
        """:meth:`created` then :meth:`in_progress`, a foreground stream's first events.

        A response that was in progress already is the same in both: they share one
        snapshot, which the SSE encoder then encodes once.
        """
        events = self.created()
        if self.response.get("status") != "in_progress":
            return events + self.in_progress()
        events.append(self._event("response.in_progress", response=events[0]["response"]))
        return events

    # --- updates ----------------------------------------------------------------------

    def feed(self, update: Any) -> list[dict[str, Any]]:
        """Events for one framework update (an ``AgentResponseUpdate`` or its dict)."""
        self._check_running()
        events: list[dict[str, Any]] = []
        # A message boundary is a change of a value both updates name: updates that leave
        # one out (a usage-only update, say) continue the open item.
        for name in ("message_id", "role"):
            value = field(update, name)
            if value is None:
                continue
            value = str(getattr(value, "value", value))
            if self._message.get(name, value) != value:
                self._close(events)
            self._message[name] = value
        reason = field(update, "finish_reason")
        if reason is not None:
            self._finish_reason = str(getattr(reason, "value", reason))
        for content in field(update, "contents") or ():
            self._content(content, events)
        return events

    def feed_text(self, text: str) -> list[dict[str, Any]]:
        """Events for a plain text chunk (targets that stream text only)."""
        self._check_running()
        events: list[dict[str, Any]] = []
        if text:
            self._text(text, None, events)
        return events

    def continue_text(self, text: str) -> tuple[int, str, int] | None:
        """Take a plain text chunk that only continues the open message, for a wire that
        renders its one ``response.output_text.delta`` event itself: that event's sequence
        number, item id and output index. ``None``, having taken nothing, when the chunk
        needs :meth:`feed_text` (no message is open, the text is empty, or it finished).
        """
        opened = self._open
        if opened is None or opened.kind != "message" or not text or self.finished:
            return None
        opened.chunks.append(text)
        sequence = self._sequence
        self._sequence = sequence + 1
        return sequence, opened.id, opened.index

    def break_item(self) -> list[dict[str, Any]]:
        """Close the open item: what comes next is a new item."""
        events: list[dict[str, Any]] = []
        self._close(events)
        self._message.clear()
        return events

    def note_result(self, result: Any) -> None:
        """Take usage and finish reason from the run's final result, when it has them."""
        details = field(result, "usage_details")
        if isinstance(details, Mapping) and details:
            self._usage = details
        reason = field(result, "finish_reason")
        if reason is not None:
            self._finish_reason = str(getattr(reason, "value", reason))

    # --- the end ----------------------------------------------------------------------

    def complete(self, *, completed_at: int) -> list[dict[str, Any]]:
        """Close everything; ``response.completed`` or ``response.incomplete``."""
        self._check_running()
        events: list[dict[str, Any]] = []
        reason = _INCOMPLETE_REASONS.get(self._finish_reason or "")
        self._close(events, status="incomplete" if reason else "completed")
        self._flush_server_calls(events)
        self.response.update(completed_at=completed_at, usage=usage(self._usage))
        if reason:
            self.response.update(status="incomplete", incomplete_details={"reason": reason})
            kind = "response.incomplete"
        else:
            self.response["status"] = "completed"
            kind = "response.completed"
        self.finished = True
        events.append(self._event(kind, response=self._snapshot()))
        return events

    def fail(
        self, *, code: str, message: str, completed_at: int | None = None
    ) -> list[dict[str, Any]]:
        """Close what is open as incomplete; ``response.failed`` with the error."""
        self._check_running()
        events: list[dict[str, Any]] = []
        self._close(events, status="incomplete")
        self._flush_server_calls(events)
        self.response.update(
            status="failed",
            error=failed_error(code, message),
            completed_at=completed_at,
            usage=usage(self._usage),
        )
        self.finished = True
        events.append(self._event("response.failed", response=self._snapshot()))
        return events

    def stop(self, status: str, *, completed_at: int | None = None) -> None:
        """End without a terminal event (a cancelled response): close items, set status."""
        closing: list[dict[str, Any]] = []
        if not self.finished:
            self._close(closing, status="incomplete")
            self._flush_server_calls(closing)
        self.response.update(status=status, completed_at=completed_at)
        self.finished = True

    def error(
        self, *, message: str, code: str | None = None, param: str | None = None
    ) -> list[dict[str, Any]]:
        """An ``error`` event: the request could not be run at all."""
        self.finished = True
        return [self._event("error", code=code, message=message, param=param)]

    # --- internals --------------------------------------------------------------------

    def _check_running(self) -> None:
        if self.finished:
            raise RuntimeError("this response has finished; it takes no more events")

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        if self._stream_id is not None:
            event["stream_id"] = self._stream_id
        self._sequence += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        return {**self.response, "output": [dict(item) for item in self.response["output"]]}

    def _content(self, content: Any, events: list[dict[str, Any]]) -> None:
        kind = field(content, "type")
        if kind == "text":
            self._text(field(content, "text") or "", field(content, "annotations"), events)
        elif kind == "text_reasoning":
            self._reasoning(content, events)
        elif kind == "function_call":
            self._function_call(content, events)
        elif kind == "function_result":
            self._function_result(content, events)
        elif kind == "usage":
            details = field(content, "usage_details")
            if isinstance(details, Mapping):
                self._usage = details
        # Other contents (data, uri, hosted files, approvals...) have no Responses item
        # this channel renders; the full result stays available to response hooks.

    def _text(self, text: str, annotations: Any, events: list[dict[str, Any]]) -> None:
        item = self._open_item("message", events)
        if text:
            item.chunks.append(text)
            events.append(
                self._event(
                    "response.output_text.delta",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            )
        for annotation in annotations or ():
            rendered = _annotation(annotation)
            if rendered is None:
                continue
            item.annotations.append(rendered)
            events.append(
                self._event(
                    "response.output_text.annotation.added",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    annotation_index=len(item.annotations) - 1,
                    annotation=rendered,
                )
            )

    def _reasoning(self, content: Any, events: list[dict[str, Any]]) -> None:
        item = self._open_item("reasoning", events)
        protected = field(content, "protected_data")
        if protected:
            item.item["encrypted_content"] = protected
        text = field(content, "text") or ""
        if text:
            item.chunks.append(text)
            events.append(
                self._event(
                    "response.reasoning_text.delta",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    delta=text,
                )
            )

    def _function_call(self, content: Any, events: list[dict[str, Any]]) -> None:
        call_id = field(content, "call_id") or ""
        name = field(content, "name") or ""
        arguments = _arguments_text(field(content, "arguments"))
        if field(content, "user_input_request") and call_id in self._client_calls:
            return  # the framework's "waiting for the caller" copy of a call rendered already
        open_item = self._open
        if (
            open_item is not None
            and open_item.kind == "function_call"
            and (not call_id or call_id == open_item.item["call_id"])
        ):
            self._arguments_delta(open_item, arguments, events)  # more of the open client call
            return
        server_call = self._server_calls.get(call_id) if call_id else self._last_server_call
        if server_call is not None:
            server_call.chunks.append(arguments)  # more of a held-back call of the agent's own
            return
        if name not in self._client_tools:
            self._close(events)
            server_call = _ServerCall(call_id, name, arguments)
            self._server_calls[call_id] = self._last_server_call = server_call
            return
        self._close(events)
        self._client_calls.add(call_id)
        item = self._start_item(
            "function_call",
            {"type": "function_call", "call_id": call_id, "name": name, "arguments": ""},
            events,
        )
        self._arguments_delta(item, arguments, events)

    def _arguments_delta(
        self, item: _OpenItem, arguments: str, events: list[dict[str, Any]]
    ) -> None:
        if not arguments:
            return
        item.chunks.append(arguments)
        events.append(
            self._event(
                "response.function_call_arguments.delta",
                item_id=item.id,
                output_index=item.index,
                delta=arguments,
            )
        )

    def _function_result(self, content: Any, events: list[dict[str, Any]]) -> None:
        call_id = field(content, "call_id") or ""
        server_call = self._server_calls.pop(call_id, None)
        if server_call is None:
            return  # a result of no call this response made: nothing a client can act on
        if self._last_server_call is server_call:
            self._last_server_call = None
        if field(content, "exception"):
            self._render_server_call(server_call, events, status="failed")
            return
        result = field(content, "result")
        output = "" if result is None else result if isinstance(result, str) else None
        if output is None:
            output = json.dumps(result, default=str, ensure_ascii=False)
        self._render_server_call(server_call, events, status="completed", output=output)

    def _flush_server_calls(self, events: list[dict[str, Any]]) -> None:
        """Calls of the agent's own that got no result before the end: ``incomplete``."""
        pending, self._server_calls, self._last_server_call = self._server_calls, {}, None
        for server_call in pending.values():
            self._render_server_call(server_call, events, status="incomplete")

    def _render_server_call(
        self,
        call: _ServerCall,
        events: list[dict[str, Any]],
        *,
        status: str,
        output: str | None = None,
    ) -> None:
        """One of the agent's own calls, whole, as an ``mcp_call`` item (when shown)."""
        if not self._show_server_calls:
            return
        self._close(events)
        arguments = "".join(call.chunks)
        item = self._start_item(
            "mcp_call",
            {
                "type": "mcp_call",
                "server_label": SERVER_LABEL,
                "name": call.name,
                "arguments": "",
                "output": None,
                "error": None,
                "approval_request_id": None,
            },
            events,
        )
        where = {"item_id": item.id, "output_index": item.index}
        events.append(self._event("response.mcp_call.in_progress", **where))
        if arguments:
            events.append(
                self._event("response.mcp_call_arguments.delta", **where, delta=arguments)
            )
        events.append(self._event("response.mcp_call_arguments.done", **where, arguments=arguments))
        item.item.update(arguments=arguments, output=output)
        if status == "failed":
            item.item["error"] = {
                "type": "mcp_tool_execution_error",
                "content": [{"type": "text", "text": _TOOL_FAILED}],
            }
            events.append(self._event("response.mcp_call.failed", **where))
        elif status == "completed":
            events.append(self._event("response.mcp_call.completed", **where))
        self._close(events, status=status)

    def _open_item(self, kind: str, events: list[dict[str, Any]]) -> _OpenItem:
        if self._open is not None and self._open.kind == kind:
            return self._open
        self._close(events)
        if kind == "message":
            item = self._start_item(
                kind, {"type": "message", "role": "assistant", "content": []}, events
            )
            part: dict[str, Any] = {
                "type": "output_text",
                "text": "",
                "annotations": [],
                "logprobs": [],
            }
        else:
            item = self._start_item(
                kind, {"type": "reasoning", "summary": [], "content": []}, events
            )
            part = {"type": "reasoning_text", "text": ""}
        events.append(
            self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=part,
            )
        )
        return item

    def _start_item(
        self, kind: str, item: dict[str, Any], events: list[dict[str, Any]]
    ) -> _OpenItem:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}.get(kind, "mcp")
        item = {"id": self._new_id(prefix), **item, "status": "in_progress"}
        index = len(self.response["output"])
        self.response["output"].append(item)
        opened = _OpenItem(kind, index, item)
        self._open = opened
        events.append(
            self._event("response.output_item.added", output_index=index, item=dict(item))
        )
        return opened

    def _close(self, events: list[dict[str, Any]], status: str = "completed") -> None:
        opened, self._open = self._open, None
        if opened is None:
            return
        item, text = opened.item, "".join(opened.chunks)
        where = {"item_id": opened.id, "output_index": opened.index}
        if opened.kind == "message":
            part = {
                "type": "output_text",
                "text": text,
                "annotations": list(opened.annotations),
                "logprobs": [],
            }
            events.append(
                self._event(
                    "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
                )
            )
            events.append(
                self._event("response.content_part.done", **where, content_index=0, part=part)
            )
            item["content"] = [part]
        elif opened.kind == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            events.append(
                self._event("response.reasoning_text.done", **where, content_index=0, text=text)
            )
            events.append(
                self._event("response.content_part.done", **where, content_index=0, part=part)
            )
            item["content"] = [part]
        elif opened.kind == "function_call":
            item["arguments"] = text
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item["name"],
                    arguments=text,
                )
            )
        item["status"] = status
        events.append(
            self._event("response.output_item.done", output_index=opened.index, item=dict(item))
        )


class _ServerCall:
    """A tool call of the agent's own, held back until its result arrives."""

    __slots__ = ("call_id", "chunks", "name")

    def __init__(self, call_id: str, name: str, arguments: str) -> None:
        self.call_id = call_id
        self.name = name
        self.chunks = [arguments] if arguments else []


def _arguments_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return "" if arguments is None else json.dumps(arguments, separators=(",", ":"))


class _OpenItem:
    __slots__ = ("annotations", "chunks", "id", "index", "item", "kind")

    def __init__(self, kind: str, index: int, item: dict[str, Any]) -> None:
        self.kind = kind
        self.index = index
        self.item = item
        self.id: str = item["id"]
        self.chunks: list[str] = []
        self.annotations: list[dict[str, Any]] = []


def _annotation(annotation: Any) -> dict[str, Any] | None:
    """An Agent Framework citation as a Responses annotation (URL or file citation)."""
    if not isinstance(annotation, Mapping):
        return None
    regions = annotation.get("annotated_regions") or [{}]
    region = regions[0] if isinstance(regions[0], Mapping) else {}
    start, end = int(region.get("start_index") or 0), int(region.get("end_index") or 0)
    if annotation.get("url"):
        return {
            "type": "url_citation",
            "url": annotation["url"],
            "title": annotation.get("title") or "",
            "start_index": start,
            "end_index": end,
        }
    if annotation.get("file_id"):
        return {
            "type": "file_citation",
            "file_id": annotation["file_id"],
            "filename": annotation.get("title") or "",
            "index": start,
        }
    return None


# --- finished results ------------------------------------------------------------------


def result_updates(result: Any) -> Iterator[Any]:
    """A finished result as the updates a stream of it would have carried.

    ``None`` marks a boundary between messages (each message is its own item).
    """
    if result is None:
        return
    messages = field(result, "messages")
    if isinstance(messages, list | tuple) and not isinstance(result, str):
        for message in messages:
            yield None
            yield message  # a Message has ``contents``, ``role`` and ``message_id`` like an update
        return
    if isinstance(result, str):
        yield None
        yield {"contents": [{"type": "text", "text": result}], "role": "assistant"}
        return
    if isinstance(result, list | tuple):  # a workflow's outputs
        for output in result:
            yield from result_updates(output)
        return
    text = field(result, "text")
    if isinstance(text, str) and not isinstance(result, Mapping):  # a host command's reply
        yield None
        yield {"contents": [{"type": "text", "text": text}], "role": "assistant"}
        return
    text = json.dumps(result, default=str, ensure_ascii=False)
    yield None
    yield {"contents": [{"type": "text", "text": text}], "role": "assistant"}


def render_result(
    response: Mapping[str, Any],
    result: Any,
    *,
    new_id: NewId,
    completed_at: int,
    server_tool_calls: ServerToolCalls = "omit",
) -> dict[str, Any]:
    """The completed response object for a finished result (the non-streaming path).

    A plain text (a string, a host command's reply) is one message item, built here
    directly: the machine would build and throw away a dozen events to get the same
    object, and that is most foreground answers. Anything else goes through the machine.
    """
    text = _plain_text(result)
    if text is not None:
        message = {
            "id": new_id("msg"),
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            "status": "completed",
        }
        # The keys the machine sets, in the order it sets them.
        return {
            **response,
            "output": [*response.get("output", ()), message],
            "completed_at": completed_at,
            "usage": None,
            "status": "completed",
        }
    return render_by_machine(
        response,
        result,
        new_id=new_id,
        completed_at=completed_at,
        server_tool_calls=server_tool_calls,
    )


def _plain_text(result: Any) -> str | None:
    """The text of a result that is one plain text message and nothing else, or ``None``.

    Exact types only: a subclass may carry ``messages``, usage or a finish reason, which
    only the machine reads.
    """
    if type(result) is str:
        return result
    if type(result) is CommandReply and type(result.text) is str:
        return result.text
    return None


def render_by_machine(
    response: Mapping[str, Any],
    result: Any,
    *,
    new_id: NewId,
    completed_at: int,
    server_tool_calls: ServerToolCalls = "omit",
) -> dict[str, Any]:
    """:func:`render_result` for any result, by feeding it to the event machine."""
    machine = ResponseEvents(response, new_id=new_id, server_tool_calls=server_tool_calls)
    feed_result(machine, result)
    machine.complete(completed_at=completed_at)
    return machine.response


def feed_result(machine: ResponseEvents, result: Any) -> list[dict[str, Any]]:
    """Feed a whole finished result to ``machine``; the events it produced."""
    events: list[dict[str, Any]] = []
    for update in result_updates(result):
        events += machine.break_item() if update is None else machine.feed(update)
    machine.note_result(result)
    return events
