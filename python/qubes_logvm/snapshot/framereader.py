"""The DispVM's reader of the verifier input: header lines and payloads (programs floor).

The input is large (the whole store) and comes through a pipe, so its bytes
are not copied through Python on their way to the store copy: a payload is
spliced (``splice(2)``) from the pipe into its file, after the few bytes
already buffered. Header lines and small payloads are read into a small
buffer. On anything that is not a pipe (a file, ``io.BytesIO`` in tests)
the same reads go through ``read``.

Trust side: every byte is hostile (the snapshot part comes from the LogVM);
this reader only bounds reads (a line at most ``limit`` bytes, a payload
exactly its length), the caller parses (snapshot/check.py).
"""

import os
import stat
from typing import BinaryIO

CHUNK = 1 << 20
_BUFFER = 1 << 16


def _pipe_fd(stream: BinaryIO) -> int | None:
    """The descriptor of a pipe read directly (nothing read through ``stream`` yet)."""
    try:
        fd = stream.fileno()
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (OSError, ValueError):
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Bounded lines and exact payloads from one untrusted byte stream."""

    def __init__(self, untrusted_in: BinaryIO) -> None:
        self.stream = untrusted_in
        self.fd = _pipe_fd(untrusted_in)
        self.buf = b""

    def _more(self, size: int) -> bytes:
        if self.fd is not None:
            return os.read(self.fd, size)
        return self.stream.read(size)

    def readline(self, limit: int) -> bytes:
        """Up to and with the next newline, at most ``limit`` bytes (less: the input ended)."""
        while True:
            cut = self.buf.find(b"\n", 0, limit)
            if cut >= 0:
                line, self.buf = self.buf[: cut + 1], self.buf[cut + 1 :]
                return line
            if len(self.buf) >= limit:
                line, self.buf = self.buf[:limit], self.buf[limit:]
                return line
            data = self._more(_BUFFER)
            if not data:
                line, self.buf = self.buf, b""
                return line
            self.buf += data

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, or fewer where the input ends (the caller bounds ``size``)."""
        parts, left = [self.buf[:size]], size - min(size, len(self.buf))
        self.buf = self.buf[size:]
        while left:
            data = self._more(min(max(left, _BUFFER), CHUNK))
            if not data:
                break
            parts.append(data[:left])
            self.buf = data[left:]
            left -= len(parts[-1])
        return b"".join(parts)

    def copy_to(self, out_fd: int, size: int) -> int:
        """Write the next ``size`` bytes into ``out_fd``; returns how many the input had."""
        first = self.read(min(size, len(self.buf)))
        _write_all(out_fd, first)
        done = len(first)
        while done < size:
            want = min(CHUNK, size - done)
            if self.fd is not None:
                moved = os.splice(self.fd, out_fd, want)
            else:
                data = self.stream.read(want)
                _write_all(out_fd, data)
                moved = len(data)
            if not moved:
                break
            done += moved
        return done

    def at_end(self) -> bool:
        """Nothing follows (the input is closed)."""
        if self.buf:
            return False
        data = self._more(1)
        if data:
            self.buf = data
            return False
        return True
