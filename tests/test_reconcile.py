"""Scans of large inboxes, one folder at a time, and forgetting rows of files long gone:
a real ledger, real folders and a manual clock (no daemon, no waiting)."""

from __future__ import annotations

import os
import queue
import shutil
import sqlite3
from pathlib import Path

import pytest

from ocrwatchd.config import load_config
from ocrwatchd.intake import Intake
from ocrwatchd.ledger import Ledger
from ocrwatchd.lifecycle import Failed, Lifecycle, Requeued, State
from tests.helpers import inbox_settings, write_config

DAY = 86400.0
FORGET_AFTER = 30 * DAY


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Scanner:
    """An intake over one inbox whose ledger and lifecycle run on a manual clock."""

    def __init__(self, tmp_path: Path, **config: object) -> None:
        settings = {
            "state_dir": str(tmp_path / "state"),
            "engine": "local",
            "inboxes": [inbox_settings(tmp_path, exclude=["*.docx"])],
            **config,
        }
        self.config = load_config(write_config(tmp_path, settings))
        self.inbox = self.config.inboxes[0]
        self.clock = Clock()
        self.ledger = Ledger(self.config.state_dir / "ledger.db", clock=self.clock)
        inboxes = {self.inbox.name: self.inbox}
        self.lifecycle = Lifecycle(self.ledger, inboxes, clock=self.clock)
        self.intake = Intake(
            self.config,
            self.lifecycle,
            queue.Queue(),
            on_queued=lambda: None,
            modes={self.inbox.name: "poll"},
        )

    def put(self, relpath: str, content: bytes = b"\xff\xd8\xff scan") -> Path:
        path = self.inbox.path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def relpaths(self) -> list[str]:
        return [row.relpath for row in self.ledger.rows()]

    def fail_all_settling(self) -> None:
        """Finish every settling row (failed is a finished state reached from settling)."""
        for row in self.ledger.rows(states=[State.SETTLING]):
            self.intake.candidates.clear()
            self.lifecycle.apply(row, Failed("not a scan"))


@pytest.fixture
def scanner(tmp_path: Path):
    made = Scanner(tmp_path)
    yield made
    made.ledger.close()


def test_a_scan_records_every_file_of_every_folder_as_settling(scanner):
    expected = []
    for folder in range(3):
        for index in range(700):  # more than one insert batch per folder
            relpath = f"f{folder}/scan-{index:04d}.jpg"
            scanner.put(relpath)
            expected.append(relpath)
    scanner.put("top.jpg")
    scanner.put("notes.docx")
    assert scanner.intake.scan(scanner.inbox) is True
    rows = scanner.ledger.rows()
    states = {row.relpath: row.state for row in rows}
    assert sorted(states) == sorted([*expected, "top.jpg", "notes.docx"])
    assert states["notes.docx"] == State.IGNORED
    assert {states[relpath] for relpath in [*expected, "top.jpg"]} == {State.SETTLING}
    assert len(scanner.intake.candidates) == len(expected) + 1
    assert sorted(scanner.ledger.folders(scanner.inbox.name)) == ["", "f0/", "f1/", "f2/"]


def test_a_rescan_of_unchanged_files_writes_nothing(scanner):
    for index in range(50):
        scanner.put(f"a/{index}.jpg")
    scanner.intake.scan(scanner.inbox)
    scanner.fail_all_settling()
    before = {row.relpath: row for row in scanner.ledger.rows()}
    scanner.ledger.changed()
    scanner.clock.now += DAY
    scanner.intake.scan(scanner.inbox)
    assert not scanner.ledger.changed()
    assert {row.relpath: row for row in scanner.ledger.rows()} == before


def test_a_changed_file_found_by_a_rescan_settles_again(scanner):
    path = scanner.put("a/scan.jpg")
    scanner.intake.scan(scanner.inbox)
    scanner.fail_all_settling()
    path.write_bytes(b"\xff\xd8\xff a longer, different scan")
    scanner.intake.scan(scanner.inbox)
    row = scanner.ledger.find(scanner.inbox.name, "a/scan.jpg")
    assert row.state == State.SETTLING and row.generation == 2


