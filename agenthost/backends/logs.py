"""The host's one log format, and what must never appear in it.

Every way of serving (``agenthost serve``, ``agenthost demo``, ``host.serve()``) writes
JSON lines on stderr: the host's records and Hypercorn's own, through one formatter. An
application that configured logging itself keeps its configuration.

Run tokens are bearer secrets (they poll and cancel runs), so a record's ``token`` field
is replaced by ``token_ref``, a non-reversible reference (:func:`token_reference`) that
still lets an operator follow one run through the log. The filter sits on the loggers that
name runs and on the JSON handler, so it holds for an application's own handlers too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from typing import Any

LOGGERS = ("agenthost", "hypercorn")
#: Loggers whose records name runs by their token.
_RUN_LOGGERS = ("agenthost.host", "agenthost.background")

_STANDARD_LOG_FIELDS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def token_reference(token: str) -> str:
    """A stable, non-reversible name for a run token, for logs."""
    return "ref_" + hashlib.sha256(token.encode()).hexdigest()[:16]


class TokenReferences(logging.Filter):
    """Replaces a record's ``token`` by its ``token_ref``."""

    def filter(self, record: logging.LogRecord) -> bool:
        token = record.__dict__.pop("token", None)
        if isinstance(token, str):
            record.token_ref = token_reference(token)
        return True


_TOKEN_REFERENCES = TokenReferences()
for _name in _RUN_LOGGERS:
    logging.getLogger(_name).addFilter(_TOKEN_REFERENCES)  # once per process, never removed


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the record's extra fields;
    with an exception, its type, message and stack."""

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
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the host's and Hypercorn's loggers, at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(_TOKEN_REFERENCES)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def application_configured_logging() -> bool:
    """Whether the application set up logging itself (then it is left as it is)."""
    if logging.getLogger().handlers:
        return True
    return any(logging.getLogger(name).handlers for name in LOGGERS)
