"""The SQLite ledger file's own promises: WAL mode, migrations applied once, a file
private to its owner (it holds OCR results), a clear error when it cannot be opened."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from ocrwatchd.errors import StateError
from ocrwatchd.ledger import Ledger
from ocrwatchd.ledger_schema import MIGRATIONS
from ocrwatchd.lifecycle import State
from tests.lifecycle_support import put


def test_sqlite_ledger_is_in_wal_mode(tmp_path):
    Ledger(tmp_path / "ledger.db").close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_migrations_are_applied_once(tmp_path):
    path = tmp_path / "ledger.db"
    first = Ledger(path)
    row = put(first, State.DONE, result_path="/o/a")
    first.close()
    for _ in range(2):
        again = Ledger(path)
        assert again.get(row.id) == row
        again.close()
    conn = sqlite3.connect(path)
    try:
        names = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid",
            [MIGRATIONS.name],
        ).fetchall()
    finally:
        conn.close()
    assert [name for (name,) in names] == ["m001_files", "m002_identity", "m003_folder"]


def test_sqlite_ledger_files_are_private_even_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        ledger = Ledger(tmp_path / "state" / "ledger.db")
        put(ledger, State.FETCHED, result=b"secret OCR text")
        for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
            path = tmp_path / "state" / name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        ledger.close()
    finally:
        os.umask(old)


def test_sqlite_ledger_that_cannot_be_opened_is_a_state_error(tmp_path):
    (tmp_path / "ledger.db").mkdir()
    with pytest.raises(StateError, match="cannot open the ledger"):
        Ledger(tmp_path / "ledger.db")
