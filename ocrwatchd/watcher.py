"""Filesystem watching: watchdog observers per inbox, and the scan that catches what
events miss (files dropped while the daemon was stopped, inotify overflow, network
shares).

Watchdog runs handlers on its dispatcher thread under a lock, so the handler here only
puts `(inbox name, path, hint)` on the intake queue and returns.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ocrwatchd.config import InboxConfig
from ocrwatchd.rules import skips_directory

log = logging.getLogger(__name__)

# Hints about what happened to a path. "complete" events (close-after-write, move-in)
# start the settle timer; "changed" ones (writes) say a writer is still at work;
# "created" is either a writer starting or a file that arrived whole (watchdog's
# synthetic events for the content of a new folder), so its size decides.
COMPLETE = "complete"
CHANGED = "changed"
CREATED = "created"
GONE = "gone"
SCAN_DIR = "scan-dir"
SCANNED = "scanned"

NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs")

Event = tuple[str, str, str]  # inbox name, absolute path, hint
WATCHED_EVENTS = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem mounted at or above `path`, from /proc/self/mounts."""
    try:
        target = os.path.realpath(path)
        best, best_type = "", None
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount_point = fields[1].replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) > len(best):
                    best, best_type = mount_point, fields[2]
        return best_type
    except OSError:
        return None


def watch_mode(inbox: InboxConfig) -> str:
    """events or poll: `auto` polls on network and FUSE filesystems, where inotify sees
    only this machine's own writes."""
    if inbox.watch != "auto":
        return inbox.watch
    fs_type = filesystem_type(inbox.path) or ""
    if fs_type in NETWORK_FILESYSTEMS or fs_type.startswith("fuse"):
        return "poll"
    return "events"


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox: str, events: queue.Queue[Event]) -> None:
        self.inbox = inbox
        self.events = events

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = os.fsdecode(event.src_path)
        if event.is_directory:
            if kind in ("created", "moved"):
                # A folder moved in arrives with its content and no event per file.
                target = os.fsdecode(event.dest_path) if kind == "moved" else src
                self.events.put((self.inbox, target, SCAN_DIR))
            return
        if kind == "moved":
            self.events.put((self.inbox, src, GONE))
            self.events.put((self.inbox, os.fsdecode(event.dest_path), COMPLETE))
        elif kind == "closed":
            self.events.put((self.inbox, src, COMPLETE))
        elif kind == "created":
            self.events.put((self.inbox, src, CREATED))
        elif kind == "modified":
            self.events.put((self.inbox, src, CHANGED))
        elif kind == "deleted":
            self.events.put((self.inbox, src, GONE))


def start_observer(inbox: InboxConfig, mode: str, events: queue.Queue[Event]) -> BaseObserver:
    """Start a watchdog observer for one inbox. Raises OSError when the inbox cannot be
    watched (missing, unreadable, out of inotify watches)."""
    observer: BaseObserver = (
        PollingObserver(timeout=inbox.poll_interval) if mode == "poll" else Observer()
    )
    observer.schedule(
        _Handler(inbox.name, events),
        str(inbox.path),
        recursive=inbox.recursive,
        # Our own reads of inbox files raise open and close-without-write events: drop
        # them at the source rather than in the handler.
        event_filter=WATCHED_EVENTS,
    )
    observer.daemon = True
    observer.start()
    return observer


def watching(observer: BaseObserver) -> bool:
    """Whether an observer still watches: watchdog ends an inotify emitter when its folder
    is deleted or unmounted, while the observer thread lives on."""
    emitters = observer.emitters
    return observer.is_alive() and bool(emitters) and all(e.is_alive() for e in emitters)


@dataclass(frozen=True)
class Entry:
    """A non-directory found by a scan."""

    path: Path
    relpath: str


def walk(inbox: InboxConfig, top: Path | None = None) -> Iterator[Entry]:
    """Every non-directory below `top` (default: the inbox), without following directory
    symlinks and without entering junk folders. Raises OSError when `top` cannot be
    listed; unreadable subfolders are logged and skipped."""
    root = inbox.path
    stack = [top or root]
    first = True
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            if first:
                raise
            log.warning("cannot list %s; skipping it this scan", directory)
            continue
        first = False
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not skips_directory(inbox, entry.name):
                    stack.append(Path(entry.path))
                continue
            path = Path(entry.path)
            yield Entry(path, path.relative_to(root).as_posix())


def unsafe_reason(inbox: InboxConfig, path: Path) -> str | None:
    """Why a path must not be read at all (symlink leaving the inbox, FIFO, device,
    socket), or None. Raises FileNotFoundError when it is gone."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        target = Path(os.path.realpath(path))
        root = Path(os.path.realpath(inbox.path))
        if target != root and root not in target.parents:
            return "a symbolic link pointing outside the inbox; refused"
        info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
        kind = "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else kind
        kind = "a socket" if stat.S_ISSOCK(info.st_mode) else kind
        return f"{kind}; only regular files are processed"
    return None


def inbox_available(inbox: InboxConfig, was_mount: bool) -> bool:
    """Whether the inbox can be trusted now: it exists, is a listable directory and, if it
    was a mount point at start, still is (an unmounted share is not an empty inbox)."""
    try:
        if not inbox.path.is_dir():
            return False
        os.listdir(inbox.path)
    except OSError:
        return False
    return not was_mount or os.path.ismount(inbox.path)
