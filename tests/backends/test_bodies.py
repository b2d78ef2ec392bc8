"""Bounded bodies: read straight from ``receive``, refused early, and kept for later readers."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.requests import Request

from agenthost.backends.asyncio_bridge import running_on_asyncio
from agenthost.backends.bodies import (
    BodyTimedOut,
    BodyTooLarge,
    ClientGone,
    UnsupportedMediaType,
    read_json_body,
    read_limited,
    receive_limited,
)

pytestmark = pytest.mark.anyio


class CountingReceive:
    """An ASGI ``receive`` handing out ``messages``, then waiting for ever; counts calls."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.pending = list(messages)
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.pending:
            return self.pending.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def request_with(
    messages: list[dict[str, Any]], headers: dict[str, str]
) -> tuple[Request, CountingReceive]:
    receive = CountingReceive(messages)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive), receive


def chunks(count: int, size: int = 10) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": b"x" * size, "more_body": True}] * count


def last(body: bytes = b"") -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": False}


async def test_a_body_in_several_chunks_is_joined() -> None:
    request, _ = request_with([*chunks(3), last(b"yz")], {})
    assert await read_limited(request, 100) == b"x" * 30 + b"yz"


async def test_an_oversized_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    request, receive = request_with(chunks(50), {})
    with pytest.raises(BodyTooLarge):
        await read_limited(request, 100)
    assert receive.calls == 11  # the eleventh chunk passed 100 bytes: nothing more was read


async def test_a_declared_oversized_body_is_refused_before_reading() -> None:
    request, receive = request_with(chunks(50), {"content-length": "500"})
    with pytest.raises(BodyTooLarge):
        await read_limited(request, 100)
    assert receive.calls == 0


async def test_a_slow_body_times_out() -> None:
    request, _ = request_with(chunks(2), {})  # then the client sends nothing more
    with anyio.fail_after(5):
        with pytest.raises(BodyTimedOut):
            await read_limited(request, 1000, within=0.2)


async def test_a_cancellation_from_outside_is_not_a_timeout() -> None:
    request, _ = request_with(chunks(2), {})
    with anyio.move_on_after(0.1) as outer:
        await read_limited(request, 1000, within=5.0)
    assert outer.cancelled_caught


async def test_a_timeout_inside_an_outer_scope_leaves_the_task_usable() -> None:
    # On asyncio the deadline is asyncio's own timeout, inside anyio's scopes: its expiry
    # must not look like a cancellation to them, nor leave the task marked as cancelling.
    request, _ = request_with(chunks(2), {})
    with anyio.fail_after(5) as outer:
        with pytest.raises(BodyTimedOut):
            await read_limited(request, 1000, within=0.1)
        await anyio.lowlevel.checkpoint()  # a checkpoint after it passes
        with anyio.move_on_after(0.05) as later:
            await anyio.sleep(5)
        assert later.cancelled_caught
        await anyio.lowlevel.checkpoint()
    assert not outer.cancel_called


async def test_an_outer_cancel_while_reading_is_not_a_timeout_and_ends_the_scope() -> None:
    request, _ = request_with(chunks(1), {})
    with anyio.CancelScope() as outer:
        async with anyio.create_task_group() as tasks:

            async def read() -> None:
                await read_limited(request, 1000, within=0.2)

            tasks.start_soon(read)
            await anyio.sleep(0.05)
            outer.cancel()  # before the body's deadline
    assert outer.cancelled_caught


async def test_a_body_whose_first_receive_waits_is_read_when_it_arrives() -> None:
    # The first receive() is started before the deadline is armed; when it has to wait,
    # the wait it began goes on (under the deadline) and gets the message, on both
    # backends (asyncio's futures, trio's traps and the values sent back into them).
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](4)
    async with send, receive:

        async def client() -> None:
            await anyio.sleep(0.05)
            await send.send(chunks(1)[0])
            await anyio.sleep(0.05)
            await send.send(last(b"yz"))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(client)
                assert await receive_limited(receive.receive, 100, within=2.0) == b"x" * 10 + b"yz"


async def test_a_first_receive_that_never_answers_times_out() -> None:
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](4)
    async with send, receive:
        with anyio.fail_after(5), pytest.raises(BodyTimedOut):
            await receive_limited(receive.receive, 100, within=0.1)


