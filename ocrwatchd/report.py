"""Operator commands: status, jobs, explain, retry. They read the ledger (safe while
the daemon runs: WAL readers never block the writer); only `retry` changes anything: it
queues failed rows and moves a file back from failed_dir to its inbox path."""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ocrwatchd import handover, outbox, statelock
from ocrwatchd.config import Config, InboxConfig
from ocrwatchd.fsafe import UnsafeSource, identity_of, open_source
from ocrwatchd.ledger import Ledger, Row
from ocrwatchd.lifecycle import PUBLIC_STATES, Lifecycle, Requeued, State
from ocrwatchd.moves import move_source
from ocrwatchd.presence import Presence
from ocrwatchd.rules import skip_reason
from ocrwatchd.watcher import watch_mode

__all__ = ["PUBLIC_STATES", "explain", "format_jobs", "format_status", "jobs", "retry", "status"]


def _ledger(config: Config) -> Ledger | None:
    path = config.state_dir / "ledger.db"
    return Ledger(path) if path.exists() else None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def _inbox(config: Config, name: str) -> InboxConfig | None:
    return next((inbox for inbox in config.inboxes if inbox.name == name), None)


def row_json(config: Config, row: Row) -> dict[str, Any]:
    inbox = _inbox(config, row.inbox)
    path = str(inbox.path / row.relpath) if inbox else row.relpath
    return {
        "inbox": row.inbox,
        "path": path,
        "relpath": row.relpath,
        "state": row.public_state,
        "internal_state": row.state,
        "reason": row.reason if row.state in (State.FAILED, State.IGNORED) else None,
        "job_id": row.job_id,
        "result": row.result_path if row.state == State.DONE else None,
        "attempts": row.attempts,
        "updated_at": _iso(row.updated_at),
        "created_at": _iso(row.created_at),
        "size": row.size,
        "sha256": row.sha256,
        "last_error": row.last_error,
        "next_attempt_at": _iso(row.next_attempt_at) if row.next_attempt_at else None,
        "duplicate_of": row.duplicate_of,
        "engine": row.engine,
    }


def jobs(
    config: Config, *, state: str | None = None, inbox: str | None = None
) -> list[dict[str, Any]]:
    ledger = _ledger(config)
    if ledger is None:
        return []
    try:
        rows = ledger.rows(inbox=inbox)
    finally:
        ledger.close()
    result = [row_json(config, row) for row in rows]
    return [item for item in result if state is None or item["state"] == state]


