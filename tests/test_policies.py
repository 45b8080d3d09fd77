"""Retry, pause, hold and give-up policies of the engine loops, in-process: a scripted
engine (the one boundary faked), a manual clock, a real ledger file and real inbox and
outbox folders. Loops are driven one `step()` at a time, so every schedule is checked in
milliseconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ocrwatchd.finisher import Finisher
from ocrwatchd.lifecycle import (
    POLL_BACKOFF_CAP,
    AccountRefused,
    Orphaned,
    Outcome,
    PollTrouble,
    RetryLater,
    RetryPolicy,
    Running,
    State,
    Submitted,
)
from ocrwatchd.pipeline import (
    PAUSE_SECONDS,
    REST_MAX,
)
from tests.lifecycle_support import (
    START,
    FakeEngine,
    Rig,
    put,
    rigs,
    statements,
)


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    yield from rigs(tmp_path)


def answers(*outcomes: Outcome | Callable[[], Outcome]) -> Callable[[Any], Outcome]:
    """A script answering each call with the next outcome (a callable is called first:
    it runs while the engine call is in flight)."""
    queue = list(outcomes)

    def answer(_call: Any) -> Outcome:
        item = queue.pop(0)
        return item() if callable(item) and not isinstance(item, Outcome) else item

    return answer


# -- giving up -----------------------------------------------------------------------------


def test_a_file_fails_after_max_attempts_submissions(make_rig):
    engine = FakeEngine(policy=RetryPolicy(max_attempts=3), on_submit=RetryLater("the API is busy"))
    rig = make_rig(engine)
    rig.drop()
    submitter = rig.submitter()
    for attempt in (1, 2):
        assert submitter.step() is True
        row = rig.row()
        assert (row.state, row.attempts, row.last_error) == ("pending", attempt, "the API is busy")
        assert row.next_attempt_at > rig.clock()
        assert submitter.step() is False  # not due yet
        rig.due(row)
    assert submitter.step() is True
    row = rig.row()
    assert (row.state, row.reason) == ("failed", "gave up after 3 attempts: the API is busy")
    assert len(engine.submitted) == 3
    rig.clock.advance(3600)
    assert submitter.step() is False


def test_attempts_that_do_not_count_never_fail_the_file(make_rig):
    uncounted = [RetryLater("not now", counts=False)] * 10
    engine = FakeEngine(
        policy=RetryPolicy(max_attempts=3), on_submit=answers(*uncounted, Submitted("j", 1))
    )
    rig = make_rig(engine)
    rig.drop()
    submitter = rig.submitter()
    for _ in range(10):
        assert submitter.step() is True
        row = rig.row()
        assert (row.state, row.attempts) == ("pending", 0)
        rig.due(row)
    assert submitter.step() is True
    assert (rig.row().state, rig.row().attempts, rig.row().job_id) == ("processing", 1, "j")


def test_a_file_changed_since_it_settled_is_not_submitted_and_costs_no_attempt(make_rig):
    engine = FakeEngine()
    rig = make_rig(engine)
    rig.drop()
    (rig.inbox.path / "a.pdf").write_bytes(b"%PDF-1.4 and more pages")
    assert rig.submitter().step() is True
    row = rig.row()
    assert (row.state, row.attempts, engine.submitted) == ("pending", 0, [])
    assert row.next_attempt_at >= rig.clock() + rig.inbox.settle_seconds + 1


def test_the_local_worker_crash_limit(make_rig):
    died = RetryLater("the OCR worker reading a.pdf died; try again")
    engine = FakeEngine(
        name="local", durable=False, policy=RetryPolicy(max_attempts=3), on_poll=died
    )
    rig = make_rig(engine)
    rig.drop()
    submitter, poller = rig.submitter(), rig.poller()
    for _ in range(3):
        rig.due(rig.row())
        assert submitter.step() is True
        rig.due(rig.row())
        assert poller.step() is True
    row = rig.row()
    assert (row.state, row.attempts) == ("failed", 3)
    assert row.reason == "gave up after 3 attempts: the OCR worker reading a.pdf died; try again"
    assert len(engine.submitted) == 3


# -- the pause after a refused account, the hold after a 429 ---------------------------------


def test_a_refused_account_pauses_all_remote_work_and_probes_once(make_rig):
    refused = AccountRefused("the Mindee API refused the account: 401 invalid key")
    rig = make_rig(FakeEngine(on_poll=Running(1.0)))
    gate, engine = rig.shared.gate, rig.engine
    for name in ("a.pdf", "b.pdf", "c.pdf"):
        rig.drop(name)
    put(rig.ledger, State.PROCESSING, "p.pdf", engine="fake", job_id="job-p", attempts=1)
    first, second, poller = rig.submitter(), rig.submitter(), rig.poller()
    others: list[bool] = []

    def other_goes(outcome: Outcome) -> Callable[[], Outcome]:
        def answer() -> Outcome:
            others.append(second.step())  # while this submission is in flight
            return outcome

        return answer

    engine.on_submit = answers(
        other_goes(refused),
        other_goes(refused),
        other_goes(Submitted("job-a", 1)),
        Submitted("job-b", 1),
    )
    assert first.step() is True
    assert others == [False], "before a first success, one submission at a time"
    assert gate.wait(submitting=True) == gate.wait(submitting=False) == PAUSE_SECONDS
    assert rig.ledger.inbox_info()["scans"]["paused_reason"] == refused.message
    assert (rig.row().state, rig.row().attempts) == ("pending", 0)  # the account, not the file

    for wait in (0, PAUSE_SECONDS - 1):
        rig.clock.to(START + wait)
        assert (first.step(), second.step(), poller.step()) == (False, False, False)
        assert (len(engine.submitted), engine.polled) == (1, [])

    rig.clock.to(START + PAUSE_SECONDS)
    assert first.step() is True  # the probe: refused again
    assert others == [False, False]
    assert len(engine.submitted) == 2
    assert gate.wait(submitting=True) == PAUSE_SECONDS
    assert second.step() is False

    rig.clock.advance(PAUSE_SECONDS)
    assert first.step() is True  # the probe: accepted
    assert others == [False, False, False]
    assert gate.wait(submitting=True) == gate.wait(submitting=False) == 0
    assert rig.ledger.inbox_info()["scans"]["paused_reason"] is None
    assert second.step() is True  # proven: submissions go side by side again
    assert len(engine.submitted) == 4
    assert poller.step() is True and len(engine.polled) >= 1


def test_a_refused_poll_pauses_the_submitters_too(make_rig):
    refused = AccountRefused("the Mindee API refused the account: 402 payment required")
    rig = make_rig(FakeEngine(on_poll=refused))
    job = put(rig.ledger, State.PROCESSING, "p.pdf", engine="fake", job_id="job-p", attempts=1)
    rig.drop("a.pdf")
    assert rig.poller().step() is True
    assert rig.ledger.get(job.id).state == State.PROCESSING
    assert rig.submitter().step() is False
    assert rig.engine.submitted == []
    assert rig.ledger.inbox_info()["scans"]["paused_reason"] == refused.message


def test_a_429_holds_every_submitter_but_not_the_pollers(make_rig):
    too_many = RetryLater("429 Too Many Requests", after=20, hold=True)
    rig = make_rig(
        FakeEngine(on_submit=answers(too_many, Submitted("job-b", 1)), on_poll=Running(1))
    )
    rig.drop("a.pdf")
    rig.drop("b.pdf")
    put(rig.ledger, State.PROCESSING, "p.pdf", engine="fake", job_id="job-p", attempts=1)
    first, second, poller = rig.submitter(), rig.submitter(), rig.poller()
    assert first.step() is True
    assert rig.shared.gate.wait(submitting=True) == 20
    assert rig.shared.gate.wait(submitting=False) == 0
    row = rig.row("a.pdf")
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.next_attempt_at >= rig.clock() + 20
    assert (first.step(), second.step()) == (False, False)
    assert len(rig.engine.submitted) == 1
    assert poller.step() is True and len(rig.engine.polled) == 1
    rig.clock.advance(20)
    assert second.step() is True
    assert rig.row("b.pdf").state == State.PROCESSING


# -- following jobs -----------------------------------------------------------------------


def test_failed_polls_never_fail_or_resubmit_the_job(make_rig):
    rig = make_rig(FakeEngine(on_poll=PollTrouble("connection reset")))
    job = put(rig.ledger, State.PROCESSING, "p.pdf", engine="fake", job_id="job-p", attempts=1)
    poller = rig.poller()
    delays = []
    for _ in range(12):
        assert poller.step() is True
        row = rig.ledger.get(job.id)
        assert (row.state, row.job_id, row.attempts) == ("processing", "job-p", 1)
        assert row.last_error == "connection reset"
        delays.append(row.next_attempt_at - rig.clock())
        assert poller.step() is False  # not due yet
        rig.due(row)
    assert rig.engine.submitted == []
    assert delays[0] < 1 and all(delay <= POLL_BACKOFF_CAP for delay in delays)
    assert delays[-1] >= POLL_BACKOFF_CAP / 2
    rig.engine.on_poll = answers(Running(1), PollTrouble("connection reset"))
    poller.step()
    rig.due(rig.ledger.get(job.id))
    poller.step()
    assert rig.ledger.get(job.id).next_attempt_at - rig.clock() < 1, (
        "a good poll resets the backoff"
    )


def test_an_orphaned_job_is_submitted_again(make_rig):
    lost = Orphaned("the API no longer has job job-p")
    rig = make_rig(FakeEngine(on_poll=lost))
    rig.drop("a.pdf")
    submitter, poller = rig.submitter(), rig.poller()
    assert submitter.step() is True
    rig.due(rig.row())
    assert poller.step() is True
    row = rig.row()
    assert (row.state, row.job_id, row.last_error) == ("pending", None, lost.message)
    assert submitter.step() is True
    row = rig.row()
    assert (row.state, row.job_id, row.attempts) == ("processing", "job-2", 2)


def test_an_orphaned_job_with_no_attempts_left_fails(make_rig):
    rig = make_rig(FakeEngine(on_poll=Orphaned("job j did not finish within 600 s (job_timeout)")))
    job = put(rig.ledger, State.PROCESSING, "p.pdf", engine="fake", job_id="j", attempts=5)
    assert rig.poller().step() is True
    row = rig.ledger.get(job.id)
    assert row.state == State.FAILED
    assert row.reason == "gave up after 5 attempts: job j did not finish within 600 s (job_timeout)"


# -- the outbox ------------------------------------------------------------------------------


def test_an_unwritable_outbox_is_retried_with_growing_backoff(make_rig, tmp_path):
    rig = make_rig(FakeEngine())
    blocked = tmp_path / "blocked-outbox"
    blocked.write_text("a file where the outbox folder should be")
    inbox = replace(rig.inbox, outbox=blocked)
    finisher = Finisher(replace(rig.config, inboxes=(inbox,)), rig.path, clock=rig.clock)
    lifecycle = finisher.lifecycle(rig.connect())
    body = b'{"inference": {"result": {"pages": []}}}'
    row = put(rig.ledger, State.FETCHED, "a.pdf", engine="fake", job_id="j", result=body)
    finisher.notify(row, body)
    assert finisher.step(lifecycle, timeout=0) is True
    delays = []
    for tries in range(1, 7):
        row = rig.ledger.get(row.id)
        assert (row.state, row.write_attempts) == ("fetched", tries)
        delays.append(row.next_attempt_at - rig.clock())
        finisher.sweep(lifecycle)  # not due yet: nothing is tried
        assert rig.ledger.get(row.id).write_attempts == tries
        rig.due(row)
        finisher.sweep(lifecycle)
    assert delays == sorted(set(delays)), f"the backoff must grow: {delays}"
    assert rig.ledger.inbox_info()["scans"]["last_error"].startswith("cannot write outbox")
    blocked.unlink()
    blocked.mkdir()
    rig.due(rig.ledger.get(row.id))
    finisher.sweep(lifecycle)
    done = rig.ledger.get(row.id)
    assert (done.state, done.result_path) == ("done", str(blocked / "a.pdf.json"))
    assert (blocked / "a.pdf.json").read_bytes() == body
    assert rig.ledger.result_body(row.id, row.generation) is None


# -- rows of an inbox that left the config ---------------------------------------------------


def test_rows_of_an_inbox_that_left_the_config_are_left_alone(make_rig):
    rig = make_rig(FakeEngine(on_poll=Running(1)))
    put(rig.ledger, State.PENDING, "a.pdf", "gone", engine="fake")
    put(rig.ledger, State.PROCESSING, "b.pdf", "gone", engine="fake", job_id="j")
    submitter, poller = rig.submitter(), rig.poller()
    before = rig.ledger.rows()
    sql = statements(submitter.ledger) + statements(poller.ledger)
    for _ in range(10):
        assert (submitter.step(), poller.step()) == (False, False)
    assert (rig.engine.submitted, rig.engine.polled) == ([], [])
    assert rig.ledger.rows() == before
    # Nothing of theirs is due: the loops rest as long as they may, rather than spin.
    assert submitter.rest() == poller.rest() == REST_MAX
    assert len(sql) <= 10 * 3


def test_jobs_of_an_inbox_that_left_the_config_do_not_take_the_capacity(make_rig):
    rig = make_rig(FakeEngine(capacity=2))
    put(rig.ledger, State.PROCESSING, "a.pdf", "gone", engine="fake", job_id="j1")
    put(rig.ledger, State.PROCESSING, "b.pdf", "gone", engine="fake", job_id="j2")
    rig.drop("c.pdf")
    submitter = rig.submitter()
    assert submitter.step() is True, "jobs nobody follows keep live inboxes from submitting"
    assert rig.row("c.pdf").state == State.PROCESSING
