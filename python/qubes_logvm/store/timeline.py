"""Records of several qubes as one timeline: filters, merge, newest first (floor 2).

The reading API the ``logvm`` CLI and the GUI share:

- :func:`resolve_qubes`: qube names, globs or all of them;
- :class:`Query`: the filters (receive-time window, priorities, unit,
  identifier, session, a pattern on the unescaped text);
- :func:`entries`: one qube's matching entries in store order;
- :func:`merged`: several qubes merged by receive time (``heapq.merge``);
- :func:`newest`: the last N matching entries, read from the newest
  segments backwards (never the whole store);
- :class:`Follower`: entries appended since the last poll.

Each :class:`Entry` is a stored line understood by
:func:`qubes_logvm.core.entries.classify` plus where it was found. Trust
side: segments may have been edited by an intruder; nothing here trusts a
line's syntax, and printing callers must still make text terminal-safe.
Within a segment receive times never decrease (the collector's clock is
monotonic per qube), which the time window's bisection relies on; a line
without a valid stamp sorts with the last valid stamp before it.
"""

import collections
import fnmatch
import heapq
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..core.entries import Understood, classify
from ..core.errors import StoreError
from .layout import SegmentFiles, StoreLayout
from .reader import StoredLine, first_stamp, iter_segment, last_stamp, open_plain, read_blocks
from .tail import SegmentTail, blocks_backwards, lines_from, since_offset

if TYPE_CHECKING:
    from .grep import LineMatcher


class Entry:
    """One stored line of one qube, understood; entries sort by receive time, then qube."""

    # A plain class: a NamedTuple would also compare as a tuple (qube first),
    # and a dataclass's import is a tenth of ``logvm show``'s start (issue 13).
    __slots__ = ("qube", "segment", "line", "session", "when", "what", "stored")

    def __init__(
        self,
        qube: str,
        segment: int,
        line: int,
        session: str,
        when: bytes,
        what: Understood,
        stored: StoredLine,
    ) -> None:
        self.qube = qube  # the LogVM's word: the qrexec source name
        self.segment = segment
        self.line = line  # 1-based line number in the segment
        self.session = session  # the session token of its segment-start note ("" unknown)
        self.when = when  # receive time, or the last valid one before a malformed line
        self.what = what
        self.stored = stored

    def __lt__(self, other: "Entry") -> bool:
        if self.when != other.when:
            return self.when < other.when
        return self.qube < other.qube

    def __eq__(self, other: object) -> bool:
        # heapq.merge asks == before < for every pair it compares: the fields
        # that differ most often first, so unequal entries are told apart at once.
        if not isinstance(other, Entry):
            return NotImplemented
        return (
            self.when == other.when
            and self.line == other.line
            and self.qube == other.qube
            and self.segment == other.segment
            and self.session == other.session
            and self.what == other.what
            and self.stored == other.stored
        )

    def __hash__(self) -> int:
        return hash((self.qube, self.segment, self.line, self.when))

    def __repr__(self) -> str:
        return f"Entry({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"


class Query(NamedTuple):
    """Which entries to show. Times are stored stamps (bytes), both inclusive."""

    since: bytes | None = None
    until: bytes | None = None
    severities: frozenset[int] | None = None  # None: any, including unknown
    units: tuple[str, ...] = ()  # globs on the sender's unit (``sshd`` = ``sshd.service``)
    identifiers: tuple[str, ...] = ()  # exact syslog identifiers
    session: str | None = None
    pattern: "re.Pattern[str] | None" = None  # on the unescaped message
    delivered: bool = True  # include dom0's deliveries (console...; ``show --console``)
    senders_only: bool = False  # leave out the collector's notes (``-o cat``)

    def matches(self, entry: Entry) -> bool:
        """True when the entry passes every filter."""
        what = entry.what
        if not self._admits(what) or not self._in_window(entry.when):
            return False
        if self.severities is not None and what.severity not in self.severities:
            return False
        if self.session is not None and entry.session != self.session:
            return False
        if (self.units or self.identifiers) and not self._sender_matches(what):
            return False
        if self.pattern is not None:
            text = what.message.decode("utf-8", "replace")
            if self.pattern.search(text) is None:
                return False
        return True

    def _admits(self, what: Understood) -> bool:
        """Whether the kind of entry is wanted at all (notes; dom0's deliveries)."""
        if self.senders_only and what.is_note:
            return False
        return self.delivered or not what.delivered

    @property
    def prefilter(self) -> "re.Pattern[str] | None":
        """The pattern when the block matcher can leave lines out (:mod:`.grep`).

        A line without a backslash was not escaped, so its message is a
        substring of it: a pattern without anchors or lookarounds that finds
        nothing in the line, or any pattern whose every match holds a text
        the line lacks, finds nothing in the message either, and the line
        need not be parsed (what makes ``--grep`` fast).
        """
        if self.pattern is None or _matcher(self.pattern).every:
            return None
        return self.pattern

    def _in_window(self, when: bytes) -> bool:
        if self.since is not None and when < self.since:
            return False
        return self.until is None or not when or when <= self.until

    def _sender_matches(self, what: Understood) -> bool:
        sender = what.sender
        if sender is None:
            return False
        if self.units and not any(_unit_matches(g, sender.unit) for g in self.units):
            return False
        return not self.identifiers or sender.ident in self.identifiers

    def skips_segment(self, segment: SegmentFiles, next_first: Callable[[], bytes | None]) -> bool:
        """True when the segment cannot hold a matching entry (cheap checks).

        The segment's last stamp comes from its tail (or a compressed one's
        trailer); else ``next_first()``, the first stamp of the qube's next
        segment, bounds it (receive times never decrease in a qube). It is
        called only then: reading it may mean starting to decompress.
        """
        if self.since is not None:
            last = last_stamp(segment) or next_first()
            if last is not None and last < self.since:
                return True
        if self.until is not None:
            first = earliest_stamp(segment)
            if first is not None and first > self.until:
                return True
        return self.session is not None and segment_session(segment) != self.session


