"""The lifecycle's row-level operations on a real ledger file: observing a file on
disk (new, unchanged, replaced), ignoring a path, an operator's retry, and a bug met
while handling one file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrwatchd.lifecycle import TERMINAL, Requeued, State
from tests.lifecycle_support import START, World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.ledger.close()


# -- observe and ignore ----------------------------------------------------------------

IDENTITY = {"size": 10, "mtime_ns": 20, "dev": 1, "inode": 2, "ctime_ns": 30}


def test_observe_a_new_file(world):
    row, changed = world.lifecycle.observe("scans", "new.pdf", IDENTITY)
    assert changed is True
    assert (row.state, row.generation, row.size, row.inode) == ("settling", 1, 10, 2)
    assert world.ledger.find("scans", "new.pdf") == row


def test_observe_the_same_file_again_changes_nothing(world):
    row, _ = world.lifecycle.observe("scans", "a.pdf", IDENTITY)
    world.clock.advance(5)
    again, changed = world.lifecycle.observe("scans", "a.pdf", IDENTITY)
    assert (again, changed) == (row, False)
    # Where a side does not know device, inode or ctime, size and mtime decide.
    unknown = {"size": 10, "mtime_ns": 20}
    assert world.lifecycle.observe("scans", "a.pdf", unknown) == (row, False)
    # A share mounted again may give the very same files another device number.
    remounted = {**IDENTITY, "dev": 9}
    assert world.lifecycle.observe("scans", "a.pdf", remounted) == (row, False)


@pytest.mark.parametrize("change", [{"size": 11}, {"mtime_ns": 21}, {"inode": 3}, {"ctime_ns": 31}])
@pytest.mark.parametrize("state", [State.PROCESSING, State.FETCHED, State.DONE, State.FAILED])
def test_observe_a_changed_file_starts_a_new_version(world, change, state):
    old = world.row(
        state,
        **IDENTITY,
        job_id="job-7",
        attempts=3,
        write_attempts=2,
        last_error="e",
        reason="r",
        result_path="/out/a.pdf.json",
        duplicate_of=4,
        enqueued_at=START,
        next_attempt_at=START + 99,
    )
    world.clock.advance(60)
    row, changed = world.lifecycle.observe("scans", "a.pdf", {**IDENTITY, **change})
    assert changed is True
    assert (row.state, row.generation) == ("settling", old.generation + 1)
    for name, value in {**IDENTITY, **change}.items():
        assert getattr(row, name) == value
    cleared = ("sha256", "reason", "job_id", "enqueued_at", "last_error", "result_path")
    assert all(getattr(row, name) is None for name in (*cleared, "duplicate_of"))
    assert (row.attempts, row.write_attempts, row.next_attempt_at) == (0, 0, 0)
    assert row.created_at == world.clock()
    assert world.ledger.result_body(row.id, old.generation) is None


def test_ignore_a_path_never_seen(world):
    world.lifecycle.ignore("scans", "notes.txt", "not a supported file type")
    row = world.ledger.find("scans", "notes.txt")
    assert (row.state, row.reason) == ("ignored", "not a supported file type")


def test_ignore_keeps_a_done_result(world):
    done = world.row(State.DONE, result_path="/out/a.pdf.json")
    world.lifecycle.ignore("scans", "a.pdf", "excluded by a rule")
    assert world.current(done) == done


@pytest.mark.parametrize(
    "state", [s for s in State if s not in (State.DONE, State.IGNORED)], ids=str
)
def test_ignore_resets_a_file_not_done(world, state):
    row = world.row(state, job_id="job-3", attempts=2)
    world.lifecycle.ignore("scans", "a.pdf", "excluded by a rule")
    ignored = world.current(row)
    assert (ignored.state, ignored.reason, ignored.generation) == (
        "ignored",
        "excluded by a rule",
        row.generation + 1,
    )
    assert (ignored.job_id, ignored.attempts, ignored.sha256, ignored.size) == (None, 0, None, None)


def test_ignore_is_idempotent(world):
    world.row(State.PENDING)
    world.lifecycle.ignore("scans", "a.pdf", "a symlink")
    first = world.ledger.find("scans", "a.pdf")
    world.clock.advance(1)
    world.lifecycle.ignore("scans", "a.pdf", "a symlink")
    assert world.ledger.find("scans", "a.pdf") == first
    world.lifecycle.ignore("scans", "a.pdf", "excluded by a rule")
    assert world.ledger.find("scans", "a.pdf").reason == "excluded by a rule"


# -- operator and internal errors -------------------------------------------------------


def test_requeued_gives_a_failed_file_its_attempts_back(world):
    failed = world.row(State.FAILED, attempts=5, reason="gave up", last_error="busy", job_id="j")
    world.clock.advance(10)
    assert world.lifecycle.apply(failed, Requeued())
    row = world.current(failed)
    assert (row.state, row.attempts, row.reason, row.last_error, row.job_id) == (
        "pending",
        0,
        None,
        None,
        None,
    )
    assert row.next_attempt_at == world.clock()


def test_internal_error_fails_the_file_with_the_message(world):
    row = world.row(State.PROCESSING)
    world.lifecycle.internal_error(row, KeyError("pages"))
    failed = world.current(row)
    assert failed.state == State.FAILED
    assert failed.reason == "internal error (KeyError: 'pages'); please report it"


@pytest.mark.parametrize("state", TERMINAL, ids=str)
def test_internal_error_leaves_a_finished_file_alone(world, state):
    row = world.row(state, reason="earlier")
    world.lifecycle.internal_error(row, RuntimeError("late"))
    assert world.current(row) == row


def test_internal_error_passes_ledger_errors_up(world):
    row = world.row(State.PROCESSING)
    with pytest.raises(sqlite3.OperationalError):
        world.lifecycle.internal_error(row, sqlite3.OperationalError("disk I/O error"))
    assert world.current(row) == row
