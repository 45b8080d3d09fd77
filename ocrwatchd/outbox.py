"""Result files and what happens to the source afterwards.

`OUTBOX/sub/scan 1.pdf` → `OUTBOX/sub/scan 1.pdf.json` (and `.txt` with write_text).
Every write is atomic: a temporary file in the same directory, fsync, rename, fsync of the
directory, so a reader never sees a partial file and a crash leaves the old file or the
new one. Temporary files have short names of their own (`.ocrwatchd-<random>.tmp`), so
any name that fits the filesystem can be written, and are created like any file (mode 0666
less the umask). Sources are deleted or archived only after their result is durable, and
only when the name still holds the very file that was processed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ocrwatchd.config import InboxConfig
from ocrwatchd.errors import FileRejected
from ocrwatchd.fsafe import (
    OpenSource,
    SourceBusy,
    SourceChanged,
    open_source,
    same_file,
    split_relpath,
)
from ocrwatchd.moves import (
    TEMP_PREFIX,
    free_names,
    move_source,
    name_bytes,
    name_max,
    still_there,
    temp_name,
    too_long,
)

log = logging.getLogger(__name__)

REASON_SUFFIX = ".reason.json"


def result_path(inbox: InboxConfig, relpath: str) -> Path:
    return inbox.outbox / (relpath + ".json")


def text_path(inbox: InboxConfig, relpath: str) -> Path:
    return inbox.outbox / (relpath + ".txt")


def source_path(inbox: InboxConfig, relpath: str) -> Path:
    return inbox.path / relpath


def name_problem(inbox: InboxConfig, relpath: str) -> str | None:
    """Why the files this source leads to (`.json`, `.txt` with write_text,
    `.reason.json` in failed_dir) cannot exist under its name, or None. The intake asks
    before queuing a file, so a name too long fails at once with this reason."""
    parts = relpath.split("/")
    folder = Path(*parts[:-1]) if len(parts) > 1 else Path()
    # No check for failed_dir: a failed file whose `.reason.json` would not fit is given
    # a shorter name there (moves.free_names); only the outbox names are fixed.
    for suffix in (".json", ".txt") if inbox.write_text else (".json",):
        problem = too_long(inbox.outbox / folder, parts[-1], suffix)
        if problem is not None:
            return problem
    return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably, creating parent directories. The
    file gets mode 0666 less the umask (and a default ACL, if any), as open() would.

    Raises OSError (disk full, permissions); the temporary file is removed then.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = path.parent / temp_name()
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(directory: Path, older_than: float) -> int:
    """Delete our temporary files below `directory` last written before `older_than`
    (epoch seconds): leftovers of a crash in the middle of a write. Returns how many.
    Matches `.ocrwatchd-<random>.tmp` and the older `.ocrwatchd-<name>.<random>.tmp`."""
    removed = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if not (name.startswith(TEMP_PREFIX) and name.endswith(".tmp")):
                continue
            path = Path(root) / name
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
    return removed


def page_text(document: dict[str, Any]) -> str:
    """The pages' `content`, separated by form feeds."""
    pages = document["inference"]["result"]["pages"]
    return "\f".join(page.get("content", "") for page in pages)


def write_result(inbox: InboxConfig, relpath: str, body: bytes) -> Path:
    """Write the result JSON (and the text file with write_text); return the JSON's path.

    Raises FileRejected when the name cannot exist in the outbox (see name_problem),
    OSError when the outbox cannot be written; ValueError when `body` is not an OCR
    result (with write_text only: otherwise the body is written as received).
    """
    problem = name_problem(inbox, relpath)
    if problem is not None:
        raise FileRejected(problem)
    target = result_path(inbox, relpath)
    if inbox.write_text:
        text = page_text(json.loads(body))
        atomic_write(text_path(inbox, relpath), text.encode("utf-8"))
    atomic_write(target, body)
    return target


