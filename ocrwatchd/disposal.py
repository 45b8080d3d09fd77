"""What happens to a source once its file is finished: on_success (keep, delete, archive)
for a done file, the failed folder for a failed one. Called by the lifecycle after the
move is committed; each acts only on the very file processed (same device, inode, size and
mtime), so a file that changed meanwhile is kept and processed again."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from ocrwatchd import outbox
from ocrwatchd.fsafe import SourceChanged

if TYPE_CHECKING:
    from ocrwatchd.config import InboxConfig
    from ocrwatchd.ledger import Ledger, Row

log = logging.getLogger(__name__)


def dispose(ledger: Ledger, inbox: InboxConfig, row: Row) -> None:
    """Apply on_success (the result is durable by now) to the very file processed.
    A file that changed since is kept (intake processes it again); a failure leaves
    the source where it is, logged and shown in `status`."""
    try:
        done = outbox.dispose_source(inbox, row.relpath, _disk_identity(row))
    except SourceChanged as exc:
        log.info("%s: %s: kept: %s", inbox.name, row.relpath, exc)
        return
    except OSError as exc:
        message = f"on_success {inbox.on_success} failed for {row.relpath}: {exc}"
        log.error("%s: %s", inbox.name, message)
        ledger.note_error(inbox.name, message)
        return
    remove_marker(inbox, row)
    if done:
        ledger.forget_source(row)


def move_failed(ledger: Ledger, inbox: InboxConfig, row: Row) -> None:
    details = {
        "path": str(inbox.path / row.relpath),
        "reason": row.reason,
        "job_id": row.job_id,
        "attempts": row.attempts,
    }
    try:
        moved = outbox.move_to_failed(inbox, row.relpath, details, _disk_identity(row))
    except SourceChanged as exc:
        log.info("%s: %s: left in the inbox: %s", inbox.name, row.relpath, exc)
        return
    except OSError as exc:
        log.error("%s: %s: cannot move to failed_dir: %s", inbox.name, row.relpath, exc)
        ledger.note_error(inbox.name, f"cannot move {row.relpath} to failed_dir: {exc}")
        return
    remove_marker(inbox, row)
    if moved is not None:
        ledger.forget_source(row, moved_to=str(moved))


def remove_marker(inbox: InboxConfig, row: Row) -> None:
    """With ready_marker, the file's NAME.ready goes once the file is finished."""
    if not inbox.ready_marker:
        return
    marker = inbox.path / (row.relpath + ".ready")
    with contextlib.suppress(FileNotFoundError):
        if not marker.is_symlink() and marker.is_file():
            marker.unlink()


def _disk_identity(row: Row) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime) of the version processed, for the check."""
    if row.dev is None or row.inode is None or row.size is None or row.mtime_ns is None:
        return None
    return (row.dev, row.inode, row.size, row.mtime_ns)
