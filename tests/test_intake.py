"""Intake on real directories with real inotify: settling, ignore rules, path safety."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrwatchd.config import load_config
from ocrwatchd.intake import Intake
from ocrwatchd.ledger import Ledger
from ocrwatchd.lifecycle import Lifecycle, State, Written
from ocrwatchd.rules import skip_reason
from ocrwatchd.watcher import start_observer
from tests.helpers import FIXTURES, drop, inbox_settings, wait_for, write_config

JPEG = (FIXTURES / "file_types" / "receipt.jpg").read_bytes()


class Harness:
    def __init__(self, tmp_path: Path, **inbox: object) -> None:
        settings = {
            "state_dir": str(tmp_path / "state"),
            "engine": "local",
            "inboxes": [inbox_settings(tmp_path, **inbox)],
        }
        self.config = load_config(write_config(tmp_path, settings))
        self.inbox = self.config.inboxes[0]
        self.ledger = Ledger(self.config.state_dir / "ledger.db")
        self.events: queue.Queue = queue.Queue()
        self.queued = threading.Event()
        self.intake = Intake(
            self.config,
            Lifecycle(self.ledger, {self.inbox.name: self.inbox}),
            self.events,
            on_queued=self.queued.set,
            modes={self.inbox.name: "events"},
        )
        self.observer = start_observer(self.inbox, "events", self.events)

    def state(self, relpath: str) -> str | None:
        self.intake.step(0.02)
        row = self.ledger.find(self.inbox.name, relpath)
        return None if row is None else row.state

    def wait_state(self, relpath: str, state: str, timeout: float = 10) -> None:
        wait_for(lambda: self.state(relpath) == state, timeout, f"{relpath} {state}")

    def close(self) -> None:
        self.observer.stop()
        self.observer.join()
        self.ledger.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(tmp_path)
    yield made
    made.close()


def test_a_file_renamed_into_place_is_queued_after_settling(harness):
    drop(harness.inbox.path / "scan.jpg", JPEG)
    harness.wait_state("scan.jpg", State.PENDING)
    assert harness.ledger.find("scans", "scan.jpg.part") is None
    row = harness.ledger.find("scans", "scan.jpg")
    assert row.sha256 is not None and row.size == len(JPEG)


def test_a_file_moved_in_from_outside_the_inbox_needs_no_close_event(harness, tmp_path):
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(JPEG)
    (harness.inbox.path / "new folder").mkdir()
    os.rename(outside, harness.inbox.path / "new folder" / "moved.jpg")
    harness.wait_state("new folder/moved.jpg", State.PENDING, timeout=5)


def test_a_file_still_being_written_is_not_queued_until_closed(harness):
    path = harness.inbox.path / "slow.jpg"
    with open(path, "wb") as writer:
        writer.write(JPEG[:1000])
        writer.flush()
        deadline = time.monotonic() + 1.0  # five settle periods with the file open
        while time.monotonic() < deadline:
            assert harness.state("slow.jpg") in (None, State.SETTLING)
        writer.write(JPEG[1000:])
    harness.wait_state("slow.jpg", State.PENDING)
    assert harness.ledger.find("scans", "slow.jpg").size == len(JPEG)


def test_writer_temp_names_and_os_junk_are_never_recorded(harness):
    inbox = harness.inbox.path
    for name in [
        "a.pdf.part",
        "b.tmp",
        "c.crdownload",
        "~$d.docx",
        ".~lock.e#",
        "._f.jpg",
        ".DS_Store",
        "Thumbs.db",
        "@eaDir/g.jpg",
        ".syncthing.h.jpg.tmp",
    ]:
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_bytes(JPEG)
    drop(inbox / "real.jpg", JPEG)
    harness.wait_state("real.jpg", State.PENDING)
    assert [row.relpath for row in harness.ledger.rows()] == ["real.jpg"]


def test_files_outside_the_include_patterns_are_listed_as_ignored(harness):
    drop(harness.inbox.path / "notes.docx", b"PK\x03\x04 not a scan")
    harness.wait_state("notes.docx", State.IGNORED)
    assert "include patterns" in harness.ledger.find("scans", "notes.docx").reason


def test_exclude_patterns_apply_to_paths_and_names(tmp_path):
    made = Harness(tmp_path, exclude=["drafts/*", "*-draft.pdf"])
    made.close()
    inbox = made.inbox
    assert skip_reason(inbox, "drafts/a.pdf").reason == "matches the exclude pattern 'drafts/*'"
    assert skip_reason(inbox, "x/a-draft.pdf").record
    assert skip_reason(inbox, "x/A.PDF") is None


def test_symlinks_are_never_followed_the_file_itself_is_processed(harness, tmp_path):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(JPEG)
    os.symlink(outside, harness.inbox.path / "escape.jpg")
    harness.wait_state("escape.jpg", State.IGNORED)
    assert "symbolic link" in harness.ledger.find("scans", "escape.jpg").reason
    drop(harness.inbox.path / "real.jpg", JPEG)
    os.symlink(harness.inbox.path / "real.jpg", harness.inbox.path / "alias.jpg")
    harness.intake.scan_all()
    harness.wait_state("real.jpg", State.PENDING)
    harness.wait_state("alias.jpg", State.IGNORED)


def test_a_folder_swapped_for_a_symlink_after_the_sighting_is_not_followed(harness, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.jpg").write_bytes(JPEG)
    (harness.inbox.path / "sub").mkdir()
    drop(harness.inbox.path / "sub" / "private.jpg", JPEG)
    harness.intake.step(0.2)  # seen, settling
    # Swapped between the sighting and the read: the folder is now a link to outside.
    os.rename(harness.inbox.path / "sub", tmp_path / "moved-away")
    os.symlink(outside, harness.inbox.path / "sub")
    harness.intake.scan_all()
    wait_for(
        lambda: harness.state("sub/private.jpg") in (State.IGNORED, None),
        what="the swapped file refused",
    )
    row = harness.ledger.find("scans", "sub/private.jpg")
    assert row is None or row.sha256 is None  # never read through the link


def test_a_fifo_is_refused_without_blocking(harness):
    os.mkfifo(harness.inbox.path / "pipe.jpg")
    harness.intake.scan_all()
    harness.wait_state("pipe.jpg", State.IGNORED)
    assert "FIFO" in harness.ledger.find("scans", "pipe.jpg").reason


def test_an_unsupported_file_fails_before_upload_with_a_reason(harness):
    drop(harness.inbox.path / "fake.pdf", b"just some text, not a PDF at all")
    harness.wait_state("fake.pdf", State.FAILED)
    assert harness.ledger.find("scans", "fake.pdf").reason


def test_a_file_removed_before_processing_is_ignored_with_a_reason(tmp_path):
    made = Harness(tmp_path, settle_seconds=30)
    try:
        drop(made.inbox.path / "gone.jpg", JPEG)
        made.wait_state("gone.jpg", State.SETTLING)
        (made.inbox.path / "gone.jpg").unlink()
        made.wait_state("gone.jpg", State.IGNORED)
        assert "removed" in made.ledger.find("scans", "gone.jpg").reason
    finally:
        made.close()


def test_a_missing_inbox_is_unavailable_and_its_rows_are_left_alone(tmp_path):
    made = Harness(tmp_path, settle_seconds=30)
    try:
        drop(made.inbox.path / "keep.jpg", JPEG)
        made.wait_state("keep.jpg", State.SETTLING)
        made.observer.stop()
        made.observer.join()
        hidden = made.inbox.path.with_name("hidden")
        os.rename(made.inbox.path, hidden)
        assert made.intake.scan(made.inbox) is False
        assert made.ledger.find("scans", "keep.jpg").state == State.SETTLING
        assert made.ledger.inbox_info()["scans"]["available"] == 0
        os.rename(hidden, made.inbox.path)
        assert made.intake.scan(made.inbox) is True
        made.observer = start_observer(made.inbox, "events", made.events)
    finally:
        made.close()


def test_a_file_name_that_is_not_utf8_is_ignored_with_a_reason(harness):
    raw = os.fsencode(harness.inbox.path) + b"/caf\xe9.jpg"
    with open(raw, "wb") as handle:
        handle.write(JPEG)
    harness.intake.scan_all()
    harness.wait_state("caf\ufffd.jpg", State.IGNORED)
    assert "not valid UTF-8" in harness.ledger.find("scans", "caf\ufffd.jpg").reason
    drop(harness.inbox.path / "fine.jpg", JPEG)
    harness.wait_state("fine.jpg", State.PENDING)


def test_with_ready_marker_a_file_waits_for_its_marker(tmp_path):
    harness = Harness(tmp_path, ready_marker=True)
    try:
        drop(harness.inbox.path / "scan.jpg", JPEG)
        harness.intake.scan_all()
        deadline = time.monotonic() + 1.0  # well past settle_seconds (0.2 s)
        while time.monotonic() < deadline:
            assert harness.state("scan.jpg") == State.SETTLING
        (harness.inbox.path / "scan.jpg.ready").write_bytes(b"")
        harness.wait_state("scan.jpg", State.PENDING, timeout=5)
        # The marker itself is never a file to process.
        assert harness.ledger.find("scans", "scan.jpg.ready") is None
    finally:
        harness.close()


def test_the_marker_goes_once_the_file_is_finished(tmp_path):
    harness = Harness(tmp_path, ready_marker=True, on_success="keep")
    try:
        source = harness.inbox.path / "scan.jpg"
        drop(source, JPEG)
        marker = harness.inbox.path / "scan.jpg.ready"
        marker.write_bytes(b"")
        harness.wait_state("scan.jpg", State.PENDING, timeout=5)
        row = harness.ledger.find("scans", "scan.jpg")
        lifecycle = harness.intake.lifecycle
        for state in (State.UPLOADING, State.PROCESSING, State.FETCHED):
            row = harness.ledger.move(row, state)
        assert lifecycle.apply(row, Written(str(harness.inbox.outbox / "scan.jpg.json")))
        assert not marker.exists() and source.exists()
    finally:
        harness.close()
