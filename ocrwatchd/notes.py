"""Info lines that may come in floods, kept readable: a few lines per key and window,
then one summary of how many more there were (say, 5 000 files dropped into an inbox
whose include patterns take none of them)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    started: float
    shown: int = 0
    more: int = 0


class Notes:
    """At most `limit` lines per key every `window` seconds; the rest are counted and
    summed up in one line (`summary % (key, count)`) when the window has passed and
    `flush` (or the next `note`) is called."""

    def __init__(
        self,
        logger: logging.Logger,
        summary: str,
        *,
        limit: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.summary = summary
        self.limit = limit
        self.window = window
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def note(self, key: str, message: str, *args: object) -> None:
        self.flush()
        window = self._windows.setdefault(key, _Window(self.clock()))
        if window.shown < self.limit:
            window.shown += 1
            self.logger.info(message, *args)
        else:
            window.more += 1

    def flush(self) -> None:
        """Close the windows that have passed, with their summary line."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            if now - window.started < self.window:
                continue
            del self._windows[key]
            if window.more:
                self.logger.info(self.summary, key, window.more)
