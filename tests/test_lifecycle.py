"""The lifecycle on a real ledger file: every outcome applied in every state lands where
the transition table allows (or is refused as a bug), and the side effects that follow a
move (failed_dir, on_success) happen on real folders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrwatchd.ledger import Row
from ocrwatchd.lifecycle import (
    EXPECTED,
    REMOVED,
    RESETS,
    TERMINAL,
    TRANSITIONS,
    AccountRefused,
    Duplicate,
    Failed,
    IllegalTransition,
    Interrupted,
    Orphaned,
    Outcome,
    PollTrouble,
    Requeued,
    Result,
    RetryLater,
    Running,
    Settled,
    State,
    Submitted,
    Vanished,
    WriteTrouble,
    Written,
)
from tests.lifecycle_support import SHA, World

OUTCOMES: list[Outcome] = [
    Settled(SHA, "queued"),
    Duplicate("b" * 64, "/out/original.pdf.json", 99, "original.pdf"),
    Submitted("job-1", 5.0),
    Running(3.0),
    Result(b'{"pages": 1}'),
    RetryLater("busy"),
    PollTrouble("timed out"),
    Failed("broken"),
    Vanished(),
    Orphaned("lost"),
    AccountRefused("401"),
    Interrupted(),
    Written("/out/a.pdf.json"),
    WriteTrouble("disk full"),
    Requeued(),
]
# Where each outcome takes a row (attempts left); None: the row stays, to be tried later.
TARGET: dict[type[Outcome], State | None] = {
    Settled: State.PENDING,
    Duplicate: State.DONE,
    Submitted: State.PROCESSING,
    Running: None,
    Result: State.FETCHED,
    RetryLater: State.PENDING,
    PollTrouble: None,
    Failed: State.FAILED,
    Vanished: State.IGNORED,
    Orphaned: State.PENDING,
    AccountRefused: None,  # pending again, from uploading only (below)
    Interrupted: State.PENDING,
    Written: State.DONE,
    WriteTrouble: None,
    Requeued: State.PENDING,
}


def target(state: State, outcome: Outcome) -> State | None:
    if isinstance(outcome, AccountRefused) and state == State.UPLOADING:
        return State.PENDING
    return TARGET[type(outcome)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.ledger.close()


# -- the table itself -----------------------------------------------------------------


def test_every_outcome_is_walked():
    assert {type(outcome) for outcome in OUTCOMES} == set(Outcome.__subclasses__())


def test_the_table_leads_every_file_from_settling_to_an_end():
    assert set(TRANSITIONS) == set(State) == set(RESETS)
    reachable, todo = {State.SETTLING}, [State.SETTLING]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - reachable:
            reachable.add(nxt)
            todo.append(nxt)
    assert reachable == set(State)
    for state in State:
        ends, todo = set(), [state]
        while todo:
            current = todo.pop()
            ends.add(current)
            todo += [nxt for nxt in TRANSITIONS[current] if nxt not in ends]
        assert ends & set(TERMINAL), f"{state} can never finish"
    assert TRANSITIONS[State.DONE] == TRANSITIONS[State.IGNORED] == frozenset()
    assert RESETS[State.DONE] == {State.SETTLING}  # a rule change keeps a done result


# -- every outcome in every state ------------------------------------------------------


def check_fields(world: World, before: Row, after: Row, outcome: Outcome) -> None:
    now = world.clock()
    match outcome:
        case Settled():
            assert (after.sha256, after.next_attempt_at) == (SHA, 0)
        case Duplicate():
            assert (after.result_path, after.duplicate_of, after.sha256) == (
                "/out/original.pdf.json",
                99,
                "b" * 64,
            )
        case Submitted():
            assert (after.job_id, after.enqueued_at, after.next_attempt_at) == (
                "job-1",
                now,
                now + 5,
            )
            assert after.last_error is None
        case Result(body):
            assert world.ledger.result_body(after.id, after.generation) == body
            assert world.results == [(after.id, body)]
        case RetryLater():
            assert (after.attempts, after.job_id, after.last_error) == (
                before.attempts,
                None,
                "busy",
            )
            assert after.next_attempt_at > now
        case Failed():
            assert after.reason == "broken"
        case Vanished():
            assert after.reason == REMOVED
        case Orphaned():
            assert (after.job_id, after.last_error, after.next_attempt_at) == (None, "lost", now)
        case AccountRefused():
            assert (after.attempts, after.next_attempt_at) == (before.attempts - 1, now)
        case Interrupted():
            assert (after.job_id, after.next_attempt_at) == (None, now)
        case Written():
            assert (after.result_path, after.last_error) == ("/out/a.pdf.json", None)
        case Requeued():
            assert (after.attempts, after.reason, after.job_id, after.last_error) == (
                0,
                None,
                None,
                None,
            )
            assert after.next_attempt_at == now


@pytest.mark.parametrize("outcome", OUTCOMES, ids=lambda o: type(o).__name__)
@pytest.mark.parametrize("state", list(State), ids=str)
def test_outcome_in_state(world, state, outcome):
    before = world.row(state, reason="why" if state in (State.FAILED, State.IGNORED) else None)
    world.clock.advance(1)
    goal = target(state, outcome)
    expected = EXPECTED.get(type(outcome))
    if (expected is not None and state not in expected) or (
        goal is not None and goal not in TRANSITIONS[state]
    ):
        with pytest.raises(IllegalTransition):
            world.lifecycle.apply(before, outcome)
        assert world.current(before) == before
        return
    assert world.lifecycle.apply(before, outcome) is True
    after = world.current(before)
    assert after.generation == before.generation
    if goal is None:  # deferred: same state, tried again later
        assert after.state == before.state
        assert after.next_attempt_at >= world.clock()
        return
    assert after.state == goal
    assert after.state in TRANSITIONS[State(before.state)]
    check_fields(world, before, after, outcome)
    if before.state == State.FETCHED and goal != State.FETCHED:
        assert world.ledger.result_body(before.id, before.generation) is None


# Each outcome from a state where it makes sense.
WHERE = {
    Settled: State.SETTLING,
    Duplicate: State.SETTLING,
    Submitted: State.UPLOADING,
    Running: State.PROCESSING,
    Result: State.PROCESSING,
    RetryLater: State.UPLOADING,
    PollTrouble: State.PROCESSING,
    Failed: State.PENDING,
    Vanished: State.PENDING,
    Orphaned: State.PROCESSING,
    AccountRefused: State.UPLOADING,
    Interrupted: State.UPLOADING,
    Written: State.FETCHED,
    WriteTrouble: State.FETCHED,
    Requeued: State.FAILED,
}


@pytest.mark.parametrize("outcome", OUTCOMES, ids=lambda o: type(o).__name__)
def test_an_outcome_for_a_row_that_moved_on_changes_nothing(world, outcome):
    stale = world.row(WHERE[type(outcome)])
    newer = world.ledger.move(stale, State.SETTLING, new_generation=True, size=9)
    assert newer is not None
    assert world.lifecycle.apply(stale, outcome) is False
    assert world.current(stale) == newer
    assert world.ledger.inbox_info()["scans"]["last_error"] is None
    assert world.finished == [] and world.results == []


def test_a_write_trouble_for_a_result_another_writer_finished_changes_nothing(world):
    fetched = world.row(State.FETCHED)
    done = world.lifecycle.apply(fetched, Written("/out/a.pdf.json"))
    assert done is True
    written = world.current(fetched)
    assert world.lifecycle.apply(fetched, WriteTrouble("disk full")) is False
    assert world.current(fetched) == written
    assert world.ledger.inbox_info()["scans"]["last_error"] is None


def test_retry_later_fails_the_file_when_the_attempts_are_spent(world):
    row = world.row(State.UPLOADING, attempts=world.lifecycle.policy.max_attempts)
    assert world.lifecycle.apply(row, RetryLater("busy"))
    failed = world.current(row)
    assert failed.state == State.FAILED
    assert failed.reason == f"gave up after {row.attempts} attempts: busy"
    assert world.finished == [("scans", "failed")]


# -- side effects on real folders --------------------------------------------------------


def test_a_failed_file_moves_to_failed_dir_with_its_reason(tmp_path):
    world = World(tmp_path, failed_dir=tmp_path / "failed")
    source = world.inbox.path / "sub" / "a.pdf"
    source.parent.mkdir()
    source.write_bytes(b"%PDF-1.4 broken")
    row = world.row(State.PROCESSING, "sub/a.pdf", job_id="job-9", attempts=2)
    assert world.lifecycle.apply(row, Failed("the PDF is damaged"))
    assert not source.exists()
    assert (tmp_path / "failed" / "sub" / "a.pdf").read_bytes() == b"%PDF-1.4 broken"
    reason = json.loads((tmp_path / "failed" / "sub" / "a.pdf.reason.json").read_text())
    assert reason == {
        "path": str(source),
        "reason": "the PDF is damaged",
        "job_id": "job-9",
        "attempts": 2,
    }
    failed = world.current(row)
    assert (failed.state, failed.size, failed.mtime_ns) == ("failed", None, None)
    assert world.finished == [("scans", "failed")]
    world.ledger.close()


@pytest.mark.parametrize("on_success", ["delete", "archive", "keep"])
def test_written_applies_on_success(tmp_path, on_success):
    archive = tmp_path / "archive"
    world = World(tmp_path, on_success=on_success, archive_dir=archive)
    source = world.inbox.path / "a.pdf"
    source.write_bytes(b"%PDF-1.4")
    row = world.row(State.FETCHED)
    assert world.lifecycle.apply(row, Written(str(world.inbox.outbox / "a.pdf.json")))
    done = world.current(row)
    assert done.state == State.DONE
    assert source.exists() == (on_success == "keep")
    assert (archive / "a.pdf").exists() == (on_success == "archive")
    # A source gone from the inbox is forgotten: a new file at that path is a new file.
    assert (done.size is None) == (on_success != "keep")
    assert world.finished == [("scans", "done")]
    world.ledger.close()


def test_a_failed_disposal_keeps_the_file_done_and_says_why(tmp_path):
    blocker = tmp_path / "archive"
    blocker.write_text("a file where the archive folder should be")
    world = World(tmp_path, on_success="archive", archive_dir=blocker)
    source = world.inbox.path / "a.pdf"
    source.write_bytes(b"%PDF-1.4")
    row = world.row(State.FETCHED)
    assert world.lifecycle.apply(row, Written(str(world.inbox.outbox / "a.pdf.json")))
    assert world.current(row).state == State.DONE
    assert source.exists()
    assert "on_success archive failed" in world.ledger.inbox_info()["scans"]["last_error"]
    world.ledger.close()
