"""Reading part of a segment: from an offset, backwards, by time, as it grows (floor 2).

What makes ``logvm show -n 10`` and ``--since`` cost the newest part of a
store and not all of it. Line numbers of a plain segment read from the
middle are counted from its last seal (``lines`` at byte ``nbytes``), so
only the unsealed tail is scanned; the seal file is unverified (``logvm
verify`` checks it), so a tampered one can only mislabel line numbers.
Trust side: as :mod:`.reader`: bounded lines, nothing trusted.
"""

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..core.entries import classify
from ..core.errors import StoreError
from ..core.records import TIMESTAMP_LEN
from ..core.seal_line import sealed_extent
from .files import open_regular
from .layout import SegmentFiles
from .reader import MAX_LINE, StoredLine, open_plain, read_lines

_BLOCK = 1 << 18
_FIRST_BLOCK = 1 << 13
_PROBE = 1 << 12  # since_offset's reads and how close it gets
_SEAL_TAIL = 4096
_COUNT_CHUNK = 1 << 22


def lines_from(
    segment: SegmentFiles, offset: int, first_number: int, *, limit: int | None = None
) -> Iterator[StoredLine]:
    """Lines from byte ``offset`` of the plain content (seek; compressed: from 0 only)."""
    if segment.log is None:
        return
    if segment.compressed and offset:
        raise StoreError(f"{segment.name}: cannot seek in a compressed segment")
    with open_plain(segment.log) as stream:
        if offset:
            stream.seek(offset)
        for count, line in enumerate(read_lines(stream, first_number=first_number), 1):
            yield line
            if limit is not None and count >= limit:
                return


def _log(segment: SegmentFiles) -> Path:
    if segment.log is None:
        raise StoreError(f"{segment.name}: no text file")
    return segment.log


def _open(segment: SegmentFiles) -> BinaryIO:
    """A buffered stream of the plain text file (never a link, FIFO or device)."""
    return io.BufferedReader(open_regular(_log(segment)), _BLOCK)


def _size(segment: SegmentFiles) -> int:
    try:
        return os.stat(_log(segment)).st_size
    except OSError as err:
        raise StoreError(f"{segment.log}: cannot read: {err.strerror}") from err


def _sealed_point(segment: SegmentFiles, size: int) -> tuple[int, int]:
    """``(nbytes, lines)`` of the last readable seal at or before ``size``, else (0, 0)."""
    if segment.seal is None:
        return 0, 0
    try:
        with open_regular(segment.seal) as stream:
            end = stream.seek(0, os.SEEK_END)
            stream.seek(max(0, end - _SEAL_TAIL))
            tail = stream.read(_SEAL_TAIL)
    except OSError:
        return 0, 0
    for text in reversed(tail.split(b"\n")[:-1]):
        try:
            lines, nbytes = sealed_extent(text)
        except StoreError:
            continue
        if 0 <= nbytes <= size:
            return nbytes, lines
    return 0, 0


def line_number_at(segment: SegmentFiles, offset: int) -> int:
    """The 1-based number of the line starting at ``offset`` (a line start)."""
    start, lines = _sealed_point(segment, offset)
    if start > offset:
        start, lines = 0, 0
    with _open(segment) as stream:
        stream.seek(start)
        remaining = offset - start
        while remaining > 0:
            chunk = stream.read(min(_COUNT_CHUNK, remaining))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            remaining -= len(chunk)
    return lines + 1


