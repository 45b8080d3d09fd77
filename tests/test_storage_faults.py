"""Ledger trouble while a job is in flight (issue: a disk-full error lost the job id and
the file was uploaded again): the engine's answer is held in memory and stored once the
ledger takes writes again, in the running loop. Real ledger files; the failures are
SQLite's own (a full database via `max_page_count`, a write lock held elsewhere)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocrwatchd.ledger import Ledger, temporary
from ocrwatchd.lifecycle import Result, State, Submitted
from tests.lifecycle_support import FakeEngine, Rig, rigs


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    yield from rigs(tmp_path)


def fill_up(ledger: Ledger) -> None:
    """The database may not grow by one page more (SQLITE_FULL, as on a full disk)."""
    pages = ledger.db.conn.execute("PRAGMA page_count").fetchone()[0]
    ledger.db.conn.execute(f"PRAGMA max_page_count = {pages}")


def free_up(ledger: Ledger) -> None:
    ledger.db.conn.execute("PRAGMA max_page_count = 1073741823")


def test_a_job_id_the_ledger_refused_is_kept_and_stored_later(make_rig):
    blocker: list[Ledger] = []

    def accepted(_submission: object) -> Submitted:
        # While the upload is in flight, another connection takes the write lock.
        lock = rig.connect()
        lock.db.execute("BEGIN IMMEDIATE")
        blocker.append(lock)
        return Submitted("job-paid-for", 1)

    rig = make_rig(FakeEngine(on_submit=accepted))
    rig.drop("a.pdf")
    submitter = rig.submitter()
    submitter.ledger.db.conn.execute("PRAGMA busy_timeout = 0")  # fail now, not in 30 s
    for _ in range(2):  # refused, and refused again on the next step
        with pytest.raises(sqlite3.OperationalError) as caught:
            submitter.step()
        assert temporary(caught.value)
        assert rig.row().state == State.UPLOADING
    blocker[0].db.execute("ROLLBACK")
    assert submitter.step() is True
    row = rig.row()
    assert (row.state, row.job_id) == (State.PROCESSING, "job-paid-for")
    assert len(rig.engine.submitted) == 1  # uploaded once: the job id was not lost
    assert submitter.step() is False  # nothing else to do, nothing submitted again
    assert len(rig.engine.submitted) == 1


def test_a_result_the_full_ledger_refused_is_kept_and_stored_once_there_is_room(make_rig):
    body = b'{"inference": "' + b"x" * 200_000 + b'"}'
    rig = make_rig(FakeEngine(on_poll=Result(body)))
    row = rig.drop("a.pdf")
    uploading = rig.ledger.move(row, State.UPLOADING, attempts=1, engine="fake")
    assert uploading is not None
    assert rig.ledger.move(uploading, State.PROCESSING, job_id="job-1", next_attempt_at=0)
    poller = rig.poller()
    fill_up(poller.ledger)
    with pytest.raises(sqlite3.OperationalError) as caught:
        poller.step()
    assert caught.value.sqlite_errorname == "SQLITE_FULL"
    assert rig.row().state == State.PROCESSING
    with pytest.raises(sqlite3.OperationalError):
        poller.step()  # still full: still held, the API is not asked again
    assert len(rig.engine.polled) == 1
    free_up(poller.ledger)
    assert poller.step() is True
    stored = rig.row()
    assert stored.state == State.FETCHED
    assert rig.ledger.result_body(stored.id, stored.generation) == body
    assert len(rig.engine.polled) == 1  # fetched once: the body was not lost
