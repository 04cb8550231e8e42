"""A qube's records as a lazy, random-access list of rows (floor 4).

The record view asks for rows ``[first, last)`` only; nothing reads a whole
qube to open it. Row counts come from the seal files (``lines`` of the last
seal, plus the newlines of an open segment's unsealed tail: the count
``logvm list`` shows, :func:`qubes_logvm.store.summary.segment_records`),
and each seal's ``(lines, nbytes)`` is a point where row ``lines`` starts at
byte ``nbytes`` (a segment's seal file is read for them when a row past its
first is first asked for): a row is found by seeking to the nearest point before it
and reading forward with the shared reader (:func:`store.reader.read_lines`),
each line understood by :func:`core.entries.classify`. Points found while
reading forward are kept, so scrolling costs what is on screen. A compressed
segment is decompressed into memory as far as rows are asked for (one kept
at a time), so its first rows show without decompressing all of it.

Trust side: seals are unverified here (a tampered one can only misplace
rows; ``logvm verify`` judges it). Lines are bounded by the reader.
"""

import bisect
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from ..core.entries import classify
from ..core.errors import StoreError
from ..store.layout import SegmentFiles, StoreLayout
from ..store.reader import LineBlock, StoredLine, open_plain, read_blocks, read_lines
from ..store.sealfile import read_seal_file
from ..store.summary import segment_records
from ..store.timeline import Entry, segment_session

#: Keep a point every this many rows read forward.
_STEP = 2048
#: Plain bytes a read may still decompress itself (a few ms); more go to a thread.
_INLINE = 2 << 20


@dataclass
class SegmentRows:
    """One segment's rows: its count and the known (row, byte offset) points."""

    files: SegmentFiles
    count: int
    points_rows: list[int] = field(default_factory=lambda: [0])
    points_bytes: list[int] = field(default_factory=lambda: [0])
    seals_read: bool = False  # the seal file's points are read when a row past 0 is asked
    _session: str | None = None

    @property
    def session(self) -> str:
        """The session of the segment-start note (its head read when first asked)."""
        if self._session is None:
            self._session = segment_session(self.files)
        return self._session

    def _read_seals(self) -> None:
        self.seals_read = True
        if self.files.seal is not None:
            for seal in read_seal_file(self.files.seal).seals:
                if 0 < seal.lines <= self.count:
                    self.add_point(seal.lines, seal.nbytes)

    def add_point(self, row: int, offset: int) -> None:
        """Remember that row ``row`` (0-based) starts at byte ``offset``."""
        at = bisect.bisect_left(self.points_rows, row)
        if at < len(self.points_rows) and self.points_rows[at] == row:
            return
        self.points_rows.insert(at, row)
        self.points_bytes.insert(at, offset)

    def byte_after(self, row: int) -> int | None:
        """A byte offset at or past the end of row ``row - 1`` (None: the segment's end)."""
        if not self.seals_read:
            self._read_seals()
        at = bisect.bisect_left(self.points_rows, row)
        return self.points_bytes[at] if at < len(self.points_rows) else None

    def point_before(self, row: int) -> tuple[int, int]:
        """The known point at or before ``row``."""
        if row > 0 and not self.seals_read:
            self._read_seals()
        at = bisect.bisect_right(self.points_rows, row) - 1
        return self.points_rows[at], self.points_bytes[at]


def _segment_rows(files: SegmentFiles) -> SegmentRows:
    _, count = segment_records(files)
    return SegmentRows(files, count)