def since_offset(segment: SegmentFiles, since: bytes) -> tuple[int, int]:
    """Offset and number of a line at or before the first one stamped >= ``since``.

    Bisection over a plain segment (receive times never decrease in it); a
    line without a stamp keeps the search moving left, so nothing in the
    window is skipped, at worst a few lines before it are read.
    """
    if segment.log is None or segment.compressed:
        return 0, 1
    low, high = 0, _size(segment)
    # Small reads, down to a few lines: each probe reads one buffer (a 256 KiB
    # buffer would cost more per probe, and leave a reader up to 256 KiB of
    # lines before the window to pass over: most of `show --since`'s reading).
    with io.BufferedReader(open_regular(_log(segment)), _PROBE) as stream:
        while high - low > _PROBE:
            middle = (low + high) // 2
            stream.seek(middle)
            stream.readline(MAX_LINE)  # to the next line start
            start = stream.tell()
            stamp = stream.read(TIMESTAMP_LEN)
            if len(stamp) == TIMESTAMP_LEN and stamp < since and start < high:
                low = start
            else:
                high = middle
    return low, line_number_at(segment, low)


def blocks_backwards(segment: SegmentFiles) -> Iterator[list[StoredLine]]:
    """A plain segment's lines in blocks from its end, each block in order.

    The first block is small and each next one twice as large (up to
    ``_BLOCK``): ``show -n 10`` splits a few KiB into lines, not a block's worth.
    """
    if segment.compressed:
        raise StoreError(f"{segment.name}: cannot read a compressed segment backwards")
    end = _size(segment)
    number_end = line_number_at(segment, end)  # the line that would start at ``end``
    size = _FIRST_BLOCK
    with _open(segment) as stream:
        while end > 0:
            start = _block_start(stream, end, size)
            size = min(2 * size, _BLOCK)
            stream.seek(start)
            data = stream.read(end - start)
            first = number_end - data.count(b"\n")
            yield _split(data, first)
            end, number_end = start, first


def _block_start(stream: BinaryIO, end: int, size: int) -> int:
    """A line start about ``size`` bytes before ``end`` (further back for a long
    line: twice as far each time, so a 1 MiB line costs a few reads)."""
    while True:
        start = max(0, end - size)
        stream.seek(start)
        cut = stream.read(end - start).find(b"\n")
        if start == 0:
            return 0
        if 0 <= cut < end - start - 1:
            return start + cut + 1
        size *= 2


def _split(data: bytes, first: int) -> list[StoredLine]:
    """The lines of ``data`` (which starts at a line start), numbered from ``first``."""
    pieces = data.split(b"\n")
    last_complete = pieces[-1] == b""
    if last_complete:
        pieces.pop()
    lines = []
    for index, text in enumerate(pieces):
        done = last_complete or index < len(pieces) - 1
        lines.append(StoredLine(first + index, text[:MAX_LINE], done, len(text[MAX_LINE:])))
    return lines


class SegmentTail:
    """The lines appended to one plain segment since the last poll."""

    def __init__(self, segment: SegmentFiles, *, at_end: bool) -> None:
        self.segment = segment
        try:
            self._stream = _open(segment)
        except OSError as err:
            raise StoreError(f"{segment.log}: cannot read: {err.strerror}") from err
        head = self._stream.readline(MAX_LINE)
        what = classify(head.rstrip(b"\n"))
        self.session = what.note_fields().get("session", "")
        start = 0
        if at_end:
            size = self._stream.seek(0, os.SEEK_END)
            self._stream.seek(max(0, size - MAX_LINE))
            tail = self._stream.read()
            start = max(0, size - len(tail)) + tail.rfind(b"\n") + 1
        self._stream.seek(start)
        self._number = line_number_at(segment, start)
        self._pending = b""

    @property
    def next_number(self) -> int:
        """The number the next complete line read will have."""
        return self._number

    def poll(self, *, final: bool) -> list[StoredLine]:
        """Complete lines that arrived; ``final``: also a last line without a newline."""
        self._pending += self._stream.read(_BLOCK * 64)
        *complete, self._pending = self._pending.split(b"\n")
        lines = []
        for text in complete:
            lines.append(StoredLine(self._number, text[:MAX_LINE], True, len(text[MAX_LINE:])))
            self._number += 1
        if len(self._pending) > MAX_LINE:
            self._pending = self._pending[:MAX_LINE]
        if final:
            if self._pending:
                lines.append(StoredLine(self._number, self._pending, False))
            self._pending = b""
            self._stream.close()
        return lines
