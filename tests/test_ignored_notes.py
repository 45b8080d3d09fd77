"""Files the include patterns leave out get one info line each, but a flood of them
(thousands of files in an inbox that takes none) gives ten lines a minute per inbox and
then one summary. Real folders and ledger; intake's clock is a manual one."""

from __future__ import annotations

import logging
import queue

from ocrwatchd.config import load_config
from ocrwatchd.intake import Intake
from ocrwatchd.ledger import Ledger
from ocrwatchd.lifecycle import Lifecycle, State
from tests.helpers import inbox_settings, write_config
from tests.lifecycle_support import ManualClock


def lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_a_flood_of_ignored_files_is_summed_up(tmp_path, caplog):
    settings = {
        "state_dir": str(tmp_path / "state"),
        "engine": "local",
        "inboxes": [inbox_settings(tmp_path, include=["*.pdf"])],
    }
    config = load_config(write_config(tmp_path, settings))
    inbox = config.inboxes[0]
    for n in range(25):
        (inbox.path / f"note-{n:02d}.txt").write_text("not a scan")
    clock = ManualClock(0)
    ledger = Ledger(config.state_dir / "ledger.db")
    try:
        intake = Intake(
            config,
            Lifecycle(ledger, {inbox.name: inbox}),
            queue.Queue(),
            on_queued=lambda: None,
            modes={inbox.name: "events"},
            clock=clock,
        )
        with caplog.at_level(logging.INFO, logger="ocrwatchd.intake"):
            intake.scan_all()
            assert len(lines(caplog, "ignored: ")) == 10
            assert all(
                line.startswith("scans: note-") and line.endswith("include patterns (*.pdf)")
                for line in lines(caplog, "ignored: ")
            )
            clock.advance(61)
            intake.scan_all()  # known and ignored already: no news, no line
            intake.step(0)
            assert lines(caplog, "more files ignored") == [
                "scans: … and 15 more files ignored by its include/exclude rules"
            ]
            assert len(lines(caplog, "ignored: ")) == 10
        ignored = ledger.rows(states=(State.IGNORED,))
        assert len(ignored) == 25
    finally:
        ledger.close()
