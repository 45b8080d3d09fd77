"""Whether an inbox can be trusted now: an unmounted share is not an empty inbox.

An inbox is available when its folder exists and can be listed and, if it was a mount
point (or on a filesystem of another type than now) when first seen, still is. While it
is unavailable, what seems gone from it is not believed gone: no row of it changes state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from ocrwatchd.config import InboxConfig
from ocrwatchd.watcher import filesystem_type

log = logging.getLogger(__name__)

CACHE_SECONDS = 1.0  # a burst of "deleted" events from an unmount asks once


class Presence:
    """Availability of the inboxes, as first seen and as now."""

    def __init__(
        self, inboxes: list[InboxConfig], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.first: dict[str, tuple[bool, str | None]] = {}
        self._cache: dict[str, tuple[float, bool]] = {}
        for inbox in inboxes:
            if os.path.isdir(inbox.path):
                self.first[inbox.name] = (os.path.ismount(inbox.path), filesystem_type(inbox.path))

    def check(self, inbox: InboxConfig) -> bool:
        """Look now (and remember the answer for CACHE_SECONDS)."""
        available = self._look(inbox)
        self._cache[inbox.name] = (self.clock(), available)
        return available

    def believed(self, inbox: InboxConfig) -> bool:
        """The answer of a recent look, else a new one: for each "it is gone" to check."""
        cached = self._cache.get(inbox.name)
        if cached is not None and self.clock() - cached[0] < CACHE_SECONDS:
            return cached[1]
        return self.check(inbox)

    def _look(self, inbox: InboxConfig) -> bool:
        try:
            if not inbox.path.is_dir():
                return False
            os.listdir(inbox.path)
        except OSError:
            return False
        if inbox.name not in self.first:  # first seen now
            self.first[inbox.name] = (os.path.ismount(inbox.path), filesystem_type(inbox.path))
            return True
        was_mount, fs_type = self.first[inbox.name]
        if was_mount and not os.path.ismount(inbox.path):
            return False
        return fs_type is None or filesystem_type(inbox.path) == fs_type
