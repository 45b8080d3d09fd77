"""The loops that drive any engine: submitters take pending files to the engine, pollers
follow the jobs until a result is stored. Each loop is one steppable `step()` that says
whether it did work; `run_loop` rests between steps on an event, for as long as nothing
can be due, so an idle daemon costs next to nothing.

Order of commits (the crash-safety argument): a row is `uploading` before the engine is
asked; the job id is committed (`processing`) before the first poll; the result body is
committed (`fetched`) before anything else is done with it, because the API may delete it
after one fetch. After a crash only an `uploading` row is submitted again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ocrwatchd.config import Config
from ocrwatchd.engines.base import Engine, JobRef, Submission
from ocrwatchd.fsafe import UnsafeSource, identity_of_open, open_source
from ocrwatchd.ledger import Ledger, Row, storage_trouble, temporary
from ocrwatchd.lifecycle import (
    AccountRefused,
    Failed,
    Lifecycle,
    Orphaned,
    Outcome,
    PollTrouble,
    Result,
    RetryLater,
    Running,
    State,
    Submitted,
    Vanished,
)
from ocrwatchd.pacing import Wakeup, backoff_delay

log = logging.getLogger(__name__)

PAUSE_SECONDS = 300  # after the account was refused: one probe per this many seconds
IDLE_MIN, IDLE_CAP, REST_MAX = 0.05, 2.0, 5.0
BUSY = (State.UPLOADING, State.PROCESSING)


class Gate:
    """What holds all of one engine's work back: a pause after the account was refused
    (401/402/403; one probe every PAUSE_SECONDS, or a reload) and, for submissions, a hold
    after a 429. Until a submission has been accepted (at start, after a pause), only one
    is let through at a time: a refused key costs one request, not one per thread.
    Shared by the loops; `note` learns from each outcome."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.reason: str | None = None
        self.until = 0.0
        self.hold_until = 0.0
        self.proven = False
        self.probing = False
        self._lock = threading.Lock()

    def wait(self, *, submitting: bool) -> float:
        """Seconds before work may go on (0: now)."""
        now = self.clock()
        paused = self.until - now if self.reason is not None else 0.0
        held = self.hold_until - now if submitting else 0.0
        return max(0.0, paused, held)

    def admit(self) -> bool:
        """Whether one more submission may go now (then `note` its outcome, or `release`)."""
        with self._lock:
            if self.wait(submitting=True) > 0 or (self.probing and not self.proven):
                return False
            self.probing = not self.proven
            return True

    def release(self) -> None:
        with self._lock:
            self.probing = False

    def note(self, outcome: Outcome, ledger: Ledger) -> None:
        with self._lock:
            self.probing = False
        match outcome:
            case AccountRefused(message):
                first = self.reason is None
                self.reason, self.until, self.proven = message, self.clock() + PAUSE_SECONDS, False
                ledger.set_paused(message)
                if first:
                    log.error(
                        "%s; remote work is paused (one retry every %d s). Fix the API key or"
                        " the account, then reload (SIGHUP).",
                        message,
                        PAUSE_SECONDS,
                    )
            case RetryLater(hold=True, after=after):
                self.hold_until = self.clock() + backoff_delay(1, after)
            case Submitted() | Running() | Result():
                self.proven = True
                if self.reason is not None:
                    log.info("the engine accepts the account again; resuming")
                    self.reason = None
                    ledger.set_paused(None)


@dataclass
class Shared:
    """What one engine's loops share: the engine, its gate, the config whose inboxes they
    serve, the stop flag, and the wakeups they give each other (a job submitted wakes
    the pollers; a job that leaves flight wakes the submitters)."""

    engine: Engine
    config: Config
    stop: threading.Event
    gate: Gate = field(default_factory=Gate)
    claim_lock: threading.Lock = field(default_factory=threading.Lock)
    poll_wake: Wakeup = field(default_factory=Wakeup)
    submit_wake: Wakeup = field(default_factory=Wakeup)

    available: Mapping[str, bool] = field(default_factory=dict)  # intake's view

    @property
    def inboxes(self) -> list[str]:
        """The inboxes whose rows are worked on: rows of an inbox that left the config
        wait for a config that has it again, and an unavailable inbox's rows wait for it."""
        return [i.name for i in self.config.inboxes if self.available.get(i.name, True)]


