"""Intake: from "something happened at this path" to a complete, queued file.

One thread. It takes hints from the watchers' queue and from its own scans, applies the
ignore rules and path-safety checks, waits until a file has kept its size and mtime for
settle_seconds (after a close-after-write or move-in event when events are watched),
hashes it, rejects what the API cannot take, reuses a done result for identical content
(dedupe), and queues the rest as pending in the ledger.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ocrwatchd import filetypes, outbox, reconcile
from ocrwatchd.config import Config, InboxConfig
from ocrwatchd.errors import FileRejected
from ocrwatchd.fsafe import OpenSource, UnsafeSource, identity_of, identity_of_open, open_source
from ocrwatchd.ledger import Row
from ocrwatchd.lifecycle import (
    Duplicate,
    Failed,
    Lifecycle,
    Settled,
    State,
    Vanished,
)
from ocrwatchd.notes import Notes
from ocrwatchd.presence import Presence
from ocrwatchd.rules import marked_file, ready_marker_of, skip_reason
from ocrwatchd.watcher import (
    CHANGED,
    COMPLETE,
    CREATED,
    GONE,
    SCAN_DIR,
    SCANNED,
    Event,
    unsafe_reason,
)

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between settle checks; small next to any sensible settle_seconds
# A file left unchanged this long is taken as complete even without a close event (one
# lost to inotify overflow, or a writer that keeps the file open but idle).
QUIET_FALLBACK = 60.0
REST = 5.0  # seconds to wait for hints when nothing settles (the watchers wake it)
UNREADABLE_RETRY = 3.0  # seconds before a file that could not be read is tried again
T = TypeVar("T")


@dataclass(slots=True)  # slots: a million files may settle at once
class Candidate:
    """A file waiting to settle."""

    inbox: InboxConfig
    row: Row  # as observed; its generation guards the move to pending
    size: int
    mtime_ns: int
    stable_since: float
    complete: bool  # a close/move-in event (or a scan) said the writer is finished


class Intake:
    """Turns filesystem hints into ledger rows. Runs on one thread (`step` or `run`)."""

    def __init__(
        self,
        config: Config,
        lifecycle: Lifecycle,
        events: queue.Queue[Event],
        *,
        on_queued: Callable[[], None],
        modes: dict[str, str],
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.lifecycle = lifecycle
        self.ledger = lifecycle.ledger
        self.events = events
        self.on_queued = on_queued
        self.stop = stop or threading.Event()
        self.modes = modes
        self.clock = clock
        self.inboxes = {inbox.name: inbox for inbox in config.inboxes}
        self.candidates: dict[tuple[str, str], Candidate] = {}
        self.presence = Presence(list(config.inboxes), clock=clock)
        self.available: dict[str, bool] = {}
        self.ignored = Notes(
            log, "%s: … and %d more files ignored by its include/exclude rules", clock=clock
        )

    # -- the loop ------------------------------------------------------------------

    def rest(self) -> float:
        """How long the loop may wait for hints: a tick while files settle, else long."""
        return TICK if self.candidates else REST

    def step(self, timeout: float = TICK) -> None:
        """Handle the hints that arrive within `timeout`, then check settling files."""
        deadline = self.clock() + timeout
        while not self.stop.is_set():
            remaining = deadline - self.clock()
            try:
                inbox_name, path, hint = self.events.get(timeout=max(0.0, remaining))
            except queue.Empty:
                break
            inbox = self.inboxes.get(inbox_name)
            if inbox is not None:
                self._guarded(self.handle, inbox, Path(path), hint)
            if self.candidates:
                # A file arrived while resting: its settle checks start now, not after
                # the rest (up to REST seconds) that was planned before it came.
                deadline = min(deadline, self.clock() + TICK)
        self.settle()
        self.ignored.flush()

    def _guarded(self, action: Callable[..., T], inbox: InboxConfig, *args: object) -> T | None:
        """Run one file's step; a bug there is logged and the file left for the next scan,
        instead of killing intake. Ledger errors go up to the loop's storage_trouble."""
        try:
            return action(inbox, *args)
        except sqlite3.Error:
            raise
        except Exception:
            log.exception(
                "%s: internal error on %s; the next scan will try again", inbox.name, args
            )
            return None

    # -- scans ---------------------------------------------------------------------

    def scan(self, inbox: InboxConfig, top: Path | None = None) -> bool:
        """Look at every file of the inbox (or below `top`); returns the inbox's
        availability (see `ocrwatchd.reconcile.scan`)."""
        return reconcile.scan(self, inbox, top)

    def scan_all(self) -> None:
        for inbox in self.config.inboxes:
            self.scan(inbox)

    def _set_available(self, inbox: InboxConfig, available: bool) -> None:
        if self.available.get(inbox.name) == available:
            return
        if not available:
            log.error(
                "inbox %s: %s is unavailable (missing, unreadable or unmounted);"
                " its files are left as they are",
                inbox.name,
                inbox.path,
            )
        elif inbox.name in self.available:
            log.info("inbox %s: available again; looking at every file", inbox.name)
            self.events.put((inbox.name, str(inbox.path), SCAN_DIR))
        self.available[inbox.name] = available
        self.ledger.set_inbox(
            inbox.name, path=str(inbox.path), watch=self.modes[inbox.name], available=available
        )

    def _vanished(self, inbox: InboxConfig, row: Row) -> None:
        """A file seems gone: believed only while its inbox is there (a share that went
        away keeps its files' rows as they are, and its settling files settling)."""
        if not self.presence.believed(inbox):
            self._set_available(inbox, False)
            return
        self.candidates.pop((inbox.name, row.relpath), None)
        self.lifecycle.apply(row, Vanished())

    # -- one path ------------------------------------------------------------------

    def handle(self, inbox: InboxConfig, path: Path, hint: str) -> None:
        """Apply one hint about `path` (absolute, inside `inbox`)."""
        checked = self._inspect(inbox, path, hint)
        if checked is not None:
            relpath, info = checked
            row, _ = self.lifecycle.observe(inbox.name, relpath, identity_of(info))
            self._track(inbox, row, info, hint)

    def _inspect(
        self, inbox: InboxConfig, path: Path, hint: str
    ) -> tuple[str, os.stat_result] | None:
        """Rules and safety for one path: (relpath, stat) of a file to observe, or None
        when the hint was dealt with here (skipped, ignored, gone, a folder to scan)."""
        try:
            relpath = path.relative_to(inbox.path).as_posix()
        except ValueError:
            return None
        try:
            relpath.encode("utf-8")
        except UnicodeEncodeError:
            # Linux allows any bytes in a name; SQLite, JSON and the API want UTF-8.
            if hint != GONE:
                shown = relpath.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                self.lifecycle.ignore(
                    inbox.name, shown, "the file name is not valid UTF-8; rename it"
                )
            return None
        if hint == SCAN_DIR:
            if path.is_dir() and not path.is_symlink():
                self.scan(inbox, path)
            return None
        marked = marked_file(relpath) if inbox.ready_marker else None
        if marked is not None and hint != GONE:  # NAME.ready: NAME may be ready now
            self.handle(inbox, inbox.path / marked, SCANNED)
            return None
        skip = skip_reason(inbox, relpath)
        if skip is not None:
            recorded = skip.record and hint != GONE
            if recorded and self.lifecycle.ignore(inbox.name, relpath, skip.reason):
                self.ignored.note(
                    inbox.name, "%s: %s ignored: %s", inbox.name, relpath, skip.reason
                )
            return None
        key = (inbox.name, relpath)
        try:
            unsafe = unsafe_reason(path)
            info = path.stat() if unsafe is None else None
        except FileNotFoundError:
            row = self.ledger.find(inbox.name, relpath)
            if row is not None and row.state in (State.SETTLING, State.PENDING):
                self._vanished(inbox, row)
            elif self.presence.believed(inbox):
                self.candidates.pop(key, None)
            return None
        except OSError as exc:
            log.warning("%s: cannot stat %s: %s", inbox.name, relpath, exc)
            return None
        if unsafe is not None or info is None:
            self.candidates.pop(key, None)
            self.lifecycle.ignore(inbox.name, relpath, unsafe or "unreadable")
            return None
        return relpath, info

    def _track(self, inbox: InboxConfig, row: Row, info: os.stat_result, hint: str) -> None:
        """Follow a settling file until it has kept its size and mtime long enough."""
        key = (inbox.name, row.relpath)
        if row.state != State.SETTLING:
            self.candidates.pop(key, None)
            return
        # Whether the writer is finished. Polling sees no writers: settling alone decides.
        # A write (CHANGED) means a writer is at work until its close (COMPLETE). CREATED is
        # ambiguous: a writer starting, a file moved in from outside the inbox (no close
        # will follow) or watchdog's replay of a new folder's content, so a non-empty
        # file counts as complete until a write says otherwise.
        events = self.modes[inbox.name] == "events"
        if not events:
            complete = True
        elif hint == CREATED:
            complete = info.st_size > 0
        else:
            complete = hint != CHANGED
        candidate = self.candidates.get(key)
        if candidate is None or candidate.row.generation != row.generation:
            self.candidates[key] = Candidate(
                inbox, row, info.st_size, info.st_mtime_ns, self.clock(), complete
            )
            log.debug("%s: %s settling", inbox.name, row.relpath)
            return
        candidate.row = row
        changed = (candidate.size, candidate.mtime_ns) != (info.st_size, info.st_mtime_ns)
        if changed:
            candidate.size, candidate.mtime_ns = info.st_size, info.st_mtime_ns
            candidate.stable_since = self.clock()
        if hint == COMPLETE or not events:
            candidate.complete = True
        elif hint == CHANGED:
            candidate.complete = False

    # -- settling ------------------------------------------------------------------

    def settle(self) -> None:
        now = self.clock()
        for key, candidate in list(self.candidates.items()):
            if self.stop.is_set():
                return
            quiet = now - candidate.stable_since
            if quiet < candidate.inbox.settle_seconds:
                continue
            if not candidate.complete and quiet < max(
                QUIET_FALLBACK, candidate.inbox.settle_seconds
            ):
                continue
            del self.candidates[key]
            self._guarded(self._ready, candidate.inbox, candidate)

    def _ready(self, inbox: InboxConfig, candidate: Candidate) -> None:
        row = candidate.row
        relpath = row.relpath
        if inbox.ready_marker and not os.path.lexists(inbox.path / ready_marker_of(relpath)):
            return  # its NAME.ready marker brings it back
        try:
            source = open_source(inbox.path, relpath)
        except FileNotFoundError:
            self.handle(inbox, inbox.path / relpath, GONE)
            return
        except UnsafeSource as exc:
            self.lifecycle.ignore(inbox.name, relpath, str(exc))
            return
        except OSError as exc:
            self._unreadable(candidate, f"cannot read it: {exc.strerror or exc}")
            return
        with source:
            self._check(inbox, candidate, source)

    def _check(self, inbox: InboxConfig, candidate: Candidate, source: OpenSource) -> None:
        """Hash, sniff and queue a settled file, from the one descriptor opened for it."""
        row, path = candidate.row, inbox.path / candidate.row.relpath
        if not row.same_identity(identity_of_open(source.identity)):
            self.handle(inbox, path, SCANNED)  # changed while settling
            return
        if source.writer_active():
            # Still open for writing somewhere (a paused writer): settle again.
            self._unreadable(candidate, "a process still has it open for writing", retry=True)
            return
        problem = outbox.name_problem(inbox, row.relpath)
        try:
            if problem is not None:
                raise FileRejected(problem)
            digest = source.sha256()
            kind = filetypes.sniff(path)
        except FileRejected as exc:
            self.lifecycle.apply(row, Failed(str(exc)))
            return
        except OSError as exc:
            self._unreadable(candidate, f"cannot read it: {exc.strerror or exc}")
            return
        if inbox.dedupe and self._reuse(inbox, row, digest, path):
            return
        queued = Settled(digest, f"queued ({kind.mime_type}, {source.identity.size} bytes)")
        if self.lifecycle.apply(row, queued):
            self.on_queued()

    def _unreadable(self, candidate: Candidate, why: str, *, retry: bool = False) -> None:
        """Look again in a few seconds, and say why on the row (`jobs`, `explain`)."""
        row = candidate.row
        if not retry:
            log.warning("%s: %s: %s; looking again shortly", row.inbox, row.relpath, why)
        self.ledger.defer(row, until=0, error=why)
        candidate.stable_since = self.clock() + UNREADABLE_RETRY - candidate.inbox.settle_seconds
        self.candidates[(row.inbox, row.relpath)] = candidate

    def _reuse(self, inbox: InboxConfig, row: Row, digest: str, path: Path) -> bool:
        """Dedupe: identical content already done in this inbox → copy its result."""
        original = self.ledger.done_with_hash(inbox.name, digest, row.id)
        if original is None or original.result_path is None:
            return False
        try:
            body = Path(original.result_path).read_bytes()
            target = outbox.write_result(inbox, row.relpath, outbox.adapt_duplicate(body, path))
        except (OSError, ValueError, KeyError) as exc:
            log.info(
                "%s: cannot reuse the result of %s (%s); processing",
                inbox.name,
                original.relpath,
                exc,
            )
            return False
        self.lifecycle.apply(row, Duplicate(digest, str(target), original.id, original.relpath))
        return True
