"""The ledger's interface, as the rest of the daemon relies on it, run against every
backend: `ledger_factory` yields a callable that opens one more connection to one fresh
ledger (a shared PostgreSQL ledger would be one more param). The SQLite file's own
promises (WAL, migrations, file mode) are in test_ledger_sqlite.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocrwatchd.ledger import Ledger
from ocrwatchd.lifecycle import PUBLIC_STATES, State
from tests.lifecycle_support import START, ManualClock, put

Opener = Callable[..., Ledger]


@pytest.fixture(params=["sqlite"])
def ledger_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[Ledger] = []  # by this thread; other threads close their own

    def open_ledger(clock: Callable[[], float] | None = None) -> Ledger:
        assert request.param == "sqlite", f"no opener for the {request.param} backend"
        ledger = Ledger(tmp_path / "state" / "ledger.db", clock=clock or ManualClock())
        if threading.current_thread() is threading.main_thread():
            opened.append(ledger)
        return ledger

    yield open_ledger
    for ledger in opened:
        ledger.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(ledger_factory: Opener, clock: ManualClock) -> Ledger:
    return ledger_factory(clock)


# -- rows -------------------------------------------------------------------------------


def test_insert_creates_a_row_and_refuses_a_path_that_exists(ledger):
    row = ledger.insert("scans", "a.pdf", State.SETTLING, size=3, mtime_ns=7)
    assert row is not None
    assert (row.inbox, row.relpath, row.state, row.size, row.mtime_ns) == (
        "scans",
        "a.pdf",
        "settling",
        3,
        7,
    )
    assert (row.generation, row.attempts, row.created_at, row.updated_at) == (1, 0, START, START)
    assert ledger.insert("scans", "a.pdf", State.PENDING, size=9) is None
    assert ledger.find("scans", "a.pdf") == row
    # The same relpath in another inbox is another file.
    assert ledger.insert("other", "a.pdf", State.SETTLING) is not None


def test_find_and_get(ledger):
    row = put(ledger, State.PENDING, "sub/b.pdf")
    assert ledger.find("scans", "sub/b.pdf") == row
    assert ledger.get(row.id) == row
    assert ledger.find("scans", "missing.pdf") is None
    assert ledger.find("other", "sub/b.pdf") is None
    assert ledger.get(row.id + 1000) is None


def test_move_is_guarded_by_state(ledger, clock):
    row = put(ledger, State.PENDING)
    clock.advance(5)
    moved = ledger.move(row, State.UPLOADING, attempts=1)
    assert moved is not None
    assert (moved.state, moved.attempts, moved.updated_at, moved.generation) == (
        "uploading",
        1,
        START + 5,
        1,
    )
    # `row` still says pending: another actor moved it first, so nothing happens.
    assert ledger.move(row, State.FAILED, reason="stale") is None
    assert ledger.get(row.id) == moved


def test_move_is_guarded_by_generation(ledger):
    row = put(ledger, State.SETTLING, size=1)
    newer = ledger.move(row, State.SETTLING, new_generation=True, size=2)
    assert newer is not None and (newer.generation, newer.size) == (2, 2)
    # Same state, older generation: the work of an old version of the file is dropped.
    assert ledger.move(row, State.PENDING, sha256="old") is None
    assert ledger.get(row.id) == newer
    assert ledger.move(newer, State.PENDING, sha256="new") is not None


def test_move_refuses_unknown_fields(ledger):
    row = put(ledger, State.PENDING)
    with pytest.raises(ValueError, match="nonsense"):
        ledger.move(row, State.UPLOADING, nonsense=1)
    assert ledger.get(row.id) == row


def test_a_result_is_stored_with_the_move_to_fetched_and_dropped_when_leaving_it(ledger):
    row = put(ledger, State.PROCESSING, job_id="j1")
    fetched = ledger.move(row, State.FETCHED, result=b"BODY")
    assert fetched is not None and fetched.state == "fetched"
    assert ledger.result_body(row.id, fetched.generation) == b"BODY"
    assert ledger.result_body(row.id, fetched.generation + 1) is None
    # A stale move out of fetched changes nothing, the body included.
    assert ledger.move(row, State.DONE) is None
    assert ledger.result_body(row.id, fetched.generation) == b"BODY"
    done = ledger.move(fetched, State.DONE, result_path="/out/a.pdf.json")
    assert done is not None
    assert ledger.result_body(row.id, done.generation) is None


@pytest.mark.parametrize("leave", ["failed", "new generation"])
def test_other_ways_out_of_fetched_drop_the_result(ledger, leave):
    fetched = put(ledger, State.FETCHED, result=b"BODY")
    if leave == "failed":
        moved = ledger.move(fetched, State.FAILED, reason="bad")
    else:
        moved = ledger.move(fetched, State.SETTLING, new_generation=True, size=5)
    assert moved is not None
    for generation in (fetched.generation, moved.generation):
        assert ledger.result_body(fetched.id, generation) is None


# -- claims and due work ----------------------------------------------------------------


def test_claim_takes_the_oldest_due_row_of_the_given_inboxes(ledger, clock):
    later = put(ledger, State.PENDING, "later.pdf", next_attempt_at=START - 10)
    oldest = put(ledger, State.PENDING, "oldest.pdf", next_attempt_at=START - 20)
    put(ledger, State.PENDING, "future.pdf", next_attempt_at=START + 60)
    put(ledger, State.PENDING, "elsewhere.pdf", "other", next_attempt_at=0)
    put(ledger, State.FAILED, "failed.pdf", next_attempt_at=0)

    first = ledger.claim(State.PENDING, State.UPLOADING, inboxes=["scans"], engine="e1")
    assert first is not None and first.id == oldest.id
    assert (first.state, first.engine, first.attempts) == ("uploading", "e1", 1)
    second = ledger.claim(State.PENDING, State.UPLOADING, inboxes=["scans"], engine="e1")
    assert second is not None and second.id == later.id
    # The future row is not due yet, the other inbox is not ours: nothing more to take.
    assert ledger.claim(State.PENDING, State.UPLOADING, inboxes=["scans"], engine="e1") is None
    clock.advance(60)
    third = ledger.claim(State.PENDING, State.UPLOADING, inboxes=["scans"], engine="e1")
    assert third is not None and third.relpath == "future.pdf"
    assert ledger.claim(State.PENDING, State.UPLOADING, inboxes=["scans"], engine="e1") is None
    assert ledger.find("other", "elsewhere.pdf").state == "pending"
    assert ledger.claim(State.PENDING, State.UPLOADING, inboxes=[], engine="e1") is None


def test_claim_counts_every_attempt_and_takes_now_from_the_caller(ledger):
    row = put(ledger, State.PENDING, attempts=2, next_attempt_at=START + 100)
    assert ledger.claim(State.PENDING, State.UPLOADING, inboxes=["scans"], engine="e") is None
    claimed = ledger.claim(
        State.PENDING, State.UPLOADING, inboxes=["scans"], engine="e2", now=START + 100
    )
    assert claimed is not None and claimed.id == row.id
    assert (claimed.attempts, claimed.engine, claimed.generation) == (3, "e2", row.generation)


def test_claims_are_exclusive_between_connections(ledger_factory):
    first = ledger_factory()
    for number in range(200):
        put(first, State.PENDING, f"f{number:03}.pdf")
    claimed: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(index: int) -> None:
        ledger = ledger_factory()
        try:
            start.wait()
            while True:
                row = ledger.claim(State.PENDING, State.UPLOADING, inboxes=["scans"], engine="e")
                if row is None:
                    return
                claimed[index].append(row.id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            ledger.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    every = [file_id for ids in claimed for file_id in ids]
    assert len(every) == 200 and len(set(every)) == 200
    assert first.count([State.UPLOADING]) == 200
    assert all(row.attempts == 1 for row in first.rows(states=[State.UPLOADING]))


def test_due_filters_by_state_inbox_time_engine_and_share(ledger, clock):
    rows = [
        put(ledger, State.PROCESSING, f"p{n}.pdf", engine="e1" if n % 3 else "e2", job_id=f"j{n}")
        for n in range(9)
    ]
    put(ledger, State.PROCESSING, "later.pdf", engine="e1", next_attempt_at=START + 30)
    put(ledger, State.PROCESSING, "x.pdf", "other", engine="e1")
    put(ledger, State.PENDING, "pending.pdf", engine="e1")

    due = ledger.due(State.PROCESSING, limit=100, inboxes=["scans"])
    assert [row.id for row in due] == [row.id for row in rows]
    e1 = ledger.due(State.PROCESSING, limit=100, inboxes=["scans"], engine="e1")
    assert {row.relpath for row in e1} == {f"p{n}.pdf" for n in range(9) if n % 3}
    assert len(ledger.due(State.PROCESSING, limit=2, inboxes=["scans"])) == 2
    shares = [
        {row.id for row in ledger.due(State.PROCESSING, limit=100, inboxes=["scans"], share=(i, 3))}
        for i in range(3)
    ]
    assert set.union(*shares) == {row.id for row in rows}
    assert sum(len(share) for share in shares) == len(rows)
    assert all(file_id % 3 == i for i, share in enumerate(shares) for file_id in share)
    assert len(ledger.due(State.PROCESSING, limit=100, inboxes=["scans"], now=START + 30)) == 10
    clock.advance(30)
    assert len(ledger.due(State.PROCESSING, limit=100, inboxes=["scans"])) == 10


def test_next_due_at(ledger):
    assert ledger.next_due_at(State.PENDING, inboxes=["scans"]) is None
    put(ledger, State.PENDING, "a.pdf", engine="e1", next_attempt_at=START + 50)
    put(ledger, State.PENDING, "b.pdf", engine="e2", next_attempt_at=START + 20)
    put(ledger, State.PENDING, "c.pdf", "other", next_attempt_at=START + 1)
    put(ledger, State.PROCESSING, "d.pdf", next_attempt_at=START + 2)
    assert ledger.next_due_at(State.PENDING, inboxes=["scans"]) == START + 20
    assert ledger.next_due_at(State.PENDING, inboxes=["scans"], engine="e1") == START + 50
    assert ledger.next_due_at(State.PENDING, inboxes=["scans", "other"]) == START + 1
    assert ledger.next_due_at(State.PENDING, inboxes=["nobody"]) is None


def test_count_with_inbox_and_engine_filters(ledger):
    put(ledger, State.UPLOADING, "a.pdf", engine="e1")
    put(ledger, State.PROCESSING, "b.pdf", engine="e1")
    put(ledger, State.PROCESSING, "c.pdf", engine="e2")
    put(ledger, State.PROCESSING, "d.pdf", "other", engine="e1")
    put(ledger, State.DONE, "e.pdf", engine="e1")
    busy = [State.UPLOADING, State.PROCESSING]
    assert ledger.count(busy) == 4
    assert ledger.count(busy, engine="e1") == 3
    assert ledger.count(busy, inboxes=["scans"]) == 3
    assert ledger.count(busy, inboxes=["scans"], engine="e1") == 2
    assert ledger.count(busy, inboxes=[]) == 0
    assert ledger.count([State.FAILED]) == 0


def test_defer_is_guarded_and_keeps_the_state(ledger, clock):
    row = put(ledger, State.PROCESSING, job_id="j")
    clock.advance(1)
    assert ledger.defer(row, until=START + 40, error="timeout") is True
    deferred = ledger.get(row.id)
    assert (deferred.state, deferred.next_attempt_at, deferred.last_error) == (
        "processing",
        START + 40,
        "timeout",
    )
    assert deferred.updated_at == START + 1
    fetched = ledger.move(deferred, State.FETCHED, result=b"{}")
    assert ledger.defer(row, until=START + 99, error="stale") is False
    assert ledger.get(row.id) == fetched


def test_rows_with_jobs_names_only_processing_rows(ledger):
    a = put(ledger, State.PROCESSING, "a.pdf", job_id="j-a")
    put(ledger, State.PROCESSING, "b.pdf", job_id="j-b")
    put(ledger, State.PENDING, "c.pdf", job_id="j-c")
    assert [row.id for row in ledger.rows_with_jobs(["j-a", "j-c", "unknown"])] == [a.id]
    assert ledger.rows_with_jobs([]) == []
    assert len(ledger.rows_with_jobs({"j-a", "j-b"})) == 2


def test_counts_by_inbox_uses_public_states_with_zeros(ledger):
    for state in (State.SETTLING, State.PENDING, State.FETCHED, State.PROCESSING, State.DONE):
        put(ledger, state, f"{state}.pdf")
    put(ledger, State.FAILED, "f.pdf", "other")
    counts = ledger.counts_by_inbox()
    assert counts["scans"] == {
        "pending": 2,
        "uploading": 0,
        "processing": 2,
        "done": 1,
        "failed": 0,
        "ignored": 0,
    }
    assert counts["other"] == dict.fromkeys(PUBLIC_STATES, 0) | {"failed": 1}


def test_oldest_waiting_ignores_finished_files(ledger, clock):
    put(ledger, State.DONE, "done.pdf")
    clock.advance(10)
    put(ledger, State.PROCESSING, "p.pdf")
    clock.advance(10)
    put(ledger, State.SETTLING, "s.pdf")
    put(ledger, State.FAILED, "f.pdf", "finished")
    put(ledger, State.IGNORED, "i.pdf", "finished")
    assert ledger.oldest_waiting() == {"scans": START + 10}


def test_done_with_hash(ledger):
    sha = "a" * 64
    original = put(ledger, State.DONE, "a.pdf", sha256=sha, result_path="/out/a.pdf.json")
    put(ledger, State.DONE, "no-result.pdf", sha256=sha)
    put(ledger, State.FAILED, "failed.pdf", sha256=sha, result_path="/out/f")
    put(ledger, State.DONE, "x.pdf", "other", sha256=sha, result_path="/o/x")
    copy = put(ledger, State.SETTLING, "copy.pdf", sha256=sha)
    assert ledger.done_with_hash("scans", sha, copy.id) == original
    assert ledger.done_with_hash("scans", sha, original.id) is None
    assert ledger.done_with_hash("scans", "b" * 64, copy.id) is None


def test_finished_since_counts_by_the_time_of_the_last_move(ledger, clock):
    early = put(ledger, State.FETCHED, "early.pdf")
    ledger.move(early, State.DONE, result_path="/o/e")
    clock.advance(100)
    late = put(ledger, State.FETCHED, "late.pdf")
    ledger.move(late, State.DONE, result_path="/o/l")
    put(ledger, State.FAILED, "f.pdf")
    put(ledger, State.PENDING, "p.pdf")
    assert ledger.finished_since(START + 50) == (1, 1)
    assert ledger.finished_since(START) == (2, 1)
    assert ledger.finished_since(START + 101) == (0, 0)


def test_inbox_status(ledger, clock):
    assert ledger.inbox_info() == {}
    ledger.set_inbox("scans", path="/in", watch="events", available=True)
    ledger.set_inbox("other", path="/o", watch="poll", available=False)
    ledger.set_paused("the account was refused")
    clock.advance(3)
    ledger.note_error("scans", "cannot write outbox")
    ledger.note_error("nobody", "an inbox never set is not created")
    info = ledger.inbox_info()
    assert set(info) == {"scans", "other"}
    assert info["scans"] == {
        "name": "scans",
        "path": "/in",
        "watch": "events",
        "available": 1,
        "paused_reason": "the account was refused",
        "last_error": "cannot write outbox",
        "last_error_at": START + 3,
    }
    assert (info["other"]["available"], info["other"]["last_error"]) == (0, None)
    ledger.set_paused(None)
    ledger.set_inbox("scans", path="/in2", watch="poll", available=False)
    info = ledger.inbox_info()
    assert info["scans"]["paused_reason"] is None
    assert (info["scans"]["path"], info["scans"]["available"]) == ("/in2", 0)
    assert info["scans"]["last_error"] == "cannot write outbox"


def test_changed_sees_commits_of_other_connections(ledger_factory):
    reader, writer = ledger_factory(), ledger_factory()
    assert reader.changed() is True
    assert reader.changed() is False
    put(writer, State.PENDING)
    assert reader.changed() is True
    assert reader.changed() is False


def test_write_attempts_and_forgetting_the_source(ledger):
    row = put(ledger, State.FETCHED, size=4, mtime_ns=5, inode=6, dev=7, ctime_ns=8)
    assert ledger.defer(row, until=1, error="full", write_attempt=True)
    assert ledger.defer(ledger.get(row.id), until=2, error="full", write_attempt=True)
    ledger.forget_source(row, moved_to="/failed/a.pdf")
    after = ledger.get(row.id)
    assert (after.write_attempts, after.result_path) == (2, "/failed/a.pdf")
    assert (after.size, after.mtime_ns, after.inode, after.dev, after.ctime_ns) == (None,) * 5
