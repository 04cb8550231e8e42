"""The verifier's data checks: segment bytes against their seals (floor 2).

Trust side: the seal lines handed in here have already been authenticated
(MAC under ``K[epoch]``, right qube and segment); the segment bytes have not.
The fast path hashes whole seal intervals with hashlib and counts lines with
``bytes.count`` (C speed, no per-line Python loop). Only after a mismatch
does it read the rest of the segment into memory (bounded) and work out what
happened: lines inserted or removed (the next interval is found again at
another line boundary), lines changed or reordered (same count), or a
truncated file.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ...core.errors import StoreError
from ...core.records import parse_record
from ...core.seal import ChainHasher, chain_step

#: Most bytes read into memory to explain a mismatch (with the interval
#: already read, at most :data:`_CHUNK`, and the slices taken of them).
EXPLAIN_LIMIT = 64 << 20
#: Most candidate line boundaries and bytes hashed while looking for the next interval.
_MAX_CANDIDATES = 20000
_MAX_RESYNC_BYTES = 512 << 20
#: Intervals up to this size are searched for a single inserted or swapped line.
_PINPOINT_BYTES = 1 << 20
_CHUNK = 16 << 20
_LINE = re.compile(rb"[^\n]*\n")

#: ``report(first_line, last_line, message)``: one error about this segment.
Report = Callable[[int | None, int | None, str], None]


class Reads(Protocol):
    """What the checks read segment bytes from: a binary stream's ``read``."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Interval:
    """The bytes between two authenticated seal lines of one segment."""

    start: int  # nbytes of the earlier seal
    end: int  # nbytes of the later seal
    lines0: int
    lines1: int
    head0: bytes | None  # None: no authenticated start (cannot be checked)
    head1: bytes
    seal_line: int  # line number of the later seal in the .seal file
    checkable: bool

    @property
    def length(self) -> int:
        """Bytes the interval covers."""
        return self.end - self.start

    @property
    def nlines(self) -> int:
        """Records the interval covers."""
        return self.lines1 - self.lines0

    def matches(self, data: bytes) -> bool:
        """True when ``data`` is exactly what the later seal sealed."""
        return (
            self.head0 is not None
            and len(data) == self.length
            and chain_step(self.head0, data) == self.head1
            and data.count(b"\n") == self.nlines
        )


@dataclass
class DataResult:
    """Where the sealed part of a segment ends in the file as it is now."""

    sealed_end_line: int  # lines of the file up to the end of the last interval
    tail_lines: int  # complete lines after it
    tail_bytes: int  # bytes after it
    bytes_hashed: int
    broken: bool  # a mismatch was found