def format_jobs(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no files in the ledger"
    lines = []
    for item in rows:
        note = item["reason"] or item["result"] or item["job_id"] or item["last_error"] or ""
        lines.append(f"{item['state']:<10} {item['inbox']}: {item['relpath']}  {note}".rstrip())
    return "\n".join(lines)


def status(config: Config) -> dict[str, Any]:
    ledger = _ledger(config)
    counts: dict[str, dict[str, int]] = {}
    oldest: dict[str, float] = {}
    info: dict[str, dict[str, Any]] = {}
    others: dict[str, int] = {}
    if ledger is not None:
        try:
            others = handover.in_flight(ledger, config.engine)
            counts = ledger.counts_by_inbox()
            oldest = ledger.oldest_waiting()
            info = ledger.inbox_info()
        finally:
            ledger.close()
    now = time.time()
    totals = dict.fromkeys(PUBLIC_STATES, 0)
    inboxes = []
    for inbox in config.inboxes:
        inbox_counts = counts.get(inbox.name, dict.fromkeys(PUBLIC_STATES, 0))
        for state, number in inbox_counts.items():
            totals[state] += number
        known = info.get(inbox.name, {})
        inboxes.append(
            {
                "name": inbox.name,
                "path": str(inbox.path),
                "outbox": str(inbox.outbox),
                "watch": known.get("watch") or watch_mode(inbox),
                # The daemon knows whether a mount went away; the live check whether the
                # directory is there and readable now.
                "available": bool(known.get("available", 1)) and Presence([]).check(inbox),
                "counts": inbox_counts,
                "oldest_pending_seconds": round(now - oldest[inbox.name], 1)
                if inbox.name in oldest
                else None,
                "in_flight": inbox_counts["uploading"] + inbox_counts["processing"],
                "last_error": known.get("last_error"),
                "last_error_at": _iso(known.get("last_error_at")),
                "paused": known.get("paused_reason"),
            }
        )
    return {
        "engine": config.engine,
        "state_dir": str(config.state_dir),
        "daemon": statelock.read_daemon(config.state_dir),
        "inboxes": inboxes,
        "totals": totals,
        "other_engines": handover.waiting(config, others),
    }


def _daemon_line(daemon: dict[str, Any]) -> str:
    if not daemon["running"]:
        return "daemon: not running"
    pid = daemon["pid"] if daemon["pid"] is not None else "unknown"
    line = f"daemon: running (pid {pid}, engine {daemon['engine'] or 'unknown'})"
    if daemon["started_at"] is not None:
        line += f" since {_iso(daemon['started_at'])}"
    return line


def format_status(report: dict[str, Any]) -> str:
    lines = [
        _daemon_line(report["daemon"]),
        f"engine: {report['engine']}   ledger: {report['state_dir']}/ledger.db",
        *report["other_engines"],
    ]
    for inbox in report["inboxes"]:
        counts = ", ".join(
            f"{number} {state}" for state, number in inbox["counts"].items() if number
        )
        availability = "" if inbox["available"] else "  UNAVAILABLE"
        lines.append(f"{inbox['name']} ({inbox['path']}, {inbox['watch']}){availability}")
        lines.append(f"  {counts or 'no files yet'}")
        if inbox["oldest_pending_seconds"] is not None:
            lines.append(f"  oldest waiting file: {inbox['oldest_pending_seconds']:.0f} s")
        if inbox["paused"]:
            lines.append(f"  paused: {inbox['paused']}")
        if inbox["last_error"]:
            lines.append(f"  last error ({inbox['last_error_at']}): {inbox['last_error']}")
    return "\n".join(lines)


# Where a path may sit besides the inbox itself, and the name the source has there.
_PLACES = (
    ("outbox", (".json", ".txt")),
    ("failed_dir", (".reason.json",)),
    ("archive_dir", ()),
)


def _source_relpath(relpath: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if relpath.endswith(suffix) and len(relpath) > len(suffix):
            return relpath.removesuffix(suffix)
    return relpath


def locate(config: Config, path: Path) -> tuple[InboxConfig, str] | None:
    """The inbox `path` belongs to, and its source's path relative to that inbox.

    A path in an outbox (`OUTBOX/sub/a.pdf.json` or `.txt`), a failed folder
    (`FAILED/a.pdf` or `FAILED/a.pdf.reason.json`) or an archive (`ARCHIVE/a.pdf`) leads
    back to the inbox file it came from. The directories are disjoint, so one place matches.
    """
    absolute = Path(path).absolute()
    for inbox in config.inboxes:
        if absolute.is_relative_to(inbox.path):
            return inbox, absolute.relative_to(inbox.path).as_posix()
        for name, suffixes in _PLACES:
            directory: Path | None = getattr(inbox, name)
            if directory is not None and absolute.is_relative_to(directory):
                relpath = absolute.relative_to(directory).as_posix()
                return inbox, _source_relpath(relpath, suffixes)
    return None


def retry(config: Config, paths: list[Path]) -> tuple[int, list[str]]:
    """Queue failed files again: all of them, or those named (in the inbox or in the
    failed folder). Returns (count, problems): one message per path that could not be
    queued. A file moved to failed_dir is moved back to its inbox path first."""
    ledger = _ledger(config)
    if ledger is None:
        return 0, [f"{path}: not a failed file in the ledger" for path in paths]
    lifecycle = Lifecycle(ledger, {inbox.name: inbox for inbox in config.inboxes})
    try:
        rows: list[Row] = []
        problems: list[str] = []
        if not paths:
            rows = ledger.rows(states=(State.FAILED,))
        for path in paths:
            found = locate(config, path)
            row = ledger.find(found[0].name, found[1]) if found else None
            if row is None or row.state != State.FAILED:
                problems.append(f"{path}: not a failed file in the ledger")
            else:
                rows.append(row)
        count = 0
        for row in rows:
            problem = _requeue(lifecycle, _inbox(config, row.inbox), row)
            if problem is None:
                count += 1
            else:
                problems.append(problem)
        return count, problems
    finally:
        ledger.close()


def _requeue(lifecycle: Lifecycle, inbox: InboxConfig | None, row: Row) -> str | None:
    """Queue one failed row again; returns why not, or None. A source in failed_dir goes
    back to its inbox path (never over a file there) and is processed as a new version."""
    moved = _in_failed_dir(inbox, row)
    if inbox is None or moved is None:
        lifecycle.apply(row, Requeued())
        return None
    target = inbox.path / row.relpath
    if os.path.lexists(target):
        return (
            f"{moved}: {target} exists in the inbox; not moved back (move or rename one of"
            " them, then retry)"
        )
    try:
        folder, name = target.parent, target.name
        folder.mkdir(parents=True, exist_ok=True)
        with open_source(moved.parent, moved.name) as source:
            placed = move_source(source, folder, name)
    except (OSError, UnsafeSource) as exc:
        return f"{moved}: cannot move it back to {target}: {exc}"
    with contextlib.suppress(FileNotFoundError):
        moved.with_name(moved.name + outbox.REASON_SUFFIX).unlink()
    if placed != target:  # another file took the name meanwhile: never overwritten
        return f"{moved}: {target} was taken meanwhile; the file is now {placed}"
    # The file is a new version at its inbox path: settling, then queued, as any new file.
    lifecycle.observe(row.inbox, row.relpath, identity_of(placed.stat()))
    return None


def _in_failed_dir(inbox: InboxConfig | None, row: Row) -> Path | None:
    """Where in failed_dir the row's source was moved to, if it is still there."""
    if inbox is None or inbox.failed_dir is None or not row.result_path:
        return None
    moved = Path(row.result_path)
    if not moved.is_relative_to(inbox.failed_dir) or not moved.is_file():
        return None
    return moved


def _sentence(config: Config, inbox: InboxConfig, row: Row) -> str:
    name = row.relpath
    if row.state == State.SETTLING and row.last_error:
        return f"{name} is waiting: {row.last_error}; it is tried again every few seconds."
    if row.state == State.SETTLING:
        return (
            f"{name} is still settling: it is queued once its size and mtime stay unchanged"
            f" for {inbox.settle_seconds:g} s after the writer closes it."
        )
    if row.state == State.PENDING:
        if row.last_error and row.next_attempt_at > time.time():
            return (
                f"{name} is queued for another attempt at {_iso(row.next_attempt_at)}"
                f" after: {row.last_error}"
            )
        return f"{name} is queued for OCR."
    if row.state == State.UPLOADING:
        return f"{name} is being uploaded to the Mindee API (attempt {row.attempts})."
    if row.state == State.PROCESSING:
        where = "the Mindee API" if row.engine == "mindee" else "the local OCR engine"
        return f"{name} is being processed by {where} (job {row.job_id})."
    if row.state == State.FETCHED:
        return f"{name}'s result has been received and is being written to the outbox."
    if row.state == State.DONE:
        if row.duplicate_of is not None:
            return (
                f"{name} is done: a duplicate of an earlier file, its result reused at"
                f" {row.result_path}."
            )
        return f"{name} is done: result at {row.result_path}."
    if row.state == State.FAILED:
        return f"{name} failed: {row.reason}. Fix the cause, then run `ocrwatchd retry`."
    return f"{name} is ignored: {row.reason}."


def explain(config: Config, path: Path) -> dict[str, Any]:
    """Why `path` is (or is not) processed: the row as in `jobs --json` plus `explanation`."""
    found = locate(config, path)
    if found is None:
        return {
            "path": str(Path(path).absolute()),
            "state": None,
            "explanation": f"{path} is not inside any inbox of {config.source}.",
        }
    inbox, relpath = found
    result = _explain_source(config, inbox, relpath)
    source = inbox.path / relpath
    if Path(path).absolute() != source:
        result["explanation"] = f"{path} comes from {source}: {result['explanation']}"
    return result


def _explain_source(config: Config, inbox: InboxConfig, relpath: str) -> dict[str, Any]:
    skip = skip_reason(inbox, relpath)
    ledger = _ledger(config)
    row = original = None
    paused = None
    if ledger is not None:
        try:
            row = ledger.find(inbox.name, relpath)
            original = ledger.get(row.duplicate_of) if row and row.duplicate_of else None
            paused = ledger.inbox_info().get(inbox.name, {}).get("paused_reason")
        finally:
            ledger.close()
    if row is not None:
        result = row_json(config, row)
        sentence = _sentence(config, inbox, row)
        if original is not None:
            sentence = sentence.replace("an earlier file", original.relpath)
        waiting = row.state in (State.SETTLING, State.PENDING, State.UPLOADING, State.PROCESSING)
        if paused and waiting:
            sentence = f"{sentence.removesuffix('.')}; remote work is paused: {paused}"
        result["paused"] = paused
        result["explanation"] = sentence
        return result
    absolute = str(inbox.path / relpath)
    base = {
        "inbox": inbox.name,
        "path": absolute,
        "relpath": relpath,
        "reason": None,
        "job_id": None,
        "result": None,
        "attempts": 0,
        "updated_at": None,
    }
    if skip is not None:
        return {
            **base,
            "state": State.IGNORED,
            "reason": skip.reason,
            "explanation": f"{relpath} is ignored: {skip.reason}.",
        }
    if (inbox.path / relpath).exists():
        return {
            **base,
            "state": None,
            "explanation": f"{relpath} has not been seen by the daemon yet (is it running?).",
        }
    return {
        **base,
        "state": None,
        "explanation": f"{relpath} does not exist and the ledger has no record of it.",
    }
