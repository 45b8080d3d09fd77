"""Opening inbox files without following links, and telling whether a writer is at work,
on real files, folders, FIFOs, sockets and processes."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ocrwatchd.fsafe import Identity, UnsafeSource, open_source, same_file, writer_active


@contextmanager
def writer_process(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding `path` open for writing until the block ends."""
    code = "import sys; f = open(sys.argv[1], 'ab'); print('open', flush=True); sys.stdin.read()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"open\n"
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def test_reads_hashes_and_identifies_the_opened_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    source = tmp_path / "sub" / "scan 1.pdf"
    source.write_bytes(b"%PDF-1.7 first")
    with open_source(tmp_path, "sub/scan 1.pdf") as opened:
        info = os.stat(source)
        assert opened.identity == (
            info.st_dev,
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
            info.st_ctime_ns,
        )
        # The name now holds another file: hash and reader still see the one opened.
        replacement = tmp_path / "sub" / "new"
        replacement.write_bytes(b"something else entirely")
        os.replace(replacement, source)
        assert opened.sha256() == hashlib.sha256(b"%PDF-1.7 first").hexdigest()
        assert opened.reader().read() == b"%PDF-1.7 first"
        assert opened.reader().read() == b"%PDF-1.7 first", "reader() starts at 0 again"
        assert not opened.unchanged()


def test_unchanged_notices_an_append(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    with open_source(tmp_path, "a.jpg") as opened:
        assert opened.unchanged()
        with open(tmp_path / "a.jpg", "ab") as handle:
            handle.write(b" more")
        assert not opened.unchanged()


def test_same_file_ignores_ctime_but_not_mtime(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"jpeg")
    before = Identity.of(os.stat(path))
    os.chmod(path, 0o600)
    assert same_file(before, Identity.of(os.stat(path)))
    os.utime(path, ns=(0, before.mtime_ns + 1_000_000_000))
    assert not same_file(before, Identity.of(os.stat(path)))


def test_symbolic_links_are_refused_at_every_component(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "real").mkdir(parents=True)
    (inbox / "real" / "a.jpg").write_bytes(b"jpeg")
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not yours")
    (inbox / "escape.jpg").symlink_to(outside)
    (inbox / "inside.jpg").symlink_to(inbox / "real" / "a.jpg")
    (inbox / "linked").symlink_to(inbox / "real")
    (inbox / "away").symlink_to(tmp_path)
    cases = {
        "escape.jpg": "escape.jpg is a symbolic link; refused",
        "inside.jpg": "inside.jpg is a symbolic link; refused",
        "linked/a.jpg": "linked is a symbolic link; refused",
        "away/secret.txt": "away is a symbolic link; refused",
    }
    for relpath, message in cases.items():
        with pytest.raises(UnsafeSource) as caught:
            open_source(inbox, relpath)
        assert str(caught.value) == message


def test_paths_that_climb_out_are_refused(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "secret.txt").write_bytes(b"not yours")
    for relpath in ("../secret.txt", "/etc/passwd", "a//b", "./x", ""):
        with pytest.raises(UnsafeSource, match="not a plain path inside the inbox"):
            open_source(tmp_path / "inbox", relpath)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "scan.pdf")
    with pytest.raises(UnsafeSource, match=r"^scan.pdf is a FIFO; refused$"):
        open_source(tmp_path, "scan.pdf")


def test_a_socket_and_a_folder_are_refused(tmp_path: Path) -> None:
    # AF_UNIX paths are limited to 108 bytes: a short folder of its own.
    with (
        tempfile.TemporaryDirectory(prefix="ocw") as short,
        socket.socket(socket.AF_UNIX) as server,
    ):
        server.bind(os.path.join(short, "s.jpg"))
        with pytest.raises(UnsafeSource, match=r"^s.jpg is a socket; refused$"):
            open_source(Path(short), "s.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(UnsafeSource, match=r"^dir.jpg is a folder; refused$"):
        open_source(tmp_path, "dir.jpg")


def test_a_device_is_refused(tmp_path: Path) -> None:
    try:
        os.mknod(tmp_path / "null.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with pytest.raises(UnsafeSource, match=r"^null.jpg is a device; refused$"):
        open_source(tmp_path, "null.jpg")


def test_a_missing_file_or_folder_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path, "gone.jpg")
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path, "gone/a.jpg")


def test_no_descriptor_is_leaked(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    os.mkfifo(tmp_path / "f.jpg")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with open_source(tmp_path, "a.jpg") as opened:
            opened.reader().read()
        with pytest.raises(UnsafeSource):
            open_source(tmp_path, "f.jpg")
        with pytest.raises(FileNotFoundError):
            open_source(tmp_path, "no/such.jpg")
    assert len(os.listdir("/proc/self/fd")) == before


def test_writer_active_sees_another_process_writing(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(b"%PDF partial")
    with open_source(tmp_path, "scan.pdf") as opened:
        assert opened.writer_active() is False
        with writer_process(path):
            assert opened.writer_active() is True
            assert writer_active(path) is True
        assert opened.writer_active() is False
    assert writer_active(path) is False


def test_writer_active_counts_our_own_write_descriptors(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(b"%PDF")
    with open(path, "ab"):
        assert writer_active(path) is True
    assert writer_active(path) is False


def test_writer_active_cannot_tell_for_what_takes_no_lease(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert writer_active(fd) is None
    finally:
        os.close(fd)
    assert writer_active(tmp_path / "missing") is None
