"""The embedded-engine pipeline: one dispatcher thread hands pending files to the OCR
worker processes (`engines.local.LocalEngine`) and commits what comes back.

The dispatcher never runs OCR itself and never waits on one file: it keeps every worker
busy (up to two files queued per worker) and collects finished futures as they come.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from ocrwatchd.config import Config, InboxConfig
from ocrwatchd.engines.local import LocalEngine
from ocrwatchd.errors import EngineError, FileRejected
from ocrwatchd.finisher import Finisher, fail_file, internal_error
from ocrwatchd.ledger import IGNORED, PENDING, PROCESSING, Ledger, Row, storage_trouble
from ocrwatchd.pacing import backoff_delay

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a file that crashes a worker this often fails for good


class LocalWork:
    def __init__(
        self,
        config: Config,
        ledger_path: Path,
        finisher: Finisher,
        work_available: threading.Event,
        engine: LocalEngine,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inboxes = {inbox.name: inbox for inbox in config.inboxes}
        self.ledger_path = ledger_path
        self.finisher = finisher
        self.work_available = work_available
        self.engine = engine
        self.capacity = 2 * config.local.workers
        self.clock = clock
        self.completed: queue.Queue[tuple[Row, Future[bytes]]] = queue.Queue()
        self.in_flight = 0

    def threads(self) -> list[tuple[str, Callable[[threading.Event], None]]]:
        return [("local-dispatcher", self.run)]

    def run(self, stop: threading.Event) -> None:
        ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            while not stop.is_set():
                with storage_trouble(stop, "local dispatcher"):
                    self.step(ledger)
        finally:
            ledger.close()

    def step(self, ledger: Ledger) -> None:
        """Fill the workers, then handle what finished (waiting briefly when idle)."""
        submitted = False
        while self.in_flight < self.capacity and self._submit_one(ledger):
            submitted = True
        try:
            row, future = self.completed.get(timeout=0.0 if submitted else 0.1)
        except queue.Empty:
            if self.in_flight == 0:
                self.work_available.wait(0.2)
                self.work_available.clear()
            return
        self.in_flight -= 1
        self._complete(ledger, row, future)
        while True:
            try:
                row, future = self.completed.get_nowait()
            except queue.Empty:
                return
            self.in_flight -= 1
            self._complete(ledger, row, future)

    def _submit_one(self, ledger: Ledger) -> bool:
        job_id = str(uuid.uuid4())
        row = ledger.claim(
            PENDING, PROCESSING, engine="local", job_id=job_id, enqueued_at=self.clock()
        )
        if row is None:
            return False
        inbox = self.inboxes.get(row.inbox)
        if inbox is None:  # its inbox left the config: leave it for a later config
            ledger.transition(row, PENDING, next_attempt_at=self.clock() + 3600)
            return True
        path = inbox.path / row.relpath
        future = self.engine.submit(path, str(path), job_id=job_id)
        self.in_flight += 1
        future.add_done_callback(lambda done: self.completed.put((row, done)))
        return True

    def _complete(self, ledger: Ledger, row: Row, future: Future[bytes]) -> None:
        inbox = self.inboxes[row.inbox]
        try:
            self._commit(ledger, inbox, row, future)
        except Exception as exc:
            internal_error(ledger, inbox, row, exc)

    def _commit(self, ledger: Ledger, inbox: InboxConfig, row: Row, future: Future[bytes]) -> None:
        try:
            body = future.result()
        except FileRejected as exc:
            fail_file(ledger, inbox, row, str(exc))
            return
        except FileNotFoundError:
            ledger.transition(
                row, IGNORED, reason="the file was removed from the inbox before it was processed"
            )
            return
        except (EngineError, OSError) as exc:
            retryable = not isinstance(exc, EngineError) or exc.retryable
            if not retryable or row.attempts >= MAX_ATTEMPTS:
                fail_file(ledger, inbox, row, f"OCR failed after {row.attempts} attempts: {exc}")
                return
            delay = backoff_delay(row.attempts, base=1.0)
            if ledger.transition(
                row, PENDING, last_error=str(exc), next_attempt_at=self.clock() + delay
            ):
                log.warning("%s: %s: %s; retrying in %.0f s", inbox.name, row.relpath, exc, delay)
            return
        if ledger.store_result(row, body):
            self.finisher.notify(row, body)
