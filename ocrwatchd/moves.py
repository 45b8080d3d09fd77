"""Moving a source out of an inbox without overwriting anything, on one filesystem or
across two, and names that fit the filesystem's limit.

The archive and failed folders keep every file they are given: a second `invoice.jpg`
becomes `invoice (2).jpg`, never a replacement of the first.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from ocrwatchd.fsafe import Identity, OpenSource, SourceChanged, same_file

DEFAULT_NAME_MAX = 255
TEMP_PREFIX = ".ocrwatchd-"  # hidden, and ours alone: stale ones are removed at start
RENAME_NOREPLACE = 1

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2: Callable[..., int] | None = getattr(_libc, "renameat2", None)


def temp_name() -> str:
    """A short name of ours (27 bytes), whatever the length of the file it stands for."""
    return f"{TEMP_PREFIX}{secrets.token_hex(6)}.tmp"


def name_max(directory: Path) -> int:
    """NAME_MAX in bytes for files in `directory` (or its nearest existing ancestor)."""
    for candidate in (directory, *directory.parents):
        try:
            return int(os.pathconf(candidate, "PC_NAME_MAX"))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError):
            break
    return DEFAULT_NAME_MAX


def name_bytes(name: str) -> int:
    return len(os.fsencode(name))


def too_long(directory: Path, name: str, suffix: str) -> str | None:
    """The user-facing reason why `name + suffix` cannot exist in `directory`, or None."""
    limit = name_max(directory)
    if name_bytes(name + suffix) <= limit:
        return None
    return (
        f"the name is {name_bytes(name)} bytes; with {suffix} it exceeds the filesystem's "
        f"{limit}-byte limit (NAME_MAX); rename it"
    )


def _trim(text: str, budget: int) -> str:
    while text and name_bytes(text) > budget:
        text = text[:-1]
    return text


def free_names(name: str, limit: int, reserve: int = 0) -> Iterator[str]:
    """`name`, then `stem (2).ext`, `stem (3).ext`, …, each short enough that it plus
    `reserve` more bytes (a `.reason.json` beside it) fits in `limit` bytes: the stem is
    shortened when needed."""
    stem, dot, extension = name.rpartition(".")
    if not stem or not dot or name_bytes(extension) > 16:
        stem, extension = name, ""
    else:
        extension = "." + extension
    budget = limit - reserve
    if name_bytes(name) <= budget:
        yield name
    else:
        yield _trim(stem, budget - name_bytes(extension)) + extension
    number = 2
    while True:
        tail = f" ({number}){extension}"
        yield _trim(stem, budget - name_bytes(tail)) + tail
        number += 1


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """rename(2) that fails with FileExistsError instead of replacing `dst`. Without
    renameat2 (old libc, or a filesystem that refuses the flag) a hard link and an unlink
    do the same."""
    if _renameat2 is not None:
        if _renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), dst)
    os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    os.unlink(src, dir_fd=src_fd)


def _copy_to_temp(source: OpenSource, dst_fd: int) -> str:
    """A durable copy of the open source in the target folder under a temporary name,
    with the source's mode bits and times (like mv across filesystems)."""
    name = temp_name()
    info = os.fstat(source.fd)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dst_fd)
    try:
        offset = 0
        while chunk := os.pread(source.fd, 1 << 20, offset):
            os.write(fd, chunk)
            offset += len(chunk)
        os.fchmod(fd, info.st_mode & 0o7777)
        os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dst_fd)
        raise
    os.close(fd)
    return name


def still_there(source: OpenSource) -> None:
    """Raise SourceChanged unless the source's name still holds the opened file, unchanged."""
    try:
        info = os.stat(source.name, dir_fd=source.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise SourceChanged(f"{source.relpath} was removed meanwhile; nothing done") from None
    current = Identity.of(os.fstat(source.fd))
    if not same_file(source.identity, current) or not same_file(current, Identity.of(info)):
        raise SourceChanged(f"{source.relpath} changed meanwhile; nothing done")


def move_source(source: OpenSource, target_dir: Path, name: str, reserve: str = "") -> Path:
    """Move the opened source into `target_dir` under the first free name from
    `free_names(name, …)`; a name is free when neither it nor it plus `reserve` (say
    `.reason.json`) exists. Across filesystems the file is copied to a temporary name,
    fsynced, linked to the free name and only then removed from the inbox. Returns the new
    path. Raises SourceChanged (nothing moved) or OSError."""
    target_dir.mkdir(parents=True, exist_ok=True)
    dst_fd = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    names = free_names(name, name_max(target_dir), name_bytes(reserve))
    candidate = next(names)
    copied: str | None = None
    try:
        while True:
            if reserve and _exists(dst_fd, candidate + reserve):
                candidate = next(names)
                continue
            still_there(source)
            try:
                if copied is None:
                    _rename_noreplace(source.dir_fd, source.name, dst_fd, candidate)
                else:
                    os.link(copied, candidate, src_dir_fd=dst_fd, dst_dir_fd=dst_fd)
            except FileExistsError:
                candidate = next(names)
                continue
            except OSError as exc:
                if exc.errno != errno.EXDEV or copied is not None:
                    raise
                copied = _copy_to_temp(source, dst_fd)
                continue
            break
        if copied is not None:
            os.fsync(dst_fd)
            try:
                still_there(source)
            except SourceChanged:
                os.unlink(candidate, dir_fd=dst_fd)
                raise
            os.unlink(source.name, dir_fd=source.dir_fd)
        os.fsync(dst_fd)
        os.fsync(source.dir_fd)
        return target_dir / candidate
    finally:
        if copied is not None:
            with contextlib.suppress(OSError):
                os.unlink(copied, dir_fd=dst_fd)
        os.close(dst_fd)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