def _matcher(pattern: "re.Pattern[str]") -> "LineMatcher":
    """The block matcher for ``pattern``; imported only when there is one (``show``
    without ``--grep`` never loads :mod:`.grep`: start-up, issue 13)."""
    from .grep import LineMatcher

    return LineMatcher(pattern)


def earliest_stamp(segment: SegmentFiles) -> bytes | None:
    """The earliest receive time of the segment's first two lines (bounded read).

    Not only the first: a collector before issue 18's fix stamped the
    ``segment-start`` note after the first records it received.
    """
    stamps = [line.stamp for line in lines_from(segment, 0, 1, limit=2)]
    found = [stamp for stamp in stamps if stamp is not None]
    return min(found) if found else None


def _unit_matches(pattern: str, unit: str) -> bool:
    if fnmatch.fnmatchcase(unit, pattern):
        return True
    return "." not in pattern and fnmatch.fnmatchcase(unit, pattern + ".service")


def resolve_qubes(layout: StoreLayout, specs: Sequence[str], *, every: bool = False) -> list[str]:
    """Qube names from names and globs (``every``: all qubes in the store).

    A glob may match nothing; a plain name is returned even when absent
    (``show`` refuses it, ``follow`` waits for it).
    """
    known = layout.qubes()
    if every:
        return list(known)
    chosen: list[str] = []
    for spec in specs:
        if any(c in spec for c in "*?["):
            found = [q for q in known if fnmatch.fnmatchcase(q, spec)]
        else:
            found = [spec]
        chosen.extend(q for q in found if q not in chosen)
    return chosen


def segment_session(segment: SegmentFiles) -> str:
    """The session token of the segment's ``segment-start`` note ("" if none)."""
    head = next(iter_segment_head(segment), None)
    if head is None:
        return ""
    what = classify(head.data)
    return what.note_fields().get("session", "") if what.event == "segment-start" else ""


def iter_segment_head(segment: SegmentFiles) -> Iterator[StoredLine]:
    """The segment's first line only (bounded read)."""
    if segment.log is None:
        return iter(())
    return lines_from(segment, 0, 1, limit=1)


def _understood(
    segment: SegmentFiles, session: str, lines: Iterable[StoredLine], last: bytes
) -> Iterator[Entry]:
    for stored in lines:
        what = classify(stored.data)
        if what.stamp:
            last = what.stamp
        yield Entry(segment.qube, segment.seq, stored.number, session, last, what, stored)


def _understood_candidates(
    segment: SegmentFiles, session: str, found: Iterable[tuple[StoredLine, bytes]]
) -> Iterator[Entry]:
    """As :func:`_understood`, for lines picked by the matcher with the stamp before each."""
    for stored, before in found:
        what = classify(stored.data)
        when = what.stamp or before
        yield Entry(segment.qube, segment.seq, stored.number, session, when, what, stored)


