"""File source: follows text log files (globs) across rotation.

Role: for qubes without journald and apps that write their own files. Each
matching path is followed by one open descriptor. Rotation styles handled:
rename (the path gets a new inode: the old file is read to its end, and once
it stays quiet for one poll the new file is read from its start),
copy-truncate (the size drops below our offset: start again at 0), and
delete/recreate (like rename). Saved offsets carry the inode identity
(device, inode), so a restart resumes only in the same file. Only
acknowledged offsets are saved.

Files are polled (stat + read) every :data:`POLL_SECONDS`; one stat per file
per poll is cheap and needs no inotify binding.

Trust side: the qube's own files; lines are escaped by :mod:`.record`, and an
overlong line is cut with an explicit marker, never split.
"""

import asyncio
import contextlib
import glob
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .config import FileConfig
from .record import TimeFormatter, format_records, token
from .state import StateDir
from .transport import Transport

log = logging.getLogger(__name__)

STATE_NAME = "files"
POLL_SECONDS = 0.5
READ_BYTES = 256 << 10
MAX_MESSAGE = 60 << 10
#: A polling round's budget over all files: lines split, and bytes read.
MAX_ITEMS = 2000
ROUND_BYTES = 128 << 10


@dataclass
class _Follower:
    path: str
    tag: str
    fd: int
    ident: tuple[int, int]
    offset: int
    #: Read but not yet split: a partial line, or lines past a round's budget.
    partial: bytes = b""
    cut: int = 0  # bytes dropped from the current overlong line
    retiring: bool = False
    lines: list[tuple[bytes, int]] = field(default_factory=list)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


