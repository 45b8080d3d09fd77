"""A file name with control characters cannot forge log lines: the daemon's real logging
setup, in a real process, writing to a real stderr pipe."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT

FORGED = "a.jpg\n<2>CRITICAL forged\r\x1b[31mred\u2028"
PROGRAM = """
import logging, sys
from ocrwatchd.service import setup_logging
setup_logging("info")
log = logging.getLogger("ocrwatchd.intake")
log.warning("%s: %s failed: %s", "scans", sys.argv[1], "unsupported type")
try:
    open("/nonexistent/" + sys.argv[1])
except OSError:
    log.exception("cannot read %s", sys.argv[1])
"""


def run_logging(journal: bool) -> list[str]:
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if journal:
        env["JOURNAL_STREAM"] = "8:12345"
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, FORGED],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return result.stderr.decode("utf-8").split("\n")[:-1]


def test_under_journald_every_record_is_one_prefixed_line() -> None:
    lines = run_logging(journal=True)
    assert len(lines) == 2, lines
    assert lines[0] == (
        "<4>ocrwatchd.intake: scans: a.jpg\\n<2>CRITICAL forged\\r\\x1b[31mred\\u2028 failed: "
        "unsupported type"
    )
    assert lines[1].startswith("<3>ocrwatchd.intake: cannot read a.jpg\\n<2>CRITICAL forged")
    assert "\\nTraceback (most recent call last):\\n" in lines[1]
    assert "\x1b" not in "".join(lines)


def test_on_a_terminal_names_are_escaped_and_tracebacks_keep_their_lines() -> None:
    lines = run_logging(journal=False)
    assert lines[0].endswith(
        "WARNING ocrwatchd.intake: scans: a.jpg\\n<2>CRITICAL forged\\r\\x1b[31mred\\u2028 "
        "failed: unsupported type"
    )
    assert lines[1].endswith(
        "ERROR   ocrwatchd.intake: cannot read a.jpg\\n<2>CRITICAL forged\\r\\x1b[31mred\\u2028"
    )
    assert lines[2] == "Traceback (most recent call last):"
    assert not any(line.startswith("<2>") for line in lines)
    assert "\x1b" not in "".join(lines)
    assert "FileNotFoundError" in lines[-1] and "\\n<2>CRITICAL" in lines[-1]