def _candidates(
    segment: SegmentFiles, offset: int, number: int, matcher: "LineMatcher"
) -> Iterator[tuple[StoredLine, bytes]]:
    """The lines that may match, read in blocks (:mod:`.grep`), from byte ``offset``.

    Each comes with the receive time of the last stamped line before it (a
    malformed line sorts by it, as in :func:`_understood`).
    """
    if segment.log is None:
        return
    carry = b""
    with open_plain(segment.log) as stream:
        if offset:
            stream.seek(offset)
        for piece in read_blocks(stream, first_number=number):
            if isinstance(piece, StoredLine):
                yield piece, carry
                carry = piece.stamp or carry
                continue
            lines: list[bytes] | None = None
            for index, line in matcher.candidates(piece.data):
                stored = StoredLine(piece.first_number + index, line)
                if stored.stamp is None:  # malformed (rare): find the stamp before it
                    lines = lines or piece.data.split(b"\n")
                    yield stored, _stamp_before(lines, index, carry)
                else:
                    yield stored, carry
            data = piece.data
            stamp = StoredLine(0, data[data.rfind(b"\n", 0, -1) + 1 : -1]).stamp
            if stamp is None:  # the block's last line is malformed (rare)
                lines = lines or data.split(b"\n")
                stamp = _stamp_before(lines, len(lines) - 1, carry)
            carry = stamp


def _stamp_before(lines: list[bytes], index: int, carry: bytes) -> bytes:
    """The stamp of the last stamped line among ``lines[:index]`` (else ``carry``)."""
    for line in reversed(lines[:index]):
        stamp = StoredLine(0, line).stamp
        if stamp is not None:
            return stamp
    return carry


def entries(layout: StoreLayout, qube: str, query: Query | None = None) -> Iterator[Entry]:
    """One qube's matching entries, segments in order (plain and compressed)."""
    chosen = query or Query()
    segments = [s for s in layout.segments(qube) if s.log is not None]
    for index, segment in enumerate(segments):
        if chosen.skips_segment(segment, _first_stamp_of(segments[index + 1 : index + 2])):
            continue
        session = segment_session(segment)
        offset, number = 0, 1
        if chosen.since is not None and not segment.compressed:
            offset, number = since_offset(segment, chosen.since)
        found: Iterable[Entry]
        prefilter = chosen.prefilter
        if prefilter is not None:
            found = _understood_candidates(
                segment, session, _candidates(segment, offset, number, _matcher(prefilter))
            )
        else:
            lines = lines_from(segment, offset, number)
            if chosen.since is not None:
                lines = _from_stamp(lines, chosen.since)
            found = _understood(segment, session, lines, b"")
        for entry in found:
            if chosen.until is not None and entry.when > chosen.until and not entry.what.is_note:
                # Times never decrease in a segment: nothing later in it can
                # match. The next segments are still looked at (their first
                # stamps, cheaply): a collector before issue 18's fix started
                # below the stored stamps after a restart on a clock set back.
                # Not on a note: a segment-start note may still be stamped
                # after the first records of its segment (same collectors).
                break
            if chosen.matches(entry):
                yield entry


def _first_stamp_of(following: list[SegmentFiles]) -> Callable[[], bytes | None]:
    """The first stamp of the next segment (if any), read when asked."""
    return lambda: first_stamp(following[0]) if following else None


def _from_stamp(lines: Iterable[StoredLine], since: bytes) -> Iterator[StoredLine]:
    """``lines`` from the first one not stamped before ``since`` (or not stamped).

    What bisection leaves before the window (up to a block) is passed over
    by its stamp alone, not parsed: none of it can match, and a malformed
    line after it sorts before ``since`` either way.
    """
    it = iter(lines)
    for stored in it:
        stamp = stored.stamp
        if stamp is None or stamp >= since:
            yield stored
            break
    yield from it


def merged(
    layout: StoreLayout, qubes: Sequence[str], query: Query | None = None
) -> Iterator[Entry]:
    """Several qubes' entries as one timeline, by receive time."""
    if len(qubes) == 1:
        return entries(layout, qubes[0], query)
    return iter(heapq.merge(*(entries(layout, q, query) for q in qubes)))


def newest(
    layout: StoreLayout, qubes: Sequence[str], count: int, query: Query | None = None
) -> list[Entry]:
    """The last ``count`` matching entries of the qubes, oldest first."""
    if count <= 0:
        return []
    chosen = query or Query()
    # Merged as merged() merges, so both agree on the order of equal times.
    found = heapq.merge(*(_newest_of(layout, q, count, chosen) for q in qubes))
    return list(found)[-count:]


