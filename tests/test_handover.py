"""Recovery at start when the engine changed: another engine's jobs that survive a restart
(Mindee's) are kept to be followed there; work of an engine whose jobs die with the
daemon (the local workers') is submitted again. Real ledger file, scripted engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ocrwatchd import handover
from ocrwatchd.lifecycle import State
from ocrwatchd.secret import Secret
from tests.lifecycle_support import FakeEngine, Rig, put, rigs


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    yield from rigs(tmp_path)


def test_recovery_keeps_mindee_jobs_and_requeues_dead_local_ones(make_rig):
    rig = make_rig(FakeEngine(name="local", durable=False))
    fields = {"attempts": 1, "job_id": "job-1"}
    put(rig.ledger, State.PROCESSING, "paid.pdf", engine="mindee", **fields)
    put(rig.ledger, State.PROCESSING, "worker.pdf", engine="local", **fields)
    put(rig.ledger, State.UPLOADING, "cut.pdf", engine="mindee", attempts=1)
    assert handover.recover(rig.lifecycle(), rig.engine) == 2
    assert rig.row("paid.pdf").state == State.PROCESSING
    assert rig.row("worker.pdf").state == State.PENDING
    assert rig.row("cut.pdf").state == State.PENDING
    assert handover.in_flight(rig.ledger, "local") == {"mindee": 1}
    assert handover.in_flight(rig.ledger, "mindee") == {}


def test_status_lines_say_whether_old_jobs_can_be_followed(make_rig):
    rig = make_rig(FakeEngine(name="local", durable=False))
    without_key = rig.config
    assert handover.waiting(without_key, {"mindee": 2}) == [
        "2 job(s) started on the mindee engine wait: no Mindee API key is configured;"
        " reload with a config that has one"
    ]
    with_key = replace(rig.config, mindee=replace(rig.config.mindee, api_key=Secret("k" * 32)))
    assert handover.waiting(with_key, {"mindee": 2}) == [
        "2 job(s) started on the mindee engine finish there"
    ]
