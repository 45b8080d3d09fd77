"""`fuse_share`: a FUSE mount (bindfs) of a folder, standing in for a network share that
can be unmounted in the middle of a test. Skips, saying why, where FUSE is not available
(bindfs not installed, no /dev/fuse, no permission to mount)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for


class FuseShare:
    """`backing` is the real folder, `mount_point` the FUSE view of it."""

    def __init__(self, backing: Path, mount_point: Path) -> None:
        self.backing = backing
        self.mount_point = mount_point

    @property
    def mounted(self) -> bool:
        return os.path.ismount(self.mount_point)

    def mount(self) -> None:
        """Mount the share; raises RuntimeError with bindfs's message when it cannot."""
        bindfs = shutil.which("bindfs")
        if bindfs is None:
            raise RuntimeError("bindfs is not installed (apt-get install bindfs fuse3)")
        if not os.path.exists("/dev/fuse"):
            raise RuntimeError("/dev/fuse does not exist (a container without FUSE)")
        result = subprocess.run(
            [bindfs, str(self.backing), str(self.mount_point)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"bindfs failed: {result.stderr.strip() or result.returncode}")
        wait_for(lambda: self.mounted, timeout=10, what="the FUSE mount")

    def unmount(self) -> None:
        """Unmount, as a share that goes away; bindfs exits with it. A busy mount is
        detached lazily, so the mount point is empty at once either way."""
        unmounter = shutil.which("fusermount3") or shutil.which("fusermount") or "umount"
        command = [unmounter, "-u", str(self.mount_point)] if "fuse" in unmounter else None
        if command is None or subprocess.run(command, capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(self.mount_point)], capture_output=True, timeout=30)
        wait_for(lambda: not self.mounted, timeout=10, what="the FUSE unmount")


@pytest.fixture
def fuse_share(tmp_path: Path) -> Iterator[FuseShare]:
    backing = tmp_path / "share-backing"
    mount_point = tmp_path / "share"
    backing.mkdir()
    mount_point.mkdir()
    share = FuseShare(backing, mount_point)
    try:
        share.mount()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, AssertionError) as exc:
        pytest.skip(f"no FUSE share here: {exc}")
    try:
        yield share
    finally:
        if share.mounted:
            share.unmount()