class Loop:
    """One thread's loop over one engine: the shared parts, and its own lifecycle (and so
    its own ledger connection)."""

    def __init__(self, shared: Shared, lifecycle: Lifecycle) -> None:
        self.shared = shared
        self.engine = shared.engine
        self.gate = shared.gate
        self.lifecycle = lifecycle
        self.ledger = lifecycle.ledger
        # An engine's answer the ledger refused for a while (disk full): a job id or a
        # result body exists nowhere else, so it is kept here and stored before any
        # other work of this loop.
        self.held: tuple[Row, Outcome] | None = None

    def _record(self, row: Row, outcome: Outcome) -> None:
        """Apply the engine's outcome, then tell the gate and the other loops. When the
        ledger refuses it for a while, hold it and raise (the loop's storage_trouble
        waits); `step` tries it again first, until the ledger takes it."""
        try:
            self.lifecycle.apply(row, outcome)
        except sqlite3.Error as exc:
            if temporary(exc):
                if self.held is None:
                    log.warning(
                        "%s: %s: the ledger refused %s (%s); kept in memory until it is stored",
                        row.inbox,
                        row.relpath,
                        _shown(outcome),
                        exc,
                    )
                self.held = (row, outcome)
            raise
        if self.held is not None:
            log.info("%s: %s: %s stored", row.inbox, row.relpath, _shown(outcome))
            self.held = None
        probing = not self.gate.proven
        self.gate.note(outcome, self.ledger)
        self._told(outcome, probing and self.gate.proven)

    def _told(self, outcome: Outcome, opened: bool) -> None:
        """Wake the loops an outcome concerns (`opened`: the gate opened with it)."""

    def _store_held(self) -> bool:
        """Store a held outcome, if any (raises again while the ledger still refuses)."""
        if self.held is None:
            return False
        self._record(*self.held)
        return True

    def _until(self, when: float | None) -> float:
        return REST_MAX if when is None else when - self.lifecycle.clock()


class Submitter(Loop):
    """Takes due pending files to the engine, while it has capacity."""

    def _busy(self) -> int:
        """Jobs in flight that count against the capacity (those of inboxes worked on)."""
        return self.ledger.count(BUSY, inboxes=self.shared.inboxes, engine=self.engine.name)

    def _claim(self) -> Row | None:
        # A lock, so that this process's submitters together keep to the capacity.
        with self.shared.claim_lock:
            busy = self._busy()
            if busy >= self.engine.capacity:
                return None
            return self.ledger.claim(
                State.PENDING, State.UPLOADING, inboxes=self.shared.inboxes, engine=self.engine.name
            )

    def step(self) -> bool:
        if self._store_held():
            return True
        if not self.gate.admit():
            return False
        row = self._claim()
        if row is None:
            self.gate.release()
            return False
        try:
            outcome = self._submit(row)
        except Exception as exc:
            self.gate.release()
            self.lifecycle.internal_error(row, exc)
            return True
        self._record(row, outcome)
        return True

    def _told(self, outcome: Outcome, opened: bool) -> None:
        if isinstance(outcome, Submitted):
            self.shared.poll_wake.notify()
        if opened:  # the gate's first probe came back: the others may go too
            self.shared.submit_wake.notify()

    def _submit(self, row: Row) -> Outcome:
        """Open the very file that settled (no link followed) and hand it to the engine."""
        config = self.shared.config
        inbox = next(i for i in config.inboxes if i.name == row.inbox)
        path = inbox.path / row.relpath
        later = inbox.settle_seconds + 1
        try:
            source = open_source(inbox.path, row.relpath)
        except FileNotFoundError:
            return Vanished()
        except UnsafeSource as exc:
            return Failed(str(exc))
        except OSError as exc:
            return RetryLater(f"cannot read the file: {exc}")
        with source:
            if not row.same_identity(identity_of_open(source.identity)):
                # Intake sees the change too, and settles the new version.
                return RetryLater("changed since it settled", after=later, counts=False)
            if source.writer_active():
                return RetryLater("a process has it open for writing", after=later, counts=False)
            model = config.model_id_for(inbox)
            return self.engine.submit(Submission(path, str(path), model, source.reader()))

    def rest(self) -> float:
        wait = self.gate.wait(submitting=True)
        if wait > 0:
            return wait
        if self._busy() >= self.engine.capacity:
            return REST_MAX  # a poller wakes us when a job leaves flight
        return self._until(self.ledger.next_due_at(State.PENDING, inboxes=self.shared.inboxes))