async def test_a_cancelled_first_receive_withdraws_its_wait() -> None:
    # Cancelled from outside while its first receive waits: the cancellation propagates,
    # and the wait it began is withdrawn, so the next message goes to the next reader.
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](4)
    async with send, receive:
        with anyio.move_on_after(0.05) as outer:
            await receive_limited(receive.receive, 100, within=5.0)
        assert outer.cancelled_caught
        await send.send(last(b"next"))
        with anyio.fail_after(1):
            assert await receive.receive() == last(b"next")


class LateReceive:
    """An ASGI ``receive`` whose message arrives later; counts calls and sees its waits
    cancelled (as Hypercorn's queue does, it registers its wait before yielding)."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0
        self.arrived = anyio.Event()

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        try:
            await self.arrived.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        return last(b"late")


async def test_the_first_receive_that_waits_is_the_one_awaited() -> None:
    late = LateReceive()

    async def arrive() -> None:
        await anyio.sleep(0.05)
        late.arrived.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(arrive)
            assert await receive_limited(late, 100, within=2.0) == b"late"
    assert late.calls == 1  # not abandoned for a second receive()


async def test_a_cancellation_reaches_the_first_receive_that_waits() -> None:
    late = LateReceive()
    with anyio.move_on_after(0.05) as outer:
        await receive_limited(late, 100, within=5.0)
    assert outer.cancelled_caught
    assert (late.calls, late.cancelled) == (1, 1)


async def test_a_body_the_server_already_holds_is_read_without_a_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Hypercorn's shape: the bytes with more_body, then an empty last message, both queued
    # before the app reads. On asyncio a deadline is a timer on the loop (call_at); none is
    # armed unless a receive has to wait.
    if not running_on_asyncio():
        pytest.skip("asyncio's timers")
    import asyncio  # noqa: TID251 - the asyncio loop's timers are what this test counts

    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when: float, *args: Any, **kwargs: Any) -> Any:
        armed.append(when)
        return call_at(when, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    request, receive = request_with([*chunks(1), last()], {})
    assert await read_limited(request, 100, within=5.0) == b"x" * 10
    assert (armed, receive.calls) == ([], 2)
    # One that waits arms it (the test counts what it claims to).
    slow, _ = request_with(chunks(1), {})
    deadline = loop.time() + 0.05
    with pytest.raises(BodyTimedOut):
        await read_limited(slow, 100, within=0.05)
    assert any(abs(when - deadline) < 0.04 for when in armed)


class ScopedReceive:
    """A ``receive`` that opens a cancel scope of its own around its wait (a middleware's
    timeout, say); its message arrives once ``arrived`` is set."""

    def __init__(self) -> None:
        self.arrived = anyio.Event()

    async def __call__(self) -> dict[str, Any]:
        with anyio.move_on_after(30):
            await self.arrived.wait()
        return last(b"scoped")


async def test_a_receive_with_a_cancel_scope_of_its_own_is_read_and_timed() -> None:
    # On trio a receive begun outside the deadline's scope would open its scope outside
    # it too, and leaving them would corrupt the task's scope stack.
    scoped = ScopedReceive()

    async def arrive() -> None:
        await anyio.sleep(0.05)
        scoped.arrived.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(arrive)
            assert await receive_limited(scoped, 100, within=2.0) == b"scoped"
        with pytest.raises(BodyTimedOut):
            await receive_limited(ScopedReceive(), 100, within=0.05)
        await anyio.lowlevel.checkpoint()  # the task's scopes are intact


async def test_a_client_gone_mid_body_is_client_gone() -> None:
    request, _ = request_with([*chunks(2), {"type": "http.disconnect"}], {})
    with pytest.raises(ClientGone):
        await read_limited(request, 1000)


async def test_a_body_read_once_can_be_read_again_from_the_request() -> None:
    # A run hook gets the request after the channel read its body: ``body()`` answers it
    # at once instead of waiting on ``receive`` for a body that will not come again.
    request, receive = request_with([last(b'{"a": 1}')], {})
    assert await read_limited(request, 100) == b'{"a": 1}'
    with anyio.fail_after(1):
        assert await request.body() == b'{"a": 1}'
        assert await read_limited(request, 100) == b'{"a": 1}'
    assert receive.calls == 1


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/merge-patch+json", True),
        (None, True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
async def test_json_bodies_need_a_json_content_type(
    content_type: str | None, accepted: bool
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    request, _ = request_with([last(b"{}")], headers)
    if accepted:
        assert await read_json_body(request, 100) == b"{}"
    else:
        with pytest.raises(UnsupportedMediaType):
            await read_json_body(request, 100)
