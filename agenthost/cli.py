"""The ``agenthost`` command: serve a host, run the demo, operate and migrate a store.

``agenthost serve module:attribute`` imports a ``Host`` (or a function returning one) and
serves it; ``agenthost demo`` serves the demo agent on the SQLite default.
``--store URL`` (or ``AGENTHOST_STORE``) gives a host built without a store that store
instead, say a PostgreSQL database shared by several replicas; ``agenthost migrate --store
URL`` creates or upgrades its schema. ``agenthost doctor module:attribute`` checks a host
without serving; ``agenthost deliveries`` and ``agenthost links`` work on a host's store.
Logs are JSON lines on stderr (``backends.logs``), carrying ids and outcomes, never message
content or secrets. SIGINT and SIGTERM stop the server gracefully on both backends.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agenthost.backends.logs import JsonLogFormatter as JsonLogFormatter
from agenthost.backends.logs import configure_logging
from agenthost.stores.base import StoreError

T = TypeVar("T")


def load_host(reference: str) -> Any:
    """Import ``module:attribute``; call it first if it is a factory (no arguments).

    The working directory is put first on the import path, as other ASGI servers do, so
    ``agenthost serve mymodule:host`` works from the module's folder.
    """
    from agenthost.backends.configuration import ConfigurationError
    from agenthost.backends.host import Host

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"agenthost: expected module:attribute, got {reference!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(f"agenthost: cannot import {module_name!r}: {error}") from None
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"agenthost: {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(value, Host) and callable(value):
        value = _call_factory(value, reference, ConfigurationError)
    if not isinstance(value, Host):
        raise SystemExit(
            f"agenthost: {reference} is a {type(value).__name__}, not a Host (or a function "
            "returning one)"
        )
    return value


def _call_factory(factory: Any, reference: str, configuration_error: type[Exception]) -> Any:
    not_a_factory = (
        f"agenthost: {reference} is not a Host nor a factory of one (a function taking no "
        "arguments and returning a Host)"
    )
    if inspect.iscoroutinefunction(factory) or inspect.isasyncgenfunction(factory):
        raise SystemExit(f"{not_a_factory}; it is an async function (a target?)")
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise SystemExit(f"{not_a_factory}; it needs arguments") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): just call it
    try:
        return factory()
    except configuration_error as error:
        raise SystemExit(f"agenthost: {reference} is misconfigured: {error}") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="the store of a host built without one: postgresql://..., sqlite:///PATH or "
        "memory: (default: $AGENTHOST_STORE, else SQLite under the state directory)",
    )


def _add_serving_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    _add_store_option(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=default_port, help="port to bind")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=("debug", "info", "warning", "error"),
        help="lowest level logged (JSON lines on stderr)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agenthost",
        description="agenthost: serve a host, run the demo, manage deliveries.",
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a Host given as module:attribute",
        description="Serve a Host given as module:attribute (the module is imported from "
        "the working directory first). SIGINT or SIGTERM stops it gracefully.",
        formatter_class=HelpFormatter,
    )
    serve.add_argument("target", help="module:attribute naming a Host or a factory of one")
    _add_serving_options(serve, 8000)
    demo = commands.add_parser(
        "demo",
        help="serve the demo agent (no network or key needed)",
        description="Serve the demo agent (no network or key needed) on the SQLite store.",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--state-dir", default=".agenthost", help="where the SQLite store lives")
    _add_serving_options(demo, 8000)
    migrate = commands.add_parser(
        "migrate", help="create or upgrade a store's schema (do it before a new release serves)"
    )
    _add_store_option(migrate)
    migrate.add_argument("--state-dir", default=".agenthost", help="where the SQLite store lives")
    from agenthost import cli_deliveries, cli_doctor, cli_links

    cli_deliveries.add_parser(commands)
    cli_links.add_parser(commands)
    cli_doctor.add_parser(commands)
    return parser


def migrate_store(url: str | None, state_dir: str) -> int:
    """Bring the store's schema to this release's version; print what was done."""
    from agenthost.stores import selection

    chosen = url or os.environ.get(selection.ENVIRONMENT) or None
    try:
        store = (
            selection.store_from_url(chosen)
            if chosen is not None
            else selection.default_store(Path(state_dir))
        )
    except StoreError as error:
        print(f"agenthost: {error}", file=sys.stderr)
        return 2

    async def run() -> tuple[int, int] | None:
        try:
            migrate = getattr(store, "migrate", None)  # PostgreSQL migrates on request
            if migrate is not None:
                versions: tuple[int, int] = await migrate()
                return versions
            await store.open()  # SQLite migrates on open; memory has nothing to migrate
            return None
        finally:
            await store.close()

    try:
        versions = _run_store_work(run)
    except StoreUnavailable as error:
        print(f"agenthost: {error}", file=sys.stderr)
        return 1
    report: dict[str, Any] = {"store": selection.describe(chosen) if chosen else state_dir}
    if versions is not None:
        report |= {"from_version": versions[0], "to_version": versions[1]}
    report["status"] = "up to date" if versions and versions[0] == versions[1] else "migrated"
    print(json.dumps(report))
    return 0


class StoreUnavailable(Exception):
    """The store refused (its schema) or could not be reached; the message says which."""


def _run_store_work(work: Callable[[], Awaitable[T]]) -> T:
    import anyio

    try:
        return anyio.run(work)
    except StoreError as error:
        raise StoreUnavailable(str(error)) from None
    except Exception as error:
        # A driver's connection error (the type depends on the store): name it, no trace.
        if type(error).__module__.split(".")[0] in ("psycopg", "sqlite3"):
            raise StoreUnavailable(f"cannot open the store: {error}") from None
        raise


def check_store(host: Any) -> None:
    """Open and close the host's store once before serving: a schema this release cannot
    serve (a newer one, say) stops here with its reason instead of failing at start-up."""

    async def check() -> None:
        try:
            await host.store.open()
        finally:
            await host.store.close()

    try:
        _run_store_work(check)
    except StoreUnavailable as error:
        raise SystemExit(f"agenthost: {error}") from None


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "deliveries":
        from agenthost import cli_deliveries

        raise SystemExit(cli_deliveries.run(args))
    if args.command == "migrate":
        raise SystemExit(migrate_store(args.store, args.state_dir))
    if args.command == "links":
        from agenthost import cli_links

        raise SystemExit(cli_links.run(args))
    if args.command == "doctor":
        from agenthost import cli_doctor

        raise SystemExit(cli_doctor.run(args))
    configure_logging(args.log_level)
    if args.store:
        from agenthost.stores.selection import ENVIRONMENT

        # Read by Host() when it is built without a store (below, or at the module's import).
        os.environ[ENVIRONMENT] = args.store
    if args.command == "demo":
        from agenthost.demo import build_host

        host = build_host(args.state_dir)
        base = f"http://{args.host}:{args.port}"
        print(
            "agenthost demo: try\n"
            f"  curl -s {base}/invocations/invoke -H 'content-type: application/json' "
            '-d \'{"input": "what is 2 + 3"}\'\n'
            "  pip install openai  # the OpenAI client is not part of agenthost; then\n"
            '  python -c "from openai import OpenAI; print(OpenAI('
            f"base_url='{base}/responses/v1', api_key='any')"
            ".responses.create(model='demo', input='what is 2 + 3').output_text)\"",
            file=sys.stderr,
        )
    else:
        host = load_host(args.target)
    if args.store and not _uses(host, args.store):
        print(
            "agenthost: --store is ignored: this Host was built with its own store",
            file=sys.stderr,
        )
    check_store(host)
    host.serve(host=args.host, port=args.port, backend=args.backend)


def _uses(host: Any, url: str) -> bool:
    from agenthost.stores.selection import made_from

    return made_from(host.store) == url


if __name__ == "__main__":
    main()
