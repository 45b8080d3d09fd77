"""The end of every file's road: a fetched result goes to the outbox (done), or the file
fails with a reason. Shared by both engines.

A fetched result already sits in the ledger, so a crash, a full disk or an unwritable
outbox only delays the outbox write: the finisher retries with backoff and never loses
the result.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ocrwatchd import outbox
from ocrwatchd.config import Config, InboxConfig
from ocrwatchd.ledger import DONE, FAILED, FETCHED, Ledger, Row
from ocrwatchd.pacing import backoff_delay

log = logging.getLogger(__name__)


def fail_file(ledger: Ledger, inbox: InboxConfig, row: Row, reason: str, **fields: object) -> bool:
    """Fail `row` permanently with `reason`; with failed_dir, move the source there.

    Returns False when the row changed meanwhile (nothing done).
    """
    if not ledger.transition(row, FAILED, reason=reason, **fields):
        return False
    log.warning("%s: %s failed: %s", inbox.name, row.relpath, reason)
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


class Finisher:
    """Writes fetched results to the outbox. One thread; engines `notify` it."""

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
        self.ready: queue.Queue[int] = queue.Queue()
        self.ledger: Ledger | None = None

    def notify(self, file_id: int) -> None:
        self.ready.put(file_id)

    def run(self, stop: threading.Event) -> None:
        self.ledger = Ledger(self.ledger_path, clock=self.clock)
        try:
            self.sweep()
            while not stop.is_set():
                self.step(timeout=0.5)
        finally:
            self.ledger.close()

    def step(self, timeout: float) -> None:
        assert self.ledger is not None
        try:
            file_id = self.ready.get(timeout=timeout)
        except queue.Empty:
            self.sweep()
            return
        row = self.ledger.get(file_id)
        if row is not None and row.state == FETCHED:
            self.finish(row)

    def sweep(self) -> None:
        """Finish rows left fetched by a crash or by an earlier write failure."""
        assert self.ledger is not None
        for row in self.ledger.due(FETCHED, limit=100):
            self.finish(row)

    def finish(self, row: Row) -> None:
        assert self.ledger is not None
        inbox = self.inboxes.get(row.inbox)
        body = self.ledger.result_body(row.id, row.generation)
        if inbox is None or body is None:
            return
        try:
            target = outbox.write_result(inbox, row.relpath, body)
        except (ValueError, KeyError) as exc:
            fail_file(self.ledger, inbox, row, f"the OCR result is not valid OCR JSON: {exc}")
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
            self.ledger.note_error(inbox.name, f"cannot write outbox: {exc}")
            self.ledger.defer(row, until=self.clock() + delay, error=f"cannot write outbox: {exc}")
            return
        if not self.ledger.transition(row, DONE, result_path=str(target), last_error=None):
            return
        log.info("%s: %s done → %s", inbox.name, row.relpath, target)
        try:
            if outbox.dispose_source(inbox, row.relpath):
                self.ledger.forget_source(row)
        except OSError as exc:
            log.error(
                "%s: %s: on_success %s failed: %s", inbox.name, row.relpath, inbox.on_success, exc
            )
            self.ledger.note_error(
                inbox.name, f"on_success {inbox.on_success} failed for {row.relpath}: {exc}"
            )
