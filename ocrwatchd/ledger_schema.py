"""The ledger's tables (as sqlite-utils migrations) and its row type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlite_utils

MIGRATIONS = sqlite_utils.Migrations("ocrwatchd")


@MIGRATIONS()
def m001_files(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            inbox TEXT NOT NULL,
            relpath TEXT NOT NULL,
            size INTEGER,
            mtime_ns INTEGER,
            sha256 TEXT,
            generation INTEGER NOT NULL DEFAULT 1,
            state TEXT NOT NULL,
            reason TEXT,
            job_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            enqueued_at REAL,
            last_error TEXT,
            result_path TEXT,
            duplicate_of INTEGER,
            engine TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (inbox, relpath)
        )
        """
    )
    db.execute("CREATE INDEX files_state ON files (state, next_attempt_at)")
    db.execute("CREATE INDEX files_sha ON files (inbox, sha256)")
    db.execute(
        """
        CREATE TABLE results (
            file_id INTEGER PRIMARY KEY REFERENCES files(id),
            generation INTEGER NOT NULL,
            body BLOB NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE inboxes (
            name TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            watch TEXT,
            available INTEGER NOT NULL DEFAULT 1,
            paused_reason TEXT,
            last_error TEXT,
            last_error_at REAL,
            updated_at REAL NOT NULL
        )
        """
    )


@MIGRATIONS()
def m002_identity(db: sqlite_utils.Database) -> None:
    """Device, inode and ctime tell a replaced file from the same one (rsync --checksum and
    cp -p keep size and mtime); outbox write attempts get their own count."""
    for column in ("dev", "inode", "ctime_ns"):
        db.execute(f"ALTER TABLE files ADD COLUMN {column} INTEGER")
    db.execute("ALTER TABLE files ADD COLUMN write_attempts INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX files_job ON files (job_id)")


@MIGRATIONS()
def m003_folder(db: sqlite_utils.Database) -> None:
    """Each row's folder (its relpath up to the last "/", "" at the top), indexed, so a
    scan reads the rows of one folder at a time instead of the whole inbox."""
    db.execute("ALTER TABLE files ADD COLUMN folder TEXT")
    # rtrim strips every character of the name but "/" from the right: what is left is
    # the folder with its trailing "/".
    db.execute("UPDATE files SET folder = rtrim(relpath, replace(relpath, '/', ''))")
    db.execute("CREATE INDEX files_folder ON files (inbox, folder)")


def folder_of(relpath: str) -> str:
    """The folder part of a relpath, as the ledger stores it: "a/b/" or "" at the top."""
    return relpath[: relpath.rfind("/") + 1]


@dataclass(frozen=True, slots=True)  # slots: a scan may hold a million of them
class Row:
    """One ledger row, as read."""

    id: int
    inbox: str
    relpath: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    generation: int
    state: str
    reason: str | None
    job_id: str | None
    attempts: int
    next_attempt_at: float
    enqueued_at: float | None
    last_error: str | None
    result_path: str | None
    duplicate_of: int | None
    engine: str | None
    created_at: float
    updated_at: float
    dev: int | None = None
    inode: int | None = None
    ctime_ns: int | None = None
    write_attempts: int = 0

    @property
    def public_state(self) -> str:
        from ocrwatchd.lifecycle import State  # the lifecycle uses this module's rows

        return State(self.state).public

    def same_identity(self, identity: Mapping[str, int | None]) -> bool:
        """Whether a file with `identity` is the version this row describes: same size
        and mtime and, where both sides know them, same inode and ctime (a replacement
        by rsync or `cp -p` keeps size and mtime). The device is not compared: a share
        mounted again may get another device number for the very same files."""
        for name in ("size", "mtime_ns"):
            if getattr(self, name) != identity.get(name):
                return False
        for name in ("inode", "ctime_ns"):
            mine, theirs = getattr(self, name), identity.get(name)
            if mine is not None and theirs is not None and mine != theirs:
                return False
        return True


ROW_COLUMNS = ", ".join(Row.__dataclass_fields__)
FIELDS = frozenset(Row.__dataclass_fields__) - {"id", "inbox", "relpath", "state"}


_NO_IDENTITY = {"size": None, "mtime_ns": None, "dev": None, "inode": None, "ctime_ns": None}


def fresh_version(identity: Mapping[str, int | None], now: float) -> dict[str, Any]:
    """The fields of a new version of a file: its identity, nothing of the old one's work."""
    return {
        **_NO_IDENTITY,
        **identity,
        "sha256": None,
        "reason": None,
        "job_id": None,
        "attempts": 0,
        "write_attempts": 0,
        "next_attempt_at": 0,
        "enqueued_at": None,
        "last_error": None,
        "duplicate_of": None,
        "result_path": None,
        "created_at": now,
    }
