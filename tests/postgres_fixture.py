"""A throw-away PostgreSQL schema per test, on the server ``AGENTHOST_TEST_POSTGRES`` names.

Unset: the test skips (one reason, shared by every PostgreSQL case). Set but unreachable:
the test fails, saying so; a configured database that is down is a broken run, not a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ENVIRONMENT = "AGENTHOST_TEST_POSTGRES"


def postgres_dsn() -> str:
    """The server's URL, or skip the test when none is configured."""
    dsn = os.environ.get(ENVIRONMENT)
    if not dsn:
        pytest.skip(f"{ENVIRONMENT} is unset: PostgreSQL cases skipped")
    return dsn


@contextmanager
def postgres_schema() -> Iterator[tuple[str, str]]:
    """A fresh schema name on the test server (created by the store), dropped on exit."""
    import psycopg

    dsn = postgres_dsn()
    schema = f"agenthost_test_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"{ENVIRONMENT}={dsn} is set but the server is unreachable: {error}")
    try:
        yield dsn, schema
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()
