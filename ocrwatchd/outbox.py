"""Result files and what happens to the source afterwards.

`OUTBOX/sub/scan 1.pdf` → `OUTBOX/sub/scan 1.pdf.json` (and `.txt` with write_text).
Every write is atomic: a temporary file in the same directory, fsync, rename, fsync of the
directory, so a reader never sees a partial file and a crash leaves the old file or the
new one. Sources are deleted or archived only after their result is durable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ocrwatchd.config import InboxConfig

log = logging.getLogger(__name__)

TEMP_PREFIX = ".ocrwatchd-"  # hidden, and ours alone: stale ones are removed at start


def result_path(inbox: InboxConfig, relpath: str) -> Path:
    return inbox.outbox / (relpath + ".json")


def text_path(inbox: InboxConfig, relpath: str) -> Path:
    return inbox.outbox / (relpath + ".txt")


def source_path(inbox: InboxConfig, relpath: str) -> Path:
    return inbox.path / relpath


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably, creating parent directories.

    Raises OSError (disk full, permissions); the temporary file is removed then.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(directory: Path, older_than: float) -> int:
    """Delete our temporary files below `directory` last written before `older_than`
    (epoch seconds): leftovers of a crash in the middle of a write. Returns how many."""
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

    Raises OSError when the outbox cannot be written; ValueError when `body` is not an OCR
    result (with write_text only: otherwise the body is written as received).
    """
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


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)
    _fsync_dir(target.parent)


def dispose_source(inbox: InboxConfig, relpath: str) -> str | None:
    """Apply on_success to a source whose result is durable.

    Returns a short description of what was done (None for keep). Raises OSError.
    """
    source = source_path(inbox, relpath)
    if inbox.on_success == "delete":
        source.unlink(missing_ok=True)
        return "deleted the source"
    if inbox.on_success == "archive" and inbox.archive_dir is not None:
        target = inbox.archive_dir / relpath
        _move(source, target)
        return f"archived the source to {target}"
    return None


def move_to_failed(inbox: InboxConfig, relpath: str, reason: dict[str, Any]) -> Path | None:
    """With failed_dir set, move a permanently failed source there beside a
    `<name>.reason.json`. Returns the new path, or None when failed_dir is not set.

    Raises OSError.
    """
    if inbox.failed_dir is None:
        return None
    target = inbox.failed_dir / relpath
    atomic_write(
        inbox.failed_dir / (relpath + ".reason.json"),
        json.dumps(reason, indent=2, ensure_ascii=False).encode("utf-8"),
    )
    source = source_path(inbox, relpath)
    if source.exists():
        _move(source, target)
    return target
