"""Reading segments back: plain or zstd, line by line (floor 2).

Filters, merging and reading from the end are :mod:`.timeline` and :mod:`.tail`.

Trust side: runs in the LogVM for the ``logvm`` CLI. Segment files may have
been edited by an intruder, so lines are bounded (an overlong line is cut
for display and flagged), nothing here trusts a record's syntax, and every
caller that prints must still pass lines through
:func:`qubes_logvm.core.escape.terminal_safe`. Compressed segments are
decompressed as a stream, never to disk.
"""

import contextlib
import io
import os
import struct
from collections.abc import Iterator
from io import RawIOBase
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast

from ..core.errors import LogvmError, StoreError
from ..core.records import TIMESTAMP_LEN, is_timestamp, parse_timestamp
from .files import open_regular
from .layout import SegmentFiles, StoreLayout

#: Longest line handed out; the rest of a longer line is skipped (and flagged).
MAX_LINE = 1 << 20
_CHUNK = 1 << 20
_TAIL = 1 << 16


class StoredLine(NamedTuple):
    """One line of a segment as found on disk (without its newline)."""

    number: int  # 1-based line number in the segment
    data: bytes
    complete: bool = True  # False: the file ends without a newline here
    overlong: int = 0  # bytes skipped because the line exceeded MAX_LINE

    @property
    def stamp(self) -> bytes | None:
        """The receive time, if the line starts with a well-formed one."""
        head = self.data[:TIMESTAMP_LEN]
        return head if is_timestamp(head) else None


@contextlib.contextmanager
def open_plain(path: Path) -> Iterator[io.BufferedReader]:
    """A buffered stream of a segment's plain bytes (``.log.zst`` decompressed on the fly)."""
    try:
        raw = open_regular(path)  # never a link, FIFO or device (store/files.py)
    except OSError as err:
        raise StoreError(f"{path}: cannot read: {err.strerror}") from err
    with raw:
        if not path.name.endswith(".zst"):
            yield io.BufferedReader(raw, _CHUNK)
            return
        import zstandard  # only reading compressed segments needs it

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        with reader:
            try:
                yield io.BufferedReader(cast(RawIOBase, reader), _CHUNK)
            except zstandard.ZstdError as err:
                raise StoreError(f"{path}: damaged zstd data: {err}") from err


def read_lines(stream: BinaryIO, *, first_number: int = 1) -> Iterator[StoredLine]:
    """Split a stream into bounded lines; the last one may lack its newline."""
    number = first_number
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        skipped = 0
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            skipped = len(line) - MAX_LINE
            line = line[:MAX_LINE]
            more, ended = _skip_rest_of_line(stream)
            skipped += more
            line += b"\n" if ended else b""
        if line.endswith(b"\n"):
            yield StoredLine(number, line[:-1], True, skipped)
        else:
            yield StoredLine(number, line, False, skipped)
        number += 1


class LineBlock:
    """Whole lines of a segment read at once: ``count`` lines, each ending in ``\\n``."""

    # A plain class, not a NamedTuple (``count`` would hide tuple.count) nor a
    # dataclass (whose import is a tenth of ``logvm show``'s start: issue 13).
    __slots__ = ("first_number", "data", "count")

    def __init__(self, first_number: int, data: bytes, count: int) -> None:
        self.first_number = first_number  # 1-based line number of the first
        self.data = data
        self.count = count

    def __repr__(self) -> str:
        return f"LineBlock({self.first_number}, {self.data!r}, {self.count})"


def read_blocks(stream: BinaryIO, *, first_number: int = 1) -> Iterator[LineBlock | StoredLine]:
    """The stream's lines as :func:`read_lines` splits them, many at a time.

    Lines come in blocks of about 1 MiB; a line over :data:`MAX_LINE` (cut as
    :func:`read_lines` cuts it) and a last line without a newline come alone,
    as a :class:`StoredLine`. A block line is never over the cap: the chunk
    read is the cap, so only a line begun in an earlier chunk can be, and that
    one is measured.
    """
    number = first_number
    head, skipped = b"", 0  # the line begun in earlier chunks (its first MAX_LINE bytes)
    while chunk := stream.read(MAX_LINE):
        end = chunk.find(b"\n")
        if end < 0 or head or skipped:
            grown, more = _grow(head, skipped, chunk if end < 0 else chunk[:end])
            if end < 0:
                head, skipped = grown, more
                continue
            if more:
                yield StoredLine(number, grown, True, more)
                number, chunk = number + 1, chunk[end + 1 :]
            else:
                chunk = head + chunk
            head, skipped = b"", 0
        cut = chunk.rfind(b"\n") + 1
        if cut:
            count = chunk.count(b"\n", 0, cut)
            yield LineBlock(number, chunk[:cut], count)
            number += count
        head = chunk[cut:]
    if head or skipped:
        yield StoredLine(number, head, False, skipped)


