"""Mount detection and scans on real mounts and folders: mountinfo escapes, FUSE shares
that go away, symlinked folders that a scan must not enter."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrwatchd.config import InboxConfig
from ocrwatchd.watcher import (
    filesystem_type,
    mount_id,
    mount_of,
    moved_off,
    parse_mountinfo,
    placement,
    walk,
    watch_mode,
)
from tests.fuse import FuseShare

SAMPLE = (
    b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    b"40 22 0:35 / /srv/scan\\040box rw shared:5 master:2 - nfs4 nas:/vol/scan\\040box rw\n"
    b"41 40 0:36 / /srv/scan\\040box/odd\\011tab\\012nl\\134bs rw - fuse.sshfs me@h:/x rw\n"
    b"42 22 0:37 / /srv rw - tmpfs none rw\n"
    b"43 22 0:38 / /srv rw - tmpfs second rw\n"
    b"this line is not mountinfo\n"
)


def test_mountinfo_escapes_and_longest_mount_point() -> None:
    mounts = parse_mountinfo(SAMPLE)
    assert [m.point for m in mounts] == [
        "/",
        "/srv/scan box",
        "/srv/scan box/odd\ttab\nnl\\bs",
        "/srv",
        "/srv",
    ]
    assert mounts[1].source == "nas:/vol/scan box"
    assert mounts[1].device == os.makedev(0, 35)
    # Paths that do not exist resolve to themselves, so the sample's points can be used.
    inbox = mount_of(Path("/srv/scan box/in"), mounts)
    assert inbox is not None and (inbox.fs_type, inbox.mount_id) == ("nfs4", 40)
    odd = mount_of(Path("/srv/scan box/odd\ttab\nnl\\bs/in"), mounts)
    assert odd is not None and odd.fs_type == "fuse.sshfs"
    stacked = mount_of(Path("/srv/other"), mounts)
    assert stacked is not None and stacked.source == "second", "the top of a stack wins"
    near_miss = mount_of(Path("/srv/scan boxes"), mounts)
    assert near_miss is not None and near_miss.mount_id == 43


def test_filesystem_type_agrees_with_findmnt(tmp_path: Path) -> None:
    findmnt = shutil.which("findmnt")
    if findmnt is None:
        pytest.skip("findmnt (util-linux) is not installed")
    for path in (tmp_path, Path("/proc/self"), Path("/dev/shm")):
        if not path.exists():
            continue
        expected = subprocess.run(
            [findmnt, "-n", "-o", "FSTYPE", "--target", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")[0]
        assert filesystem_type(path) == expected, path


@pytest.fixture
def odd_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted on a folder named with a space, a tab, a newline and a backslash."""
    point = tmp_path / "scan box\tx\ny\\z"
    point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "ocrwatchd-test", str(point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield point
    finally:
        if os.path.ismount(point):
            subprocess.run(["umount", "-l", str(point)], check=True)


def test_a_real_mount_with_escaped_characters_and_its_unmount(
    tmp_path: Path, odd_tmpfs: Path
) -> None:
    inbox = odd_tmpfs / "in"
    inbox.mkdir()
    assert filesystem_type(inbox) == "tmpfs"
    assert filesystem_type(tmp_path) != "tmpfs" or mount_id(tmp_path) != mount_id(inbox)
    seen = placement(odd_tmpfs)
    assert seen is not None and seen.mount_point == str(odd_tmpfs)
    assert moved_off(seen, odd_tmpfs) is None
    subprocess.run(["umount", str(odd_tmpfs)], check=True)
    # The folder is there, empty, and readable: only its placement tells the share is gone.
    assert odd_tmpfs.is_dir() and not list(odd_tmpfs.iterdir())
    reason = moved_off(seen, odd_tmpfs)
    assert reason is not None and "another filesystem" in reason


def test_a_fuse_share_is_polled_and_its_unmount_is_noticed(fuse_share: FuseShare) -> None:
    (fuse_share.backing / "scan.pdf").write_bytes(b"%PDF")
    inbox = InboxConfig(name="share", path=fuse_share.mount_point, outbox=Path("/nonexistent"))
    assert (filesystem_type(inbox.path) or "").startswith("fuse")
    assert watch_mode(inbox) == "poll"
    assert [entry.relpath for entry in walk(inbox)] == ["scan.pdf"]
    seen = placement(inbox.path)
    assert seen is not None
    fuse_share.unmount()
    assert inbox.path.is_dir() and not list(inbox.path.iterdir())
    assert moved_off(seen, inbox.path) is not None
    assert watch_mode(inbox) == "events", "the bare folder is on the local disk again"


def test_watch_mode_auto_uses_events_on_a_local_disk(tmp_path: Path) -> None:
    inbox = InboxConfig(name="local", path=tmp_path, outbox=tmp_path / "out")
    assert watch_mode(inbox) == ("poll" if filesystem_type(tmp_path) == "nfs" else "events")
    assert watch_mode(InboxConfig(name="p", path=tmp_path, outbox=tmp_path, watch="poll")) == "poll"


def test_walk_never_enters_a_symlinked_folder(tmp_path: Path) -> None:
    inbox_path = tmp_path / "in"
    (inbox_path / "real").mkdir(parents=True)
    (inbox_path / "real" / "a.pdf").write_bytes(b"%PDF")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(b"%PDF")
    (inbox_path / "away").symlink_to(outside)
    (inbox_path / "loop").symlink_to(inbox_path)
    (inbox_path / "again").symlink_to(inbox_path / "real")
    inbox = InboxConfig(name="scans", path=inbox_path, outbox=tmp_path / "out")
    found = sorted(entry.relpath for entry in walk(inbox))
    # The links are reported as what they are (the intake refuses them), never entered.
    assert found == ["again", "away", "loop", "real/a.pdf"]
