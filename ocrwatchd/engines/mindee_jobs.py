"""The Mindee API v2 as an `Engine`: the HTTP client's answers and errors turned into
lifecycle outcomes, under the client-side rate limits.

Each thread that calls the engine gets its own `MindeeClient` (its own connections);
the rate limits are shared by all of them.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ocrwatchd.config import Config, MindeeConfig
from ocrwatchd.engines.base import Engine, JobRef, Submission
from ocrwatchd.engines.mindee import MindeeClient, result_problem
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

    @classmethod
    def from_config(cls, config: Config, *, daemon: bool = False) -> MindeeEngine:
        return cls(config.mindee, check_in_helper=daemon)

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
        return Submitted(job.id, poll_in=self.settings.poll_initial_delay)

    def poll(self, job: JobRef) -> Outcome:
        client = self._client()
        try:
            self.poll_limit.take()
            answer = client.get_job(job.job_id)
            if answer.status == "Processed":
                self.poll_limit.take()
                return Result(client.get_result_for(answer))
            if answer.status == "Failed":
                error = answer.error
                message = f"job failed: {error}" if error is not None else "the job ended Failed"
                if error is not None and error.retryable:
                    return RetryLater(message)
                return Failed(str(error) if error is not None else message)
        except ApiError as exc:
            if exc.status == 404:
                return Orphaned(f"the API no longer has job {job.job_id} or its result ({exc})")
            refusal = _refusal(exc)
            if isinstance(refusal, RetryLater):
                return PollTrouble(refusal.message, refusal.after)
            return refusal or Failed(str(exc))
        # Processing, by the API's own answer: only that counts toward job_timeout.
        timeout = self.settings.job_timeout
        if job.enqueued_at is not None and self.clock() - job.enqueued_at > timeout:
            return Orphaned(f"job {job.job_id} did not finish within {timeout:.0f} s (job_timeout)")
        return Running(self.settings.poll_interval)


def _refusal(exc: ApiError) -> Outcome | None:
    """The outcome of an error that is not the file's fault, or None when it is."""
    if exc.pauses_work:
        return AccountRefused(f"the Mindee API refused the account: {exc}")
    if exc.retryable:
        return RetryLater(str(exc), after=exc.retry_after, hold=exc.status == 429)
    return None
