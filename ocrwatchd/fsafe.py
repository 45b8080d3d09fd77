"""Reading inbox files without ever leaving the inbox.

An inbox is a folder other people (and other machines) write to, so any name in it may be
swapped at any moment for a symbolic link, a FIFO or a device. Files are therefore opened
relative to the inbox's directory descriptor, one path component at a time, never following
a link, and everything afterwards (hash, upload, identity checks) reads the very descriptor
that was checked, not the name again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal
import stat
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple

from ocrwatchd.errors import FileRejected, OcrwatchdError

# fcntl(2) lease commands; the fcntl module only names them on some platforms.
F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
F_RDLCK = getattr(fcntl, "F_RDLCK", 0)
F_UNLCK = getattr(fcntl, "F_UNLCK", 2)

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for the file must not block the open (nor a leased file).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20


class UnsafeSource(FileRejected):
    """The path is not a plain file inside the inbox: a symbolic link at some component,
    a FIFO, a device, a socket, a folder, or a path that climbs out (`..`). The message is
    the reason shown to the user."""


class SourceChanged(OcrwatchdError, OSError):
    """The source is no longer the file that was processed (another inode, size or mtime,
    or it became a link): nothing was done to it. An OSError too, so callers that only
    handle OSError still leave the file alone and log it."""


class SourceBusy(SourceChanged):
    """A process has the source open for writing: nothing was done to it; try later."""


class Identity(NamedTuple):
    """What an fstat said about a file: enough to tell whether a name still holds it.
    A plain tuple (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) for the ledger."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> Identity:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def same_file(a: Sequence[int], b: Sequence[int]) -> bool:
    """Same device, inode, size and mtime (the first four fields of an Identity). ctime is
    left out: a chmod or a link count change does not make it another file's content."""
    return tuple(a[:4]) == tuple(b[:4])


def file_kind(mode: int) -> str:
    """'a FIFO', 'a device', … for a mode that is not a regular file's."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def split_relpath(relpath: str) -> list[str]:
    """The components of a '/'-separated path inside the inbox; raises UnsafeSource for an
    absolute path, an empty component, `.` or `..`."""
    parts = relpath.split("/")
    if not relpath or any(part in ("", ".", "..") for part in parts):
        raise UnsafeSource(f"{relpath!r} is not a plain path inside the inbox; refused")
    return parts


def _refusal(dir_fd: int, name: str, shown: str, is_folder: bool) -> UnsafeSource | None:
    """Why `name` in `dir_fd` could not be opened without following links, or None when
    it is not our business (then the caller re-raises the OSError)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return UnsafeSource(f"{shown} is a symbolic link; refused")
    if is_folder and not stat.S_ISDIR(info.st_mode):
        return UnsafeSource(f"{shown} is {file_kind(info.st_mode)}, not a folder; refused")
    return None


def open_directory(root: Path, parts: list[str]) -> int:
    """A descriptor of the folder `root/parts…`, reached without following any link below
    `root` (the configured folder itself may be a link: the user chose it). The caller
    closes it. Raises UnsafeSource, FileNotFoundError or OSError."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for index, name in enumerate(parts):
        try:
            next_fd = os.open(name, DIRECTORY_FLAGS, dir_fd=fd)
        except OSError as exc:
            refusal = None
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                refusal = _refusal(fd, name, "/".join(parts[: index + 1]), True)
            os.close(fd)
            if refusal is not None:
                raise refusal from None
            raise
        os.close(fd)
        fd = next_fd
    return fd


class OpenSource:
    """An inbox file opened safely; use as a context manager (or call close()).

    `identity` is from fstat of the open descriptor; `sha256()` and `reader()` read that
    same descriptor, so what is hashed is what is uploaded even if the name is replaced.
    """

    def __init__(self, inbox_root: Path, relpath: str) -> None:
        parts = split_relpath(relpath)
        self.relpath = relpath
        self.dir_fd = open_directory(inbox_root, parts[:-1])
        self.name = parts[-1]
        self._reader: BinaryIO | None = None
        try:
            self.fd = self._open_file()
        except BaseException:
            os.close(self.dir_fd)
            raise
        self.identity = Identity.of(os.fstat(self.fd))

    def _open_file(self) -> int:
        # lstat first: opening a device can have side effects (a tape rewinds), so never
        # open what is not a regular file; the fstat below closes the swap race.
        info = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeSource(f"{self.relpath} is {file_kind(info.st_mode)}; refused")
        try:
            fd = os.open(self.name, FILE_FLAGS, dir_fd=self.dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                refusal = _refusal(self.dir_fd, self.name, self.relpath, False)
                if refusal is not None:
                    raise refusal from None
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise UnsafeSource(f"{self.relpath} is {file_kind(mode)}; refused")
        return fd

    def sha256(self) -> str:
        """Hex SHA-256 of the open file's content (positional reads: the reader's offset
        is not moved)."""
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(self.fd, CHUNK, offset):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()

    def reader(self) -> BinaryIO:
        """A binary file object over the same descriptor, at offset 0; closed with this
        object."""
        if self._reader is None:
            self._reader = open(self.fd, "rb", closefd=False)  # noqa: SIM115 - closed in close()
        self._reader.seek(0)
        return self._reader

    def unchanged(self) -> bool:
        """Whether the open file still has the identity it had when opened (a writer may
        have appended meanwhile) and the name still holds it."""
        if not same_file(self.identity, Identity.of(os.fstat(self.fd))):
            return False
        try:
            info = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return same_file(self.identity, Identity.of(info))

    def writer_active(self) -> bool | None:
        return writer_active(self.fd)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> OpenSource:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_source(inbox_root: Path, relpath: str) -> OpenSource:
    """Open `relpath` (a '/'-separated path inside the inbox) for reading.

    Raises UnsafeSource (a symbolic link at any component, a FIFO, device, socket or
    folder, a path leaving the inbox), FileNotFoundError when it is gone, OSError else.
    """
    return OpenSource(inbox_root, relpath)


def writer_active(target: int | Path) -> bool | None:
    """Whether some process (this one included) has the file open for writing.

    Asks the kernel for a read lease, which it refuses while any writer holds the file
    open, and gives it back at once. Returns None when the answer cannot be known: leases
    exist only on local filesystems, for the file's owner or with CAP_LEASE.
    """
    if isinstance(target, Path):
        try:
            fd = os.open(target, FILE_FLAGS)
        except OSError:
            return None
        try:
            return writer_active(fd)
        finally:
            os.close(fd)
    # A writer opening the file while we hold the lease makes the kernel signal us, by
    # default with SIGIO, which would kill the daemon: ask for SIGURG, ignored by default.
    try:
        fcntl.fcntl(target, F_SETSIG, signal.SIGURG)
        fcntl.fcntl(target, F_SETLEASE, F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
            return True
        return None
    fcntl.fcntl(target, F_SETLEASE, F_UNLCK)
    return False


def identity_of(info: os.stat_result) -> dict[str, int]:
    """What tells one version of a file from another, as the ledger stores it."""
    return {
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "dev": info.st_dev,
        "inode": info.st_ino,
        "ctime_ns": info.st_ctime_ns,
    }


def identity_of_open(identity: Sequence[int]) -> dict[str, int]:
    """The same from an open file's (device, inode, size, mtime_ns, ctime_ns)."""
    dev, inode, size, mtime_ns, ctime_ns = identity
    return {"size": size, "mtime_ns": mtime_ns, "dev": dev, "inode": inode, "ctime_ns": ctime_ns}
