"""The scan of an inbox, one folder at a time, for `Intake`: what a watch missed, files
removed before they were queued, and rows of finished files long gone.

Memory stays bounded by the largest folder, not the inbox: each folder's listing is
compared with that folder's rows alone, its new files are inserted in one batch, and rows
of files gone (from a listed folder, or with their folder) are handled as they are found.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ocrwatchd.config import InboxConfig
from ocrwatchd.fsafe import identity_of
from ocrwatchd.ledger import Row
from ocrwatchd.lifecycle import TERMINAL, State
from ocrwatchd.watcher import SCANNED, Folder, walk_folders

if TYPE_CHECKING:
    from ocrwatchd.intake import Intake

log = logging.getLogger(__name__)

FORGET_BATCH = 500  # gone rows held before they are forgotten: bounded memory


def _unchanged(row: Row, info: os.stat_result) -> bool:
    """A row whose file is still the same version (`info` from lstat; a link's row is
    ignored, with no size): nothing to do, so a rescan of a large inbox costs a stat per
    file, not a ledger write."""
    if row.state == State.SETTLING or row.size is None or not stat.S_ISREG(info.st_mode):
        return False
    return row.same_identity(identity_of(info))


def _is_folder(path: Path) -> bool:
    """Whether a folder a scan did not list is still there (skipped by a rule, say): its
    rows are then left as they are."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def scan(intake: Intake, inbox: InboxConfig, top: Path | None = None) -> bool:
    """Look at every file of the inbox (or below `top`), one folder at a time; returns
    the inbox's availability. Files removed before they were queued are noticed; a
    full scan also forgets the rows of finished files gone for `forget_after`."""
    available = intake.presence.check(inbox)
    intake._set_available(inbox, available)
    if not available:
        return False
    full = top is None
    listed: set[str] = set()
    forgettable: list[Row] = []
    try:
        for folder in walk_folders(inbox, top):
            if intake.stop.is_set():
                return True
            listed.add(folder.prefix)
            if folder.names is not None:
                gone = _scan_folder(intake, inbox, folder)
                forgettable += _gone(intake, inbox, gone, keep=not full)
            if len(forgettable) >= FORGET_BATCH:
                _forget(intake, inbox, forgettable)
    except OSError as exc:
        log.warning("inbox %s: scan failed: %s", inbox.name, exc)
        intake._set_available(inbox, False)
        return False
    # A share unmounted during the scan leaves folders unlisted, not gone.
    if full and intake.presence.check(inbox):
        for prefix in intake.ledger.folders(inbox.name):
            if prefix not in listed and not _is_folder(inbox.path / prefix):
                gone = list(intake.ledger.folder_rows(inbox.name, prefix).values())
                forgettable += _gone(intake, inbox, gone, keep=False)
                if len(forgettable) >= FORGET_BATCH:
                    _forget(intake, inbox, forgettable)
        _forget(intake, inbox, forgettable)
    return True


def _scan_folder(intake: Intake, inbox: InboxConfig, folder: Folder) -> list[Row]:
    """Compare one listed folder with its rows: new files are inserted in one batch,
    changed ones handled one by one. Returns the rows whose file is not there."""
    known = intake.ledger.folder_rows(inbox.name, folder.prefix)
    fresh: list[tuple[str, os.stat_result]] = []
    for name in folder.names or ():
        relpath = folder.prefix + name
        row = known.pop(relpath, None)
        try:
            info = os.lstat(os.path.join(folder.path, name))
        except OSError:
            info = None
        if row is not None and info is not None and _unchanged(row, info):
            continue
        path = Path(folder.path, name)
        if row is None and info is not None and stat.S_ISREG(info.st_mode):
            checked = intake._guarded(intake._inspect, inbox, path, SCANNED)
            if checked is not None:
                fresh.append(checked)
            continue
        intake._guarded(intake.handle, inbox, path, SCANNED)
    if fresh:
        identities = [(relpath, identity_of(info)) for relpath, info in fresh]
        rows = intake.lifecycle.observe_new(inbox.name, identities)
        infos = dict(fresh)
        for row in rows:
            intake._track(inbox, row, infos[row.relpath], SCANNED)
    return list(known.values())


def _gone(intake: Intake, inbox: InboxConfig, rows: list[Row], *, keep: bool) -> list[Row]:
    """Rows whose file a scan did not find: settling or pending ones are removed
    files; the finished ones are returned to be forgotten (unless `keep`)."""
    finished = []
    for row in rows:
        if row.state in (State.SETTLING, State.PENDING):
            intake._vanished(inbox, row)
        elif not keep and row.state in TERMINAL:
            finished.append(row)
    return finished


def _forget(intake: Intake, inbox: InboxConfig, rows: list[Row]) -> None:
    """Forget finished rows of files gone for `forget_after`, if the inbox is still
    believed there (an unmounted share's files are not gone)."""
    if rows and intake.presence.believed(inbox):
        forgotten = intake.ledger.forget(rows, older_than=intake.config.forget_after)
        if forgotten:
            log.info(
                "inbox %s: forgot %d finished files gone for more than %.0f s",
                inbox.name,
                forgotten,
                intake.config.forget_after,
            )
    rows.clear()
