"""Standard-input source: ``some-command | logvm-exporter --stdin``.

Role: ships every line of standard input as one record (tag and priority
from the command line), then ends at EOF. There is no position to save:
lines wait in the transport's window until acknowledged.

Trust side: whatever the pipe carries; escaped by :mod:`.record`, an
overlong line is cut with an explicit marker.
"""

import asyncio
import contextlib
import os
import socket
import stat
import time

from .record import TimeFormatter, format_record, token
from .transport import Transport

READ_BYTES = 64 << 10
MAX_MESSAGE = 60 << 10


class StdinSource:
    """Lines from a file descriptor until EOF."""

    name = "stdin"

    def __init__(self, fd: int = 0, *, tag: str = "stdin", priority: int | None = 6) -> None:
        self._fd = fd
        self._tag = tag
        self._priority = priority
        self._times = TimeFormatter()
        self._host = token(socket.gethostname())
        self._partial = b""
        self._cut = 0

    def _lines(self, data: bytes) -> list[bytes]:
        stamp = self._times.format(time.time_ns() // 1000)
        parts = (self._partial + data).split(b"\n")
        self._partial = parts.pop()
        if len(self._partial) > MAX_MESSAGE:
            self._cut += len(self._partial) - MAX_MESSAGE
            self._partial = self._partial[:MAX_MESSAGE]
        items: list[bytes] = []
        for part in parts:
            line = part[:MAX_MESSAGE]
            self._cut += len(part) - len(line)
            if self._cut:
                line += b" [logvm-exporter: %d bytes cut]" % self._cut
                self._cut = 0
            record = format_record(stamp, self._host, self._priority, None, self._tag, None, line)
            items.append(record)
        return items

    async def _read(self) -> bytes:
        """One chunk; waits on the loop for pipes and terminals, not for files."""
        if stat.S_ISREG(os.fstat(self._fd).st_mode):
            return os.read(self._fd, READ_BYTES)
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, ready.set)
        try:
            while True:
                try:
                    return os.read(self._fd, READ_BYTES)
                except BlockingIOError:
                    ready.clear()
                    await ready.wait()
        finally:
            loop.remove_reader(self._fd)

    async def run(self, transport: Transport, stop: asyncio.Event) -> None:
        """Ship lines until EOF (or ``stop``)."""
        while not stop.is_set():
            data = await self._read()
            if not data:
                if self._partial or self._cut:
                    last = self._lines(b"\n")
                    await transport.put(b"".join(last), len(last))
                return
            items = self._lines(data)
            await transport.put(b"".join(items), len(items))

    def flush(self) -> None:
        """Nothing to save."""

    def close(self) -> None:
        """Leave the descriptor to its owner."""
        with contextlib.suppress(OSError):
            os.set_blocking(self._fd, True)
