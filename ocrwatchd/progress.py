"""What `once` shows a person: a progress bar on a terminal that log lines do not break,
and a one-line summary at the end."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from ocrwatchd.ledger import PUBLIC_STATES, Ledger

CLEAR_LINE = "\r\033[K"


class ProgressBar:
    """`once` on a terminal: one line redrawn in place when the figures change.

    Called as `bar(finished, total, failed)`. Log records written through
    `bar_safe_logging` clear the line first and redraw it after, so a warning gets a line
    of its own instead of being glued to (or overwritten by) the bar.
    """

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self.shown = ""
        # Log records come from the work threads, the figures from the main thread.
        self.lock = threading.RLock()

    @property
    def stream(self) -> TextIO:
        # Looked up at each write, so that a bar made before stderr is replaced follows it.
        return self._stream if self._stream is not None else sys.stderr

    def __call__(self, finished: int, total: int, failed: int) -> None:
        filled = self.WIDTH * finished // total if total else self.WIDTH
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"[{bar}] {finished}/{total} finished, {failed} failed"
        with self.lock:
            if line != self.shown:
                self.stream.write(CLEAR_LINE + line)
                self.stream.flush()
                self.shown = line

    def clear(self) -> None:
        """Take the bar off the screen (it comes back with `redraw`)."""
        with self.lock:
            if self.shown:
                self.stream.write(CLEAR_LINE)
                self.stream.flush()

    def redraw(self) -> None:
        with self.lock:
            if self.shown:
                self.stream.write(self.shown)
                self.stream.flush()

    def finish(self) -> None:
        """Leave the last bar on screen and move to the next line."""
        with self.lock:
            if self.shown:
                self.stream.write("\n")
                self.stream.flush()
                self.shown = ""


class BarSafeHandler(logging.Handler):
    """Wraps a handler that writes to the bar's terminal: the bar is cleared before each
    record and redrawn after it."""

    def __init__(self, inner: logging.Handler, bar: ProgressBar) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        with self.bar.lock:
            self.bar.clear()
            self.inner.handle(record)
            self.bar.redraw()

    def flush(self) -> None:
        self.inner.flush()


@contextlib.contextmanager
def bar_safe_logging(bar: ProgressBar, logger: logging.Logger | None = None) -> Iterator[None]:
    """While in the block, the handlers of `logger` (default: the root logger) that write to
    the bar's stream go through `BarSafeHandler`; they are put back afterwards."""
    logger = logger or logging.getLogger()
    originals = list(logger.handlers)
    replaced = [
        BarSafeHandler(handler, bar)
        if isinstance(handler, logging.StreamHandler) and handler.stream is bar.stream
        else handler
        for handler in originals
    ]
    logger.handlers[:] = replaced
    try:
        yield
    finally:
        logger.handlers[:] = originals


def summary(ledger_path: Path, inboxes: Iterable[str], since: float, elapsed: float) -> str:
    """The end of `once`: "12 files: 10 done, 1 failed, 1 ignored in 34 s", counting the
    files of these inboxes whose state changed at or after `since` (this run's files)."""
    names = set(inboxes)
    counts = dict.fromkeys(PUBLIC_STATES, 0)
    if ledger_path.exists():
        ledger = Ledger(ledger_path)
        try:
            for row in ledger.rows():
                if row.inbox in names and row.updated_at >= since:
                    counts[row.public_state] += 1
        finally:
            ledger.close()
    total = sum(counts.values())
    parts = ", ".join(f"{number} {state}" for state, number in counts.items() if number)
    noun = "file" if total == 1 else "files"
    return f"{total} {noun}{': ' + parts if parts else ''} in {_duration(elapsed)}"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 120:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
