"""The Mindee API v2 as an `Engine`: the HTTP client's answers and errors turned into
lifecycle outcomes, under the client-side rate limits.

Each thread that calls the engine gets its own `MindeeClient` (its own connections);
the rate limits are shared by all of them.

Polls are timed by what the API took for similar files (`mindee_pace`): the first comes
when the result is expected, then a few quick ones, then the SDKs' `poll_interval`; all
no closer than the poll rate limit allows for the jobs in flight. Results pushed by the
webhook receiver (`deliver`) are taken by the next poll without a request, so they are
stored exactly as a polled one; polling then only backs the webhook up.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ocrwatchd.config import Config, MindeeConfig
from ocrwatchd.engines.base import Engine, JobRef, Submission
from ocrwatchd.engines.mindee import MindeeClient, result_problem
from ocrwatchd.engines.mindee_pace import Deliveries, ProcessingTimes, kind_of
from ocrwatchd.errors import ApiError
from ocrwatchd.lifecycle import (
    AccountRefused,
    Failed,
    Orphaned,
    Outcome,
    PollTrouble,
    Result,
    RetryLater,
    Running,
    Submitted,
    Vanished,
)
from ocrwatchd.pacing import RateLimiter


class ResultChecker:
    """Checks result bodies (`result_problem`) in a helper process, so that parsing
    170 kB of JSON per file does not hold the daemon's GIL (measured: a quarter of its
    CPU). Falls back to checking in the calling thread if the helper is gone."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("forkserver")
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)

    def __call__(self, body: bytes) -> str | None:
        try:
            return self._pool.submit(result_problem, body).result()
        except (BrokenProcessPool, RuntimeError, OSError):
            return result_problem(body)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class MindeeEngine(Engine):
    name = "mindee"
    durable_jobs = True  # the API keeps a job (and its result) after we stop

    def __init__(
        self,
        settings: MindeeConfig,
        *,
        check_in_helper: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`check_in_helper`: check result bodies in a helper process (the daemon's choice;
        one file at a time checks them in the calling thread)."""
        super().__init__()
        assert settings.api_key is not None
        self.settings = settings
        self.clock = clock
        self.checker = ResultChecker() if check_in_helper else None
        self.check_result: Callable[[bytes], str | None] = self.checker or result_problem
        self.enqueue_limit = RateLimiter(settings.enqueue_per_minute)
        self.poll_limit = RateLimiter(settings.poll_per_minute)
        self._local = threading.local()
        self._clients: list[MindeeClient] = []
        self._lock = threading.Lock()
        self.times = ProcessingTimes()
        self.deliveries = Deliveries()
        # Set while a webhook receiver runs and the enqueue names webhooks: polls are
        # then only the fallback for a delivery that never comes.
        self.pushed = False

    @classmethod
    def from_config(cls, config: Config, *, daemon: bool = False) -> MindeeEngine:
        return cls(config.mindee, check_in_helper=daemon)

    @classmethod
    def problems(cls, config: Config) -> list[str]:
        if config.mindee.api_key is None:
            return ["no Mindee API key is configured"]
        return []

    @property
    def capacity(self) -> int:
        return self.settings.max_in_flight

    def _client(self) -> MindeeClient:
        client: MindeeClient | None = getattr(self._local, "client", None)
        if client is None:
            settings = self.settings
            assert settings.api_key is not None
            client = MindeeClient(
                settings.base_url,
                settings.api_key,
                request_timeout=settings.request_timeout,
                check_result=self.check_result,
                on_request=self.on_request,
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        if self.checker is not None:
            self.checker.close()

    def submit(self, submission: Submission) -> Outcome:
        self.enqueue_limit.take()
        path = submission.path
        try:
            job = self._client().enqueue(
                path,
                model_id=submission.model_id or "",
                alias=submission.alias,
                filename=path.name,
                webhook_ids=self.settings.webhook_ids,
                file=submission.file,
            )
        except FileNotFoundError:
            return Vanished()
        except OSError as exc:
            return RetryLater(f"cannot read the file: {exc}")
        except ApiError as exc:
            return _refusal(exc) or Failed(str(exc))
        self.times.started(job.id, kind_of(path, _size(submission)))
        return Submitted(job.id, poll_in=self._poll_in(job.id, None))

    def deliver(self, job_id: str, body: bytes) -> None:
        """A result the webhook receiver was given (signature checked): the next poll of
        this job takes it, and the job is polled at once."""
        self.deliveries.put(job_id, body)
        self.announce(job_id)

    def _pushed_result(self, job: JobRef) -> Result | None:
        body = self.deliveries.take(job.job_id)
        if body is None:
            return None
        started = job.enqueued_at
        self.times.ended(job.job_id, None if started is None else self.clock() - started)
        return Result(body)

    def _poll_in(self, job_id: str, elapsed: float | None) -> float:
        """Seconds until the next poll of a job processing for `elapsed` seconds (None:
        the job was just submitted)."""
        settings = self.settings
        expected = self.times.expect(job_id)
        # The poll rate limit shared by the jobs in flight: never ask faster than that.
        floor = 60.0 / settings.poll_per_minute * max(1, self.times.in_flight())
        if expected is None:
            plain = settings.poll_initial_delay if elapsed is None else settings.poll_interval
            return max(floor, plain)
        elapsed = elapsed or 0.0
        if self.pushed:
            fallback = expected * 2 + settings.poll_interval
            return max(floor, fallback - elapsed, settings.poll_interval)
        if elapsed < expected:
            return max(floor, expected - elapsed)
        if elapsed < 2 * expected + 1:
            # Just missed: the result is a small fraction of the expected time away.
            return max(floor, min(settings.poll_interval, 0.1 * expected + 0.05))
        return max(floor, settings.poll_interval)

    def poll(self, job: JobRef) -> Outcome:
        pushed = self._pushed_result(job)
        if pushed is not None:
            return pushed
        if self.deliveries.just_taken(job.job_id):
            # The news of a replayed delivery, racing the store of the first: the row
            # has moved on, or will in a moment; asking the API would only cost a 404.
            return Running(self.settings.poll_interval)
        client = self._client()
        try:
            self.poll_limit.take()
            answer = client.get_job(job.job_id)
            if answer.status == "Processed":
                self.times.ended(job.job_id, answer.duration)
                self.poll_limit.take()
                return Result(client.get_result_for(answer))
            if answer.status == "Failed":
                self.times.ended(job.job_id, None)
                error = answer.error
                message = f"job failed: {error}" if error is not None else "the job ended Failed"
                if error is not None and error.retryable:
                    return RetryLater(message)
                return Failed(str(error) if error is not None else message)
        except ApiError as exc:
            # A webhook delivery deletes a result the model does not keep: the 404 of a
            # fetch racing it finds the result delivered meanwhile.
            pushed = self._pushed_result(job)
            if pushed is not None:
                return pushed
            if exc.status == 404:
                self.times.ended(job.job_id, None)
                return Orphaned(f"the API no longer has job {job.job_id} or its result ({exc})")
            refusal = _refusal(exc)
            if isinstance(refusal, RetryLater):
                return PollTrouble(refusal.message, refusal.after)
            return refusal or Failed(str(exc))
        # Processing, by the API's own answer: only that counts toward job_timeout.
        timeout = self.settings.job_timeout
        elapsed = None if job.enqueued_at is None else self.clock() - job.enqueued_at
        if elapsed is not None and elapsed > timeout:
            self.times.ended(job.job_id, None)
            return Orphaned(f"job {job.job_id} did not finish within {timeout:.0f} s (job_timeout)")
        if elapsed is None:
            return Running(self.settings.poll_interval)
        return Running(self._poll_in(job.job_id, elapsed))


def _refusal(exc: ApiError) -> Outcome | None:
    """The outcome of an error that is not the file's fault, or None when it is."""
    if exc.pauses_work:
        return AccountRefused(f"the Mindee API refused the account: {exc}")
    if exc.retryable:
        # A 429 is the account's rate, not the file's fault: it holds every submission
        # but is no attempt of this file (a burst of them must not fail files).
        limited = exc.status == 429
        return RetryLater(str(exc), after=exc.retry_after, hold=limited, counts=not limited)
    return None


def _size(submission: Submission) -> int:
    try:
        if submission.file is not None:
            return os.fstat(submission.file.fileno()).st_size
        return submission.path.stat().st_size
    except (OSError, ValueError):
        return 0
