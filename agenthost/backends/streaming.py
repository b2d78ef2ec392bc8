"""A streaming HTTP response that runs its producer inside the response's own task group.

The producer writes chunks as the target yields updates (nothing is buffered to the end).
If the client disconnects, the producer is cancelled, and with it the run: the interpreter
then releases the session lease without saving. Channels format the chunks; this module
only moves bytes.

The status line is sent with the first chunk, not before: until then the producer may
still answer with a plain response of its own (it returns it), so a turn the host refuses
before anything streamed (a denied caller, a busy or unknown session) gets its real 4xx
instead of a 200 stream that carries an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Emit = Callable[[bytes], Awaitable[None]]
#: Writes chunks through ``emit``; may return the body's last chunk, which is sent with
#: the body's end (one send less), or a response to send instead, which is used only if
#: it emitted nothing.
Producer = Callable[[Emit], Awaitable[Response | bytes | None]]


class ProducerResponse(Response):
    def __init__(
        self,
        produce: Producer,
        *,
        status_code: int = 200,
        media_type: str = "text/event-stream",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # Not Response.__init__: it would declare content-length 0 for the empty body.
        self._produce = produce
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.raw_headers = [
            (b"content-type", f"{media_type}; charset=utf-8".encode("latin-1")),
            (b"cache-control", b"no-store"),
            *(
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in (headers or {}).items()
            ),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        instead: Response | None = None

        async def start() -> None:
            nonlocal started
            if not started:
                started = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                )

        async with anyio.create_task_group() as tasks:

            async def watch_disconnect() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        tasks.cancel_scope.cancel()
                        return

            async def emit(chunk: bytes, more_body: bool = True) -> None:
                try:
                    if not started:
                        await start()
                    await send(
                        {"type": "http.response.body", "body": chunk, "more_body": more_body}
                    )
                except OSError:
                    tasks.cancel_scope.cancel()
                    await anyio.lowlevel.checkpoint()

            tasks.start_soon(watch_disconnect)
            answer = await self._produce(emit)
            if isinstance(answer, Response) and not started:
                instead = answer
            elif isinstance(answer, bytes) and answer:
                await emit(answer, more_body=False)
            else:
                await start()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            tasks.cancel_scope.cancel()
        if instead is not None:
            await instead(scope, receive, send)