def adapt_duplicate(body: bytes, source: Path) -> bytes:
    """A done result re-addressed to another source with the same content: alias and file
    name become the new file's; everything else stays as the API returned it."""
    document = json.loads(body)
    file_info = document["inference"]["file"]
    file_info["alias"] = str(source)
    file_info["name"] = source.name
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def _open_checked(inbox: InboxConfig, relpath: str, identity: Sequence[int] | None) -> OpenSource:
    """Open the source without following links and make sure it is the file processed
    (when `identity` is given) and that nobody is writing it. Raises SourceChanged,
    SourceBusy, FileNotFoundError or OSError."""
    try:
        source = open_source(inbox.path, relpath)
    except FileRejected as exc:
        raise SourceChanged(f"{exc}; nothing done") from None
    try:
        if identity is not None and not same_file(identity, source.identity):
            raise SourceChanged(f"{relpath} changed since it was processed; nothing done")
        if source.writer_active():
            raise SourceBusy(f"{relpath} is open for writing by a process; nothing done yet")
    except BaseException:
        source.close()
        raise
    return source


def dispose_source(
    inbox: InboxConfig, relpath: str, identity: Sequence[int] | None = None
) -> str | None:
    """Apply on_success to a source whose result is durable.

    With `identity` (fsafe's Identity, or any sequence starting with st_dev, st_ino,
    st_size, st_mtime_ns), act only if the name still holds that very file. No link is
    followed at any component; a file some process has open for writing is left alone.
    Returns a short description of what was done (None for keep). Raises SourceChanged
    (the file is not the one processed: keep it and process it again), SourceBusy (a
    writer holds it: try later) — both OSErrors — or OSError.
    """
    if inbox.on_success == "keep" or (inbox.on_success == "archive" and not inbox.archive_dir):
        return None
    try:
        source = _open_checked(inbox, relpath, identity)
    except FileNotFoundError:
        return "the source was already gone"
    with source:
        if inbox.on_success == "delete":
            still_there(source)
            os.unlink(source.name, dir_fd=source.dir_fd)
            os.fsync(source.dir_fd)
            return "deleted the source"
        assert inbox.archive_dir is not None
        parts = split_relpath(relpath)
        target = move_source(source, inbox.archive_dir.joinpath(*parts[:-1]), parts[-1])
        return f"archived the source to {target}"


def move_to_failed(
    inbox: InboxConfig,
    relpath: str,
    reason: dict[str, Any],
    identity: Sequence[int] | None = None,
) -> Path | None:
    """With failed_dir set, move a permanently failed source there beside a
    `<name>.reason.json`. Returns the new path, or None when failed_dir is not set.

    Never overwrites: a name already taken (by the file or its `.reason.json`) becomes
    `name (2).ext`, and a name too long for its `.reason.json` is shortened. A source
    already gone still gets its `.reason.json`. Raises SourceChanged, SourceBusy (as
    dispose_source; nothing done) or OSError.
    """
    if inbox.failed_dir is None:
        return None
    parts = split_relpath(relpath)
    folder = inbox.failed_dir.joinpath(*parts[:-1])
    try:
        source: OpenSource | None = _open_checked(inbox, relpath, identity)
    except FileNotFoundError:
        source = None
    if source is None:
        target = folder / _free_reason_name(folder, parts[-1])
    else:
        with source:
            target = move_source(source, folder, parts[-1], reserve=REASON_SUFFIX)
    atomic_write(
        target.with_name(target.name + REASON_SUFFIX),
        json.dumps(reason, indent=2, ensure_ascii=False).encode("utf-8"),
    )
    return target


def _free_reason_name(folder: Path, name: str) -> str:
    """A name whose `.reason.json` is free, for a failed source that is gone."""
    folder.mkdir(parents=True, exist_ok=True)

    def taken(candidate: str) -> bool:
        return (folder / candidate).exists() or (folder / (candidate + REASON_SUFFIX)).exists()

    names = free_names(name, name_max(folder), name_bytes(REASON_SUFFIX))
    return next(candidate for candidate in names if not taken(candidate))
