"""A file's life, in one place: its states, the moves between them, the outcomes that
cause those moves, and `Lifecycle.apply`, the only code that changes a row's state.

Intake, the engine loops, the finisher, recovery at start and `ocrwatchd retry` do not
move rows themselves: each reports an *outcome* ("settled", "submitted as job X",
"retry later", "the file vanished", ...) and `apply` decides the move from the table
below and the engine's retry policy, commits it through the ledger's one guarded move,
writes the one log line, and moves a failed source to `failed_dir` or disposes of a done
one. The ledger keeps the SQL.

    settling   seen, waiting for size and mtime to stay unchanged for settle_seconds
    pending    complete and queued (also: waiting for a retry at next_attempt_at)
    uploading  being submitted to the engine (a crash here may repeat the submission)
    processing the engine's job id is stored; the job is being followed
    fetched    the result is stored in the ledger; the outbox file is not written yet
    done       the result is in the outbox
    failed     permanently failed; `reason` says why
    ignored    never to be processed; `reason` says why
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ocrwatchd import disposal
from ocrwatchd.ledger_schema import fresh_version
from ocrwatchd.outcomes import (
    AccountRefused,
    Duplicate,
    Failed,
    Interrupted,
    Orphaned,
    Outcome,
    PollTrouble,
    Requeued,
    Result,
    RetryLater,
    RetryPolicy,
    Running,
    Settled,
    Submitted,
    Vanished,
    WriteTrouble,
    Written,
)
from ocrwatchd.pacing import backoff_delay
from ocrwatchd.service import file_fields

if TYPE_CHECKING:
    from ocrwatchd.config import InboxConfig
    from ocrwatchd.ledger import Ledger, Row

log = logging.getLogger(__name__)


class State(StrEnum):
    SETTLING = "settling"
    PENDING = "pending"
    UPLOADING = "uploading"
    PROCESSING = "processing"
    FETCHED = "fetched"
    DONE = "done"
    FAILED = "failed"
    IGNORED = "ignored"

    @property
    def public(self) -> str:
        """The name `jobs --json` and `status` show (SPEC's six states)."""
        return _PUBLIC.get(self, self.value)


_PUBLIC = {State.SETTLING: "pending", State.FETCHED: "processing"}
PUBLIC_STATES = ("pending", "uploading", "processing", "done", "failed", "ignored")
TERMINAL = (State.DONE, State.FAILED, State.IGNORED)
IN_FLIGHT = (State.UPLOADING, State.PROCESSING, State.FETCHED)
WAITING = (State.SETTLING, State.PENDING, *IN_FLIGHT)

# Moves within one version (generation) of a file.
TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.SETTLING: frozenset({State.PENDING, State.DONE, State.FAILED, State.IGNORED}),
    State.PENDING: frozenset({State.UPLOADING, State.FAILED, State.IGNORED}),
    State.UPLOADING: frozenset({State.PROCESSING, State.PENDING, State.FAILED, State.IGNORED}),
    State.PROCESSING: frozenset({State.FETCHED, State.PENDING, State.FAILED, State.IGNORED}),
    State.FETCHED: frozenset({State.DONE, State.FAILED}),
    State.DONE: frozenset(),
    State.FAILED: frozenset({State.PENDING}),
    State.IGNORED: frozenset(),
}
# Moves that start a new version: the file at the path changed (→ settling), or the path
# now holds something never to process (→ ignored). A done file keeps its result when a
# rule changes; only a change of the file itself starts it again.
RESETS: Mapping[State, frozenset[State]] = {
    state: frozenset({State.SETTLING} | ({State.IGNORED} if state != State.DONE else set()))
    for state in State
}

REMOVED = "the file was removed from the inbox before it was processed"
POLL_BACKOFF_CAP = 30.0  # a job is never left unpolled for long after a few errors


class IllegalTransition(Exception):
    """A bug: an outcome asked for a move the table does not allow."""


# The states an outcome can be reported for (the others' are in TRANSITIONS alone).
EXPECTED: Mapping[type[Outcome], frozenset[State]] = {
    Settled: frozenset({State.SETTLING}),
    Duplicate: frozenset({State.SETTLING}),
    Submitted: frozenset({State.UPLOADING}),
    Running: frozenset({State.PROCESSING}),
    Result: frozenset({State.PROCESSING}),
    PollTrouble: frozenset({State.PROCESSING}),
    RetryLater: frozenset({State.UPLOADING, State.PROCESSING}),
    Orphaned: frozenset({State.PROCESSING}),
    AccountRefused: frozenset({State.UPLOADING, State.PROCESSING}),
    Interrupted: frozenset({State.UPLOADING, State.PROCESSING}),
    Written: frozenset({State.FETCHED}),
    WriteTrouble: frozenset({State.FETCHED}),
    Requeued: frozenset({State.FAILED}),
}


@dataclass(frozen=True)
class _Move:
    to: State
    fields: dict[str, Any]
    level: int = logging.INFO
    message: str = ""


@dataclass(frozen=True)
class _Defer:
    seconds: float
    error: str | None
    level: int = logging.DEBUG
    message: str = ""


