"""Files users send reach the model as short-lived signed URLs on the host, and the bot
token never reaches the model, the stored history or a log."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest

from agenthost import UriPart
from agenthost.channels.telegram.media import SignedFiles, served_media_type
from tests.channels.telegram.conftest import (
    TIMEOUT,
    Recorder,
    fake_bot_api,
    http_get,
    telegram_host,
)
from tests.channels.telegram.telegram_updates import BOT_TOKEN, fixture

pytestmark = pytest.mark.anyio

JPEG = b"\xff\xd8\xff\xe0" + b"pretend this is a photo" * 50
SECRET_PART = BOT_TOKEN.split(":", 1)[1]


def test_signatures() -> None:
    files = SignedFiles(
        key=b"k" * 32, base_url="https://host.example/telegram/files", ttl_seconds=60
    )
    url = files.url("AgAC/x+y", now=1000.0)
    parts = urlsplit(url)
    assert parts.path == "/telegram/files/AgAC%2Fx%2By"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["exp"] == "1060"
    assert files.check("AgAC/x+y", query["exp"], query["sig"], now=1059.0) == "ok"
    assert files.check("AgAC/x+y", query["exp"], query["sig"], now=1061.0) == "expired"
    assert files.check("AgAC/x+z", query["exp"], query["sig"], now=1000.0) == "invalid"
    assert files.check("AgAC/x+y", "1061", query["sig"], now=1000.0) == "invalid"
    sig = query["sig"]
    for index in (0, 20, len(sig) - 1):
        changed = "B" if sig[index] == "A" else "A"
        tampered = sig[:index] + changed + sig[index + 1 :]
        assert files.check("AgAC/x+y", query["exp"], tampered, now=1000.0) == "invalid"
    assert files.check("AgAC/x+y", None, None, now=1000.0) == "invalid"
    other_key = SignedFiles(key=b"o" * 32, base_url="x", ttl_seconds=60)
    assert other_key.check("AgAC/x+y", query["exp"], query["sig"], now=1000.0) == "invalid"


def test_served_media_types_are_never_active_content() -> None:
    assert served_media_type("photos/file_1.jpg") == "image/jpeg"
    assert served_media_type("voice/file_2.oga") == "audio/ogg"
    assert served_media_type("documents/page.html") == "application/octet-stream"
    assert served_media_type("documents/image.svg") == "application/octet-stream"


def assert_not_stored(directory: Path, secret: str) -> None:
    files = list(directory.glob("state.db*"))
    assert files
    for path in files:
        assert secret.encode() not in path.read_bytes(), path.name


async def test_a_photo_reaches_the_model_as_a_signed_host_url(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    now = [1_800_000_000.0]
    target = Recorder(reply=lambda _: "a photo of something")
    update = fixture("photo_with_caption")
    largest = update["message"]["photo"][-1]["file_id"]
    chat = update["message"]["chat"]["id"]
    with anyio.fail_after(TIMEOUT):
        async with fake_bot_api() as (fake, api_url):
            fake.add_file(largest, "photos/file_42.jpg", JPEG)
            update["update_id"] = fake.next_update_id()
            async with telegram_host(
                target,
                tmp_path,
                mode,
                fake,
                api_url,
                host_options={"clock": lambda: now[0]},
                file_url_ttl_seconds=300,
            ) as bot:
                assert await bot.exchange(update, chat) == ["a photo of something"]
                [message] = target.inputs[0]
                assert message.text == "What is in this picture?"
                [part] = [p for p in message.parts if isinstance(p, UriPart)]
                assert part.media_type == "image/jpeg"
                assert part.uri.startswith(f"{bot.base_url}/telegram/files/")
                assert BOT_TOKEN not in part.uri and SECRET_PART not in part.uri

                fetched = await http_get(part.uri)
                assert fetched.status_code == 200
                assert fetched.content == JPEG
                assert fetched.headers["content-type"] == "image/jpeg"
                assert fetched.headers["x-content-type-options"] == "nosniff"

                # A forged signature, another file id, or no signature: refused.
                forged = part.uri.replace("sig=", "sig=A")
                assert (await http_get(forged)).status_code == 403
                other = part.uri.replace(largest, update["message"]["photo"][0]["file_id"])
                assert (await http_get(other)).status_code == 403
                assert (await http_get(part.uri.split("?")[0])).status_code == 403
                # Past its expiry the genuine URL is gone.
                now[0] += 301
                assert (await http_get(part.uri)).status_code == 410

            # The token is nowhere in the stored state (history, inbox, sessions)...
            assert_not_stored(tmp_path, SECRET_PART)
    # ...nor in any log line, although the HTTP client logged every call it made.
    for record in caplog.records:
        assert SECRET_PART not in record.getMessage(), record.name
        assert SECRET_PART not in repr(record.__dict__), record.name
    assert any("/bot<redacted>/" in r.getMessage() for r in caplog.records if r.name == "httpx")