class FilesSource:
    """All configured file globs."""

    name = "files"
    state_name = STATE_NAME

    def __init__(self, files: tuple[FileConfig, ...], state: StateDir) -> None:
        self._files = files
        self._state = state
        self._followers: dict[str, _Follower] = {}
        saved = state.load(self.state_name)
        self._saved: dict[str, Any] = {k: v for k, v in saved.items() if isinstance(v, dict)}
        self._acked: dict[str, dict[str, int]] = dict(self._saved)
        self._dirty = False
        self._next = 0  # where the next round starts (see poll)
        self._times = TimeFormatter()
        self._host = token(socket.gethostname())
        # Saved offsets apply only to files found at startup: a file created
        # later may reuse a deleted file's inode number.
        self._scan(resume=True)

    # -- following -------------------------------------------------------

    def _open(self, path: str, tag: str, *, resume: bool) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as err:
            log.warning("files: cannot open %s: %s", path, err.strerror)
            return
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        offset = 0
        saved = self._saved.get(path)
        if resume and saved and (saved.get("dev"), saved.get("ino")) == ident:
            saved_offset = saved.get("offset")
            if isinstance(saved_offset, int) and 0 <= saved_offset <= st.st_size:
                offset = saved_offset
        os.lseek(fd, offset, os.SEEK_SET)
        log.info("files: following %s (tag %s) from offset %d", path, tag, offset)
        self._followers[path] = _Follower(path, tag, fd, ident, offset)

    def _close(self, follower: _Follower) -> None:
        self._flush_partial(follower)
        os.close(follower.fd)
        del self._followers[follower.path]

    def _scan(self, *, resume: bool) -> None:
        for spec in self._files:
            for path in sorted(glob.glob(spec.path)):
                if path not in self._followers and os.path.isfile(path):
                    self._open(path, spec.tag, resume=resume)

    def _emit(self, follower: _Follower, line: bytes, end: int) -> None:
        if len(line) > MAX_MESSAGE:
            follower.cut += len(line) - MAX_MESSAGE
            line = line[:MAX_MESSAGE]
        if follower.cut:
            line += b" [logvm-exporter: %d bytes cut]" % follower.cut
            follower.cut = 0
        follower.lines.append((line, end))

    def _flush_partial(self, follower: _Follower) -> None:
        """Emit what was read and not split (the file ends or starts again)."""
        self._split(follower, follower.partial, len(follower.partial) + 1)
        if follower.partial:
            self._emit(follower, follower.partial, follower.offset)
            follower.partial = b""

    def _split(self, follower: _Follower, buffer: bytes, max_lines: int) -> int:
        """Emit up to ``max_lines`` whole lines of ``buffer``; keep the rest."""
        start = follower.offset - len(buffer)
        pos = count = 0
        while count < max_lines:
            newline = buffer.find(b"\n", pos)
            if newline < 0:
                break
            self._emit(follower, buffer[pos:newline], start + newline + 1)
            pos = newline + 1
            count += 1
        rest = buffer[pos:]
        if len(rest) > MAX_MESSAGE and count < max_lines:
            # Keep the head of an overlong line; count and drop the rest.
            follower.cut += len(rest) - MAX_MESSAGE
            rest = rest[:MAX_MESSAGE]
        follower.partial = rest
        return count

    def _read(self, follower: _Follower, size: int, max_lines: int) -> tuple[int, int]:
        """Split up to ``max_lines`` lines, reading up to ``size`` bytes first
        unless what was read before holds a whole line; (bytes read, lines)."""
        buffer = follower.partial
        data = b""
        if b"\n" not in buffer:
            try:
                data = os.read(follower.fd, size)
            except OSError as err:
                log.warning("files: cannot read %s: %s", follower.path, err.strerror)
                return 0, 0
            follower.offset += len(data)
            buffer += data
        return len(data), self._split(follower, buffer, max_lines)

    def _check_rotation(self, follower: _Follower, progress: int) -> None:
        st = _stat(follower.path)
        if st is None or (st.st_dev, st.st_ino) != follower.ident:
            # Renamed or deleted: finish the old file once it has gone quiet.
            if progress == 0:
                if follower.retiring:
                    log.info("files: %s was rotated or removed", follower.path)
                    self._close(follower)
                follower.retiring = True
            return
        if st.st_size < follower.offset:
            log.info("files: %s was truncated; reading it again from the start", follower.path)
            self._flush_partial(follower)
            follower.offset = 0
            os.lseek(follower.fd, 0, os.SEEK_SET)

    def _ready(self, follower: _Follower) -> bool:
        """Whether to read ``follower`` this round (dom0: its LogVM has room)."""
        del follower
        return True

    def _round(self) -> list[_Follower]:
        """The files in the order of this round: from where the last round stopped."""
        followers = list(self._followers.values())
        start = self._next % len(followers) if followers else 0
        return followers[start:] + followers[:start]

    def poll(self) -> list[tuple[bytes, int, Any]]:
        """One round over the files: per file, its complete lines and the end position.

        At most MAX_ITEMS lines and about ROUND_BYTES read a round across all
        files, whatever the lines' length (memory stays bounded however many
        files have a backlog, even of empty lines); the next round starts
        with the file this one could not reach, so each gets its turn. A file
        that is not :meth:`_ready` is left as it is (not read, not checked
        for rotation) until a later round."""
        self._scan(resume=False)
        chunks: list[tuple[bytes, int, Any]] = []
        budget, room = MAX_ITEMS, ROUND_BYTES
        order = self._round()
        self._next += len(order)
        for turn, follower in enumerate(order):
            if budget <= 0 or room <= 0:
                self._next += turn - len(order)
                break
            if not self._ready(follower):
                continue
            progress = 0
            while len(follower.lines) < budget and room > 0:
                read, split = self._read(
                    follower, min(READ_BYTES, room), budget - len(follower.lines)
                )
                if not read and not split:
                    break
                progress += read + split
                room -= read
            self._check_rotation(follower, progress)
            budget -= len(follower.lines)
            if not follower.lines:
                continue
            stamp = self._times.format(time.time_ns() // 1000)
            tag = follower.tag
            messages = [line for line, _end in follower.lines]
            data = format_records(stamp, self._host, None, None, tag, None, messages)
            end = follower.lines[-1][1]
            chunks.append((data, len(follower.lines), (follower.path, follower.ident, end)))
            follower.lines.clear()
        return chunks

    async def run(self, transport: Transport, stop: asyncio.Event) -> None:
        """Follow until ``stop`` is set and every file has been read to its end."""
        while True:
            chunks = self.poll()
            for data, lines, position in chunks:
                await transport.put(data, lines, self, position)
            if chunks:
                continue
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)

    # -- positions -------------------------------------------------------

    def acked(self, position: Any) -> None:
        """Everything up to this (path, inode, offset) is stored."""
        path, (dev, ino), offset = position
        self._acked[path] = {"dev": dev, "ino": ino, "offset": offset}
        self._dirty = True

    def flush(self) -> None:
        """Save acknowledged offsets if they moved."""
        if self._dirty:
            self._state.save(self.state_name, self._acked)
            self._saved = dict(self._acked)
            self._dirty = False

    def close(self) -> None:
        """Close every followed file."""
        for follower in list(self._followers.values()):
            os.close(follower.fd)
        self._followers.clear()
