"""Answering one activity: the typing indicator, Teams streaming, and the reply itself.

- While the target runs the conversation shows the typing indicator (a ``typing``
  activity, repeated because clients show it for a few seconds), from a short delay on,
  so an instant answer costs no extra call.
- Teams streaming, in a 1:1 Teams chat when the channel streams: an ``informative``
  update opens the stream as soon as the run starts (Teams wants a first answer within
  15 seconds); the text so far follows as cumulative ``streaming`` chunks, at most one per
  ``stream_interval`` and each with the next ``streamSequence``; the answer closes the
  stream as a ``final`` message. A chunk Teams refuses (the user pressed Stop, the
  stream timed out) ends streaming; the answer is then sent as an ordinary message.
  Elsewhere the answer is one buffered reply.
- The answer is the agent's Markdown (``textFormat: markdown``), split when it is longer
  than Teams takes; host messages (a command's reply, a refusal) are plain text. In a
  group chat or a channel the reply answers the user's activity (``replyToId``).
- A send refused with 429 or another transient error is retried a few times here
  (``Retry-After`` honoured, up to a bound); a failure after that, or a permanent one, is
  logged with its class and ends the reply. It never fails the turn, which already ran.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio

from agenthost.backends.targets import StreamUpdate
from agenthost.channels.activity import codec
from agenthost.channels.activity.codec import Inbound
from agenthost.channels.activity.connector import Connector, ConnectorError

log = logging.getLogger("agenthost.channels.activity")

TYPING_EVERY = 3.0  # seconds; clients show the indicator for a few
SEND_ATTEMPTS = 3
MAX_RETRY_WAIT = 10.0
STREAM_LIMIT_UNITS = 30_000  # past this the stream stops; the final answer carries it all


class Reply:
    def __init__(
        self,
        connector: Connector,
        inbound: Inbound,
        reference: Mapping[str, Any],
        *,
        stream: bool,
        stream_interval: float,
        informative_text: str,
    ) -> None:
        self._connector = connector
        self._inbound = inbound
        self._reference = reference
        self._streaming = stream and inbound.streams
        self._stream_interval = stream_interval
        self._informative_text = informative_text
        self._stream_id: str | None = None
        self._sequence = 0
        self._streamed = ""
        self._last_chunk = -float("inf")
        self._shown = anyio.Event()  # something is visible: stop typing

    @property
    def streams(self) -> bool:
        return self._streaming

    # --- while the target runs ---------------------------------------------------------

    async def open_stream(self) -> None:
        """Send the informative update that opens a Teams stream (when this reply streams)."""
        if not self._streaming:
            return
        self._sequence = 1
        activity = codec.stream_update(
            self._reference, self._informative_text, sequence=1, stream_id=None, informative=True
        )
        try:
            self._stream_id = await self._connector.send(
                self._service_url, self._conversation_id, activity
            )
        except ConnectorError as error:
            self._stop_streaming(error)
            return
        if self._stream_id is None:
            self._streaming = False  # without a stream id there is no stream to continue
            return
        self._shown.set()

    async def keep_typing(self, delay: float = 0.0) -> None:
        """Show the typing indicator from ``delay`` seconds on until text is shown."""
        with anyio.move_on_after(delay):
            await self._shown.wait()
        while not self._shown.is_set():
            try:
                await self._connector.send(
                    self._service_url, self._conversation_id, codec.typing(self._reference)
                )
            except ConnectorError as error:  # typing is a courtesy: it never disturbs the run
                log.debug("typing indicator failed", extra={"status": error.status})
                return
            with anyio.move_on_after(TYPING_EVERY):
                await self._shown.wait()

    async def on_update(self, update: StreamUpdate) -> None:
        """The target's streamed text (deltas); never raises into the run."""
        if not update.text:
            return
        self._streamed += update.text
        if not self._streaming or self._stream_id is None:
            return
        now = anyio.current_time()
        if now - self._last_chunk < self._stream_interval:
            return
        if codec.utf16_units(self._streamed) > STREAM_LIMIT_UNITS:
            return  # the final message carries the rest
        self._last_chunk = now
        self._sequence += 1
        activity = codec.stream_update(
            self._reference, self._streamed, sequence=self._sequence, stream_id=self._stream_id
        )
        try:
            await self._connector.send(self._service_url, self._conversation_id, activity)
        except ConnectorError as error:
            self._stop_streaming(error)

    # --- the answer --------------------------------------------------------------------

    async def send_markdown(self, text: str) -> None:
        await self._send_text(text, markdown=True)

    async def send_plain(self, text: str) -> None:
        await self._send_text(text, markdown=False)

    async def _send_text(self, text: str, *, markdown: bool) -> None:
        self._shown.set()
        parts = codec.split_text(text)
        try:
            # The first part closes an open stream; if Teams refuses that, it goes plainly.
            streaming = self._stream_id is not None and self._streaming
            if streaming and await self._close_stream(parts[0], markdown=markdown):
                parts = parts[1:]
            for part in parts:
                await self._post(codec.message(self._reference, part, markdown=markdown))
        except ConnectorError as error:
            log.warning(
                "activity reply not delivered",
                extra={
                    "activity_id": self._inbound.activity_id,
                    "status": error.status,
                    "permanent": error.permanent,
                },
            )

    async def _close_stream(self, text: str, *, markdown: bool) -> bool:
        assert self._stream_id is not None
        final = codec.stream_final(
            self._reference, text, stream_id=self._stream_id, markdown=markdown
        )
        try:
            await self._connector.send(self._service_url, self._conversation_id, final)
        except ConnectorError as error:
            self._stop_streaming(error)
            return False
        return True

    async def _post(self, activity: dict[str, Any]) -> None:
        reply_to = self._inbound.activity_id if not self._inbound.is_direct else None
        if reply_to:
            activity["replyToId"] = reply_to
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                if reply_to:
                    await self._connector.reply(
                        self._service_url, self._conversation_id, reply_to, activity
                    )
                else:
                    await self._connector.send(self._service_url, self._conversation_id, activity)
                return
            except ConnectorError as error:
                if error.permanent or attempt == SEND_ATTEMPTS:
                    raise
                wait = error.retry_after if error.retry_after is not None else 0.5 * attempt
                if wait > MAX_RETRY_WAIT:
                    raise
                await anyio.sleep(wait)

    def _stop_streaming(self, error: ConnectorError) -> None:
        self._streaming = False
        log.info("teams streaming stopped", extra={"status": error.status})

    @property
    def _service_url(self) -> str:
        return self._inbound.service_url

    @property
    def _conversation_id(self) -> str:
        return self._inbound.conversation_id