class QubeRows:
    """Every row of one qube, oldest first, read on demand (thread-safe)."""

    def __init__(self, layout: StoreLayout, qube: str) -> None:
        self.layout = layout
        self.qube = qube
        self._lock = threading.Lock()
        self._segments: list[SegmentRows] = []
        self._starts: list[int] = []
        # Compressed segments decompressed as far as read: the last two (a screen
        # may show the end of one and the start of the next), by segment number.
        self._cached: OrderedDict[int, _Decompressed] = OrderedDict()
        self._preparing = False
        self.refresh()

    def refresh(self) -> bool:
        """Pick up new segments and records; True when the row count changed."""
        with self._lock:
            before = self.count
            known = {s.files.seq: s for s in self._segments}
            fresh = []
            for files in self.layout.segments(self.qube):
                if files.log is None:
                    continue
                old = known.get(files.seq)
                if old is not None and old.files.compressed == files.compressed:
                    if old.files is not files and not files.compressed:
                        old.count = segment_records(files)[1]
                    fresh.append(old)
                else:
                    fresh.append(_segment_rows(files))
            self._segments = fresh
            self._starts = []
            total = 0
            for seg in fresh:
                self._starts.append(total)
                total += seg.count
            self._total = total
            return self.count != before

    @property
    def count(self) -> int:
        """Rows known now."""
        return getattr(self, "_total", 0)

    @property
    def segments(self) -> list[SegmentRows]:
        """The qube's segments with their row counts."""
        return list(self._segments)

    def segment_start(self, seq: int) -> int:
        """The first row of segment ``seq``."""
        for seg, start in zip(self._segments, self._starts, strict=True):
            if seg.files.seq == seq:
                return start
        raise KeyError(seq)

    def locate(self, row: int) -> tuple[SegmentRows, int]:
        """The segment holding ``row`` and the row's index in it."""
        at = bisect.bisect_right(self._starts, row) - 1
        return self._segments[at], row - self._starts[at]

    def rows(self, first: int, last: int) -> list[Entry]:
        """Rows ``[first, last)`` (fewer when the files hold fewer lines)."""
        return [self._entry(seg, stored) for seg, stored in self.stored(first, last)]

    def stored(self, first: int, last: int) -> list[tuple[SegmentRows, StoredLine]]:
        """Rows ``[first, last)`` as stored lines, not yet understood (what search scans)."""
        with self._lock:
            found: list[tuple[SegmentRows, StoredLine]] = []
            row = max(0, first)
            while row < min(last, self._total):
                seg, index = self.locate(row)
                want = min(last - row, seg.count - index)
                got = [(seg, line) for line in self._read(seg, index, want)]
                found.extend(got)
                row += want
            return found

    def _stream(self, seg: SegmentRows) -> Iterator[BinaryIO]:
        log = seg.files.log
        if log is None:  # segments without a log are left out by refresh()
            return
        if not seg.files.compressed:
            with open_plain(log) as stream:
                yield stream
            return
        yield cast(BinaryIO, self._decompressed(seg, log))  # read_lines: seek and readline only

    def _decompressed(self, seg: SegmentRows, log: Path) -> "_Decompressed":
        """The kept decompression of a compressed segment (lock held)."""
        seq = seg.files.seq
        if seq not in self._cached:
            if len(self._cached) >= 2:
                self._cached.popitem(last=False)[1].close()
            self._cached[seq] = _Decompressed(log)
        self._cached.move_to_end(seq)
        return self._cached[seq]

    def ready(self, first: int, last: int) -> bool:
        """True when rows ``[first, last)`` are read without decompressing much (a draw asks)."""
        return not self._missing(first, last)

    def _missing(self, first: int, last: int) -> list[tuple[SegmentRows, int | None]]:
        """The compressed segments rows ``[first, last)`` need decompressed, and how far."""
        with self._lock:
            missing: list[tuple[SegmentRows, int | None]] = []
            row = max(0, first)
            while row < min(last, self._total):
                seg, index = self.locate(row)
                want = min(last - row, seg.count - index)
                if seg.files.compressed:
                    need = seg.byte_after(index + want)
                    held = self._cached.get(seg.files.seq)
                    have = held.held if held is not None else 0
                    if not (held is not None and held.holds(need)) and (
                        need is None or need - have > _INLINE
                    ):
                        missing.append((seg, need))
                row += want
            return missing

    def prepare(self, first: int, last: int, done: Callable[[], None]) -> None:
        """Decompress what rows ``[first, last)`` need in a thread, then call ``done`` there.

        One such thread at a time; the caller asks again (after ``done``)
        for rows still missing. A damaged segment ends the work early: the
        read that follows reports it.
        """
        missing = self._missing(first, last)
        if not missing or self._preparing:
            return
        self._preparing = True

        def work() -> None:
            try:
                self._fill(missing)
            finally:
                self._preparing = False
                done()

        threading.Thread(target=work, daemon=True).start()

    def _fill(self, missing: list[tuple[SegmentRows, int | None]]) -> None:
        """Decompress what ``missing`` names, outside the rows' lock (draws go on)."""
        for seg, need in missing:
            log = seg.files.log
            if log is None:
                continue
            with self._lock:
                held = self._decompressed(seg, log)
            held.fill(need)  # its own lock, a chunk at a time: reads go on

    def _read(self, seg: SegmentRows, index: int, want: int) -> Iterator[StoredLine]:
        point_row, offset = seg.point_before(index)
        for stream in self._stream(seg):
            stream.seek(offset)
            number = point_row
            position = offset
            for stored in read_lines(stream, first_number=point_row + 1):
                if number >= index + want:
                    return
                if number >= index:
                    yield stored
                position += len(stored.data) + stored.overlong + (1 if stored.complete else 0)
                number += 1
                if number % _STEP == 0:
                    seg.add_point(number, position)

    def blocks(
        self, first: int, last: int
    ) -> Iterator[tuple[SegmentRows, int, LineBlock | StoredLine]]:
        """Rows ``[first, last)`` as the shared reader's blocks, unparsed (what search scans).

        Each comes with its segment and the qube row of its first line; the
        first and last may hold rows outside the range. Streams on their own,
        so a search does not evict the compressed segment the view shows.
        """
        with self._lock:
            spans = list(zip(self._segments, self._starts, strict=True))
        for seg, start in spans:
            if start + seg.count <= first or start >= last:
                continue
            index = max(0, first - start)
            with self._lock:
                point_row, offset = seg.point_before(index)
            end = min(last, start + seg.count) - start
            for piece in self._blocks_from(seg, point_row, offset):
                row = piece.first_number - 1 if isinstance(piece, LineBlock) else piece.number - 1
                if row >= end:
                    break
                size = piece.count if isinstance(piece, LineBlock) else 1
                if row + size > index:
                    yield seg, start + row, piece

    def _blocks_from(
        self, seg: SegmentRows, row: int, offset: int
    ) -> Iterator[LineBlock | StoredLine]:
        if seg.files.log is None:
            return
        with open_plain(seg.files.log) as stream:
            _skip(stream, offset)
            for piece in read_blocks(stream, first_number=row + 1):
                yield piece
                if isinstance(piece, LineBlock):
                    row, offset = row + piece.count, offset + len(piece.data)
                else:
                    row += 1
                    offset += len(piece.data) + piece.overlong + (1 if piece.complete else 0)
                with self._lock:
                    seg.add_point(row, offset)

    def entry(self, seg: SegmentRows, stored: StoredLine) -> Entry:
        """A stored line understood (:func:`core.entries.classify`)."""
        return self._entry(seg, stored)

    def _entry(self, seg: SegmentRows, stored: StoredLine) -> Entry:
        what = classify(stored.data)
        return Entry(
            self.qube, seg.files.seq, stored.number, seg.session, what.stamp, what, stored
        )

    def stamp_at(self, row: int) -> bytes:
        """The receive time of a row (b"" when it has none).

        What it needs decompressed is decompressed outside the rows' lock,
        so a bisection in a thread (:meth:`row_at_time`) never holds up a draw.
        """
        self._fill(self._missing(row, row + 1))
        got = self.rows(row, row + 1)
        return got[0].when if got else b""

    def row_at_time(self, stamp: bytes) -> int:
        """The first row received at or after ``stamp`` (bisection: times never decrease)."""
        low, high = 0, self.count
        while low < high:
            middle = (low + high) // 2
            found = self.stamp_at(middle)
            if found and found < stamp:
                low = middle + 1
            else:
                high = middle
        return low


