"""Opening store files without following links or blocking (floor 2).

Trust side: every file under the store may have been replaced by an intruder
with a symbolic link (to ``/dev/zero``, to another qube's file), a FIFO (a
reader would block for ever) or a device. Everything that reads store files
opens them through :func:`open_regular`: ``O_NOFOLLOW`` refuses a link as
the last path component, ``O_NONBLOCK`` keeps a FIFO from blocking the
open, and ``fstat`` on the open descriptor (not a separate ``stat``, which
could race) refuses anything but a regular file.
"""

import contextlib
import io
import os
import stat
from pathlib import Path

from ..core.errors import StoreError

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegular(StoreError):
    """A path that must be a regular file is a link, FIFO, device or directory."""


class TooLarge(StoreError):
    """A file larger than any the collector writes there (not read)."""

    def __init__(self, path: Path, size: int, limit: int) -> None:
        super().__init__(f"{path}: {size} bytes, larger than {limit} bytes (not read)")
        self.size, self.limit = size, limit


def describe_mode(mode: int) -> str:
    """What kind of file a mode says, for messages."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def irregular(path: Path) -> str | None:
    """None for a regular file (not a link); else what it is. FileNotFoundError if absent."""
    mode = os.lstat(path).st_mode
    return None if stat.S_ISREG(mode) else describe_mode(mode)


def open_regular(path: Path) -> io.FileIO:
    """Open a regular file for reading (unbuffered); NotRegular for anything else."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as err:
        if err.errno == 40:  # ELOOP: the last component is a symbolic link
            raise NotRegular(f"{path}: is a symbolic link (not read)") from err
        if isinstance(err, FileNotFoundError):
            raise
        raise StoreError(f"{path}: cannot read: {err.strerror}") from err
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegular(f"{path}: is {describe_mode(mode)}, not a regular file (not read)")
    return io.FileIO(fd, "rb", closefd=True)


def read_regular(path: Path, limit: int) -> bytes:
    """A whole regular file of at most ``limit`` bytes; TooLarge if longer."""
    with open_regular(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > limit:  # refused before reading: a huge (or sparse) file costs no memory
            raise TooLarge(path, size, limit)
        data = stream.read(limit + 1)
    if len(data) > limit:  # it grew while read
        raise TooLarge(path, len(data), limit)
    return data


def append_line(path: Path, line: bytes, mode: int) -> None:
    """Append one whole line, durably; a failed write is cut back (no torn line)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        before = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)