def _newest_of(layout: StoreLayout, qube: str, count: int, query: Query) -> list[Entry]:
    picked: list[Entry] = []
    segments = [s for s in layout.segments(qube) if s.log is not None]
    for segment in reversed(segments):
        first = earliest_stamp(segment) or b""
        if query.until is not None and first > query.until:
            continue
        if query.session is not None and segment_session(segment) != query.session:
            continue
        picked = _newest_in(segment, count - len(picked), query) + picked
        if len(picked) >= count or (query.since is not None and first < query.since):
            break  # enough, or older segments are before the window
    return picked


def _newest_in(segment: SegmentFiles, count: int, query: Query) -> list[Entry]:
    """The last ``count`` matching entries of one segment."""
    session = segment_session(segment)
    if segment.compressed:
        kept = collections.deque(
            (
                e
                for e in _understood(segment, session, iter_segment(segment), b"")
                if query.matches(e)
            ),
            maxlen=count,
        )
        return list(kept)
    picked: list[Entry] = []
    for block in blocks_backwards(segment):
        here = _newest_in_block(segment, session, block, count - len(picked), query)
        picked = here + picked
        if len(picked) >= count:
            return picked[-count:]
        if query.since is not None and block and (block[0].stamp or b"~") < query.since:
            break
    return picked


def _newest_in_block(
    segment: SegmentFiles, session: str, block: list[StoredLine], count: int, query: Query
) -> list[Entry]:
    """The last ``count`` matches of one block, understanding lines from its end only."""
    picked: list[Entry] = []
    for stored in reversed(block):
        what = classify(stored.data)
        if not what.stamp:
            # A malformed line sorts by the stamp before it: read the block forward.
            found = [e for e in _understood(segment, session, block, b"") if query.matches(e)]
            return found[-count:] if count else []
        entry = Entry(segment.qube, segment.seq, stored.number, session, what.stamp, what, stored)
        if query.matches(entry):
            picked.append(entry)
            if len(picked) >= count:
                break
    return picked[::-1]


class Follower:
    """New entries of some qubes as they are appended (polling, no inotify)."""

    def __init__(self, layout: StoreLayout, qubes: Sequence[str], query: Query | None = None):
        self.layout = layout
        self.qubes = qubes
        self.query = query if query is not None else Query()
        self._tails: dict[str, SegmentTail] = {}
        self._seq: dict[str, int] = {}
        self._start: dict[str, tuple[int, int]] = {}

    def start(self) -> None:
        """Begin at the current end of every qube (what exists is history)."""
        for qube in self.qubes:
            segments = [s for s in self.layout.segments(qube) if s.log is not None]
            self._seq[qube] = segments[-1].seq if segments else 0
            self._start[qube] = (self._seq[qube] + 1, 0)
            if segments and not segments[-1].compressed:
                tail = SegmentTail(segments[-1], at_end=True)
                self._tails[qube] = tail
                self._start[qube] = (segments[-1].seq, tail.next_number)

    def before_start(self, entry: Entry) -> bool:
        """True for an entry that was stored before :meth:`start` (history, not news)."""
        return (entry.segment, entry.line) < self._start.get(entry.qube, (0, 0))

    def missing(self) -> list[str]:
        """Qubes that do not exist (yet) in the store."""
        return [q for q in self.qubes if not self.layout.qube_dir(q).is_dir()]

    def poll(self) -> list[Entry]:
        """Entries that arrived since the last poll, by receive time."""
        new: list[Entry] = []
        for qube in self.qubes:
            new.extend(e for e in self._poll_qube(qube) if self.query.matches(e))
        new.sort()
        return new

    def _poll_qube(self, qube: str) -> Iterator[Entry]:
        seq = self._seq.get(qube, 0)
        newer = [s for s in self.layout.segments(qube) if s.seq > seq and s.log is not None]
        tail = self._tails.pop(qube, None)
        if tail is not None:
            yield from _understood(tail.segment, tail.session, tail.poll(final=bool(newer)), b"")
            if not newer:
                self._tails[qube] = tail
        for segment in newer:
            self._seq[qube] = segment.seq
            if segment is newer[-1] and not segment.compressed:
                tail = SegmentTail(segment, at_end=False)
                self._tails[qube] = tail
                yield from _understood(segment, tail.session, tail.poll(final=False), b"")
            else:
                yield from _understood(
                    segment, segment_session(segment), iter_segment(segment), b""
                )


def require_qubes(layout: StoreLayout, qubes: Sequence[str]) -> None:
    """Raise StoreError naming the first qube that is not in the store."""
    if not qubes:
        raise StoreError(f"no qube matches in {layout.root}")
    for qube in qubes:
        if not layout.qube_dir(qube).is_dir():
            raise StoreError(f"no qube {qube!r} in {layout.root}")