def _skip(stream: BinaryIO, offset: int) -> None:
    """Move to ``offset``: a seek, or reading forward in a compressed stream."""
    if stream.seekable():
        stream.seek(offset)
        return
    while offset > 0:
        got = stream.read(min(offset, 1 << 20))
        if not got:
            return
        offset -= len(got)


class _Decompressed:
    """A compressed segment's plain bytes, decompressed only as far as read (a stream).

    Thread-safe: :meth:`fill` (a worker) and :meth:`readline` (the reader)
    take the lock a chunk at a time. A damaged frame ends the bytes there
    (:attr:`error` says why; the next read raises it as a StoreError).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._files = contextlib.ExitStack()
        self._source = self._files.enter_context(open_plain(path))
        self._data = bytearray()
        self._pos = 0
        self._eof = False
        self._lock = threading.Lock()
        self.error: str | None = None
        import zstandard  # only compressed segments come here (as in store/reader.open_plain)

        self._damaged: type[Exception] = zstandard.ZstdError

    def close(self) -> None:
        """Close the file (the bytes read so far go with this object)."""
        with self._lock:
            self._eof = True
            self._files.close()

    @property
    def held(self) -> int:
        """Plain bytes decompressed so far."""
        return len(self._data)

    def holds(self, upto: int | None) -> bool:
        """True when the bytes up to ``upto`` (None: all) are decompressed."""
        return self._eof or (upto is not None and len(self._data) >= upto)

    def fill(self, upto: int | None) -> None:
        """Decompress until ``upto`` plain bytes (None: all) are held."""
        while not self.holds(upto):
            with self._lock:
                self._more()

    def _more(self) -> None:
        """One more chunk (lock held)."""
        if self._eof:
            return
        try:
            chunk = self._source.read(1 << 20)
        except (StoreError, OSError, ValueError) as err:
            chunk, self.error = b"", str(err)
        except self._damaged as err:
            chunk, self.error = b"", f"{self._path}: damaged zstd data: {err}"
        self._data += chunk
        self._eof = not chunk

    def seek(self, offset: int) -> int:
        """Go to a plain offset (read when asked for)."""
        self._pos = offset
        return offset

    def readline(self, limit: int = -1) -> bytes:
        """Up to and including the next newline, at most ``limit`` bytes."""
        limit = limit if limit >= 0 else 1 << 62
        with self._lock:
            while True:
                stop = min(len(self._data), self._pos + limit)
                end = self._data.find(b"\n", self._pos, stop)
                if end >= 0 or self._eof or len(self._data) >= self._pos + limit:
                    break
                self._more()
            if self.error is not None and end < 0:
                raise StoreError(self.error)
            cut = end + 1 if end >= 0 else min(len(self._data), self._pos + limit)
            line = bytes(self._data[self._pos : cut])
            self._pos = max(self._pos, cut)
            return line
