"""The ``agenthost`` command: serve a host, run the demo, operate a host's store.

``agenthost serve module:attribute`` imports a ``Host`` (or a function returning one) and
serves it; ``agenthost demo`` serves the demo agent on the SQLite default;
``agenthost doctor module:attribute`` checks one without serving; ``agenthost deliveries``
and ``agenthost links`` work on a host's store. Logs are JSON
lines on stderr, carrying ids and outcomes, never message content or secrets.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

_STANDARD_LOG_FIELDS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_LOG_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("agenthost")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def load_host(reference: str) -> Any:
    """Import ``module:attribute``; call it first if it is a factory."""
    from agenthost.backends.host import Host

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"agenthost: expected module:attribute, got {reference!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(f"agenthost: cannot import {module_name!r}: {error}") from None
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"agenthost: {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(value, Host) and callable(value):
        value = value()
    if not isinstance(value, Host):
        raise SystemExit(f"agenthost: {reference} is {type(value).__name__}, not a Host")
    return value


def _add_serving_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help="port to bind")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--log-level", default="info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agenthost", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a Host given as module:attribute")
    serve.add_argument("target", help="module:attribute naming a Host or a factory of one")
    _add_serving_options(serve, 8000)
    demo = commands.add_parser("demo", help="serve the demo agent (no network or key needed)")
    demo.add_argument("--state-dir", default=".agenthost", help="where the SQLite store lives")
    _add_serving_options(demo, 8000)
    from agenthost import cli_deliveries, cli_doctor, cli_links

    cli_deliveries.add_parser(commands)
    cli_links.add_parser(commands)
    cli_doctor.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "deliveries":
        from agenthost import cli_deliveries

        raise SystemExit(cli_deliveries.run(args))
    if args.command == "links":
        from agenthost import cli_links

        raise SystemExit(cli_links.run(args))
    if args.command == "doctor":
        from agenthost import cli_doctor

        raise SystemExit(cli_doctor.run(args))
    configure_logging(args.log_level)
    if args.command == "demo":
        from agenthost.demo import build_host

        host = build_host(args.state_dir)
        base = f"http://{args.host}:{args.port}"
        print(
            "agenthost demo: try\n"
            f"  curl -s {base}/invocations/invoke -H 'content-type: application/json' "
            '-d \'{"input": "what is 2 + 3"}\'\n'
            "  python -c \"from openai import OpenAI; print(OpenAI("
            f"base_url='{base}/responses/v1', api_key='any')"
            ".responses.create(model='demo', input='what is 2 + 3').output_text)\"",
            file=sys.stderr,
        )
    else:
        host = load_host(args.target)
    host.serve(host=args.host, port=args.port, backend=args.backend)


if __name__ == "__main__":
    main()
