"""Poll timing learnt from the API's own processing times (the Mindee engine against the
emulator, which keeps each job Processing for a set time)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ocrwatchd.config import MindeeConfig
from ocrwatchd.engines.base import JobRef, Submission
from ocrwatchd.engines.mindee_jobs import MindeeEngine
from ocrwatchd.engines.mindee_pace import Deliveries
from ocrwatchd.lifecycle import Outcome, Result, Running, Submitted
from ocrwatchd.secret import Secret
from tests.helpers import FIXTURES, wait_for
from tests.mindee_emulator import MindeeEmulator

MODEL = "7c5b6d1e-2a3f-4b8c-9d0e-1f2a3b4c5d6e"
RECEIPT = FIXTURES / "file_types" / "receipt.jpg"


def make_engine(emulator: MindeeEmulator, **settings: Any) -> MindeeEngine:
    config = MindeeConfig(Secret(emulator.api_key), "env", emulator.url, MODEL, **settings)
    return MindeeEngine(config)


@pytest.fixture
def engine(emulator: MindeeEmulator) -> Iterator[MindeeEngine]:
    emulator.processing_seconds = 0.3
    made = make_engine(emulator)
    yield made
    made.close()


def follow(engine: MindeeEngine, submitted: Outcome, started: float) -> Result:
    assert isinstance(submitted, Submitted)
    job = JobRef(submitted.job_id, started)

    def result() -> Result | None:
        outcome = engine.poll(job)
        return outcome if isinstance(outcome, Result) else None

    return wait_for(result, timeout=5, what="the result")


def test_first_poll_comes_when_similar_files_took_the_api(engine, emulator):
    first = engine.submit(Submission(RECEIPT, "a", MODEL))
    assert first == Submitted(first.job_id, 2)  # nothing known yet: the SDKs' 2 s
    follow(engine, first, engine.clock())
    second = engine.submit(Submission(RECEIPT, "b", MODEL))
    assert isinstance(second, Submitted)
    assert 0.25 <= second.poll_in <= 0.4, second.poll_in
    # Just missed: the next look is a fraction of the expected time away, not 1.5 s.
    outcome = engine.poll(JobRef(second.job_id, engine.clock() - 0.35))
    assert isinstance(outcome, Running | Result)
    if isinstance(outcome, Running):
        assert outcome.poll_in < 0.2


def test_polls_keep_to_the_rate_limit_for_the_jobs_in_flight(emulator):
    emulator.processing_seconds = 0.05
    engine = make_engine(emulator, poll_per_minute=60)
    try:
        first = engine.submit(Submission(RECEIPT, "a", MODEL))
        follow(engine, first, engine.clock())
        jobs = [engine.submit(Submission(RECEIPT, str(n), MODEL)) for n in range(3)]
        # At one poll a second, n jobs in flight are each looked at every n seconds at most.
        assert [job.poll_in for job in jobs if isinstance(job, Submitted)] == [1, 2, 3]
    finally:
        engine.close()


def test_pushed_mode_polls_only_as_a_fallback(engine):
    first = engine.submit(Submission(RECEIPT, "a", MODEL))
    follow(engine, first, engine.clock())
    engine.pushed = True
    second = engine.submit(Submission(RECEIPT, "b", MODEL))
    assert isinstance(second, Submitted) and second.poll_in > 2 * 0.25 + 1.5


def test_deliveries_are_bounded_and_taken_once():
    deliveries = Deliveries(max_count=2, max_bytes=10)
    deliveries.put("A", b"12345")
    deliveries.put("b", b"123456")  # over 10 bytes together: the oldest goes
    assert deliveries.take("a") is None
    assert deliveries.take("B") == b"123456"
    assert deliveries.take("b") is None
    assert deliveries.just_taken("b") and not deliveries.just_taken("a")