def read_up_to(stream: Reads, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at end of file (memory bounded by the file)."""
    parts = []
    while size > 0:
        piece = stream.read(min(size, _CHUNK))
        if not piece:
            break
        parts.append(piece)
        size -= len(piece)
    return b"".join(parts)


def check_data(
    stream: Reads, intervals: list[Interval], report: Report, tail_limit: int | None = None
) -> DataResult:
    """Check consecutive intervals from the start of ``stream``; measure the tail.

    Memory stays bounded whatever the seals claim: an interval longer than
    :data:`_CHUNK` is hashed as it is read, never held. ``tail_limit``: most
    bytes read after the sealed part (None: to the end of the stream).
    """
    hashed = 0
    for index, interval in enumerate(intervals):
        if interval.length > _CHUNK:
            broken = _check_long(stream, intervals, index, report)
            hashed += broken.bytes_hashed
            if broken.broken:
                return replace(broken, bytes_hashed=hashed)
            continue
        data = read_up_to(stream, interval.length)
        hashed += len(data) if interval.checkable else 0
        if interval.checkable and interval.matches(data):
            continue
        if not interval.checkable and len(data) == interval.length:
            continue  # already reported by the seal-line checks
        rest = data + read_up_to(stream, EXPLAIN_LIMIT)
        position, line = _explain(rest, intervals[index:], interval.lines0, report)
        tail = rest[position:] if position is not None else b""
        lines, size = count_up_to(stream, tail_limit)
        return DataResult(
            line,
            tail.count(b"\n") + lines,
            len(tail) + size,
            hashed,
            broken=True,
        )
    lines, size = count_up_to(stream, tail_limit)
    end_line = intervals[-1].lines1 if intervals else 0
    return DataResult(end_line, lines, size, hashed, broken=False)


def count_up_to(stream: Reads, limit: int | None) -> tuple[int, int]:
    """Lines and bytes of the rest of ``stream``, at most ``limit`` bytes read."""
    lines = size = 0
    while limit is None or size < limit:
        chunk = stream.read(_CHUNK if limit is None else min(_CHUNK, limit - size))
        if not chunk:
            break
        lines += chunk.count(b"\n")
        size += len(chunk)
    return lines, size


def _check_long(
    stream: Reads, intervals: list[Interval], index: int, report: Report
) -> DataResult:
    """One interval longer than :data:`_CHUNK`, hashed piece by piece as it is read.

    ``broken`` False: it matches (or cannot be checked and is all there).
    A mismatch is reported without the line-by-line explanation, which would
    need the whole interval in memory; the rest of the segment is not checked.
    """
    interval = intervals[index]
    hasher = ChainHasher(interval.head0) if interval.head0 is not None else None
    got = lines = 0
    while got < interval.length:
        piece = stream.read(min(_CHUNK, interval.length - got))
        if not piece:
            break
        if hasher is not None:
            hasher.update(piece)
        lines += piece.count(b"\n")
        got += len(piece)
    hashed = got if interval.checkable else 0
    line = interval.lines0 + lines
    if got < interval.length:
        _report_truncated(b"", line, interval.start + got, intervals[-1], report)
        return DataResult(line, 0, 0, hashed, broken=True)
    if not interval.checkable or (
        hasher is not None and hasher.digest() == interval.head1 and lines == interval.nlines
    ):
        return DataResult(interval.lines1, 0, 0, hashed, broken=False)
    report(
        interval.lines0 + 1,
        max(line, interval.lines0 + 1),
        f"seal line {interval.seal_line} seals {interval.nlines} lines in "
        f"{interval.length} bytes here, and the file's bytes do not match it (the file "
        f"holds {lines} lines there; too long to say which changed): the rest of the "
        "segment cannot be checked",
    )
    return DataResult(line, 0, 0, hashed, broken=True)


def _explain(
    data: bytes, intervals: list[Interval], line0: int, report: Report
) -> tuple[int | None, int]:
    """Walk the rest of the segment interval by interval, resynchronising after damage.

    Returns the offset in ``data`` and the line number where the sealed part
    ends in the file as it is now (offset None: could not tell).
    """
    position, line = 0, line0
    for index, interval in enumerate(intervals):
        piece = data[position : position + interval.length]
        if interval.matches(piece) or (not interval.checkable and len(piece) == interval.length):
            position += interval.length
            line += piece.count(b"\n")
            continue
        anchor = _next_anchor(intervals[index + 1 :])
        end = _resync(data, position, interval, anchor) if anchor is not None else None
        if end is None and position + interval.length > len(data):
            file_size = intervals[0].start + len(data)
            _report_truncated(data[position:], line, file_size, intervals[-1], report)
            return len(data), line + data[position:].count(b"\n")
        if end is None and anchor is not None:
            report(
                line + 1,
                None,
                f"from here on the file does not match seal line {interval.seal_line} or "
                "the ones after it: the rest of the segment cannot be checked",
            )
            return None, line
        if end is None:
            end = position + interval.length
        _report_mismatch(data[position:end], line, interval, report)
        line += data[position:end].count(b"\n")
        position = end
    return position, line


def _line_starts(data: bytes, lo: int, hi: int) -> list[int]:
    starts = [lo] if lo == 0 or data[lo - 1 : lo] == b"\n" else []
    index = data.find(b"\n", lo, hi)
    while index >= 0 and len(starts) < _MAX_CANDIDATES:
        starts.append(index + 1)
        index = data.find(b"\n", index + 1, hi)
    return starts


def _next_anchor(rest: list[Interval]) -> Interval | None:
    """The next interval with bytes to find again (empty ones match anywhere)."""
    for interval in rest:
        if not interval.checkable or (interval.length == 0 and not interval.matches(b"")):
            return None
        if interval.length:
            return interval
    return None


def _resync(data: bytes, position: int, interval: Interval, anchor: Interval) -> int | None:
    """Find where ``interval`` really ends: the line start where ``anchor`` matches.

    Empty intervals between the two do not move the position, so the
    anchor starts exactly where ``interval`` ends.
    """
    expected = position + interval.length
    window = max(interval.length, 1 << 16) * 4
    candidates = _line_starts(data, position, min(len(data), expected + window))
    candidates.sort(key=lambda start: abs(start - expected))
    spent = 0
    for start in candidates:
        if spent > _MAX_RESYNC_BYTES:
            break
        piece = data[start : start + anchor.length]
        spent += len(piece)
        if anchor.matches(piece):
            return start
    return None


def _report_truncated(
    rest: bytes, line: int, file_size: int, last: Interval, report: Report
) -> None:
    have = line + rest.count(b"\n")
    missing = last.end - file_size
    report(
        have + 1,
        last.lines1,
        f"truncated: the seals cover lines 1-{last.lines1} ({last.end} bytes) "
        f"but the segment ends after line {have}: {missing} sealed bytes are missing "
        "(lines removed, or the file truncated)",
    )


def _report_mismatch(piece: bytes, line: int, interval: Interval, report: Report) -> None:
    actual = piece.count(b"\n")
    expected = interval.nlines
    sealed = f"seal line {interval.seal_line} seals {expected} lines here"
    if actual > expected:
        what = f"{actual - expected} line(s) inserted ({sealed}, the file holds {actual})"
    elif actual < expected:
        what = f"{expected - actual} line(s) removed ({sealed}, the file holds {actual})"
    else:
        what = f"lines changed or reordered ({sealed}: same count, other bytes)"
    hints = _pinpoint(piece, line, interval) + _hints(piece, line)
    if hints:
        what += "; " + "; ".join(hints[:4])
    if actual == 0:
        report(line, line + 1, what + f" between lines {line} and {line + 1}")
    else:
        report(line + 1, line + actual, what)


def _pinpoint(piece: bytes, line: int, interval: Interval) -> list[str]:
    """Name the exact line when one line was inserted or two neighbours swapped."""
    if len(piece) > _PINPOINT_BYTES or interval.head0 is None:
        return []
    lines = _LINE.findall(piece)
    if len(lines) == interval.nlines + 1:
        for index in range(len(lines)):
            if interval.matches(b"".join(lines[:index] + lines[index + 1 :])):
                return [f"line {line + index + 1} is the inserted one"]
    if len(lines) == interval.nlines:
        for index in range(len(lines) - 1):
            swapped = lines[:index] + [lines[index + 1], lines[index]] + lines[index + 2 :]
            if interval.matches(b"".join(swapped)):
                return [f"lines {line + index + 1} and {line + index + 2} were swapped"]
    return []


def _hints(piece: bytes, line: int) -> list[str]:
    """Lines that are not well-formed records, or whose receive time goes backwards."""
    hints = []
    last_stamp = b""
    for offset, text in enumerate(_LINE.findall(piece)[:10000], start=line + 1):
        try:
            stamp = parse_record(text[:-1]).stamp
        except StoreError:
            hints.append(f"line {offset} is not a well-formed record")
            continue
        if stamp < last_stamp:
            hints.append(f"line {offset}: receive time goes backwards")
        last_stamp = stamp
    return hints
