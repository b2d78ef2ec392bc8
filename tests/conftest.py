"""Shared test set-up: one event-loop backend per run, chosen by ``make test``.

``make test`` runs the suite twice, with ``AGENTHOST_TEST_BACKEND=asyncio`` and ``=trio``;
every async test runs on that backend through anyio's pytest plugin.
"""

from __future__ import annotations

import os

import pytest

BACKEND = os.environ.get("AGENTHOST_TEST_BACKEND", "asyncio")
if BACKEND not in ("asyncio", "trio"):
    raise RuntimeError(f"AGENTHOST_TEST_BACKEND must be asyncio or trio, not {BACKEND!r}")


@pytest.fixture
def anyio_backend() -> str:
    return BACKEND
