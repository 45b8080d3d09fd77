"""Which files in an inbox are OCR'd, and which are left alone and why.

Two kinds of skipping: writer temp names and OS junk are *transient* (never recorded in
the ledger: they come and go by the thousand), while a file that does not match the
inbox's include/exclude globs is *ignored* (recorded, so `jobs --state ignored` lists it).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from ocrwatchd.config import InboxConfig

WRITER_TEMP_NAMES = (
    "*.part",
    "*.tmp",
    "*.crdownload",
    "*.filepart",
    ".~*",
    "~$*",
    ".syncthing.*",
    "._*",
)
# rsync writes `.NAME.XXXXXX` (mkstemp's six random letters and digits) and renames it.
RSYNC_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9]{6}")
OS_JUNK_NAMES = (".ds_store", "thumbs.db", "desktop.ini")
# Synology, macOS, Syncthing versions, ZIP leftovers, NAS snapshots and recycle bins.
JUNK_DIRS = frozenset(
    {
        "@eaDir",
        ".Trashes",
        ".stfolder",
        ".stversions",
        "__MACOSX",
        ".Spotlight-V100",
        ".fseventsd",
        ".snapshot",
        "~snapshot",
        "#recycle",
        ".@__thumb",
    }
)
READY_SUFFIX = ".ready"


@dataclass(frozen=True)
class Skip:
    """Why a file is not processed; `record` says whether the ledger lists it as ignored."""

    reason: str
    record: bool


def _matches(relpath: str, pattern: str) -> bool:
    """Glob match, case-insensitive; patterns with a `/` match the path inside the inbox,
    others the file name alone (so `*.pdf` matches `a/b/c.PDF`)."""
    target = relpath if "/" in pattern else relpath.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(target.lower(), pattern.lower())


def skip_reason(inbox: InboxConfig, relpath: str) -> Skip | None:
    """Given a path relative to the inbox ('/'-separated), say why it is skipped, or None."""
    parts = relpath.split("/")
    name = parts[-1]
    for directory in parts[:-1]:
        if directory in JUNK_DIRS:
            return Skip(f"inside the system folder {directory}/, which is never processed", False)
    if not inbox.recursive and len(parts) > 1:
        return Skip("in a subfolder, and this inbox has recursive: false", True)
    for pattern in WRITER_TEMP_NAMES:
        if fnmatch.fnmatchcase(name.lower(), pattern.lower()):
            return Skip(f"a writer's temporary name (matches {pattern}), never uploaded", False)
    if RSYNC_TEMP_NAME.fullmatch(name):
        return Skip("a writer's temporary name (rsync's .NAME.XXXXXX), never uploaded", False)
    # getattr: the ready_marker key arrives with the ready-marker work, on another branch.
    if getattr(inbox, "ready_marker", False) and is_marker(relpath):
        return Skip(f"the ready marker of {marked_file(relpath)}, never uploaded", False)
    if name.lower() in OS_JUNK_NAMES:
        return Skip(f"operating-system junk ({name}), never uploaded", False)
    for pattern in inbox.exclude:
        if _matches(relpath, pattern):
            return Skip(f"matches the exclude pattern {pattern!r}", True)
    if not any(_matches(relpath, pattern) for pattern in inbox.include):
        return Skip("matches none of the include patterns (" + ", ".join(inbox.include) + ")", True)
    return None


def skips_directory(inbox: InboxConfig, name: str) -> bool:
    """Whether a scan should not descend into a directory with this name."""
    return name in JUNK_DIRS or not inbox.recursive


def ready_marker_of(relpath: str) -> str:
    """The marker that makes `relpath` ready with ready_marker on: `NAME.ready`."""
    return relpath + READY_SUFFIX


def is_marker(relpath: str) -> bool:
    """Whether `relpath` is a `NAME.ready` marker (with a NAME)."""
    return marked_file(relpath) is not None


def marked_file(relpath: str) -> str | None:
    """The file a `NAME.ready` marker stands for, or None for other names."""
    name = relpath.rsplit("/", 1)[-1]
    if len(name) <= len(READY_SUFFIX) or not name.endswith(READY_SUFFIX):
        return None
    return relpath[: -len(READY_SUFFIX)]
