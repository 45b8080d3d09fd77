"""The job ledger: one row per source file, in SQLite (WAL mode) through sqlite-utils.

The ledger keeps the SQL; what the states mean and which moves are allowed is
`ocrwatchd.lifecycle`'s. Every change is one short statement or transaction, committed
before the side effect that depends on it. Each thread opens its own `Ledger` (its own
connection). Changes that belong to one version of a file carry its `generation`: when the
file changes on disk the generation goes up, and a worker still holding the old
generation finds its `move` refused and drops its work.

The interface is written for a second backend (a shared PostgreSQL ledger for several
hosts): claims are single conditional UPDATEs that `FOR UPDATE SKIP LOCKED` can serve,
every statement is portable SQL, and `tests/test_ledger_contract.py` runs against any
backend.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

from ocrwatchd.errors import StateError
from ocrwatchd.ledger_errors import storage_trouble, temporary
from ocrwatchd.ledger_scan import FolderQueries, _in
from ocrwatchd.ledger_schema import FIELDS, MIGRATIONS, ROW_COLUMNS, Row
from ocrwatchd.lifecycle import PUBLIC_STATES, WAITING, State

__all__ = ["Ledger", "Row", "storage_trouble", "temporary"]


class Ledger(FolderQueries):
    """A connection to the ledger file. Not shared between threads."""

    def __init__(self, path: Path, *, clock: Any = time.time) -> None:
        """Open (creating if needed) the ledger at `path` and apply migrations. The file
        is private to its owner: it holds result bodies.

        Raises StateError when the file cannot be opened or created.
        """
        self.path = path
        self._clock = clock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            # isolation_level=None: statements outside a transaction commit at once, and
            # _transaction() issues the only BEGIN/COMMIT.
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
        self._data_version: int | None = None

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A transaction that takes the write lock at once (BEGIN IMMEDIATE): in WAL mode a
        deferred transaction that has read cannot upgrade to a write once another
        connection has committed (SQLITE_BUSY at once, without the busy timeout)."""
        if self.db.conn.in_transaction:
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
            placeholders, values = _in(states)
            sql += f" AND state IN {placeholders}"
            params += values
        if inbox is not None:
            sql += " AND inbox = ?"
            params.append(inbox)
        return self._rows(sql + " ORDER BY inbox, relpath", params)

    def rows_with_jobs(self, job_ids: Iterable[str]) -> list[Row]:
        """The rows following these job ids (a webhook or an engine had news of them)."""
        placeholders, values = _in(job_ids)
        if not values:
            return []
        return self._rows(
            f"SELECT {ROW_COLUMNS} FROM files WHERE job_id IN {placeholders} AND state = ?",
            [*values, State.PROCESSING],
        )

    def due(
        self,
        state: str,
        *,
        limit: int,
        inboxes: Iterable[str],
        engine: str | None = None,
        now: float | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> list[Row]:
        """Rows of these inboxes in `state` whose next_attempt_at has come, oldest first
        (of this engine only, if given).

        `share` = (index, count) keeps the rows whose id % count == index, so `count`
        threads can split the work without claiming rows.
        """
        now = self._clock() if now is None else now
        index, count = share
        placeholders, names = _in(inboxes)
        sql = (
            f"SELECT {ROW_COLUMNS} FROM files WHERE state = ? AND next_attempt_at <= ?"
            f" AND inbox IN {placeholders} AND id % ? = ?"
        )
        params: list[Any] = [state, now, *names, count, index]
        if engine is not None:
            sql += " AND engine = ?"
            params.append(engine)
        return self._rows(sql + " ORDER BY next_attempt_at, id LIMIT ?", [*params, limit])

    def next_due_at(
        self,
        state: str,
        *,
        inboxes: Iterable[str],
        engine: str | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> float | None:
        """When the soonest row of these inboxes in `state` (of this engine and share, as
        `due`) is due; None when there is no such row."""
        placeholders, names = _in(inboxes)
        index, count = share
        sql = (
            f"SELECT MIN(next_attempt_at) FROM files WHERE state = ? AND inbox IN {placeholders}"
            " AND id % ? = ?"
        )
        params: list[Any] = [state, *names, count, index]
        if engine is not None:
            sql += " AND engine = ?"
            params.append(engine)
        value = self.db.execute(sql, params).fetchone()[0]
        return None if value is None else float(value)

    def count(
        self,
        states: Iterable[str],
        *,
        inboxes: Iterable[str] | None = None,
        engine: str | None = None,
    ) -> int:
        """Rows in `states` (of these inboxes and this engine only, if given)."""
        placeholders, params = _in(states)
        sql = f"SELECT COUNT(*) FROM files WHERE state IN {placeholders}"
        if inboxes is not None:
            names_sql, names = _in(inboxes)
            sql += f" AND inbox IN {names_sql}"
            params += names
        if engine is not None:
            sql += " AND engine = ?"
            params.append(engine)
        return int(self.db.execute(sql, params).fetchone()[0])

    def finished_since(self, since: float) -> tuple[int, int]:
        """(done, failed) rows that reached that state at or after `since`."""
        done, failed = self.db.execute(
            "SELECT COALESCE(SUM(CASE WHEN state = ? THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN state = ? THEN 1 ELSE 0 END), 0) FROM files"
            " WHERE updated_at >= ? AND state IN (?, ?)",
            [State.DONE, State.FAILED, since, State.DONE, State.FAILED],
        ).fetchone()
        return int(done), int(failed)

    def counts_by_inbox(self) -> dict[str, dict[str, int]]:
        """inbox → public state → count (every public state present, zeros included)."""
        result: dict[str, dict[str, int]] = {}
        for inbox, state, number in self.db.execute(
            "SELECT inbox, state, COUNT(*) FROM files GROUP BY inbox, state"
        ).fetchall():
            counts = result.setdefault(inbox, dict.fromkeys(PUBLIC_STATES, 0))
            counts[State(state).public] += number
        return result

    def oldest_waiting(self) -> dict[str, float]:
        """inbox → created_at of its oldest file not yet finished."""
        placeholders, waiting = _in(WAITING)
        return {
            inbox: float(created)
            for inbox, created in self.db.execute(
                f"SELECT inbox, MIN(created_at) FROM files WHERE state IN {placeholders}"
                " GROUP BY inbox",
                waiting,
            ).fetchall()
        }

    def done_with_hash(self, inbox: str, sha256: str, exclude_id: int) -> Row | None:
        rows = self._rows(
            f"SELECT {ROW_COLUMNS} FROM files WHERE inbox = ? AND sha256 = ? AND state = ?"
            " AND id != ? AND result_path IS NOT NULL ORDER BY id LIMIT 1",
            [inbox, sha256, State.DONE, exclude_id],
        )
        return rows[0] if rows else None

    def result_body(self, file_id: int, generation: int) -> bytes | None:
        row = self.db.execute(
            "SELECT body FROM results WHERE file_id = ? AND generation = ?", [file_id, generation]
        ).fetchone()
        return None if row is None else bytes(row[0])

    def changed(self) -> bool:
        """Whether any connection committed since the last call (True the first time).
        Cheap: lets an idle daemon skip work when nothing happened."""
        version = int(self.db.execute("PRAGMA data_version").fetchone()[0])
        changed, self._data_version = version != self._data_version, version
        return changed

    # -- writing -------------------------------------------------------------------

    def move(
        self, row: Row, to_state: str, *, new_generation: bool = False, **fields: Any
    ) -> Row | None:
        """The one guarded move: set `to_state` and `fields` if the row is still in the
        state and generation it was read with. Returns the row as moved, or None (nothing
        changed) when another actor moved it first.

        `result=<bytes>` stores a result body with the move, in the same transaction;
        leaving fetched drops the stored body. `new_generation` starts a new version of
        the file. Which moves are allowed is the lifecycle's business, not checked here.
        """
        body = fields.pop("result", None)
        unknown = set(fields) - FIELDS
        if unknown:
            raise ValueError(f"unknown ledger fields {sorted(unknown)}")
        fields["state"] = to_state
        fields["updated_at"] = self._clock()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        if new_generation:
            assignments += ", generation = generation + 1"
        sql = (
            f"UPDATE files SET {assignments} WHERE id = ? AND generation = ? AND state = ?"
            f" RETURNING {ROW_COLUMNS}"
        )
        params = [*fields.values(), row.id, row.generation, row.state]
        if body is None and row.state != State.FETCHED:
            values = self.db.execute(sql, params).fetchone()  # one statement: atomic
            return None if values is None else Row(*values)
        with self._transaction():
            values = self.db.execute(sql, params).fetchone()
            if values is None:
                return None
            moved = Row(*values)
            self.db.execute("DELETE FROM results WHERE file_id = ?", [row.id])
            if body is not None:
                self.db.execute(
                    "INSERT INTO results (file_id, generation, body) VALUES (?, ?, ?)",
                    [row.id, moved.generation, body],
                )
        return moved

    def claim(
        self,
        state: str,
        to_state: str,
        *,
        inboxes: Iterable[str],
        engine: str,
        now: float | None = None,
    ) -> Row | None:
        """Atomically take the oldest due row of these inboxes in `state`, moving it to
        `to_state` for `engine` and counting one more attempt.

        One conditional statement, so two workers (or two hosts on a shared ledger, with
        `FOR UPDATE SKIP LOCKED` in the subquery) never claim the same row.
        """
        now = self._clock() if now is None else now
        placeholders, names = _in(inboxes)
        cursor = self.db.execute(
            "UPDATE files SET state = ?, engine = ?, attempts = attempts + 1, updated_at = ?"
            " WHERE id = (SELECT id FROM files WHERE state = ? AND next_attempt_at <= ?"
            f" AND inbox IN {placeholders} ORDER BY next_attempt_at, id LIMIT 1)"
            f" AND state = ? RETURNING {ROW_COLUMNS}",
            [to_state, engine, now, state, now, *names, state],
        )
        values = cursor.fetchone()
        return None if values is None else Row(*values)

    def defer(
        self, row: Row, *, until: float, error: str | None, write_attempt: bool = False
    ) -> bool:
        """Leave `row` in its state but try it again no sooner than `until` (counting one
        more outbox write attempt, with `write_attempt`), if it is still as it was read."""
        counted = ", write_attempts = write_attempts + 1" if write_attempt else ""
        cursor = self.db.execute(
            f"UPDATE files SET next_attempt_at = ?, last_error = ?, updated_at = ?{counted}"
            " WHERE id = ? AND generation = ? AND state = ?",
            [until, error, self._clock(), row.id, row.generation, row.state],
        )
        return bool(cursor.rowcount == 1)

    def forget_source(self, row: Row, *, moved_to: str | None = None) -> None:
        """The source was deleted or moved away (to `moved_to`, kept in result_path for a
        failed file): a new file at that path is a new file."""
        self.db.execute(
            "UPDATE files SET size = NULL, mtime_ns = NULL, dev = NULL, inode = NULL,"
            " ctime_ns = NULL, result_path = COALESCE(?, result_path)"
            " WHERE id = ? AND generation = ?",
            [moved_to, row.id, row.generation],
        )

    # -- inbox status --------------------------------------------------------------

    def set_inbox(self, name: str, *, path: str, watch: str, available: bool) -> None:
        self.db.execute(
            "INSERT INTO inboxes (name, path, watch, available, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET path = excluded.path,"
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
