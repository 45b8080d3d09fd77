"""Which names a scan of a real folder tree takes, and which it skips silently."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ocrwatchd.config import InboxConfig
from ocrwatchd.rules import is_marker, marked_file, ready_marker_of, skip_reason
from ocrwatchd.watcher import walk

JUNK_FOLDERS = (
    ".stversions",
    "__MACOSX",
    ".Spotlight-V100",
    ".fseventsd",
    ".snapshot",
    "~snapshot",
    "#recycle",
    ".@__thumb",
    "@eaDir",
)


@dataclasses.dataclass(frozen=True)
class MarkedInbox(InboxConfig):
    """An inbox with ready_marker on, whether or not this branch's config has the key."""

    ready_marker: bool = True


def taken(inbox: InboxConfig) -> list[str]:
    """What a scan of the inbox would queue: found by walk, not skipped."""
    return sorted(e.relpath for e in walk(inbox) if skip_reason(inbox, e.relpath) is None)


def make_tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_junk_folders_and_rsync_temp_names_are_skipped_silently(tmp_path: Path) -> None:
    inbox = InboxConfig(name="scans", path=tmp_path, outbox=tmp_path / "never")
    make_tree(
        tmp_path,
        [
            "scan.pdf",
            "sub/invoice.jpg",
            ".invoice.jpg.Xa9bQ2",  # rsync at work
            "sub/.scan 2.pdf.a1B2c3",
            *(f"{folder}/scan.pdf" for folder in JUNK_FOLDERS),
            "sub/.snapshot/hourly.0/scan.pdf",
        ],
    )
    assert taken(inbox) == ["scan.pdf", "sub/invoice.jpg"]
    skip = skip_reason(inbox, ".invoice.jpg.Xa9bQ2")
    assert skip is not None and not skip.record
    assert skip.reason == "a writer's temporary name (rsync's .NAME.XXXXXX), never uploaded"
    for folder in JUNK_FOLDERS:
        skip = skip_reason(inbox, f"{folder}/scan.pdf")
        assert skip is not None and not skip.record, folder


def test_names_close_to_rsync_temp_names_are_taken(tmp_path: Path) -> None:
    inbox = InboxConfig(name="scans", path=tmp_path, outbox=tmp_path / "never")
    for relpath in (".hidden.pdf", "invoice.jpg.Xa9bQ2.pdf", "scan.Xa9bQ2.pdf", ".a.Xa9bQ.pdf"):
        assert skip_reason(inbox, relpath) is None, relpath


def test_ready_markers_are_skipped_only_with_ready_marker_on(tmp_path: Path) -> None:
    inbox = InboxConfig(name="scans", path=tmp_path, outbox=tmp_path / "never", include=("*",))
    make_tree(tmp_path, ["scan.pdf", "scan.pdf.ready", "sub/a.jpg", "sub/a.jpg.ready"])
    assert taken(inbox) == ["scan.pdf", "scan.pdf.ready", "sub/a.jpg", "sub/a.jpg.ready"]
    marked = MarkedInbox(name="scans", path=tmp_path, outbox=tmp_path / "never", include=("*",))
    assert taken(marked) == ["scan.pdf", "sub/a.jpg"]


def test_ready_marker_helpers() -> None:
    assert ready_marker_of("sub/scan 1.pdf") == "sub/scan 1.pdf.ready"
    assert marked_file("sub/scan 1.pdf.ready") == "sub/scan 1.pdf"
    assert is_marker("a.ready") and not is_marker(".ready") and not is_marker("sub/.ready")
    assert not is_marker("ready") and not is_marker("a.ready.pdf")
