"""Which files in an inbox are OCR'd, and which are left alone and why.

Two kinds of skipping: writer temp names and OS junk are *transient* (never recorded in
the ledger: they come and go by the thousand), while a file that does not match the
inbox's include/exclude globs is *ignored* (recorded, so `jobs --state ignored` lists it).
"""

from __future__ import annotations

import fnmatch
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
OS_JUNK_NAMES = (".ds_store", "thumbs.db", "desktop.ini")
JUNK_DIRS = frozenset({"@eaDir", ".Trashes", ".stfolder"})


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
