"""Friendly operations: explain from any folder a file passes through, `once`'s summary,
and warnings that do not break the progress bar."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

from ocrwatchd.ledger import Ledger
from ocrwatchd.lifecycle import State
from ocrwatchd.progress import ProgressBar, bar_safe_logging
from tests.helpers import FIXTURES, cli, write_config

NO_KEY = {"MINDEE_V2_API_KEY": ""}


def folders(tmp_path: Path) -> dict[str, Path]:
    places = {name: tmp_path / name for name in ("in", "out", "archive", "failed")}
    for place in places.values():
        place.mkdir()
    return places


def explain_config(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    places = folders(tmp_path)
    config = write_config(
        tmp_path,
        {
            "state_dir": str(tmp_path / "state"),
            "engine": "local",
            "inboxes": [
                {
                    "name": "scans",
                    "path": str(places["in"]),
                    "outbox": str(places["out"]),
                    "on_success": "archive",
                    "archive_dir": str(places["archive"]),
                    "failed_dir": str(places["failed"]),
                }
            ],
        },
    )
    ledger = Ledger(tmp_path / "state" / "ledger.db")
    try:
        result = str(places["out"] / "sub" / "a.pdf.json")
        ledger.insert("scans", "sub/a.pdf", State.DONE, size=10, mtime_ns=1, result_path=result)
        reason = "the PDF is encrypted"
        ledger.insert("scans", "b.pdf", State.FAILED, size=10, mtime_ns=1, reason=reason)
        ledger.insert("scans", "c.pdf", State.PENDING, size=10, mtime_ns=1)
        ledger.set_inbox("scans", path=str(places["in"]), watch="events", available=True)
        ledger.set_paused("the API refused the key (401): check mindee.api_key_file")
    finally:
        ledger.close()
    return config, places


def explain(config: Path, path: Path, *options: str) -> str:
    result = cli(config, "explain", str(path), *options, env=NO_KEY)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_explain_leads_back_from_the_outbox_archive_and_failed_folders(tmp_path: Path) -> None:
    config, places = explain_config(tmp_path)
    source = places["in"] / "sub" / "a.pdf"
    result_file = places["out"] / "sub" / "a.pdf.json"
    done = f"sub/a.pdf is done: result at {result_file}."
    assert explain(config, source) == done
    assert explain(config, result_file) == f"{result_file} comes from {source}: {done}"
    text_file = places["out"] / "sub" / "a.pdf.txt"
    assert explain(config, text_file) == f"{text_file} comes from {source}: {done}"
    archived = places["archive"] / "sub" / "a.pdf"
    assert explain(config, archived) == f"{archived} comes from {source}: {done}"

    failed_source = places["in"] / "b.pdf"
    failed = "b.pdf failed: the PDF is encrypted. Fix the cause, then run `ocrwatchd retry`."
    for path in (places["failed"] / "b.pdf", places["failed"] / "b.pdf.reason.json"):
        assert explain(config, path) == f"{path} comes from {failed_source}: {failed}"

    row = json.loads(explain(config, result_file, "--json"))
    assert (row["path"], row["state"], row["result"]) == (str(source), "done", str(result_file))


def test_explain_says_remote_work_is_paused_for_a_waiting_file(tmp_path: Path) -> None:
    config, places = explain_config(tmp_path)
    assert explain(config, places["in"] / "c.pdf") == (
        "c.pdf is queued for OCR; remote work is paused: the API refused the key (401):"
        " check mindee.api_key_file"
    )
    # A finished file is not held up by the pause: no mention.
    assert "paused" not in explain(config, places["in"] / "sub" / "a.pdf")
    row = json.loads(explain(config, places["in"] / "c.pdf", "--json"))
    assert row["paused"].startswith("the API refused the key")


def test_once_ends_with_a_summary(tmp_path: Path) -> None:
    places = folders(tmp_path)
    shutil.copy(FIXTURES / "file_types" / "receipt.png", places["in"] / "receipt.png")
    shutil.copy(FIXTURES / "file_types" / "receipt.txt", places["in"] / "broken.pdf")
    (places["in"] / "notes.txt").write_text("not a scan")
    config = write_config(
        tmp_path,
        {
            "state_dir": str(tmp_path / "state"),
            "engine": "local",
            "local": {"workers": 1},
            "inboxes": [
                {
                    "name": "scans",
                    "path": str(places["in"]),
                    "outbox": str(places["out"]),
                    "settle_seconds": 0,
                }
            ],
        },
    )
    result = cli(config, "once", env=NO_KEY, timeout=120)
    assert result.returncode == 1, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("3 files: 1 done, 1 failed, 1 ignored in "), summary
    assert summary.endswith(" s")
    # A second run has nothing new to do, and says so.
    again = cli(config, "once", env=NO_KEY, timeout=120)
    assert again.stdout.strip().splitlines()[-1].startswith("0 files in "), again.stdout


def screen(output: str) -> list[str]:
    """What a terminal shows after `output`: \\r returns to the line's start, ESC[K clears
    to its end, \\n starts a new line."""
    lines, line, column = [], "", 0
    index = 0
    while index < len(output):
        if output.startswith("\033[K", index):
            line = line[:column]
            index += 3
            continue
        char = output[index]
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append(line)
            line, column = "", 0
        else:
            line = line[:column] + char + line[column + 1 :]
            column += 1
        index += 1
    return [*lines, line]


def test_a_warning_gets_its_own_line_and_the_bar_comes_back() -> None:
    terminal = io.StringIO()
    logger = logging.getLogger("tests.progress")
    logger.propagate = False
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    bar = ProgressBar(terminal)
    try:
        with bar_safe_logging(bar, logger):
            bar(1, 4, 0)
            logger.warning("inbox scans: cannot watch it; relying on rescans")
            assert screen(terminal.getvalue()) == [
                "WARNING inbox scans: cannot watch it; relying on rescans",
                "[#######-----------------------] 1/4 finished, 0 failed",
            ]
            bar(4, 4, 1)
        assert logger.handlers == [handler]  # put back after the block
        bar.finish()
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert screen(terminal.getvalue()) == [
        "WARNING inbox scans: cannot watch it; relying on rescans",
        "[##############################] 4/4 finished, 1 failed",
        "",
    ]
