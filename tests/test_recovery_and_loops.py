"""The loops' frame, in-process: recovery at start puts work cut short back in the
queue, and `run_loop` neither spins nor sleeps through a wakeup."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocrwatchd.daemon import recover
from ocrwatchd.lifecycle import State
from ocrwatchd.pipeline import IDLE_MIN, REST_MAX, run_loop
from tests.helpers import wait_for
from tests.lifecycle_support import START, FakeEngine, Rig, put, rigs


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    yield from rigs(tmp_path)


# -- recovery at start -----------------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_recover_requeues_work_cut_short(make_rig, durable):
    rig = make_rig(FakeEngine(durable=durable))
    fields = {"attempts": 2, "next_attempt_at": START + 500}
    uploading = put(rig.ledger, State.UPLOADING, "u.pdf", engine="fake", **fields)
    job = put(rig.ledger, State.PROCESSING, "j.pdf", engine="fake", job_id="j", **fields)
    foreign = put(rig.ledger, State.PROCESSING, "f.pdf", engine="other", job_id="k", **fields)
    no_id = put(rig.ledger, State.PROCESSING, "n.pdf", engine="fake", **fields)
    settled = put(rig.ledger, State.PENDING, "p.pdf", engine="fake", **fields)
    assert recover(rig.lifecycle(), rig.engine) == (3 if durable else 4)
    requeued = [uploading, foreign, no_id] + ([] if durable else [job])
    for row in requeued:
        after = rig.ledger.get(row.id)
        assert (after.state, after.job_id, after.attempts) == ("pending", None, 2)
        assert after.next_attempt_at == rig.clock()
    if durable:
        assert rig.ledger.get(job.id) == job
    assert rig.ledger.get(settled.id) == settled


# -- the loop driver -----------------------------------------------------------------------


class Counted:
    def __init__(self, rest: float) -> None:
        self.steps = 0
        self.wait = rest
        self.wake, self.stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(
            target=run_loop, args=("test", self.step, self.rest, self.wake, self.stop)
        )

    def step(self) -> bool:
        self.steps += 1
        return False

    def rest(self) -> float:
        return self.wait

    def __enter__(self) -> Counted:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.wake.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


def test_run_loop_never_spins_when_work_is_due_but_cannot_be_taken():
    with Counted(rest=0) as loop:
        # The measure itself is a window of time: how often the loop stepped in it.
        loop.stop.wait(1.0)
        steps = loop.steps
    # IDLE_MIN doubling: steps at 0, 0.05, 0.15, 0.35, 0.75 s, the next past 1.5 s.
    assert 2 <= steps <= 6, steps
    assert IDLE_MIN == 0.05


def test_run_loop_wakes_at_once_when_told():
    with Counted(rest=REST_MAX) as loop:
        wait_for(lambda: loop.steps == 1, timeout=2, what="the first step")
        loop.wake.set()
        wait_for(lambda: loop.steps == 2, timeout=1, what="a step after the wake")
