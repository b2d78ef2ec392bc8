"""WAL checkpoints off the request path: a thread of their own, on a connection of their own.

SQLite in WAL mode appends every commit to the write-ahead log and, by default, copies the
log back into the database (a checkpoint, with an fsync) from inside whichever commit crosses
1,000 pages. That commit then takes milliseconds instead of tens of microseconds: on a store
that commits on the event loop, a stall for every request in flight, and the tail of the
latency. The store turns automatic checkpoints off on its connection and tells this object
of each commit; every ``every_commits`` commits (and at least every ``idle_seconds``) a
thread runs a ``PASSIVE`` checkpoint on its own connection, which never blocks the writer.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("agenthost.stores")

EVERY_COMMITS = 256
IDLE_SECONDS = 5.0


class WalCheckpointer:
    def __init__(
        self,
        path: Path,
        *,
        every_commits: int = EVERY_COMMITS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._path = path
        self._every = every_commits
        self._idle_seconds = idle_seconds
        self._commits = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        """One more commit on the store's connection (from any thread)."""
        self._commits += 1
        if self._thread is None:
            self._start()
        if self._commits >= self._every:
            self._commits = 0
            self._wake.set()

    def close(self) -> None:
        """Stop the thread after one last checkpoint; the object may be used again."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout=10.0)
        self._stopping = False

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"agenthost wal checkpoints {self._path.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 1000")
            while True:
                self._wake.wait(self._idle_seconds)
                self._wake.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # another process may hold the file: next time
                    log.debug("wal checkpoint skipped", extra={"error_type": type(exc).__name__})
                if self._stopping:
                    return
        finally:
            conn.close()
