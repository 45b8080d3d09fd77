"""systemd integration: sd_notify, the watchdog interval and journald-friendly logging.

Everything here is a no-op outside systemd. `systemd-python` (the `[systemd]` extra) is
used for structured journald fields when it is installed; otherwise notifications go out
as one datagram to $NOTIFY_SOCKET and log lines carry `<N>` priority prefixes that
journald reads from stderr.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import sys
from typing import Any

log = logging.getLogger(__name__)

PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1", "STATUS=…") to systemd; False outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False
    return True


def file_fields(inbox: str, relpath: str, state: str, **more: object) -> dict[str, object]:
    """`extra=` for a log line about one file's transition: journald shows them as
    OCRWATCHD_INBOX, OCRWATCHD_PATH, OCRWATCHD_STATE (and OCRWATCHD_<NAME> for `more`)."""
    fields: dict[str, object] = {
        "ocrwatchd_inbox": inbox,
        "ocrwatchd_path": relpath,
        "ocrwatchd_state": state,
    }
    fields.update({f"ocrwatchd_{name}": value for name, value in more.items()})
    return fields


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


# Line breaks (C0, C1, U+2028/9), escape sequences and lone surrogates (undecodable bytes
# of a file name), none of which a log line may carry as they are.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in NAMED_ESCAPES:
        return NAMED_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """`text` with control characters written as `\\n`, `\\x1b`, `\\u2028`…: a file
    named `a\\n<2>CRITICAL …` must not forge a second log line or drive a terminal."""
    if keep_newlines:
        return "\n".join(CONTROL_CHARACTERS.sub(_escape, line) for line in text.split("\n"))
    return CONTROL_CHARACTERS.sub(_escape, text)


class SafeFormatter(logging.Formatter):
    """Escapes control characters in every record's message (file names reach it through
    arguments); a traceback keeps its own line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return escape_controls(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return escape_controls(super().formatStack(stack_info), keep_newlines=True)


class PriorityFormatter(SafeFormatter):
    """`<N>message` lines: journald turns the prefix into the entry's priority. It reads
    stderr line by line, so a record is always one line here, traceback included."""

    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITIES.get(record.levelno, 6)
        return f"<{priority}>{escape_controls(super().format(record))}"


def _journal_handler() -> logging.Handler | None:
    try:
        journal: Any = importlib.import_module("systemd.journal")
    except ImportError:
        return None

    class FieldsHandler(journal.JournalHandler):  # type: ignore[misc,unused-ignore]
        """Adds the record's `ocrwatchd_*` extras as OCRWATCHD_* journal fields."""

        def emit(self, record: logging.LogRecord) -> None:
            extra: dict[str, Any] = {
                key.upper(): value
                for key, value in record.__dict__.items()
                if key.startswith("ocrwatchd_")
            }
            self._extra.update(extra)
            try:
                super().emit(record)
            finally:
                for key in extra:
                    self._extra.pop(key, None)

    handler = FieldsHandler(SYSLOG_IDENTIFIER="ocrwatchd")
    handler.setFormatter(SafeFormatter("%(message)s"))
    return handler


def setup_logging(level: str) -> None:
    """Log to journald (structured) when run by systemd with systemd-python, else stderr
    with `<N>` prefixes under systemd and timestamps on a terminal."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler: logging.Handler | None = _journal_handler() if under_journal else None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            PriorityFormatter("%(name)s: %(message)s")
            if under_journal
            else SafeFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level.upper())
    # urllib3 logs every request at DEBUG; keep it at INFO so debug logs stay readable.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