class Lifecycle:
    """Applies outcomes to rows, for one thread (it uses that thread's ledger connection).

    `on_result(row, body)` is called after a result is stored (the finisher writes it);
    `clock` is wall time, the ledger's `next_attempt_at` scale.
    """

    def __init__(
        self,
        ledger: Ledger,
        inboxes: Mapping[str, InboxConfig],
        *,
        policy: RetryPolicy | None = None,
        on_result: Callable[[Row, bytes], None] | None = None,
        on_finished: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.inboxes = inboxes
        self.policy = policy or RetryPolicy()
        self.on_result = on_result
        self.on_finished = on_finished
        self.clock = clock
        self._poll_errors: dict[tuple[int, int], int] = {}

    # -- rows that may not exist yet -------------------------------------------------

    def observe(self, inbox: str, relpath: str, identity: Mapping[str, int]) -> tuple[Row, bool]:
        """A file is on disk with this identity (size, mtime_ns, and where known dev,
        inode, ctime_ns). Returns its row and whether it is new or changed (settling
        again, under a new generation)."""
        row = self.ledger.find(inbox, relpath)
        if row is None:
            created = self.ledger.insert(inbox, relpath, State.SETTLING, **identity)
            if created is not None:
                return created, True
            row = self.ledger.find(inbox, relpath)
            assert row is not None
        if row.state != State.IGNORED and row.same_identity(identity):
            return row, False
        fields = fresh_version(identity, self.clock())
        moved = self.ledger.move(row, State.SETTLING, new_generation=True, **fields)
        return (moved or self.ledger.find(inbox, relpath) or row), moved is not None

    def observe_new(self, inbox: str, files: Sequence[tuple[str, Mapping[str, int]]]) -> list[Row]:
        """`observe` for many paths a scan found without a row, inserted in batched
        transactions (a scan of 100,000 new files is not 100,000 commits). Returns their
        rows; a path another writer inserted meanwhile is observed on its own."""
        rows = self.ledger.insert_many(inbox, State.SETTLING, files)
        if len(rows) < len(files):
            created = {row.relpath for row in rows}
            rows += [
                self.observe(inbox, relpath, identity)[0]
                for relpath, identity in files
                if relpath not in created
            ]
        return rows

    def ignore(self, inbox: str, relpath: str, reason: str) -> bool:
        """The path holds something never to process (a rule, an unsafe kind of file).
        Returns whether that is news (the row was not ignored for this reason already)."""
        row = self.ledger.find(inbox, relpath)
        if row is None:
            if self.ledger.insert(inbox, relpath, State.IGNORED, reason=reason) is None:
                return self.ignore(inbox, relpath, reason)  # another writer inserted it first
            return True
        if State.IGNORED not in RESETS[State(row.state)] or (
            row.state == State.IGNORED and row.reason == reason
        ):
            return False
        fields = {**fresh_version({}, self.clock()), "reason": reason}
        return self.ledger.move(row, State.IGNORED, new_generation=True, **fields) is not None

    # -- the one function that moves a row --------------------------------------------

    def apply(self, row: Row, outcome: Outcome) -> bool:
        """Apply `outcome` to `row` (as read). Returns False when the row had moved on
        (another version of the file, another actor) and nothing was done.

        Raises IllegalTransition when the outcome makes no sense in the row's state.
        """
        plan = self._plan(row, outcome)
        if plan is None:
            return False
        inbox = self.inboxes.get(row.inbox)
        name = inbox.name if inbox else row.inbox
        state = State(row.state)
        expected = EXPECTED.get(type(outcome))
        if expected is not None and state not in expected:
            raise IllegalTransition(f"{type(outcome).__name__} for a {state} row: {row}")
        if isinstance(plan, _Defer):
            writing = isinstance(outcome, WriteTrouble)
            until = self.clock() + plan.seconds
            if not self.ledger.defer(row, until=until, error=plan.error, write_attempt=writing):
                return False
            if writing:
                self.ledger.note_error(row.inbox, plan.error or "")
            if plan.message:
                log.log(plan.level, "%s: %s: %s", name, row.relpath, plan.message)
            return True
        if plan.to not in TRANSITIONS[state]:
            raise IllegalTransition(f"{state} → {plan.to} ({type(outcome).__name__}) for {row}")
        moved = self.ledger.move(row, plan.to, **plan.fields)
        if moved is None:
            return False
        log.log(
            plan.level,
            "%s: %s %s",
            name,
            row.relpath,
            plan.message or plan.to.value,
            extra=file_fields(name, row.relpath, plan.to.value, **_log_fields(plan.fields)),
        )
        self._after(moved, outcome, inbox)
        return True

    def _plan(self, row: Row, outcome: Outcome) -> _Move | _Defer | None:
        state = State(row.state)
        policy = self.policy
        match outcome:
            case Settled(sha256, description):
                return _Move(
                    State.PENDING, {"sha256": sha256, "next_attempt_at": 0}, message=description
                )
            case Duplicate(sha256, result_path, original_id, original):
                fields = {"sha256": sha256, "result_path": result_path, "duplicate_of": original_id}
                return _Move(
                    State.DONE,
                    fields,
                    message=f"is a duplicate of {original}; result reused at {result_path}",
                )
            case Submitted(job_id, poll_in):
                now = self.clock()
                fields = {"job_id": job_id, "enqueued_at": now, "next_attempt_at": now + poll_in}
                return _Move(
                    State.PROCESSING,
                    {**fields, "last_error": None},
                    message=f"submitted; job {job_id}",
                )
            case Running(poll_in):
                self._poll_errors.pop((row.id, row.generation), None)
                return _Defer(poll_in, None)
            case Result(body):
                self._poll_errors.pop((row.id, row.generation), None)
                return _Move(
                    State.FETCHED, {"result": body}, message=f"result fetched (job {row.job_id})"
                )
            case PollTrouble(message, after):
                key = (row.id, row.generation)
                errors = self._poll_errors[key] = self._poll_errors.get(key, 0) + 1
                delay = backoff_delay(errors, after, base=1.0, cap=POLL_BACKOFF_CAP)
                text = f"following job {row.job_id}: {message}; next try in {delay:.0f} s"
                return _Defer(delay, message, logging.WARNING, text)
            case RetryLater(message, after, counts, _hold):
                attempts = row.attempts if counts else row.attempts - 1
                if counts and attempts >= policy.max_attempts:
                    return self._fail(
                        f"gave up after {attempts} attempts: {message}", last_error=message
                    )
                delay = backoff_delay(max(1, attempts), after, base=policy.base, cap=policy.cap)
                fields = {
                    "attempts": attempts,
                    "job_id": None,
                    "last_error": message,
                    "next_attempt_at": self.clock() + delay,
                }
                level = logging.WARNING if counts else logging.INFO
                return _Move(State.PENDING, fields, level, f"{message}; retrying in {delay:.0f} s")
            case Orphaned(message):
                if row.attempts >= policy.max_attempts:
                    return self._fail(f"gave up after {row.attempts} attempts: {message}")
                fields = {"job_id": None, "last_error": message, "next_attempt_at": self.clock()}
                return _Move(State.PENDING, fields, logging.WARNING, f"{message}; submitting again")
            case AccountRefused(message):
                if state == State.UPLOADING:  # the account, not the file: no attempt counts
                    fields = {"attempts": row.attempts - 1, "next_attempt_at": self.clock()}
                    return _Move(
                        State.PENDING, fields, logging.DEBUG, "waits: the account was refused"
                    )
                return _Defer(0, message)
            case Failed(reason):
                return self._fail(reason)
            case Vanished():
                return _Move(
                    State.IGNORED,
                    {"reason": REMOVED},
                    message="removed before it was processed; ignored",
                )
            case Interrupted():
                fields = {"job_id": None, "next_attempt_at": self.clock()}
                return _Move(State.PENDING, fields, message="interrupted; queued again")
            case Written(result_path):
                fields = {"result_path": result_path, "last_error": None}
                return _Move(State.DONE, fields, message=f"done → {result_path}")
            case WriteTrouble(message):
                tries = row.write_attempts + 1
                delay = backoff_delay(tries, cap=300)
                return _Defer(
                    delay, message, logging.ERROR, f"{message}; retrying in {delay:.0f} s"
                )
            case Requeued():
                fields = dict.fromkeys(("reason", "last_error", "job_id"))
                fields.update(attempts=0, next_attempt_at=self.clock())
                return _Move(State.PENDING, fields, message="queued again (retry)")
        raise TypeError(f"unknown outcome {outcome!r}")

    def _fail(self, reason: str, **fields: Any) -> _Move:
        return _Move(
            State.FAILED, {"reason": reason, **fields}, logging.WARNING, f"failed: {reason}"
        )

    def _after(self, row: Row, outcome: Outcome, inbox: InboxConfig | None) -> None:
        """The side effects that follow a committed move."""
        if isinstance(outcome, Result) and self.on_result is not None:
            self.on_result(row, outcome.body)
        if inbox is None:
            return
        if row.state == State.DONE:
            self._finished(row, "done")
            disposal.dispose(self.ledger, inbox, row)
        elif row.state == State.FAILED:
            self._finished(row, "failed")
            disposal.move_failed(self.ledger, inbox, row)

    def _finished(self, row: Row, outcome: str) -> None:
        if self.on_finished is not None:
            self.on_finished(row.inbox, outcome)

    def internal_error(self, row: Row, exc: Exception) -> None:
        """A bug met while handling one file: fail that file with the error (so it ends
        somewhere the user can see) instead of killing the daemon. Ledger errors are not
        the file's and go up to the loop's `storage_trouble`."""
        if isinstance(exc, sqlite3.Error):
            raise exc
        log.exception("%s: %s: internal error", row.inbox, row.relpath)
        current = self.ledger.get(row.id)
        if current is None or State(current.state) in TERMINAL:
            return
        self.apply(
            current, Failed(f"internal error ({type(exc).__name__}: {exc}); please report it")
        )


def _log_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    shown = ("job_id", "reason", "result_path", "sha256")
    return {name: fields[name] for name in shown if fields.get(name) is not None}
