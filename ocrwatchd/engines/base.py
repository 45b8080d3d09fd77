"""The engine interface that the Mindee client and the local engine both implement.

An engine takes a file and gives back a job id (`submit`), and tells what became of a
job id (`poll`); both answer with a lifecycle outcome, never by raising for the file's
sake. One submitter loop and one poller loop (`ocrwatchd.pipeline`) drive any engine,
and `ocrwatchd ocr FILE` goes the same way.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ocrwatchd.lifecycle import Outcome, RetryPolicy
from ocrwatchd.pacing import Wakeup

if TYPE_CHECKING:
    from ocrwatchd.config import Config


@dataclass(frozen=True)
class Submission:
    """A file to OCR: where it is, the alias the result carries, the model to use and,
    when the caller opened it safely, the open file to read (an engine that reads in
    this process reads that, not the path)."""

    path: Path
    alias: str
    model_id: str | None
    file: BinaryIO | None = None


@dataclass(frozen=True)
class JobRef:
    """A job to follow: its id and when it was submitted (wall-clock seconds)."""

    job_id: str
    enqueued_at: float | None


class Engine(ABC):
    """An OCR engine, shared by the loop threads that drive it (it makes its own
    per-thread connections where it needs them).

    `name` is recorded on each row it takes. `durable_jobs` says whether its job ids
    survive a restart of the daemon (a remote API's do; a worker process's do not), so
    recovery at start resumes those jobs or submits the files again. `policy` says how
    often a file is submitted before it fails. `capacity` bounds the jobs in flight.
    `news` is set when the engine learns of a job's end by itself (a worker finished, a
    webhook arrived); `take_news` then names those jobs, to be polled at once.
    """

    name: str
    durable_jobs: bool
    policy: RetryPolicy = RetryPolicy()

    def __init__(self) -> None:
        # Told of each request to a remote API (endpoint, status, seconds), if any.
        self.on_request: Callable[[str, int | str, float], None] | None = None
        self.news = Wakeup()
        self._news: set[str] = set()
        self._news_lock = threading.Lock()

    @classmethod
    @abstractmethod
    def from_config(cls, config: Config, *, daemon: bool = False) -> Engine:
        """The engine as the config describes it; `daemon`: for a long-running daemon
        (rather than one file)."""

    @classmethod
    def problems(cls, config: Config) -> list[str]:
        """What in the environment keeps this engine from working at all (formatted like
        config problems); checked before the daemon starts."""
        return []

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many jobs may be in flight at once."""

    @abstractmethod
    def submit(self, submission: Submission) -> Outcome:
        """Start OCR of one file: Submitted, or RetryLater, Failed, Vanished,
        AccountRefused."""

    @abstractmethod
    def poll(self, job: JobRef) -> Outcome:
        """What became of a job: Running, Result, or PollTrouble, RetryLater, Failed,
        Vanished, Orphaned, AccountRefused."""

    @abstractmethod
    def close(self) -> None:
        """Release workers and connections. Jobs not finished are left to the next start."""

    def announce(self, job_id: str) -> None:
        """Record news of a job (called from any thread)."""
        with self._news_lock:
            self._news.add(job_id)
        self.news.notify()

    def take_news(self) -> set[str]:
        with self._news_lock:
            news, self._news = self._news, set()
        return news
