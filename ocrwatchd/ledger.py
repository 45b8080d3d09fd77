"""The job ledger: one SQLite row per source file, in WAL mode, through sqlite-utils.

Every state change is one short transaction, committed before the side effect that
depends on it. Each thread opens its own `Ledger` (its own connection). Changes that
belong to one version of a file carry its `generation`: when the file changes on disk the
generation goes up, and any worker still holding the old generation finds its updates
refused (`transition` returns False) and drops its work.

States (the public names `jobs --json` shows are in `PUBLIC_STATE`):

    settling   seen, waiting for size and mtime to stay unchanged for settle_seconds
    pending    complete and queued (also: waiting for a retry at next_attempt_at)
    uploading  an upload to the API is under way (a crash here may repeat the upload)
    processing the remote job id is stored and is being polled, or a local worker has it
    fetched    the result is stored in this ledger; the outbox file is not written yet
    done       the result is in the outbox
    failed     permanently failed; `reason` says why
    ignored    never to be processed; `reason` says why
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from ocrwatchd.errors import StateError

SETTLING = "settling"
PENDING = "pending"
UPLOADING = "uploading"
PROCESSING = "processing"
FETCHED = "fetched"
DONE = "done"
FAILED = "failed"
IGNORED = "ignored"

STATES = (SETTLING, PENDING, UPLOADING, PROCESSING, FETCHED, DONE, FAILED, IGNORED)
PUBLIC_STATE = {
    SETTLING: PENDING,
    PENDING: PENDING,
    UPLOADING: UPLOADING,
    PROCESSING: PROCESSING,
    FETCHED: PROCESSING,
    DONE: DONE,
    FAILED: FAILED,
    IGNORED: IGNORED,
}
PUBLIC_STATES = ("pending", "uploading", "processing", "done", "failed", "ignored")
TERMINAL = (DONE, FAILED, IGNORED)
IN_FLIGHT = (UPLOADING, PROCESSING, FETCHED)

# Allowed moves within one generation. A changed file may start again from any state
# (`observe` bumps the generation and sets settling), which is not listed here.
TRANSITIONS: dict[str, frozenset[str]] = {
    SETTLING: frozenset({PENDING, DONE, IGNORED, FAILED}),
    PENDING: frozenset({UPLOADING, PROCESSING, FAILED, IGNORED}),
    UPLOADING: frozenset({PROCESSING, PENDING, FAILED, IGNORED}),
    PROCESSING: frozenset({FETCHED, PENDING, FAILED, IGNORED}),
    FETCHED: frozenset({DONE, FAILED}),
    DONE: frozenset(),
    FAILED: frozenset({PENDING}),
    IGNORED: frozenset(),
}

MIGRATIONS = sqlite_utils.Migrations("ocrwatchd")
STORAGE_RETRY_SECONDS = 5.0

log = logging.getLogger(__name__)


@contextlib.contextmanager
def storage_trouble(stop: threading.Event, who: str) -> Iterator[None]:
    """Survive ledger trouble (disk full, I/O error, a lock held too long) in a work
    loop: log it, wait, and let the loop go on; the ledger's state is unchanged by a
    failed transaction, so the work is simply tried again."""
    try:
        yield
    except sqlite3.Error as exc:
        log.error("%s: ledger error: %s; trying again in %.0f s", who, exc, STORAGE_RETRY_SECONDS)
        stop.wait(STORAGE_RETRY_SECONDS)


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


@dataclass(frozen=True)
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

    @property
    def public_state(self) -> str:
        return PUBLIC_STATE[self.state]


ROW_COLUMNS = ", ".join(Row.__dataclass_fields__)


class IllegalTransition(Exception):
    """A bug: code asked for a state move that `TRANSITIONS` does not allow."""


class Ledger:
    """A connection to the ledger file. Not shared between threads."""

    def __init__(self, path: Path, *, clock: Any = time.time) -> None:
        """Open (creating if needed) the ledger at `path` and apply migrations.

        Raises StateError when the file cannot be opened or created.
        """
        self.path = path
        self._clock = clock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: statements outside db.atomic() commit at once, and
            # db.atomic() issues the only BEGIN/COMMIT.
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives any process crash (kill -9); only power loss can
            # lose the newest transactions.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            MIGRATIONS.apply(self.db)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the ledger {path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[None]:
        """A transaction that takes the write lock at once (BEGIN IMMEDIATE), for a read
        followed by a write. In WAL mode a deferred transaction that has read cannot
        upgrade to a write once another connection has committed: SQLite answers
        SQLITE_BUSY ("database is locked") at once, without waiting the busy timeout."""
        if self.db.conn.in_transaction:
            with self.db.atomic():
                yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # -- reading -------------------------------------------------------------------

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        cursor = self.db.execute(sql, list(params))
        return [Row(*values) for values in cursor.fetchall()]

    def get(self, file_id: int) -> Row | None:
        rows = self._rows(f"SELECT {ROW_COLUMNS} FROM files WHERE id = ?", [file_id])
        return rows[0] if rows else None

    def find(self, inbox: str, relpath: str) -> Row | None:
        rows = self._rows(
            f"SELECT {ROW_COLUMNS} FROM files WHERE inbox = ? AND relpath = ?", [inbox, relpath]
        )
        return rows[0] if rows else None

    def rows(self, *, states: Iterable[str] = (), inbox: str | None = None) -> list[Row]:
        sql = f"SELECT {ROW_COLUMNS} FROM files WHERE 1=1"
        params: list[Any] = []
        states = list(states)
        if states:
            sql += f" AND state IN ({', '.join('?' for _ in states)})"
            params += states
        if inbox is not None:
            sql += " AND inbox = ?"
            params.append(inbox)
        return self._rows(sql + " ORDER BY inbox, relpath", params)

    def inbox_rows(self, inbox: str) -> dict[str, Row]:
        return {row.relpath: row for row in self.rows(inbox=inbox)}

    def due(
        self,
        state: str,
        *,
        limit: int,
        now: float | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> list[Row]:
        """Rows in `state` whose next_attempt_at has come, oldest first.

        `share` = (index, count) keeps the rows whose id % count == index, so `count`
        threads can split the work without claiming rows.
        """
        now = self._clock() if now is None else now
        index, count = share
        return self._rows(
            f"SELECT {ROW_COLUMNS} FROM files WHERE state = ? AND next_attempt_at <= ?"
            " AND id % ? = ? ORDER BY next_attempt_at, id LIMIT ?",
            [state, now, count, index, limit],
        )

    def next_due_at(self, state: str) -> float | None:
        value = self.db.execute(
            "SELECT MIN(next_attempt_at) FROM files WHERE state = ?", [state]
        ).fetchone()[0]
        return None if value is None else float(value)

    def count(self, states: Iterable[str], *, inboxes: Iterable[str] | None = None) -> int:
        """Rows in `states` (of these inboxes only, if given)."""
        params = list(states)
        sql = f"SELECT COUNT(*) FROM files WHERE state IN ({', '.join('?' for _ in params)})"
        if inboxes is not None:
            names = list(inboxes)
            sql += f" AND inbox IN ({', '.join('?' for _ in names)})"
            params += names
        return int(self.db.execute(sql, params).fetchone()[0])

    def finished_since(self, since: float) -> tuple[int, int]:
        """(done, failed) rows that reached that state at or after `since`."""
        done, failed = self.db.execute(
            "SELECT COALESCE(SUM(state = ?), 0), COALESCE(SUM(state = ?), 0) FROM files"
            " WHERE updated_at >= ? AND state IN (?, ?)",
            [DONE, FAILED, since, DONE, FAILED],
        ).fetchone()
        return int(done), int(failed)

    def counts_by_inbox(self) -> dict[str, dict[str, int]]:
        """inbox → public state → count (every public state present, zeros included)."""
        result: dict[str, dict[str, int]] = {}
        for inbox, state, number in self.db.execute(
            "SELECT inbox, state, COUNT(*) FROM files GROUP BY inbox, state"
        ).fetchall():
            counts = result.setdefault(inbox, dict.fromkeys(PUBLIC_STATES, 0))
            counts[PUBLIC_STATE[state]] += number
        return result

    def oldest_waiting(self) -> dict[str, float]:
        """inbox → created_at of its oldest file not yet finished."""
        waiting = [SETTLING, PENDING, *IN_FLIGHT]
        return {
            inbox: float(created)
            for inbox, created in self.db.execute(
                f"SELECT inbox, MIN(created_at) FROM files WHERE state IN "
                f"({', '.join('?' for _ in waiting)}) GROUP BY inbox",
                waiting,
            ).fetchall()
        }

    def done_with_hash(self, inbox: str, sha256: str, exclude_id: int) -> Row | None:
        rows = self._rows(
            f"SELECT {ROW_COLUMNS} FROM files WHERE inbox = ? AND sha256 = ? AND state = ?"
            " AND id != ? AND result_path IS NOT NULL ORDER BY id LIMIT 1",
            [inbox, sha256, DONE, exclude_id],
        )
        return rows[0] if rows else None

    def result_body(self, file_id: int, generation: int) -> bytes | None:
        row = self.db.execute(
            "SELECT body FROM results WHERE file_id = ? AND generation = ?", [file_id, generation]
        ).fetchone()
        return None if row is None else bytes(row[0])

    # -- writing -------------------------------------------------------------------

    def observe(self, inbox: str, relpath: str, size: int, mtime_ns: int) -> tuple[Row, bool]:
        """Record that a file is on disk with this size and mtime; return its row and
        whether it is new or changed.

        A file never seen, or seen with another size or mtime, starts (again) as settling
        under a new generation.
        """
        now = self._clock()
        with self._write_transaction():
            row = self.find(inbox, relpath)
            if row is not None and row.size == size and row.mtime_ns == mtime_ns:
                return row, False
            if row is None:
                cursor = self.db.execute(
                    "INSERT INTO files (inbox, relpath, size, mtime_ns, state, created_at,"
                    f" updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {ROW_COLUMNS}",
                    [inbox, relpath, size, mtime_ns, SETTLING, now, now],
                )
            else:
                cursor = self.db.execute(
                    "UPDATE files SET size = ?, mtime_ns = ?, sha256 = NULL, state = ?,"
                    " generation = generation + 1, reason = NULL, job_id = NULL,"
                    " attempts = 0, next_attempt_at = 0, enqueued_at = NULL,"
                    " last_error = NULL, duplicate_of = NULL, created_at = ?, updated_at = ?"
                    f" WHERE id = ? RETURNING {ROW_COLUMNS}",
                    [size, mtime_ns, SETTLING, now, now, row.id],
                )
            (values,) = cursor.fetchall()
            if row is not None and row.state == FETCHED:
                self.db.execute("DELETE FROM results WHERE file_id = ?", [row.id])
        return Row(*values), True

    def ignore(self, inbox: str, relpath: str, reason: str) -> None:
        """Record a file that will never be processed (unsafe type, not included)."""
        now = self._clock()
        with self._write_transaction():
            row = self.find(inbox, relpath)
            if row is None:
                self.db.execute(
                    "INSERT INTO files (inbox, relpath, state, reason, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [inbox, relpath, IGNORED, reason, now, now],
                )
            elif row.state != IGNORED or row.reason != reason:
                self.db.execute(
                    "UPDATE files SET state = ?, reason = ?, generation = generation + 1,"
                    " size = NULL, mtime_ns = NULL, job_id = NULL, updated_at = ?"
                    " WHERE id = ?",
                    [IGNORED, reason, now, row.id],
                )

    def transition(self, row: Row, to_state: str, **fields: Any) -> bool:
        """Move `row` to `to_state`, setting `fields`, if it is still in the state and
        generation it was read with. Returns False (and changes nothing) when another
        actor changed the row first.

        Raises IllegalTransition for a move `TRANSITIONS` does not allow.
        """
        current = row.state
        if to_state not in TRANSITIONS[current]:
            raise IllegalTransition(f"{current} → {to_state} for {row.inbox}:{row.relpath}")
        fields["state"] = to_state
        fields["updated_at"] = self._clock()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE files SET {assignments} WHERE id = ? AND generation = ? AND state = ?"
        params = [*fields.values(), row.id, row.generation, current]
        if current != FETCHED:  # one statement: its own transaction
            return bool(self.db.execute(sql, params).rowcount == 1)
        # Leaving fetched: the stored result goes in the same transaction.
        with self.db.atomic():
            changed = self.db.execute(sql, params).rowcount == 1
            if changed:
                self.db.execute("DELETE FROM results WHERE file_id = ?", [row.id])
        return changed

    def claim(
        self, state: str, to_state: str, *, engine: str, now: float | None = None, **fields: Any
    ) -> Row | None:
        """Atomically take the oldest due row in `state`, moving it to `to_state`, counting
        one more attempt and setting `fields`.

        One statement, so two workers (or two hosts on a shared ledger later) never claim
        the same row.
        """
        if to_state not in TRANSITIONS[state]:
            raise IllegalTransition(f"{state} → {to_state}")
        now = self._clock() if now is None else now
        extra = "".join(f", {name} = ?" for name in fields)
        cursor = self.db.execute(
            f"UPDATE files SET state = ?, engine = ?, attempts = attempts + 1, updated_at = ?"
            f"{extra} WHERE id = (SELECT id FROM files WHERE state = ? AND next_attempt_at <= ?"
            f" ORDER BY next_attempt_at, id LIMIT 1) RETURNING {ROW_COLUMNS}",
            [to_state, engine, now, *fields.values(), state, now],
        )
        values = cursor.fetchone()
        return None if values is None else Row(*values)

    def store_result(self, row: Row, body: bytes) -> bool:
        """Keep a fetched result durably and move the row to fetched, in one transaction."""
        now = self._clock()
        with self.db.atomic():
            cursor = self.db.execute(
                "UPDATE files SET state = ?, updated_at = ? WHERE id = ? AND generation = ?"
                " AND state = ?",
                [FETCHED, now, row.id, row.generation, PROCESSING],
            )
            if cursor.rowcount != 1:
                return False
            self.db.execute(
                "INSERT OR REPLACE INTO results (file_id, generation, body) VALUES (?, ?, ?)",
                [row.id, row.generation, body],
            )
        return True

    def defer(self, row: Row, *, until: float, error: str | None) -> None:
        """Leave `row` in its state but try it again no sooner than `until`."""
        self.db.execute(
            "UPDATE files SET next_attempt_at = ?, last_error = ?, updated_at = ?"
            " WHERE id = ? AND generation = ?",
            [until, error, self._clock(), row.id, row.generation],
        )

    def forget_source(self, row: Row) -> None:
        """The source was deleted or archived: a new file at that path is a new file."""
        self.db.execute(
            "UPDATE files SET size = NULL, mtime_ns = NULL WHERE id = ? AND generation = ?",
            [row.id, row.generation],
        )

    def recover_after_restart(self, *, engine: str) -> int:
        """Put interrupted work back in the queue; returns how many rows moved.

        Uploads cut short go back to pending (the one upload that may repeat). Jobs with a
        remote id keep polling when the engine is still mindee; local work restarts.
        """
        now = self._clock()
        with self.db.atomic():
            moved = self.db.execute(
                "UPDATE files SET state = ?, next_attempt_at = ?, updated_at = ? WHERE state = ?",
                [PENDING, now, now, UPLOADING],
            ).rowcount
            if engine == "mindee":
                moved += self.db.execute(
                    "UPDATE files SET state = ?, next_attempt_at = ?, updated_at = ?"
                    " WHERE state = ? AND job_id IS NULL",
                    [PENDING, now, now, PROCESSING],
                ).rowcount
            else:
                moved += self.db.execute(
                    "UPDATE files SET state = ?, job_id = NULL, next_attempt_at = ?,"
                    " updated_at = ? WHERE state = ?",
                    [PENDING, now, now, PROCESSING],
                ).rowcount
        return moved

    def retry_failed(self, ids: Iterable[int] | None = None) -> int:
        """Failed rows (all, or these ids) go back to pending with fresh attempts."""
        now = self._clock()
        sql = (
            "UPDATE files SET state = ?, reason = NULL, last_error = NULL, attempts = 0,"
            " next_attempt_at = ?, job_id = NULL, updated_at = ? WHERE state = ?"
        )
        params: list[Any] = [PENDING, now, now, FAILED]
        if ids is not None:
            id_list = list(ids)
            if not id_list:
                return 0
            sql += f" AND id IN ({', '.join('?' for _ in id_list)})"
            params += id_list
        return int(self.db.execute(sql, params).rowcount)

    # -- inbox status --------------------------------------------------------------

    def set_inbox(self, name: str, *, path: str, watch: str, available: bool) -> None:
        self.db.execute(
            "INSERT INTO inboxes (name, path, watch, available, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET path = excluded.path,"
            " watch = excluded.watch, available = excluded.available,"
            " updated_at = excluded.updated_at",
            [name, path, watch, int(available), self._clock()],
        )

    def set_paused(self, reason: str | None) -> None:
        """Pause (or with None, resume) every inbox's remote work, with a reason."""
        self.db.execute("UPDATE inboxes SET paused_reason = ?", [reason])

    def note_error(self, inbox: str, message: str) -> None:
        now = self._clock()
        self.db.execute(
            "UPDATE inboxes SET last_error = ?, last_error_at = ?, updated_at = ? WHERE name = ?",
            [message, now, now, inbox],
        )

    def inbox_info(self) -> dict[str, dict[str, Any]]:
        cursor = self.db.execute(
            "SELECT name, path, watch, available, paused_reason, last_error, last_error_at"
            " FROM inboxes"
        )
        names = [column[0] for column in cursor.description]
        return {values[0]: dict(zip(names, values, strict=True)) for values in cursor}
