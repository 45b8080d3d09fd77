"""The end of every file's road: a fetched result goes to the outbox (done), or the file
fails with a reason. Shared by both engines.

A fetched result already sits in the ledger, so a crash, a full disk or an unwritable
outbox only delays the outbox write: the finisher retries with backoff and never loses
the result.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ocrwatchd import outbox
from ocrwatchd.config import Config, InboxConfig
from ocrwatchd.ledger import DONE, FAILED, FETCHED, Ledger, Row, storage_trouble
from ocrwatchd.pacing import backoff_delay
from ocrwatchd.service import file_fields

log = logging.getLogger(__name__)


def fail_file(ledger: Ledger, inbox: InboxConfig, row: Row, reason: str, **fields: object) -> bool:
    """Fail `row` permanently with `reason`; with failed_dir, move the source there.

    Returns False when the row changed meanwhile (nothing done).
    """
    if not ledger.transition(row, FAILED, reason=reason, **fields):
        return False
    log.warning(
        "%s: %s failed: %s",
        inbox.name,
        row.relpath,
        reason,
        extra=file_fields(inbox.name, row.relpath, FAILED, reason=reason),
    )
    try:
        moved = outbox.move_to_failed(
            inbox,
            row.relpath,
            {
                "path": str(inbox.path / row.relpath),
                "reason": reason,
                "job_id": fields.get("job_id", row.job_id),
                "attempts": fields.get("attempts", row.attempts),
            },
        )
    except OSError as exc:
        log.error("%s: %s: cannot move to failed_dir: %s", inbox.name, row.relpath, exc)
        ledger.note_error(inbox.name, f"cannot move {row.relpath} to failed_dir: {exc}")
        return True
    if moved is not None:
        ledger.forget_source(row)
    return True


def dispose_source(ledger: Ledger, inbox: InboxConfig, row: Row) -> None:
    """Apply on_success to a done file's source (its result is durable by now). A failure
    leaves the source where it is, logged and shown in `status`."""
    try:
        if outbox.dispose_source(inbox, row.relpath):
            ledger.forget_source(row)
    except OSError as exc:
        message = f"on_success {inbox.on_success} failed for {row.relpath}: {exc}"
        log.error("%s: %s", inbox.name, message)
        ledger.note_error(inbox.name, message)


def internal_error(ledger: Ledger, inbox: InboxConfig, row: Row, exc: Exception) -> None:
    """A bug met while handling one file: fail that file with the error (so it ends
    somewhere the user can see) instead of killing the daemon. Ledger errors are not
    bugs of the file and go up to the loop's `storage_trouble`."""
    if isinstance(exc, sqlite3.Error):
        raise exc
    log.exception("%s: %s: internal error", inbox.name, row.relpath)
    fail_file(ledger, inbox, row, f"internal error ({type(exc).__name__}: {exc}); please report it")


class Finisher:
    """Writes fetched results to the outbox, on `WRITERS` threads (each result costs two
    fsyncs, which are I/O waits: one thread alone made the disk the bottleneck).
    Engines `notify` it; rows left fetched by a crash or a failed write are swept up."""

    WRITERS = 4

    def __init__(
        self,
        config: Config,
        ledger_path: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inboxes = {inbox.name: inbox for inbox in config.inboxes}
        self.ledger_path = ledger_path
        self.clock = clock
        self.ready: queue.Queue[tuple[int, int, bytes | None]] = queue.Queue()
        self.started = time.time()

    def notify(self, row: Row, body: bytes | None = None) -> None:
        """`row` (as fetched) has its result stored; `body` spares reading it back."""
        self.ready.put((row.id, row.generation, body))

    def threads(self) -> list[tuple[str, Callable[[threading.Event], None]]]:
        return [(f"finisher-{n}", self._loop_for(n == 0)) for n in range(self.WRITERS)]

    def _loop_for(self, sweeps: bool) -> Callable[[threading.Event], None]:
        def loop(stop: threading.Event) -> None:
            self.run(stop, sweeps=sweeps)

        return loop

    def run(self, stop: threading.Event, *, sweeps: bool = True) -> None:
        ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            if sweeps:
                self.remove_stale_temp_files()
                self.sweep(ledger)
            while not stop.is_set():
                with storage_trouble(stop, "finisher"):
                    self.step(ledger, timeout=0.2, sweeps=sweeps)
        finally:
            ledger.close()

    def step(self, ledger: Ledger, timeout: float, *, sweeps: bool = True) -> None:
        try:
            file_id, generation, body = self.ready.get(timeout=timeout)
        except queue.Empty:
            if sweeps:
                self.sweep(ledger)
            return
        row = ledger.get(file_id)
        if row is not None and row.state == FETCHED and row.generation == generation:
            self.finish(ledger, row, body)

    def finish(self, ledger: Ledger, row: Row, body: bytes | None = None) -> None:
        """Write one fetched result; a bug here fails this file, not the daemon."""
        try:
            self._finish(ledger, row, body)
        except Exception as exc:
            inbox = self.inboxes.get(row.inbox)
            if inbox is None:
                raise
            internal_error(ledger, inbox, row, exc)

    def remove_stale_temp_files(self) -> None:
        """Temporary files older than this process come from a crash mid-write."""
        for inbox in self.inboxes.values():
            for directory in (inbox.outbox, inbox.failed_dir):
                if directory is not None:
                    removed = outbox.remove_stale_temp_files(directory, self.started)
                    if removed:
                        log.info("%s: removed %d stale temporary file(s)", directory, removed)

    def sweep(self, ledger: Ledger) -> None:
        """Finish rows left fetched by a crash or by an earlier write failure."""
        for row in ledger.due(FETCHED, limit=100):
            self.finish(ledger, row)

    def _finish(self, ledger: Ledger, row: Row, body: bytes | None) -> None:
        inbox = self.inboxes.get(row.inbox)
        if body is None:
            body = ledger.result_body(row.id, row.generation)
        if inbox is None or body is None:
            return
        try:
            target = outbox.write_result(inbox, row.relpath, body)
        except (ValueError, KeyError) as exc:
            fail_file(ledger, inbox, row, f"the OCR result is not valid OCR JSON: {exc}")
            return
        except OSError as exc:
            delay = backoff_delay(row.attempts + 1, cap=300)
            log.error(
                "%s: cannot write the result of %s: %s; retrying in %.0f s",
                inbox.name,
                row.relpath,
                exc,
                delay,
            )
            ledger.note_error(inbox.name, f"cannot write outbox: {exc}")
            ledger.defer(row, until=self.clock() + delay, error=f"cannot write outbox: {exc}")
            return
        if not ledger.transition(row, DONE, result_path=str(target), last_error=None):
            return
        log.info(
            "%s: %s done → %s",
            inbox.name,
            row.relpath,
            target,
            extra=file_fields(inbox.name, row.relpath, DONE, result=str(target)),
        )
        dispose_source(ledger, inbox, row)
