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
import re
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


MOUNTINFO = Path("/proc/self/mountinfo")
OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    parent_id: int
    device: int  # major:minor as os.makedev; a btrfs subvolume's st_dev may differ
    root: str
    point: str
    fs_type: str
    source: str


def _unescape(field: bytes) -> str:
    """The kernel writes space, tab, newline and backslash in paths as \\040, \\011, \\012
    and \\134."""
    return os.fsdecode(OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_mountinfo(text: bytes) -> list[Mount]:
    """The mounts listed in mountinfo(5) text; malformed lines are left out."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(b" ")
        try:
            separator = fields.index(b"-", 6)
            major, minor = fields[2].split(b":")
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=os.makedev(int(major), int(minor)),
                    root=_unescape(fields[3]),
                    point=_unescape(fields[4]),
                    fs_type=_unescape(fields[separator + 1]),
                    source=_unescape(fields[separator + 2]),
                )
            )
        except (ValueError, IndexError):
            continue
    return mounts


def mount_of(path: Path, mounts: list[Mount] | None = None) -> Mount | None:
    """The mount holding `path` (links resolved): the longest mount point containing it;
    of mounts stacked on one point, the last listed, which hides the others."""
    try:
        if mounts is None:
            mounts = parse_mountinfo(MOUNTINFO.read_bytes())
        target = os.path.realpath(path)
    except OSError:
        return None
    best: Mount | None = None
    for mount in mounts:
        point = mount.point
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.point)):
            best = mount
    return best


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem mounted at or above `path` ("ext4", "nfs4", "fuse…")."""
    mount = mount_of(path)
    return mount.fs_type if mount is not None else None


def mount_id(path: Path) -> int | None:
    """The mount ID of the mount holding `path`; a new mount on the same point gets a new
    one, so it tells a share remounted or replaced from the one first seen."""
    mount = mount_of(path)
    return mount.mount_id if mount is not None else None


@dataclass(frozen=True)
class Placement:
    """Where an inbox folder lives: remembered when it is first seen available, compared
    later, so an unmounted share (now an empty folder on the parent filesystem) is told
    apart from an inbox that was emptied."""

    device: int
    mount_id: int | None
    mount_point: str | None


def placement(path: Path) -> Placement | None:
    """The folder's device and mount, or None when it cannot be reached."""
    try:
        device = os.stat(path).st_dev
    except OSError:
        return None
    mount = mount_of(path)
    return Placement(device, mount.mount_id if mount else None, mount.point if mount else None)


def moved_off(before: Placement, path: Path) -> str | None:
    """Why the folder at `path` is no longer the one first seen as `before`, or None."""
    now = placement(path)
    if now is None:
        return "the folder cannot be reached"
    if now.device != before.device:
        return (
            f"the folder is now on another filesystem ({now.mount_point or '?'}) than when it "
            f"was first seen ({before.mount_point or '?'}): its share is unmounted or replaced"
        )
    if now.mount_id != before.mount_id:
        return f"the folder's mount {before.mount_point or '?'} was replaced by another mount"
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


@dataclass(frozen=True)
class Folder:
    """One folder listed by a scan: its path, its relpath prefix ("" at the top of the
    inbox, else "a/b/") and the names of its non-directories (None when it could not be
    listed: what it holds is unknown this scan, not gone)."""

    path: str
    prefix: str
    names: list[str] | None


def walk_folders(inbox: InboxConfig, top: Path | None = None) -> Iterator[Folder]:
    """Every folder below `top` (default: the inbox) with its files, one folder at a
    time, without following directory symlinks and without entering junk folders.
    Raises OSError when `top` cannot be listed; unreadable subfolders are logged and
    yielded with `names` None."""
    root = os.fspath(inbox.path)
    start = os.fspath(top or inbox.path)
    prefix = os.path.relpath(start, root)
    stack = [(start, "" if prefix == "." else prefix + "/")]
    first = True
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            if first:
                raise
            log.warning("cannot list %s; skipping it this scan", directory)
            yield Folder(directory, prefix, None)
            continue
        first = False
        names = []
        for entry in entries:
            # d_type from the listing: no system call per file.
            if entry.is_dir(follow_symlinks=False):
                if not skips_directory(inbox, entry.name):
                    stack.append((entry.path, prefix + entry.name + "/"))
            else:
                names.append(entry.name)
        yield Folder(directory, prefix, names)


def walk(inbox: InboxConfig, top: Path | None = None) -> Iterator[Entry]:
    """Every non-directory below `top` (default: the inbox), as `walk_folders` finds
    them (unreadable subfolders skipped)."""
    for folder in walk_folders(inbox, top):
        for name in folder.names or ():
            path = Path(folder.path, name)
            yield Entry(path, folder.prefix + name)


def unsafe_reason(path: Path) -> str | None:
    """Why a path must not be read at all (a symbolic link, a FIFO, a device, a socket),
    or None. Links are never followed, wherever they point: a link inside the inbox names
    a file that is processed in its own place. Raises FileNotFoundError when it is gone."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link; links are never followed (the file itself is processed)"
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
        kind = "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else kind
        kind = "a socket" if stat.S_ISSOCK(info.st_mode) else kind
        return f"{kind}; only regular files are processed"
    return None
