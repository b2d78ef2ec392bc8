"""Shared test set-up: one event-loop backend per run, chosen by ``make test``.

``make test`` runs the suite twice, with ``AGENTHOST_TEST_BACKEND=asyncio`` and ``=trio``;
every async test runs on that backend through anyio's pytest plugin.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from agenthost.backends.logs import LOGGERS

BACKEND = os.environ.get("AGENTHOST_TEST_BACKEND", "asyncio")
if BACKEND not in ("asyncio", "trio"):
    raise RuntimeError(f"AGENTHOST_TEST_BACKEND must be asyncio or trio, not {BACKEND!r}")


@pytest.fixture
def anyio_backend() -> str:
    return BACKEND


@pytest.fixture(autouse=True)
def _host_loggers_left_as_found() -> Iterator[None]:
    """Put the host's loggers back as they were before each test.

    A test that serves through the CLI in this process configures them for the process
    (JSON lines on stderr, INFO, not propagated): left so, a later test's ``caplog`` would
    never see their DEBUG records, and wait for them in vain.
    """
    saved = [
        (logger, logger.level, logger.propagate, list(logger.handlers))
        for logger in map(logging.getLogger, LOGGERS)
    ]
    yield
    for logger, level, propagate, handlers in saved:
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers
