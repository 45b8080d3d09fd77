"""The embedded engine as an `Engine`: files go to the worker processes of `LocalEngine`,
and each finished worker job is announced so that the poller collects it at once.

Job ids are made up here and live only as long as this process: after a restart the
poller finds them unknown (Orphaned) and the files are submitted again.
"""

from __future__ import annotations

import importlib
import threading
import uuid
from concurrent.futures import CancelledError, Future

from ocrwatchd.config import Config, LocalConfig, format_problem
from ocrwatchd.engines.base import Engine, JobRef, Submission
from ocrwatchd.engines.local import LocalEngine, language_problems
from ocrwatchd.errors import EngineError, FileRejected
from ocrwatchd.lifecycle import (
    Failed,
    Orphaned,
    Outcome,
    Result,
    RetryLater,
    Running,
    Submitted,
    Vanished,
)

# A worker's end is announced; this is only the safety net's period.
LOOK_AGAIN = 5.0
STOP_GRACE = 1.0  # seconds the workers get to finish their page at a stop


class LocalJobs(Engine):
    name = "local"
    durable_jobs = False

    def __init__(self, settings: LocalConfig) -> None:
        super().__init__()
        self.settings = settings
        self.pool = LocalEngine(
            workers=settings.workers,
            languages=settings.languages,
            tessdata_dir=settings.tessdata_dir,
            max_pixels_per_page=settings.max_pixels_per_page,
            max_pages=settings.max_pages,
            max_seconds_per_file=settings.max_seconds_per_file,
            max_worker_memory_mb=settings.max_worker_memory_mb,
        )
        self._jobs: dict[str, Future[bytes]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, *, daemon: bool = False) -> LocalJobs:
        return cls(config.local)

    @classmethod
    def problems(cls, config: Config) -> list[str]:
        """Its libraries or language data missing (naming the package to install)."""
        for library in ("tesserocr", "pypdfium2"):
            try:
                importlib.import_module(library)
            except ImportError as error:
                message = f"the local engine cannot be loaded: {error}"
                return [
                    format_problem(config.source, config.marks.get("engine"), "engine", message)
                ]
        local = config.local
        mark = config.marks.get("local.languages")
        return [
            format_problem(config.source, mark, "local.languages", message)
            for message in language_problems(local.languages, local.tessdata_dir)
        ]

    @property
    def capacity(self) -> int:
        return 2 * self.settings.workers  # one running and one waiting per worker

    def submit(self, submission: Submission) -> Outcome:
        job_id = str(uuid.uuid4())
        future = self.pool.submit(submission.path, submission.alias, job_id=job_id)
        with self._lock:
            self._jobs[job_id] = future
        future.add_done_callback(lambda _done: self.announce(job_id))
        return Submitted(job_id, poll_in=LOOK_AGAIN)

    def poll(self, job: JobRef) -> Outcome:
        with self._lock:
            future = self._jobs.get(job.job_id)
            if future is not None and future.done():
                del self._jobs[job.job_id]
        if future is None:
            return Orphaned(f"local job {job.job_id} was lost (the daemon restarted)")
        if not future.done():
            return Running(LOOK_AGAIN)
        try:
            return Result(future.result())
        except CancelledError:  # stopping: the next start submits it again
            return Running(LOOK_AGAIN)
        except FileRejected as exc:
            return Failed(str(exc))
        except FileNotFoundError:
            return Vanished()
        except EngineError as exc:
            return RetryLater(str(exc)) if exc.retryable else Failed(str(exc))
        except OSError as exc:
            return RetryLater(f"cannot read the file: {exc}")

    def close(self) -> None:
        # A file cut short is read again at the next start: a stop does not wait for it.
        self.pool.close(grace=STOP_GRACE)