def _grow(head: bytes, skipped: int, piece: bytes) -> tuple[bytes, int]:
    room = max(0, MAX_LINE - len(head))
    return head + piece[:room], skipped + max(0, len(piece) - room)


def _skip_rest_of_line(stream: BinaryIO) -> tuple[int, bool]:
    skipped = 0
    while True:
        piece = stream.readline(_CHUNK)
        if not piece:
            return skipped, False
        if piece.endswith(b"\n"):
            return skipped + len(piece) - 1, True
        skipped += len(piece)


def iter_segment(segment: SegmentFiles) -> Iterator[StoredLine]:
    """Every line of one segment, in order, with 1-based line numbers."""
    if segment.log is None:
        return
    with open_plain(segment.log) as stream:
        yield from read_lines(stream)


def count_lines(path: Path) -> tuple[int, int]:
    """``(newlines, bytes)`` of a segment's plain content, at C speed."""
    lines = size = 0
    with open_plain(path) as stream:
        while chunk := stream.read(_CHUNK):
            lines += chunk.count(b"\n")
            size += len(chunk)
    return lines, size


def first_stamp(segment: SegmentFiles) -> bytes | None:
    """Receive time of the segment's first record (reads one bounded line)."""
    if segment.log is None:
        return None
    with open_plain(segment.log) as stream:
        line = stream.readline(_TAIL)
    head = line[:TIMESTAMP_LEN]
    return head if is_timestamp(head) else None


#: The head of a compressed segment's trailer: skippable-frame magic, length 27.
TRAILER_HEAD = struct.pack("<II", 0x184D2A5B, TIMESTAMP_LEN)


def stamp_trailer(stamp: bytes) -> bytes:
    """The zstd skippable frame compression appends: the segment's last receive time.

    Decompressors skip it (RFC 8878, 3.1.2), so the plain bytes are unchanged;
    :func:`last_stamp` reads it from the file's last bytes.
    """
    return TRAILER_HEAD + stamp


def last_stamp(segment: SegmentFiles) -> bytes | None:
    """Receive time of a segment's last complete record (reads only its tail).

    For a compressed segment it is the trailer compression wrote
    (:func:`stamp_trailer`); None for one compressed before trailers existed:
    finding its end would mean decompressing it all.
    """
    if segment.log is None:
        return None
    try:
        with open_regular(segment.log) as stream:
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(0, size - _TAIL))
            tail = stream.read(_TAIL)
    except OSError as err:
        raise StoreError(f"{segment.log}: cannot read: {err.strerror}") from err
    if segment.compressed:
        found = tail[-len(TRAILER_HEAD) - TIMESTAMP_LEN :]
        stamp = found[len(TRAILER_HEAD) :]
        ok = found.startswith(TRAILER_HEAD) and is_timestamp(stamp)
        return stamp if ok else None
    for line in reversed(tail.split(b"\n")[:-1]):
        head = line[:TIMESTAMP_LEN]
        if is_timestamp(head):
            return head
    return None


def newest_stamp(layout: StoreLayout, qube: str) -> float:
    """The receive time of the qube's newest stored record (0.0: none readable).

    The collector's receive clock starts from it (stamps never go below it,
    across restarts too); it reads one segment's tail, a bounded read.
    """
    try:
        segments = [s for s in layout.segments(qube) if s.log is not None]
        for segment in reversed(segments[-2:]):  # the newest may be a crash's empty one
            stamp = last_stamp(segment)
            if stamp is not None:
                return parse_timestamp(stamp)
    except (LogvmError, OSError, ValueError):
        pass
    return 0.0
