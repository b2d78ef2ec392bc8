"""HTTP round trips through the Invocations channel: ``POST /invocations/invoke`` on a Host.

PENDING: the lead fills this in once ``agenthost.backends.Host`` and the Invocations channel
land. The intended measurement, so the rows line up with the others:

- build ``Host(target=<async def echo(messages) -> str>, channels=[InvocationsChannel()],
  store=MemoryStore())`` and drive ``host.app`` in process through ``httpx.ASGITransport``
  inside the app's lifespan (no sockets, so the numbers are the host's, not the kernel's);
- rows: requests per second with p50/p99 for a new caller, a returning caller (same
  session) and ``background=True`` (202 + token), each for ~1 s via
  ``benchmarks.timing.time_async_calls``; run under ``anyio.run(..., backend="asyncio")``
  and, as a second set of rows, ``backend="trio"``.
"""

from __future__ import annotations

from benchmarks.report import BenchmarkPending, Row


def run() -> list[Row]:
    raise BenchmarkPending("pending: the Host and the Invocations channel are not written yet")
