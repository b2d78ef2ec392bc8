"""``agenthost doctor module:host``: check a host's configuration without serving it.

It imports the host (construction already refuses settings that cannot work, naming the
setting), builds its app (each channel's routes, which check their own settings), opens
its store (which creates or migrates the schema exactly as serving would, and refuses a
schema this version does not know), and asks each channel that can to verify its platform
credentials (``Channel.check_credentials``): Telegram's ``getMe``, Discord's ``GET
/applications/@me`` (whose id and public key must be the configured ones), the Activity
bot's token from Entra, the OpenID link channel's discovery document. One line a check;
the exit status is 0 when every check passed, 1 otherwise. Nothing secret is printed.
``--backend`` runs the checks on the event loop the host serves on.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
import httpx

from agenthost.backends.configuration import ConfigurationError
from agenthost.stores.base import SCHEMA_VERSION, StoreError

CREDENTIALS_TIMEOUT = 15.0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("doctor", help="check a host's configuration without serving")
    parser.add_argument("target", help="module:attribute naming a Host or a factory of one")
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop for the store and credential checks (the one the host serves on)",
    )


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def ok(self, what: str, detail: str = "") -> None:
        print(f"ok    {what}{': ' + detail if detail else ''}")

    def fail(self, what: str, detail: str) -> None:
        self.failed += 1
        print(f"FAIL  {what}: {detail}")

    def note(self, what: str, detail: str) -> None:
        print(f"note  {what}: {detail}")


def run(args: argparse.Namespace) -> int:
    from agenthost.cli import load_host

    report = Report()
    try:
        host = load_host(args.target)
    except ConfigurationError as error:
        report.fail("configuration", str(error))
        return 1
    report.ok("configuration", f"{len(host.channels)} channels, store {type(host.store).__name__}")
    try:
        host.app  # noqa: B018 - building the app builds (and checks) every channel's routes
    except ConfigurationError as error:
        report.fail("channels", str(error))
        return 1
    for channel in host.channels:
        report.ok(f"channel {channel.name}", type(channel).__name__)
        if getattr(channel, "allow_remote", False) and getattr(channel, "token", "") is None:
            report.note(
                f"channel {channel.name}",
                "remote access without a token: one is drawn and printed at start-up",
            )
    anyio.run(_check_store_and_credentials, host, report, backend=args.backend)
    return 1 if report.failed else 0


async def _check_store_and_credentials(host: Any, report: Report) -> None:
    store = host.store
    try:
        await store.open()
        report.ok("store", f"{type(store).__name__}, schema version {SCHEMA_VERSION}")
    except StoreError as error:
        report.fail("store", str(error))
    except Exception as error:  # a driver's own error: its type says enough
        report.fail("store", f"cannot open ({type(error).__name__})")
    finally:
        await store.close()
    async with httpx.AsyncClient(timeout=CREDENTIALS_TIMEOUT) as http:
        for channel in host.channels:
            what = f"credentials {channel.name}"
            try:
                with anyio.fail_after(CREDENTIALS_TIMEOUT * 2):
                    verified = await channel.check_credentials(http)
            except ConfigurationError as error:
                report.fail(what, str(error))
            except TimeoutError:
                report.fail(what, "the platform did not answer in time")
            except Exception as error:  # network trouble: its type, never its text
                report.fail(what, f"could not ask the platform ({type(error).__name__})")
            else:
                if verified is None:
                    report.ok(what, "nothing to verify")
                else:
                    report.ok(what, verified)
