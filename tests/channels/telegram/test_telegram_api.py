"""The Bot API client: error classification, pacing and retries, token redaction."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx
import pytest

from agenthost import ChannelCommand, ConfigurationError
from agenthost.channels.telegram import TelegramChannel
from agenthost.channels.telegram.api import (
    BadRequest,
    BotApi,
    ChatMigrated,
    Conflict,
    Forbidden,
    FormattingRejected,
    NotModified,
    Pacer,
    Pacing,
    RateLimited,
    RedactSecrets,
    TokenBucket,
    Unauthorized,
    Unavailable,
    classify,
)

TOKEN = "123456:secret-token_value"


def body(code: int, description: str, **parameters: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        data["parameters"] = parameters
    return data


@pytest.mark.parametrize(
    ("status", "data", "kind", "permanent"),
    [
        (429, body(429, "Too Many Requests: retry after 7", retry_after=7), RateLimited, False),
        (
            400,
            body(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=-100123,
            ),
            ChatMigrated,
            True,
        ),
        (
            400,
            body(400, "Bad Request: can't parse entities: Character '.' is reserved"),
            FormattingRejected,
            True,
        ),
        (
            400,
            body(400, "Bad Request: message is not modified: specified new message content"),
            NotModified,
            True,
        ),
        (400, body(400, "Bad Request: chat not found"), BadRequest, True),
        (403, body(403, "Forbidden: bot was blocked by the user"), Forbidden, True),
        (401, body(401, "Unauthorized"), Unauthorized, True),
        (409, body(409, "Conflict: terminated by other getUpdates request"), Conflict, False),
        (502, None, Unavailable, False),
        (500, body(500, "Internal Server Error"), Unavailable, False),
    ],
)
def test_errors_are_classified(status: int, data: Any, kind: type, permanent: bool) -> None:
    error = classify("sendMessage", status, data)
    assert type(error) is kind
    assert error.permanent is permanent
    assert "sendMessage" in str(error)
    if isinstance(error, RateLimited):
        assert error.retry_after == 7
    if isinstance(error, ChatMigrated):
        assert error.new_chat_id == -100123


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_bursts_then_paces() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(1.0)
    assert bucket.reserve() == pytest.approx(2.0)  # waiters queue behind each other
    clock.now += 10
    assert bucket.reserve() == 0.0
    bucket.pause(5)
    assert bucket.delay() == pytest.approx(5.0)
    assert bucket.reserve() == pytest.approx(5.0)


def test_pacer_separates_chats_and_groups_are_slower() -> None:
    clock = Clock()
    pacer = Pacer(Pacing(private_burst=1, group_burst=1, group_per_minute=20), clock)
    assert pacer.try_acquire(42)
    assert not pacer.try_acquire(42)  # one a second in a private chat
    assert pacer.try_acquire(43)  # another chat has its own budget
    assert pacer.try_acquire(-100)
    clock.now += 1.0
    assert pacer.try_acquire(42)
    assert not pacer.try_acquire(-100)  # a group waits three seconds
    clock.now += 2.0
    assert pacer.try_acquire(-100)


def test_pacing_must_be_positive() -> None:
    with pytest.raises(ValueError, match="group_per_minute"):
        Pacing(group_per_minute=0)


def test_the_token_is_redacted_from_log_records() -> None:
    redact = RedactSecrets([TOKEN])
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        "HTTP Request: %s %s",
        ("POST", httpx.URL(f"https://api.telegram.org/bot{TOKEN}/getMe")),
        None,
    )
    assert redact.filter(record)
    assert TOKEN not in record.getMessage()
    assert "/bot<redacted>/getMe" in record.getMessage()


def api_with(handler: Any, **options: Any) -> tuple[BotApi, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    fast = Pacing(
        global_per_second=1000, global_burst=1000, private_per_second=1000, private_burst=1000
    )
    api = BotApi(
        client, TOKEN, base_url="http://bot.test", clock=anyio.current_time, pacing=fast, **options
    )
    return api, client


@pytest.mark.anyio
async def test_a_429_is_waited_out_then_retried() -> None:
    answers = [
        httpx.Response(429, json=body(429, "Too Many Requests: retry after 1", retry_after=1)),
        httpx.Response(200, json={"ok": True, "result": {"message_id": 5}}),
    ]
    seen: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(anyio.current_time())
        return answers.pop(0)

    api, client = api_with(handler)
    async with client:
        sent = await api.send_message(42, "hi")
    assert sent == {"message_id": 5}
    assert seen[1] - seen[0] >= 0.95


@pytest.mark.anyio
async def test_rate_limits_beyond_the_bound_are_raised() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json=body(429, "Too Many Requests", retry_after=3600))

    api, client = api_with(handler)
    async with client:
        with pytest.raises(RateLimited) as raised:
            await api.send_message(42, "hi")
    assert raised.value.retry_after == 3600


@pytest.mark.anyio
async def test_a_migration_is_followed_and_remembered() -> None:
    chats: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        chat = json.loads(request.content)["chat_id"]
        chats.append(chat)
        if chat == -5:
            return httpx.Response(
                400,
                json=body(400, "Bad Request: group chat was upgraded", migrate_to_chat_id=-1009),
            )
        return httpx.Response(200, json={"ok": True, "result": {"message_id": 1}})

    api, client = api_with(handler)
    async with client:
        await api.send_message(-5, "one")
        await api.send_message(-5, "two")
    assert chats == [-5, -1009, -1009]
    assert api.chat_id(-5) == -1009


@pytest.mark.anyio
async def test_only_requests_that_never_left_are_retried() -> None:
    calls = 0

    async def refused(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request)

    api, client = api_with(refused, max_attempts=2)
    async with client:
        with pytest.raises(Unavailable):
            await api.send_message(42, "hi")
    assert calls == 2

    calls = 0

    async def timed_out(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("slow", request=request)

    api, client = api_with(timed_out, max_attempts=3)
    async with client:
        with pytest.raises(Unavailable) as raised:
            await api.send_message(42, "hi")
    assert calls == 1  # it may have been delivered: not sent again
    assert TOKEN not in str(raised.value)


@pytest.mark.anyio
async def test_permanent_errors_are_not_retried() -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(403, json=body(403, "Forbidden: bot was blocked by the user"))

    api, client = api_with(handler)
    async with client:
        with pytest.raises(Forbidden):
            await api.send_message(42, "hi")
    assert calls == 1


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"bot_token": "not a token"}, "bot_token"),
        ({"mode": "webhook"}, "webhook_url"),
        ({"mode": "webhook", "webhook_url": "http://bot.example/telegram/webhook"}, "https"),
        ({"mode": "polling", "secret_token": "has spaces"}, "secret_token"),
        ({"mode": "polling", "parse_mode": "Markdown"}, "parse_mode"),
        ({"mode": "polling", "addressing": "everyone"}, "everyone"),
        ({"mode": "polling", "conversation_scope": "galaxy"}, "conversation_scope must be one of"),
        ({"mode": "polling", "poll_timeout": 0}, "poll_timeout"),
        (
            {"mode": "polling", "commands": [ChannelCommand("Bad-Name", "x")]},
            "1-32 of a-z",
        ),
    ],
)
def test_misconfigurations_are_refused_at_construction(
    options: dict[str, Any], complaint: str
) -> None:
    arguments: dict[str, Any] = {"bot_token": "123456:AAH-valid_token", **options}
    with pytest.raises(ConfigurationError, match=complaint):
        TelegramChannel(**arguments)


def test_the_token_and_secret_stay_out_of_the_repr() -> None:
    channel = TelegramChannel(
        "123456:AAH-valid_token",
        mode="webhook",
        webhook_url="https://bot.example/telegram/webhook",
        secret_token="s3cr3t",
    )
    assert "AAH-valid_token" not in repr(channel) and "s3cr3t" not in repr(channel)
