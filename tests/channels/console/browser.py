"""A real headless Chromium, driven over the Chrome DevTools Protocol, for the console tests.

:func:`find_chromium` finds Debian's ``chromium`` (or ``AGENTHOST_CHROMIUM``); when it is
missing the browser tests skip on a developer's machine and FAIL under CI (``CI=true``),
so a CI run can never pass without having driven the browser.

:class:`Browser` starts Chromium with a fresh profile and a DevTools port, and
:class:`Tab` speaks CDP over one page's WebSocket (``websockets``' sync client). Every CDP
call runs in a worker thread (``anyio.to_thread``), so the event loop serving the host
under test stays free, under asyncio and trio alike.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.sync.client import ClientConnection, connect

LAUNCH_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
)
STEP_TIMEOUT = 20.0
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"


def screenshots_dir() -> Path:
    """Where screenshots go: the docs' folder under ``make screenshots``
    (``AGENTHOST_UPDATE_SCREENSHOTS=1``), else a scratch folder, so that a test run leaves
    the checkout as it found it (Chromium's PNGs differ byte for byte from run to run)."""
    if os.environ.get("AGENTHOST_UPDATE_SCREENSHOTS") == "1":
        return DOCS_SCREENSHOTS
    return Path(tempfile.gettempdir()) / "agenthost-screenshots"


def find_chromium() -> str:
    """Chromium's path, or skip (fail under CI) when there is none."""
    for candidate in (
        os.environ.get("AGENTHOST_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    message = "headless Chromium is missing: apt-get install chromium (make test does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class CdpError(RuntimeError):
    pass


class Tab:
    """One page, over its own DevTools WebSocket."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._ids = itertools.count(1)
        self.console_errors: list[str] = []

    def _call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = STEP_TIMEOUT
    ) -> dict[str, Any]:
        call_id = next(self._ids)
        self._connection.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            raw = self._connection.recv(timeout=max(deadline - time.monotonic(), 0.01))
            message = json.loads(raw)
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.console_errors.append(str(details.get("text")))
            if message.get("method") == "Log.entryAdded":
                entry = message["params"]["entry"]
                if entry.get("level") == "error":
                    self.console_errors.append(str(entry.get("text")))
            if message.get("id") == call_id:
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self._call, method, params)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in answer:
            raise CdpError(f"script failed: {answer['exceptionDetails'].get('text')}")
        return answer["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def wait_for(self, condition: str, timeout: float = STEP_TIMEOUT) -> Any:
        """Until the JavaScript ``condition`` is truthy; its value.

        On time-out the page's address and text are in the failure, to show what it saw.
        """
        try:
            return await self._wait_for(condition, timeout)
        except TimeoutError:
            seen = await self.evaluate("location.href + '\\n' + document.body.innerText")
            raise AssertionError(f"waited for {condition!r}; the page showed:\n{seen}") from None

    async def _wait_for(self, condition: str, timeout: float) -> Any:
        with anyio.fail_after(timeout):
            while True:
                try:
                    value = await self.evaluate(
                        f"(() => {{ try {{ return ({condition}); }} "
                        "catch (e) { return null; } })()"
                    )
                except CdpError:
                    value = None
                if value:
                    return value
                await anyio.sleep(0.05)

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the field and type ``text`` as keyboard input."""
        focused = await self.evaluate(
            f"(() => {{ const f = document.querySelector({json.dumps(selector)}); "
            "if (!f) return false; f.focus(); f.value = ''; return true; })()"
        )
        assert focused, f"no field {selector}"
        await self.call("Input.insertText", {"text": text})

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = await self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)}); "
            "if (!el) return null; el.scrollIntoView({block: 'center'}); "
            "const r = el.getBoundingClientRect(); "
            "return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        assert box, f"no element {selector}"
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    async def submit(self, selector: str) -> None:
        """Click a button that loads a new page, and wait until the new page has loaded."""
        await self.evaluate("window.__agenthostOldPage = true")
        await self.click(selector)
        await self.wait_for("document.readyState === 'complete' && !window.__agenthostOldPage")

    async def screenshot(self, name: str) -> Path:
        # Headless Chromium now and then never produces the frame a capture waits for (seen
        # once in a full run, after a replay's page load): bring the page forward and ask
        # again. A screenshot is for the docs; the tests' assertions do not depend on it.
        params = {"format": "png"}
        try:
            shot = await anyio.to_thread.run_sync(
                self._call, "Page.captureScreenshot", params, STEP_TIMEOUT / 2
            )
        except TimeoutError:
            await self.call("Page.bringToFront")
            shot = await self.call("Page.captureScreenshot", params)
        directory = screenshots_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        self._connection.close()


class Browser:
    def __init__(self, port: int) -> None:
        self.port = port

    @asynccontextmanager
    async def tab(self) -> AsyncIterator[Tab]:
        def open_tab() -> Tab:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT"
            )
            with urllib.request.urlopen(request, timeout=STEP_TIMEOUT) as answer:
                target = json.load(answer)
            connection = connect(
                target["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10
            )
            return Tab(connection)

        tab = await anyio.to_thread.run_sync(open_tab)
        try:
            for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
                await tab.call(domain)
            yield tab
        finally:
            await anyio.to_thread.run_sync(tab.close)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Start headless Chromium with a fresh profile; stop it (and only it) on exit."""
    executable = find_chromium()
    # Chromium's helpers may still be writing to the profile as the main process exits.
    with tempfile.TemporaryDirectory(
        prefix="agenthost-chromium-", ignore_cleanup_errors=True
    ) as profile:
        # Its own process group, so that its helper processes end with it (and only they).
        process = await anyio.open_process(
            [executable, *LAUNCH_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            with anyio.fail_after(30):
                while not port_file.exists() or not port_file.read_text().strip():
                    if process.returncode is not None:
                        raise RuntimeError(f"chromium exited with {process.returncode}")
                    await anyio.sleep(0.05)
            port = int(port_file.read_text().splitlines()[0])
            yield Browser(port)
        finally:
            with anyio.CancelScope(shield=True):
                process.terminate()
                with anyio.move_on_after(10) as slow:
                    await process.wait()
                if slow.cancelled_caught:
                    process.kill()
                    await process.wait()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)  # helpers left in its group
