"""The Mindee pipeline: uploader threads enqueue pending files, poller threads follow the
jobs and fetch results into the ledger; the finisher takes it from there.

Order of commits (the crash-safety argument): a row is `uploading` before the POST; the
job id is committed (`processing`) before the first poll; the result body is committed
(`fetched`) before anything else is done with it, because the API may delete it after one
fetch. After a crash only an `uploading` row is uploaded again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ocrwatchd.config import Config, InboxConfig
from ocrwatchd.engines.mindee import MindeeClient, result_problem
from ocrwatchd.errors import ApiError, EngineError
from ocrwatchd.finisher import Finisher, fail_file, internal_error
from ocrwatchd.ledger import (
    IGNORED,
    PENDING,
    PROCESSING,
    UPLOADING,
    Ledger,
    Row,
    storage_trouble,
)
from ocrwatchd.pacing import RateLimiter, backoff_delay
from ocrwatchd.service import file_fields

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 5  # uploads of one file before it fails for good
PAUSE_SECONDS = 300  # after 401/402/403: one probe per this many seconds, or a reload


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


@dataclass
class Pause:
    """Account-level trouble (401/402/403): every remote thread holds off until `until`."""

    reason: str | None = None
    until: float = 0.0

    def active(self, now: float) -> bool:
        return self.reason is not None and now < self.until


class RemoteWork:
    """Owns the limits and the pause shared by the uploader and poller threads."""

    def __init__(
        self,
        config: Config,
        ledger_path: Path,
        finisher: Finisher,
        work_available: threading.Event,
        *,
        client_factory: Callable[[], MindeeClient],
        uploaders: int = 4,
        pollers: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.settings = config.mindee
        self.inboxes = {inbox.name: inbox for inbox in config.inboxes}
        self.ledger_path = ledger_path
        self.finisher = finisher
        self.work_available = work_available
        self.client_factory = client_factory
        self.uploaders = max(1, min(uploaders, self.settings.max_in_flight))
        self.pollers = pollers
        self.clock = clock
        self.enqueue_limit = RateLimiter(self.settings.enqueue_per_minute)
        self.get_limit = RateLimiter(self.settings.poll_per_minute)
        self.pause = Pause()
        self.hold_uploads_until = 0.0  # after a 429 on enqueue
        self.claim_lock = threading.Lock()
        self.poll_errors: dict[int, int] = {}

    def threads(self) -> list[tuple[str, Callable[[threading.Event], None]]]:
        loops: list[tuple[str, Callable[[threading.Event], None]]] = [
            (f"uploader-{n}", self.upload_loop) for n in range(self.uploaders)
        ]
        for index in range(self.pollers):
            loops.append((f"poller-{index}", self._poll_loop_for(index)))
        return loops

    # -- shared helpers --------------------------------------------------------------

    def _paused_wait(self, stop: threading.Event) -> bool:
        """Wait while paused or held; True when the caller may go on."""
        now = self.clock()
        wait = max(
            self.pause.until - now if self.pause.active(now) else 0.0, self.hold_uploads_until - now
        )
        if wait > 0:
            stop.wait(min(wait, 1.0))
            return False
        return True

    def _on_auth_error(self, ledger: Ledger, exc: ApiError) -> None:
        reason = f"the Mindee API refused the account: {exc}"
        first = self.pause.reason is None
        self.pause.reason = reason
        self.pause.until = self.clock() + PAUSE_SECONDS
        ledger.set_paused(reason)
        if first:
            log.error(
                "%s; remote work is paused (one retry every %d s). Fix the API key or the"
                " account, then reload (SIGHUP).",
                reason,
                PAUSE_SECONDS,
            )

    def _on_success(self, ledger: Ledger) -> None:
        if self.pause.reason is not None:
            log.info("the Mindee API accepts the account again; resuming")
            self.pause.reason = None
            ledger.set_paused(None)

    def _retry_upload(
        self,
        ledger: Ledger,
        row: Row,
        message: str,
        *,
        attempts: int,
        retry_after: float | None = None,
    ) -> None:
        """Back to pending for another upload, or failed after MAX_ATTEMPTS."""
        inbox = self.inboxes[row.inbox]
        if attempts >= MAX_ATTEMPTS:
            fail_file(
                ledger,
                inbox,
                row,
                f"gave up after {attempts} attempts: {message}",
                attempts=attempts,
                last_error=message,
            )
            return
        delay = backoff_delay(attempts, retry_after)
        if ledger.transition(
            row,
            PENDING,
            attempts=attempts,
            job_id=None,
            last_error=message,
            next_attempt_at=self.clock() + delay,
        ):
            log.warning("%s: %s: %s; retrying in %.0f s", inbox.name, row.relpath, message, delay)

    @contextlib.contextmanager
    def _thread_tools(self) -> Iterator[tuple[Ledger, MindeeClient]]:
        """A work thread's own ledger connection and HTTP client, closed when it ends."""
        ledger = Ledger(self.ledger_path, clock=self.clock)
        client = self.client_factory()
        try:
            yield ledger, client
        finally:
            client.close()
            ledger.close()

    # -- uploading ---------------------------------------------------------------------

    def upload_loop(self, stop: threading.Event) -> None:
        with self._thread_tools() as (ledger, client):
            while not stop.is_set():
                if not self._paused_wait(stop):
                    continue
                with storage_trouble(stop, "uploader"):
                    if not self.upload_one(ledger, client):
                        self.work_available.wait(0.2)
                        self.work_available.clear()

    def _claim(self, ledger: Ledger) -> Row | None:
        with self.claim_lock:
            if ledger.count((UPLOADING, PROCESSING)) >= self.settings.max_in_flight:
                return None
            if self.enqueue_limit.try_take() > 0:
                return None
            return ledger.claim(PENDING, UPLOADING, engine="mindee")

    def upload_one(self, ledger: Ledger, client: MindeeClient) -> bool:
        """Enqueue one due pending file. Returns False when there was nothing to do."""
        row = self._claim(ledger)
        if row is None:
            return False
        inbox = self.inboxes.get(row.inbox)
        if inbox is None:  # its inbox left the config: leave it pending for a later config
            ledger.transition(row, PENDING, next_attempt_at=self.clock() + 3600)
            return True
        try:
            self._upload(ledger, client, inbox, row)
        except Exception as exc:
            internal_error(ledger, inbox, row, exc)
        return True

    def _upload(self, ledger: Ledger, client: MindeeClient, inbox: InboxConfig, row: Row) -> None:
        path = inbox.path / row.relpath
        attempts = row.attempts  # the claim counted this one
        model_id = self.config.model_id_for(inbox) or ""
        try:
            info = path.stat()
            if (info.st_size, info.st_mtime_ns) != (row.size, row.mtime_ns):
                # Changed since it settled: intake will see it and settle it again.
                ledger.transition(
                    row,
                    PENDING,
                    attempts=attempts - 1,
                    next_attempt_at=self.clock() + inbox.settle_seconds + 1,
                )
                return
            job = client.enqueue(
                path,
                model_id=model_id,
                alias=str(path),
                filename=path.name,
                webhook_ids=self.settings.webhook_ids,
            )
        except FileNotFoundError:
            ledger.transition(
                row, IGNORED, reason="the file was removed from the inbox before it was processed"
            )
            return
        except ApiError as exc:
            if exc.pauses_work:
                self._on_auth_error(ledger, exc)
                # The account, not the file, failed: this attempt does not count.
                ledger.transition(row, PENDING, attempts=attempts - 1, next_attempt_at=self.clock())
            elif exc.retryable:
                if exc.status == 429:
                    self.hold_uploads_until = self.clock() + backoff_delay(1, exc.retry_after)
                self._retry_upload(
                    ledger, row, str(exc), attempts=attempts, retry_after=exc.retry_after
                )
            else:
                fail_file(ledger, inbox, row, str(exc), attempts=attempts)
            return
        except OSError as exc:
            self._retry_upload(ledger, row, f"cannot read the file: {exc}", attempts=attempts)
            return
        self._on_success(ledger)
        now = self.clock()
        if ledger.transition(
            row,
            PROCESSING,
            job_id=job.id,
            enqueued_at=now,
            next_attempt_at=now + self.settings.poll_initial_delay,
            last_error=None,
        ):
            log.info(
                "%s: %s uploaded; job %s",
                inbox.name,
                row.relpath,
                job.id,
                extra=file_fields(inbox.name, row.relpath, PROCESSING, job_id=job.id),
            )

    # -- polling -----------------------------------------------------------------------

    def _poll_loop_for(self, index: int) -> Callable[[threading.Event], None]:
        def loop(stop: threading.Event) -> None:
            self.poll_loop(stop, index)

        return loop

    def poll_loop(self, stop: threading.Event, index: int) -> None:
        with self._thread_tools() as (ledger, client):
            while not stop.is_set():
                if not self._paused_wait(stop):
                    continue
                with storage_trouble(stop, "poller"):
                    due = ledger.due(PROCESSING, limit=50, share=(index, self.pollers))
                    rows = [row for row in due if row.job_id]
                    for row in rows:
                        if stop.is_set() or self.pause.active(self.clock()):
                            break
                        try:
                            self.poll_one(ledger, client, row)
                        except Exception as exc:
                            internal_error(ledger, self.inboxes[row.inbox], row, exc)
                    if not rows:
                        stop.wait(0.1)

    def poll_one(self, ledger: Ledger, client: MindeeClient, row: Row) -> None:
        """Poll one job; on Processed, fetch the result and commit it to the ledger."""
        inbox = self.inboxes.get(row.inbox)
        assert row.job_id is not None
        if inbox is None:
            return
        now = self.clock()
        if row.enqueued_at is not None and now - row.enqueued_at > self.settings.job_timeout:
            self._retry_upload(
                ledger,
                row,
                f"job {row.job_id} did not finish within {self.settings.job_timeout:.0f} s",
                attempts=row.attempts,
            )
            return
        try:
            self.get_limit.take()
            job = client.get_job(row.job_id)
            if job.status == "Processed":
                self.get_limit.take()
                url = job.result_url or f"{self.settings.base_url}/v2/products/ocr/results/{job.id}"
                body = client.get_result(url)
                if ledger.store_result(row, body):
                    self.finisher.notify(row, body)
                    log.info(
                        "%s: %s result fetched (job %s)",
                        inbox.name,
                        row.relpath,
                        row.job_id,
                        extra=file_fields(inbox.name, row.relpath, "fetched", job_id=row.job_id),
                    )
            elif job.status == "Failed":
                error = job.error
                message = str(error) if error is not None else "the job ended Failed"
                if error is not None and error.retryable:
                    self._retry_upload(ledger, row, f"job failed: {message}", attempts=row.attempts)
                else:
                    fail_file(ledger, inbox, row, message)
            else:
                ledger.defer(row, until=now + self.settings.poll_interval, error=None)
            self.poll_errors.pop(row.id, None)
            self._on_success(ledger)
        except ApiError as exc:
            if exc.pauses_work:
                self._on_auth_error(ledger, exc)
            elif exc.status == 404:
                self._retry_upload(
                    ledger,
                    row,
                    f"the API no longer has job {row.job_id} or its"
                    f" result ({exc}); uploading again",
                    attempts=row.attempts,
                )
            elif exc.retryable:
                errors = self.poll_errors[row.id] = self.poll_errors.get(row.id, 0) + 1
                delay = backoff_delay(errors, exc.retry_after, base=self.settings.poll_interval)
                ledger.defer(row, until=now + delay, error=str(exc))
                log.warning(
                    "%s: %s: polling job %s: %s; next try in %.0f s",
                    inbox.name,
                    row.relpath,
                    row.job_id,
                    exc,
                    delay,
                )
            else:
                fail_file(ledger, inbox, row, str(exc))


