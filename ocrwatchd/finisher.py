"""The end of every file's road: a fetched result goes to the outbox (done). Shared by
every engine.

A fetched result already sits in the ledger, so a crash, a full disk or an unwritable
outbox only delays the outbox write: the finisher tries again with growing backoff and
never loses the result.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ocrwatchd import outbox
from ocrwatchd.config import Config
from ocrwatchd.ledger import Ledger, Row, storage_trouble
from ocrwatchd.lifecycle import Failed, Lifecycle, State, WriteTrouble, Written

log = logging.getLogger(__name__)

SWEEP_EVERY = 10.0  # seconds between looks for results left unwritten (crash, full disk)


class Finisher:
    """Writes fetched results to the outbox, on `WRITERS` threads (each result costs two
    fsyncs, which are I/O waits: one thread alone made the disk the bottleneck).
    Pollers `notify` it; rows left fetched by a crash or a failed write are swept up."""

    WRITERS = 4

    def __init__(
        self,
        config: Config,
        ledger_path: Path,
        *,
        clock: Callable[[], float] = time.time,
        on_finished: Callable[[str, str], None] | None = None,
    ) -> None:
        self.inboxes = {inbox.name: inbox for inbox in config.inboxes}
        self.ledger_path = ledger_path
        self.clock = clock
        self.on_finished = on_finished
        self.ready: queue.Queue[tuple[int, int, bytes | None] | None] = queue.Queue()
        self.started = time.time()

    def notify(self, row: Row, body: bytes | None = None) -> None:
        """`row` (as fetched) has its result stored; `body` spares reading it back."""
        self.ready.put((row.id, row.generation, body))

    def wake(self) -> None:
        """Wake every writer (at a stop: they wait on the queue, not on the stop flag)."""
        for _ in range(self.WRITERS):
            self.ready.put(None)

    def threads(self) -> list[tuple[str, Callable[[threading.Event], None]]]:
        return [(f"finisher-{n}", self._loop_for(n == 0)) for n in range(self.WRITERS)]

    def _loop_for(self, sweeps: bool) -> Callable[[threading.Event], None]:
        def loop(stop: threading.Event) -> None:
            self.run(stop, sweeps=sweeps)

        return loop

    def lifecycle(self, ledger: Ledger) -> Lifecycle:
        return Lifecycle(ledger, self.inboxes, clock=self.clock, on_finished=self.on_finished)

    def run(self, stop: threading.Event, *, sweeps: bool = True) -> None:
        ledger = Ledger(self.ledger_path, clock=self.clock)
        lifecycle = self.lifecycle(ledger)
        try:
            if sweeps:
                self.remove_stale_temp_files()
            next_sweep = 0.0
            while not stop.is_set():
                with storage_trouble(stop, "finisher"):
                    if sweeps and time.monotonic() >= next_sweep:
                        self.sweep(lifecycle)
                        next_sweep = time.monotonic() + SWEEP_EVERY
                    self.step(lifecycle, timeout=SWEEP_EVERY if sweeps else None)
        finally:
            ledger.close()

    def step(self, lifecycle: Lifecycle, timeout: float | None) -> bool:
        """Write one notified result (waiting up to `timeout`, None: until one comes or
        `wake`); whether there was one."""
        try:
            item = self.ready.get(timeout=timeout)
        except queue.Empty:
            return False
        if item is None:
            return False
        file_id, generation, body = item
        row = lifecycle.ledger.get(file_id)
        if row is not None and row.state == State.FETCHED and row.generation == generation:
            self.finish(lifecycle, row, body)
        return True

    def finish(self, lifecycle: Lifecycle, row: Row, body: bytes | None = None) -> None:
        """Write one fetched result; a bug here fails this file, not the daemon."""
        try:
            self._finish(lifecycle, row, body)
        except Exception as exc:
            lifecycle.internal_error(row, exc)

    def remove_stale_temp_files(self) -> None:
        """Temporary files older than this process come from a crash mid-write."""
        for inbox in self.inboxes.values():
            for directory in (inbox.outbox, inbox.failed_dir):
                if directory is not None:
                    removed = outbox.remove_stale_temp_files(directory, self.started)
                    if removed:
                        log.info("%s: removed %d stale temporary file(s)", directory, removed)

    def sweep(self, lifecycle: Lifecycle) -> None:
        """Finish rows left fetched by a crash or by an earlier write failure."""
        due = lifecycle.ledger.due(State.FETCHED, limit=100, inboxes=self.inboxes)
        for row in due:
            self.finish(lifecycle, row)

    def _finish(self, lifecycle: Lifecycle, row: Row, body: bytes | None) -> None:
        inbox = self.inboxes.get(row.inbox)
        if inbox is None:
            return
        if body is None:
            body = lifecycle.ledger.result_body(row.id, row.generation)
        if body is None:
            lifecycle.apply(row, Failed("the stored result is missing; retry the file"))
            return
        try:
            target = outbox.write_result(inbox, row.relpath, body)
        except (ValueError, KeyError) as exc:
            lifecycle.apply(row, Failed(f"the OCR result is not valid OCR JSON: {exc}"))
        except OSError as exc:
            lifecycle.apply(row, WriteTrouble(f"cannot write outbox: {exc}"))
        else:
            lifecycle.apply(row, Written(str(target)))
