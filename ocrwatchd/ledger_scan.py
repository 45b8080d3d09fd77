"""The ledger's folder-at-a-time reads and batch writes, for scans of large inboxes.

A scan of 100,000 or 1,000,000 files must not hold every row at once: it reads the rows
of one folder, compares them with that folder's listing, inserts the folder's new files in
one transaction, and forgets rows of files long gone in batches. Mixed into `Ledger`; the
SQL stays portable (equality on an indexed column, `IN` lists of bounded length, no
collation-dependent ranges), so a PostgreSQL backend can serve the same calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ocrwatchd.ledger_schema import ROW_COLUMNS, Row, folder_of
from ocrwatchd.lifecycle import TERMINAL

if TYPE_CHECKING:
    import sqlite_utils

BATCH = 500  # rows per statement list or transaction: bounded memory, few round trips


def _in(values: Iterable[Any]) -> tuple[str, list[Any]]:
    items = list(values)
    return "(" + ", ".join("?" for _ in items) + ")", items


class FolderQueries:
    """Scan-sized reads and writes (part of `Ledger`)."""

    db: sqlite_utils.Database
    _clock: Callable[[], float]

    if TYPE_CHECKING:

        def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[Row]: ...

        def _transaction(self) -> contextlib.AbstractContextManager[None]: ...

    def now(self) -> float:
        """The ledger's clock (wall time): the scale of `updated_at`."""
        return self._clock()

    def folder_rows(self, inbox: str, folder: str) -> dict[str, Row]:
        """relpath → row for the rows of one folder ("" for the top, else "a/b/")."""
        rows = self._rows(
            f"SELECT {ROW_COLUMNS} FROM files WHERE inbox = ? AND folder = ?", [inbox, folder]
        )
        return {row.relpath: row for row in rows}

    def folders(self, inbox: str) -> list[str]:
        """Every folder of the inbox holding at least one row."""
        cursor = self.db.execute("SELECT DISTINCT folder FROM files WHERE inbox = ?", [inbox])
        return [folder for (folder,) in cursor.fetchall()]

    def insert(self, inbox: str, relpath: str, state: str, **fields: Any) -> Row | None:
        """Create the row of a path never seen; None when it exists already."""
        return self._insert(inbox, relpath, state, self._clock(), fields)

    def insert_many(
        self, inbox: str, state: str, files: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[Row]:
        """Create the rows of paths never seen, `BATCH` per transaction: (relpath, fields)
        each. Returns the rows created; a path that has a row already is left out."""
        created: list[Row] = []
        for start in range(0, len(files), BATCH):
            now = self._clock()
            with self._transaction():
                for relpath, fields in files[start : start + BATCH]:
                    row = self._insert(inbox, relpath, state, now, fields)
                    if row is not None:
                        created.append(row)
        return created

    def _insert(
        self, inbox: str, relpath: str, state: str, now: float, fields: Mapping[str, Any]
    ) -> Row | None:
        values = {
            "state": state,
            "created_at": now,
            "updated_at": now,
            "folder": folder_of(relpath),
            **fields,
        }
        names = ", ".join(values)
        placeholders = ", ".join("?" for _ in values)
        cursor = self.db.execute(
            f"INSERT INTO files (inbox, relpath, {names}) VALUES (?, ?, {placeholders})"
            f" ON CONFLICT (inbox, relpath) DO NOTHING RETURNING {ROW_COLUMNS}",
            [inbox, relpath, *values.values()],
        )
        values_row = cursor.fetchone()
        return None if values_row is None else Row(*values_row)

    def forget(self, rows: Iterable[Row], *, older_than: float) -> int:
        """Delete these rows (and their stored results) if each is still finished (done,
        failed or ignored) and unchanged for `older_than` seconds.
        The caller has seen their files gone. Returns how many were deleted."""
        cutoff = self._clock() - older_than
        chosen = [row for row in rows if row.updated_at < cutoff]
        deleted = 0
        states_sql, states = _in(TERMINAL)
        for start in range(0, len(chosen), BATCH):
            batch = chosen[start : start + BATCH]
            ids_sql, ids = _in(row.id for row in batch)
            # A row moved since it was read has a newer updated_at: the guard skips it.
            guard = f"id IN {ids_sql} AND state IN {states_sql} AND updated_at < ?"
            params = [*ids, *states, cutoff]
            with self._transaction():
                self.db.execute(
                    f"DELETE FROM results WHERE file_id IN (SELECT id FROM files WHERE {guard})",
                    params,
                )
                cursor = self.db.execute(f"DELETE FROM files WHERE {guard}", params)
                deleted += cursor.rowcount
        return deleted
