"""The outcomes that intake, an engine, the finisher or an operator report about one row.
`ocrwatchd.lifecycle` decides what each means for the row (and re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass

# -- outcomes -----------------------------------------------------------------------
# What intake, an engine, the finisher or an operator reports about one row.


@dataclass(frozen=True)
class Outcome:
    pass


@dataclass(frozen=True)
class Settled(Outcome):
    """Complete and checked: queue it."""

    sha256: str
    description: str = ""


@dataclass(frozen=True)
class Duplicate(Outcome):
    """Same content as a done file: its result was copied to `result_path`."""

    sha256: str
    result_path: str
    original_id: int
    original: str


@dataclass(frozen=True)
class Submitted(Outcome):
    """The engine took the file as job `job_id`; follow it in `poll_in` seconds."""

    job_id: str
    poll_in: float


@dataclass(frozen=True)
class Running(Outcome):
    """The job is still running; look again in `poll_in` seconds."""

    poll_in: float


@dataclass(frozen=True)
class Result(Outcome):
    """The job's result (OCR JSON), to be stored before anything else is done with it."""

    body: bytes


@dataclass(frozen=True)
class RetryLater(Outcome):
    """This submission did not work; submit again later (the policy may fail the file).

    `counts`: whether it counts as one of the policy's attempts. `after`: no sooner than
    this many seconds (a Retry-After). `hold`: the engine is rate-limited; every
    submission waits (a 429).
    """

    message: str
    after: float | None = None
    counts: bool = True
    hold: bool = False


@dataclass(frozen=True)
class PollTrouble(Outcome):
    """A poll did not get an answer; the job itself is not in doubt. Poll again later."""

    message: str
    after: float | None = None


@dataclass(frozen=True)
class Failed(Outcome):
    """The file can never be done as it is."""

    reason: str


@dataclass(frozen=True)
class Vanished(Outcome):
    """The file is gone from the inbox before it was processed."""


@dataclass(frozen=True)
class Orphaned(Outcome):
    """The engine no longer has the job (lost, expired, or stuck past its deadline)."""

    message: str


@dataclass(frozen=True)
class AccountRefused(Outcome):
    """The engine refused the account (401/402/403), not the file: nothing counts."""

    message: str


@dataclass(frozen=True)
class Interrupted(Outcome):
    """Work cut short by a stop or a crash, found at start."""


@dataclass(frozen=True)
class Written(Outcome):
    """The result is in the outbox at `result_path`."""

    result_path: str


@dataclass(frozen=True)
class WriteTrouble(Outcome):
    """The outbox could not be written; the stored result waits for another try."""

    message: str


@dataclass(frozen=True)
class Requeued(Outcome):
    """An operator asked for a failed file to be tried again."""


@dataclass(frozen=True)
class RetryPolicy:
    """How an engine's submissions are retried: `max_attempts` submissions of one file,
    then it fails; backoff between them starts at `base` seconds, at most `cap`."""

    max_attempts: int = 5
    base: float = 2.0
    cap: float = 600.0
