"""Result files, source disposal and failed-folder moves on real folders: only the very
file processed is touched, nothing is overwritten, long names and the umask are honoured."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ocrwatchd import outbox
from ocrwatchd.config import InboxConfig
from ocrwatchd.errors import FileRejected
from ocrwatchd.fsafe import Identity, SourceBusy, SourceChanged
from tests.test_fsafe import writer_process

BODY = json.dumps({"inference": {"result": {"pages": [{"content": "hello"}]}}}).encode()


def make_inbox(root: Path, **settings: object) -> InboxConfig:
    (root / "in").mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(exist_ok=True)
    return InboxConfig(name="scans", path=root / "in", outbox=root / "out", **settings)  # type: ignore[arg-type]


def identity(path: Path) -> Identity:
    return Identity.of(os.stat(path))


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_delete_removes_the_file_processed(tmp_path: Path) -> None:
    inbox = make_inbox(tmp_path, on_success="delete")
    source = inbox.path / "a.jpg"
    source.write_bytes(b"jpeg")
    done = outbox.dispose_source(inbox, "a.jpg", identity(source))
    assert done == "deleted the source"
    assert not source.exists()
    gone = outbox.dispose_source(inbox, "a.jpg", identity(tmp_path))
    assert gone == "the source was already gone"


def test_delete_keeps_a_file_rewritten_or_replaced_meanwhile(tmp_path: Path) -> None:
    inbox = make_inbox(tmp_path, on_success="delete")
    source = inbox.path / "a.jpg"
    source.write_bytes(b"jpeg")
    processed = identity(source)
    source.write_bytes(b"jpeg, second version")
    with pytest.raises(SourceChanged, match=r"a\.jpg changed since it was processed"):
        outbox.dispose_source(inbox, "a.jpg", processed)
    assert source.read_bytes() == b"jpeg, second version"
    # Same size and mtime, another inode: still not the file processed.
    replacement = inbox.path / "b.jpg"
    replacement.write_bytes(b"JPEG")
    os.utime(replacement, ns=(processed.mtime_ns, processed.mtime_ns))
    source.write_bytes(b"jpeg")
    os.utime(source, ns=(processed.mtime_ns, processed.mtime_ns))
    processed = identity(source)
    os.replace(replacement, source)
    with pytest.raises(SourceChanged):
        outbox.dispose_source(inbox, "a.jpg", processed)
    assert source.read_bytes() == b"JPEG"


def test_delete_never_follows_a_folder_swapped_for_a_link(tmp_path: Path) -> None:
    inbox = make_inbox(tmp_path, on_success="delete")
    (inbox.path / "sub").mkdir()
    (inbox.path / "sub" / "a.jpg").write_bytes(b"jpeg")
    processed = identity(inbox.path / "sub" / "a.jpg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.jpg").write_bytes(b"someone else's")
    (inbox.path / "sub").rename(tmp_path / "moved-away")
    (inbox.path / "sub").symlink_to(elsewhere)
    for given in (processed, None):
        with pytest.raises(SourceChanged, match="sub is a symbolic link; refused"):
            outbox.dispose_source(inbox, "sub/a.jpg", given)
    assert (elsewhere / "a.jpg").read_bytes() == b"someone else's"


def test_a_file_open_for_writing_is_not_deleted(tmp_path: Path) -> None:
    inbox = make_inbox(tmp_path, on_success="delete")
    source = inbox.path / "a.pdf"
    source.write_bytes(b"%PDF")
    with writer_process(source), pytest.raises(SourceBusy, match="open for writing"):
        outbox.dispose_source(inbox, "a.pdf", identity(source))
    assert source.exists()
    assert outbox.dispose_source(inbox, "a.pdf", identity(source)) == "deleted the source"


def test_archive_never_overwrites(tmp_path: Path) -> None:
    inbox = make_inbox(tmp_path, on_success="archive", archive_dir=tmp_path / "archive")
    (inbox.path / "sub").mkdir()
    source = inbox.path / "sub" / "invoice.jpg"
    for number, content in enumerate((b"first", b"second", b"third"), start=1):
        source.write_bytes(content)
        done = outbox.dispose_source(inbox, "sub/invoice.jpg", identity(source))
        name = "invoice.jpg" if number == 1 else f"invoice ({number}).jpg"
        assert done == f"archived the source to {tmp_path / 'archive' / 'sub' / name}"
        assert not source.exists()
    archived = tmp_path / "archive" / "sub"
    assert sorted(p.name for p in archived.iterdir()) == [
        "invoice (2).jpg",
        "invoice (3).jpg",
        "invoice.jpg",
    ]
    assert (archived / "invoice.jpg").read_bytes() == b"first"
    assert (archived / "invoice (3).jpg").read_bytes() == b"third"


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A folder on another filesystem than tmp_path (the tmpfs /dev/shm), or skip."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to move across")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        yield Path(folder)


def test_archive_across_filesystems_copies_then_removes(
    tmp_path: Path, other_filesystem: Path
) -> None:
    inbox = make_inbox(other_filesystem, on_success="archive", archive_dir=tmp_path / "archive")
    source = inbox.path / "scan.pdf"
    for content in (b"%PDF one", b"%PDF two"):
        source.write_bytes(content)
        os.chmod(source, 0o640)
        os.utime(source, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        outbox.dispose_source(inbox, "scan.pdf", identity(source))
        assert not source.exists()
    archived = tmp_path / "archive"
    assert sorted(p.name for p in archived.iterdir()) == ["scan (2).pdf", "scan.pdf"]
    assert (archived / "scan.pdf").read_bytes() == b"%PDF one"
    info = os.stat(archived / "scan (2).pdf")
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_mtime_ns == 1_600_000_000_000_000_000


def test_failed_moves_never_overwrite_file_or_reason(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    inbox = make_inbox(tmp_path, failed_dir=failed)
    failed.mkdir()
    # A reason left from an earlier failure whose file was taken away by the user.
    (failed / "a.pdf.reason.json").write_text('{"reason": "old"}')
    source = inbox.path / "a.pdf"
    for content in (b"one", b"two"):
        source.write_bytes(content)
        outbox.move_to_failed(inbox, "a.pdf", {"reason": content.decode()}, identity(source))
    assert sorted(p.name for p in failed.iterdir()) == [
        "a (2).pdf",
        "a (2).pdf.reason.json",
        "a (3).pdf",
        "a (3).pdf.reason.json",
        "a.pdf.reason.json",
    ]
    assert (failed / "a (3).pdf").read_bytes() == b"two"
    assert json.loads((failed / "a (3).pdf.reason.json").read_text()) == {"reason": "two"}
    assert json.loads((failed / "a.pdf.reason.json").read_text()) == {"reason": "old"}


def test_failed_move_of_a_changed_file_does_nothing(tmp_path: Path) -> None:
    inbox = make_inbox(tmp_path, failed_dir=tmp_path / "failed")
    source = inbox.path / "a.pdf"
    source.write_bytes(b"one")
    processed = identity(source)
    source.write_bytes(b"one, rewritten")
    with pytest.raises(SourceChanged):
        outbox.move_to_failed(inbox, "a.pdf", {"reason": "x"}, processed)
    assert source.exists()
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())


def test_a_failed_file_already_gone_still_gets_its_reason(tmp_path: Path) -> None:
    inbox = make_inbox(tmp_path, failed_dir=tmp_path / "failed")
    target = outbox.move_to_failed(inbox, "sub/a.pdf", {"reason": "x"})
    assert target == tmp_path / "failed" / "sub" / "a.pdf"
    assert (tmp_path / "failed" / "sub" / "a.pdf.reason.json").exists()


def test_long_names(tmp_path: Path) -> None:
    inbox = make_inbox(tmp_path, write_text=True, failed_dir=tmp_path / "failed")
    fits = "x" * 226 + ".jpg"  # 230 bytes: its temporary name used to exceed 255
    assert outbox.name_problem(inbox, fits) is None
    assert outbox.write_result(inbox, fits, BODY) == inbox.outbox / (fits + ".json")
    assert (inbox.outbox / (fits + ".txt")).read_text() == "hello"
    assert not [p for p in inbox.outbox.iterdir() if p.name.startswith(".ocrwatchd-")]

    too_long = "é" * 124 + ".jpg"  # 252 bytes
    expected = (
        "the name is 252 bytes; with .json it exceeds the filesystem's 255-byte limit "
        "(NAME_MAX); rename it"
    )
    assert outbox.name_problem(inbox, too_long) == expected
    with pytest.raises(FileRejected, match=r"with \.json it exceeds"):
        outbox.write_result(inbox, too_long, BODY)
    assert outbox.name_problem(inbox, "y" * 247 + ".jpg") is not None, ".txt needs 4 more"
    assert len(list(inbox.outbox.iterdir())) == 2, "only the 230-byte results"

    # A failed file whose .reason.json cannot fit is given a shorter name that can.
    source = inbox.path / too_long
    source.write_bytes(b"jpeg")
    target = outbox.move_to_failed(inbox, too_long, {"reason": "x"}, identity(source))
    assert target is not None and target.exists() and not source.exists()
    assert target.name.endswith(".jpg") and target.name.startswith("é" * 100)
    assert len(os.fsencode(target.name + ".reason.json")) <= 255
    assert (target.parent / (target.name + ".reason.json")).exists()


@pytest.mark.parametrize(("mask", "mode"), [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_outbox_files_follow_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    inbox = make_inbox(tmp_path, write_text=True, failed_dir=tmp_path / "failed")
    with umask(mask):
        result = outbox.write_result(inbox, "sub/a.jpg", BODY)
        reason_target = outbox.move_to_failed(inbox, "gone.jpg", {"reason": "x"})
    assert reason_target is not None
    for path in (result, inbox.outbox / "sub" / "a.jpg.txt", Path(f"{reason_target}.reason.json")):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path


def test_stale_temp_files_old_and_new_names_are_removed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    stale = [
        tmp_path / ".ocrwatchd-0123456789ab.tmp",
        tmp_path / "sub" / ".ocrwatchd-scan 1.pdf.json.k2j3h4g5.tmp",
    ]
    kept = [tmp_path / "scan.pdf.json", tmp_path / ".ocrwatchd-notes", tmp_path / "x.tmp"]
    for path in stale + kept:
        path.write_bytes(b"")
        os.utime(path, (1_000_000, 1_000_000))
    assert outbox.remove_stale_temp_files(tmp_path, older_than=2_000_000) == 2
    assert [path.exists() for path in stale + kept] == [False, False, True, True, True]
