"""The ledger on real SQLite files: transitions, claims, generations, crash recovery."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from ocrwatchd.ledger import (
    DONE,
    FAILED,
    FETCHED,
    PENDING,
    PROCESSING,
    SETTLING,
    UPLOADING,
    IllegalTransition,
    Ledger,
)


@pytest.fixture
def ledger(tmp_path: Path):
    opened = Ledger(tmp_path / "state" / "ledger.db")
    yield opened
    opened.close()


def queued(ledger: Ledger, relpath: str = "a.pdf"):
    row, changed = ledger.observe("inbox", relpath, 10, 1)
    assert changed and row.state == SETTLING
    assert ledger.transition(row, PENDING, sha256="abc")
    return ledger.find("inbox", relpath)


def test_wal_mode_and_migrations_are_applied_once(tmp_path: Path):
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    Ledger(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone()[0] == 1
    db.close()


def test_observe_is_idempotent_for_an_unchanged_file_and_bumps_generation_on_change(ledger):
    first, new = ledger.observe("inbox", "a.pdf", 10, 1)
    assert new and first.generation == 1
    assert ledger.observe("inbox", "a.pdf", 10, 1) == (first, False)
    changed, different = ledger.observe("inbox", "a.pdf", 11, 2)
    assert different and changed.generation == 2 and changed.state == SETTLING


def test_a_stale_generation_cannot_move_the_row(ledger):
    row = queued(ledger)
    ledger.observe("inbox", "a.pdf", 99, 2)  # the file changed on disk
    assert not ledger.transition(row, UPLOADING)
    assert ledger.find("inbox", "a.pdf").state == SETTLING


def test_illegal_transitions_are_refused(ledger):
    row = queued(ledger)
    with pytest.raises(IllegalTransition):
        ledger.transition(row, DONE)


def test_claims_are_exclusive_between_threads(tmp_path: Path):
    path = tmp_path / "ledger.db"
    setup = Ledger(path)
    for n in range(200):
        queued(setup, f"f{n}.pdf")
    setup.close()
    claimed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = Ledger(path)
        while (row := mine.claim(PENDING, UPLOADING, engine="mindee")) is not None:
            with lock:
                claimed.append(row.id)
        mine.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed))
    assert len(claimed) == 200


def test_claim_respects_next_attempt_at_and_counts_the_attempt(ledger):
    row = queued(ledger)
    assert ledger.transition(row, UPLOADING)
    row = ledger.find("inbox", "a.pdf")
    assert ledger.transition(row, PENDING, next_attempt_at=2_000_000_000)
    assert ledger.claim(PENDING, UPLOADING, engine="mindee", now=1_999_999_999) is None
    claimed = ledger.claim(PENDING, UPLOADING, engine="mindee", now=2_000_000_001)
    assert claimed is not None and claimed.attempts == 1


def test_a_fetched_result_survives_until_done(ledger, tmp_path: Path):
    row = queued(ledger)
    row = ledger.claim(PENDING, UPLOADING, engine="mindee")
    assert ledger.transition(row, PROCESSING, job_id="job-1")
    row = ledger.find("inbox", "a.pdf")
    assert ledger.store_result(row, b'{"inference": {}}')
    reopened = Ledger(tmp_path / "state" / "ledger.db")
    fetched = reopened.find("inbox", "a.pdf")
    assert fetched.state == FETCHED
    assert reopened.result_body(fetched.id, fetched.generation) == b'{"inference": {}}'
    assert reopened.transition(fetched, DONE, result_path="/out/a.pdf.json")
    assert reopened.result_body(fetched.id, fetched.generation) is None
    reopened.close()


def test_recovery_requeues_interrupted_uploads_but_keeps_known_jobs(ledger):
    uploading = queued(ledger, "up.pdf")
    assert ledger.transition(uploading, UPLOADING)
    polling = queued(ledger, "poll.pdf")
    assert ledger.transition(polling, UPLOADING)
    assert ledger.transition(ledger.find("inbox", "poll.pdf"), PROCESSING, job_id="job-9")
    assert ledger.recover_after_restart(engine="mindee") == 1
    assert ledger.find("inbox", "up.pdf").state == PENDING
    kept = ledger.find("inbox", "poll.pdf")
    assert (kept.state, kept.job_id) == (PROCESSING, "job-9")


def test_recovery_for_the_local_engine_restarts_local_work(ledger):
    row = queued(ledger)
    assert ledger.transition(row, PROCESSING, job_id="local-job")
    assert ledger.recover_after_restart(engine="local") == 1
    assert ledger.find("inbox", "a.pdf").state == PENDING


def test_retry_failed_only_touches_failed_rows(ledger):
    failed = queued(ledger, "bad.pdf")
    assert ledger.transition(failed, FAILED, reason="broken")
    queued(ledger, "ok.pdf")
    assert ledger.retry_failed() == 1
    row = ledger.find("inbox", "bad.pdf")
    assert (row.state, row.reason, row.attempts) == (PENDING, None, 0)


def test_counts_map_internal_states_to_public_ones(ledger):
    queued(ledger, "a.pdf")
    ledger.observe("inbox", "b.pdf", 1, 1)
    counts = ledger.counts_by_inbox()["inbox"]
    assert counts["pending"] == 2
    assert set(counts) == {"pending", "uploading", "processing", "done", "failed", "ignored"}
