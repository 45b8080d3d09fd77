"""The Mindee engine adapter decides job_timeout: only the API's own "still processing"
answer counts toward it, so a job whose polls fail (network, 5xx, 429) is never given up
for that; a job the API no longer has is orphaned (and submitted again by the
lifecycle). Against the API emulator on 127.0.0.1, with a manual clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ocrwatchd.config import MindeeConfig
from ocrwatchd.engines.base import JobRef, Submission
from ocrwatchd.engines.mindee_jobs import MindeeEngine
from ocrwatchd.lifecycle import Orphaned, PollTrouble, Running, Submitted
from ocrwatchd.secret import Secret
from tests.helpers import FIXTURES
from tests.lifecycle_support import ManualClock
from tests.mindee_emulator import MindeeEmulator

MODEL = "7c5b6d1e-2a3f-4b8c-9d0e-1f2a3b4c5d6e"
JOB_TIMEOUT = 60.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def engine(emulator: MindeeEmulator, clock: ManualClock) -> Iterator[MindeeEngine]:
    emulator.processing_polls = 1000  # the job stays Processing for the whole test
    settings = MindeeConfig(
        api_key=Secret(emulator.api_key),
        api_key_source="env",
        base_url=emulator.url,
        model_id=MODEL,
        request_timeout=5,
        job_timeout=JOB_TIMEOUT,
        poll_interval=0.5,
    )
    made = MindeeEngine(settings, clock=clock)
    yield made
    made.close()


def submit(engine: MindeeEngine, clock: ManualClock) -> JobRef:
    path = FIXTURES / "file_types" / "receipt.jpg"
    outcome = engine.submit(Submission(path, str(path), MODEL))
    assert isinstance(outcome, Submitted)
    return JobRef(outcome.job_id, clock())


def test_a_job_still_processing_past_job_timeout_is_orphaned(engine, clock):
    job = submit(engine, clock)
    assert engine.poll(job) == Running(0.5)
    clock.advance(JOB_TIMEOUT - 1)
    assert engine.poll(job) == Running(0.5)
    clock.advance(2)
    outcome = engine.poll(job)
    assert isinstance(outcome, Orphaned)
    assert "(job_timeout)" in outcome.message and job.job_id in outcome.message


def test_a_job_with_no_submission_time_never_times_out(engine, clock):
    job = submit(engine, clock)
    clock.advance(JOB_TIMEOUT * 100)
    assert engine.poll(JobRef(job.job_id, None)) == Running(0.5)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_failed_polls_are_poll_trouble_even_past_job_timeout(engine, emulator, clock, status):
    job = submit(engine, clock)
    clock.advance(JOB_TIMEOUT * 2)
    emulator.fault("job", status=status, retry_after=7 if status == 429 else None, times=3)
    for _ in range(3):
        outcome = engine.poll(job)
        assert isinstance(outcome, PollTrouble), outcome
        if status == 429:
            assert outcome.after == 7
    assert isinstance(engine.poll(job), Orphaned)  # the API answers again: now it counts


def test_a_job_the_api_no_longer_has_is_orphaned(engine, emulator, clock):
    job = submit(engine, clock)
    emulator.fault("job", status=404)
    outcome = engine.poll(job)
    assert isinstance(outcome, Orphaned)
    assert job.job_id in outcome.message
