"""Ledger trouble in the work loops: what passes (busy, locked, disk full, I/O) is retried;
anything else is a bug or a damaged file and stops the daemon."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator

STORAGE_RETRY_SECONDS = 5.0
# Trouble that passes (another writer, a full disk being cleaned, an I/O hiccup): retried.
# Anything else (a bad statement, a corrupt file) is a bug or worse, and stops the daemon.
_TEMPORARY = frozenset(
    {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_PROTOCOL"}
)

log = logging.getLogger("ocrwatchd.ledger")


def temporary(exc: sqlite3.Error) -> bool:
    """Whether a ledger error may pass by itself (busy, locked, disk full, I/O)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return any(name.startswith(prefix) for prefix in _TEMPORARY)


@contextlib.contextmanager
def storage_trouble(stop: threading.Event, who: str) -> Iterator[None]:
    """Survive passing ledger trouble (disk full, I/O error, a lock held too long) in a
    work loop: log it, wait, and let the loop go on; a failed transaction changed nothing,
    so the work is simply tried again. Other SQLite errors are bugs: they go up and stop
    the daemon (exit 70) rather than being retried forever."""
    try:
        yield
    except sqlite3.Error as exc:
        if not temporary(exc):
            raise
        log.error("%s: ledger error: %s; trying again in %.0f s", who, exc, STORAGE_RETRY_SECONDS)
        stop.wait(STORAGE_RETRY_SECONDS)