def ocr_one(config: Config, path: Path, *, sleep: Callable[[float], object] = time.sleep) -> bytes:
    """`ocrwatchd ocr FILE` with the Mindee engine: enqueue, poll, fetch, no ledger.

    Retries network trouble, 429 and 5xx a few times with backoff; raises ApiError when
    the API refuses the file or the account, EngineError when the job does not finish
    within job_timeout.
    """
    settings = config.mindee
    assert settings.api_key is not None
    inbox = next((i for i in config.inboxes if i.path in path.parents), None)
    model_id = (config.model_id_for(inbox) if inbox else settings.model_id) or ""
    client = MindeeClient(
        settings.base_url, settings.api_key, request_timeout=settings.request_timeout
    )

    def call(action: Callable[[], T]) -> T:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return action()
            except ApiError as exc:
                if not exc.retryable or attempt == MAX_ATTEMPTS:
                    raise
                sleep(backoff_delay(attempt, exc.retry_after, cap=30))
        raise AssertionError("unreachable")

    try:
        job = call(
            lambda: client.enqueue(
                path,
                model_id=model_id,
                alias=str(path),
                filename=path.name,
                webhook_ids=settings.webhook_ids,
            )
        )
        deadline = time.monotonic() + settings.job_timeout
        sleep(settings.poll_initial_delay)
        job_id = job.id
        while True:
            job = call(lambda: client.get_job(job_id))
            if job.status == "Processed":
                url = job.result_url or f"{settings.base_url}/v2/products/ocr/results/{job_id}"
                return call(functools.partial(client.get_result, url))
            if job.status == "Failed":
                raise job.error or EngineError(f"job {job.id} ended Failed", retryable=False)
            if time.monotonic() > deadline:
                raise EngineError(
                    f"job {job.id} did not finish within {settings.job_timeout:.0f} s",
                    retryable=True,
                )
            sleep(settings.poll_interval)
    finally:
        client.close()