def test_files_removed_while_settling_are_listed_as_removed_even_with_their_folder(scanner):
    scanner.put("kept/a.jpg")
    scanner.put("kept/b.jpg")
    scanner.put("gone/c.jpg")
    scanner.intake.scan(scanner.inbox)
    (scanner.inbox.path / "kept" / "b.jpg").unlink()
    shutil.rmtree(scanner.inbox.path / "gone")
    scanner.intake.scan(scanner.inbox)
    states = {row.relpath: row.state for row in scanner.ledger.rows()}
    assert states == {"kept/a.jpg": State.SETTLING, "gone/c.jpg": State.IGNORED,
                      "kept/b.jpg": State.IGNORED}  # fmt: skip
    assert list(scanner.intake.candidates) == [(scanner.inbox.name, "kept/a.jpg")]


def test_rows_of_finished_files_gone_longer_than_forget_after_are_forgotten(scanner):
    for relpath in ("a/present.jpg", "a/removed.jpg", "b/removed.jpg", "notes.docx"):
        scanner.put(relpath)
    scanner.intake.scan(scanner.inbox)
    scanner.fail_all_settling()
    (scanner.inbox.path / "a" / "removed.jpg").unlink()
    shutil.rmtree(scanner.inbox.path / "b")

    scanner.clock.now += FORGET_AFTER - DAY  # gone, but not for long enough yet
    scanner.intake.scan(scanner.inbox)
    assert len(scanner.relpaths()) == 4

    scanner.clock.now += 2 * DAY
    scanner.intake.scan(scanner.inbox)
    # Present files keep their rows however old: the failed one and the ignored one.
    assert scanner.relpaths() == ["a/present.jpg", "notes.docx"]
    assert scanner.ledger.find(scanner.inbox.name, "a/present.jpg").state == State.FAILED


def test_a_row_changed_recently_is_not_forgotten(scanner):
    scanner.put("a/old.jpg")
    scanner.put("a/recent.jpg")
    scanner.intake.scan(scanner.inbox)
    scanner.fail_all_settling()
    scanner.clock.now += FORGET_AFTER
    # Retried by an operator (`ocrwatchd retry`) and failed again: recent news.
    recent = scanner.ledger.find(scanner.inbox.name, "a/recent.jpg")
    assert scanner.lifecycle.apply(recent, Requeued())
    requeued = scanner.ledger.find(scanner.inbox.name, "a/recent.jpg")
    assert scanner.lifecycle.apply(requeued, Failed("failed again"))
    for name in ("old.jpg", "recent.jpg"):
        (scanner.inbox.path / "a" / name).unlink()
    scanner.clock.now += DAY
    scanner.intake.scan(scanner.inbox)
    assert scanner.relpaths() == ["a/recent.jpg"]


def test_nothing_is_forgotten_while_the_inbox_is_unavailable_or_by_a_partial_scan(scanner):
    scanner.put("a/one.jpg")
    scanner.put("two.jpg")
    scanner.intake.scan(scanner.inbox)
    scanner.fail_all_settling()
    scanner.clock.now += 2 * FORGET_AFTER
    shutil.rmtree(scanner.inbox.path / "a")
    scanner.intake.scan(scanner.inbox, scanner.inbox.path)  # a folder scan, not a full one
    assert len(scanner.relpaths()) == 2
    aside = scanner.inbox.path.with_name("aside")
    os.rename(scanner.inbox.path, aside)  # an unmounted share: the folder is not there
    assert scanner.intake.scan(scanner.inbox) is False
    assert len(scanner.relpaths()) == 2
    os.rename(aside, scanner.inbox.path)
    assert scanner.intake.scan(scanner.inbox) is True
    assert scanner.relpaths() == ["two.jpg"]


def test_forget_after_is_read_from_the_config(tmp_path):
    made = Scanner(tmp_path, forget_after=60)
    try:
        made.put("a.jpg")
        made.intake.scan(made.inbox)
        made.fail_all_settling()
        (made.inbox.path / "a.jpg").unlink()
        made.clock.now += 61
        made.intake.scan(made.inbox)
        assert made.relpaths() == []
    finally:
        made.ledger.close()


def test_the_folder_migration_fills_the_folders_of_existing_rows(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    for relpath in ("top.jpg", "a/b/deep.jpg", "a/mid.jpg"):
        ledger.insert("scans", relpath, State.PENDING)
    ledger.close()
    with sqlite3.connect(path) as conn:  # the ledger as the previous version left it
        conn.execute("DROP INDEX files_folder")
        conn.execute("ALTER TABLE files DROP COLUMN folder")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_folder'")
    conn.close()
    ledger = Ledger(path)
    try:
        assert sorted(ledger.folders("scans")) == ["", "a/", "a/b/"]
        assert list(ledger.folder_rows("scans", "a/")) == ["a/mid.jpg"]
    finally:
        ledger.close()
