"""Choosing a store by URL, without code: ``--store`` and ``AGENTHOST_STORE``.

A ``Host`` built without a store takes the one ``AGENTHOST_STORE`` names, else SQLite under
its state directory. The URL forms:

- ``postgresql://user@host:5432/db`` (or ``postgres://``): :class:`PostgresStore`; extra
  query parameters ``schema=NAME`` (keep the tables in that schema, created if missing) and
  ``pool_size=N`` (connections per process, 4 by default); the others are libpq's own;
- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: :class:`SQLiteStore`;
- ``memory:``: :class:`MemoryStore` (one process, nothing kept: tests and demos).
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from agenthost.stores.base import Store, StoreError

ENVIRONMENT = "AGENTHOST_STORE"
MAX_POOL_SIZE = 64

# Which URL each store made here came from (so the CLI can tell a host that kept its own).
_ORIGINS: weakref.WeakKeyDictionary[Store, str] = weakref.WeakKeyDictionary()


def default_store(state_dir: Path) -> Store:
    """The store ``AGENTHOST_STORE`` names, else SQLite at ``state_dir/state.db``."""
    url = os.environ.get(ENVIRONMENT, "").strip()
    if url:
        store = store_from_url(url)
        _ORIGINS[store] = url
        return store
    from agenthost.stores.sqlite import SQLiteStore

    return SQLiteStore(state_dir / "state.db")


def store_from_url(url: str) -> Store:
    """The store a URL names (see the module docstring); :class:`StoreError` if none."""
    scheme = url.partition(":")[0].lower()
    if scheme in ("postgresql", "postgres"):
        from agenthost.stores.postgres import PostgresStore

        dsn, extra = split_parameters(url, ("schema", "pool_size"))
        schema = extra.get("schema") or None
        if "pool_size" not in extra:
            return PostgresStore(dsn, schema=schema)
        size = extra["pool_size"]
        if not size.isdigit() or not 1 <= int(size) <= MAX_POOL_SIZE:
            raise StoreError(
                f"pool_size must be a whole number from 1 to {MAX_POOL_SIZE}, not {size!r}"
            )
        return PostgresStore(dsn, schema=schema, pool_size=int(size))
    if scheme == "sqlite":
        path = urlsplit(url).path
        if not path.startswith("/") or path == "/":
            raise StoreError(f"an SQLite store URL is sqlite:///PATH, not {describe(url)!r}")
        from agenthost.stores.sqlite import SQLiteStore

        # sqlite:///a.db is the relative a.db; sqlite:////tmp/a.db the absolute /tmp/a.db.
        return SQLiteStore(Path(path[1:]))
    if scheme == "memory":
        from agenthost.stores.memory import MemoryStore

        return MemoryStore()
    raise StoreError(
        f"unknown store URL {describe(url)!r}: use postgresql://..., sqlite:///PATH or memory:"
    )


def made_from(store: Store) -> str | None:
    """The ``AGENTHOST_STORE`` URL ``store`` was made from by :func:`default_store`, if any."""
    return _ORIGINS.get(store)


def split_parameters(url: str, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """The URL without agenthost's own query parameters ``names`` (libpq would refuse
    them), and their values."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {key: value for key, value in query if key in names}
    # %20 for a space, never "+": libpq does not read "+" as one (``options=-c%20a%3Db``).
    rest = urlencode([(k, v) for k, v in query if k not in names], quote_via=quote)
    return urlunsplit(parts._replace(query=rest)), ours


def describe(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
