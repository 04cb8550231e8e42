"""Finding the next or previous matching record, off the main loop (floor 4).

Matches as ``logvm show -g`` does, with the same code: the rows are read
in blocks by the shared reader (:func:`qubes_logvm.store.reader.read_blocks`),
the shared matcher (:class:`qubes_logvm.store.grep.LineMatcher`) picks the
lines that may match at C speed, and each of those is understood and
judged by :meth:`qubes_logvm.store.timeline.Query.matches`, the pattern on
the unescaped message. Progress is reported as the share of rows scanned;
a :class:`threading.Event` cancels between blocks.
"""

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..store.grep import LineMatcher
from ..store.reader import LineBlock, StoredLine
from ..store.timeline import Query
from .model import QubeRows


@dataclass(frozen=True)
class Pattern:
    """What to look for."""

    text: str
    regex: bool = False
    match_case: bool = False

    def compiled(self) -> "re.Pattern[str]":
        """The pattern on the unescaped message (raises re.error for a bad regex)."""
        flags = 0 if self.match_case else re.IGNORECASE
        return re.compile(self.text if self.regex else re.escape(self.text), flags)


@dataclass
class Scan:
    """One search's state: what to match, the rows it covers, how far it got."""

    rows: QubeRows
    query: Query
    matcher: LineMatcher
    cancel: threading.Event
    progress: Callable[[float], None]
    total: int
    done: int = 0

    def matches(self, first: int, last: int) -> Iterator[int]:
        """The matching rows of ``[first, last)``, in order, until cancelled."""
        for seg, row, piece in self.rows.blocks(first, last):
            if self.cancel.is_set():
                return
            if isinstance(piece, StoredLine):
                found: Iterator[tuple[int, StoredLine]] = iter([(0, piece)])
                size = 1
            else:
                found = _stored(piece, self.matcher)
                size = piece.count
            for index, stored in found:
                if first <= row + index < last and self.query.matches(
                    self.rows.entry(seg, stored)
                ):
                    yield row + index
            self.done += min(last, row + size) - max(first, row)
            self.progress(min(1.0, self.done / self.total))


def _stored(block: LineBlock, matcher: LineMatcher) -> Iterator[tuple[int, StoredLine]]:
    for index, line in matcher.candidates(block.data):
        yield index, StoredLine(block.first_number + index, line)


def find(
    rows: QubeRows,
    pattern: Pattern,
    start: int,
    bounds: tuple[int, int],
    *,
    forward: bool,
    cancel: threading.Event,
    progress: Callable[[float], None],
) -> int | None:
    """The first matching row after ``start`` (or the last before it), within ``bounds``."""
    query = Query(pattern=pattern.compiled())
    low, high = bounds
    scan = Scan(rows, query, LineMatcher(query.pattern), cancel, progress, max(1, high - low))
    if forward:
        return next(scan.matches(max(low, start + 1), high), None)
    # Backwards one segment at a time, each read forwards: the last match wins.
    end = min(high, start)
    for seg in reversed(rows.segments):
        seg_start = rows.segment_start(seg.files.seq)
        if seg_start >= end:
            continue
        if seg_start + seg.count <= low or cancel.is_set():
            break
        last = None
        for last in scan.matches(max(low, seg_start), end):  # noqa: B007 (the last one)
            pass
        if last is not None:
            return last
        end = seg_start
    return None