class Poller(Loop):
    """Follows the engine's jobs: those it announced news of at once, the rest when due."""

    def __init__(self, shared: Shared, lifecycle: Lifecycle, share: tuple[int, int]) -> None:
        super().__init__(shared, lifecycle)
        self.share = share

    def _rows(self) -> list[Row]:
        rows = self.ledger.rows_with_jobs(self.engine.take_news())
        seen = {row.id for row in rows}
        due = self.ledger.due(
            State.PROCESSING,
            limit=50,
            inboxes=self.shared.inboxes,
            engine=self.engine.name,
            share=self.share,
        )
        return rows + [row for row in due if row.id not in seen]

    def step(self) -> bool:
        if self._store_held():
            return True
        if self.gate.wait(submitting=False) > 0:
            return False
        rows = self._rows()
        for row in rows:
            if self.shared.stop.is_set() or self.gate.wait(submitting=False) > 0:
                break
            self.poll(row)
        return bool(rows)

    def poll(self, row: Row) -> None:
        try:
            if row.job_id is None:
                outcome: Outcome = Orphaned("no job id was recorded")
            else:
                outcome = self.engine.poll(JobRef(row.job_id, row.enqueued_at))
        except Exception as exc:
            self.lifecycle.internal_error(row, exc)
            self.shared.submit_wake.notify_one()
            return
        self._record(row, outcome)

    def _told(self, outcome: Outcome, opened: bool) -> None:
        if not isinstance(outcome, Running | PollTrouble):
            self.shared.submit_wake.notify_one()  # a slot is free

    def rest(self) -> float:
        wait = self.gate.wait(submitting=False)
        if wait > 0:
            return wait
        return self._until(
            self.ledger.next_due_at(
                State.PROCESSING,
                inboxes=self.shared.inboxes,
                engine=self.engine.name,
                share=self.share,
            )
        )


def _shown(outcome: Outcome) -> str:
    """An outcome for the log: its kind and job id, never a result body."""
    job = getattr(outcome, "job_id", None)
    return f"{type(outcome).__name__}" + (f" (job {job})" if job else "")


def run_loop(
    name: str,
    step: Callable[[], bool],
    rest: Callable[[], float],
    wake: threading.Event,
    stop: threading.Event,
) -> None:
    """Step while there is work; then rest until the next thing can be due (`rest()`
    seconds, at most REST_MAX) or `wake` is set. When work is due but cannot be taken
    (capacity, another thread), the rest grows from IDLE_MIN to IDLE_CAP: never a spin."""
    idle = IDLE_MIN
    while not stop.is_set():
        wake.clear()
        wait = 0.0
        with storage_trouble(stop, name):
            if step():
                idle = IDLE_MIN
                continue
            wait = rest()
        if wait <= 0:
            wait, idle = idle, min(idle * 2, IDLE_CAP)
        else:
            idle = IDLE_MIN
        wake.wait(min(wait, REST_MAX))


def ocr_file(
    engine: Engine,
    submission: Submission,
    *,
    clock: Callable[[], float] = time.time,
    wait: Callable[[float], object] | None = None,
) -> Outcome:
    """`ocrwatchd ocr FILE`: submit and follow one file on the same engine interface,
    with the engine's retry policy. Returns the last outcome: Result, or what ended it
    (Failed, Vanished, AccountRefused, RetryLater or PollTrouble when retries ran out)."""
    if wait is None:
        news = engine.news.subscribe()

        def wait(seconds: float) -> object:
            news.clear()
            return news.wait(seconds)

    policy = engine.policy
    for attempt in range(1, policy.max_attempts + 1):
        outcome = engine.submit(submission)
        if isinstance(outcome, Submitted):
            outcome = _follow(engine, outcome, clock(), wait, policy.max_attempts)
        if not isinstance(outcome, RetryLater | Orphaned) or attempt == policy.max_attempts:
            return outcome
        after = outcome.after if isinstance(outcome, RetryLater) else None
        wait(backoff_delay(attempt, after, cap=30))
    raise AssertionError("unreachable")


def _follow(
    engine: Engine,
    submitted: Submitted,
    enqueued_at: float,
    wait: Callable[[float], object],
    max_troubles: int,
) -> Outcome:
    job = JobRef(submitted.job_id, enqueued_at)
    delay, troubles = submitted.poll_in, 0
    while True:
        wait(delay)
        outcome = engine.poll(job)
        if isinstance(outcome, PollTrouble):
            troubles += 1
            if troubles >= max_troubles:
                return outcome
            delay = backoff_delay(troubles, outcome.after, base=1.0, cap=30)
        elif isinstance(outcome, Running):
            delay = outcome.poll_in
        else:
            return outcome
