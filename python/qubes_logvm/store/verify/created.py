"""Receive times against the store's creation time (floor 2).

``store.json`` says when ``logvm setup-keys`` made the store; every record
the collector stores gets its receive time from the LogVM's clock after
that. So a record received before ``created`` (less
:data:`CREATED_SLACK_SECONDS` for the clock being stepped back after setup)
was written later with a made-up time: backdated. This holds without the
witness (but store.json is the LogVM's word: see docs/threat-model.md).

The check rides on the verifier's own reading of each segment
(:func:`watched_plain`): it sees every byte once, as the fast or the
general path reads it, and counts the lines that start with a prefix of a
receive time after the floor's: the prefix its first and last lines share
when they share the day (the longer, the faster ``bytes.count`` skips: a
trickle's read shares the hour, a burst's the minute), else the day (or,
on the floor's day, the hour) of each; one ``bytes.count`` a prefix a read
(C speed, faster than counting newlines). When those are all of the segment's
sealed lines, no record is before the floor; otherwise (a segment spanning
more days or hours than its reads, an unsealed tail, the floor's own hour)
the segment is read once more and searched with one regex that matches a
line start lexicographically below the floor.

Trust side: the bytes are the store's, possibly an intruder's; nothing here
parses more than a line's first :data:`~...core.records.TIMESTAMP_LEN` bytes.
"""

import calendar
import contextlib
import functools
import io
import os
import re
import time
from collections.abc import Iterator
from itertools import repeat
from operator import add, ne
from typing import BinaryIO

from ...core.errors import StoreError
from ...core.records import TIMESTAMP_LEN
from ...core.seal import parse_seal
from ..files import open_regular
from ..layout import SegmentFiles
from ..reader import open_plain
from ..sealfile import SEAL_TAIL
from .context import VerifyRun
from .findings import ERROR

#: How far before store.json's creation time a receive time may lie (the
#: LogVM's clock stepped back, e.g. by the first clock sync after setup).
CREATED_SLACK_SECONDS = 3600.0
_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
#: Stamp prefixes a read's lines are counted by: the day, else the hour.
_PREFIXES = (10, 13)  # YYYY-MM-DD, YYYY-MM-DDTHH
_LONGEST = 19  # YYYY-MM-DDTHH:MM:SS, as long as the floor
_WIDTH = 1 + _LONGEST  # a newline and the longest prefix
_SCAN = 16 << 20
#: Bytes searched by one ``count``: from 30,000 bytes on, CPython searches a
#: needle of under 100 bytes with its two-way algorithm
#: (Objects/stringlib/fastsearch.h, ``FASTSEARCH``), on log text about half
#: as fast as the skip search it takes below that (worst case: the needle's
#: length in compares a byte, 20 here, on text made to defeat the skips).
_CHUNK = 16 << 10


def floor_of(created: str) -> bytes | None:
    """``created`` (``%Y-%m-%dT%H:%M:%SZ``) less the slack, as a stamp prefix; None if bad."""
    try:
        moment = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None
    floor = time.gmtime(moment - CREATED_SLACK_SECONDS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", floor).encode("ascii")


@functools.lru_cache(maxsize=4)
def _below(floor: bytes) -> re.Pattern[bytes]:
    """A newline followed by a line start lexicographically below ``floor``: at each
    digit a smaller one, or the same one and on (one pass over the prefix)."""
    pattern = b"(?!)"
    for i in range(len(floor) - 1, -1, -1):
        char = floor[i : i + 1]
        same = re.escape(char) + pattern
        if char.isdigit() and char != b"0":
            pattern = b"(?:[0-%c]|%s)" % (floor[i] - 1, same)
        else:
            pattern = same
    return re.compile(b"\n" + pattern)


class StampFloor:
    """A stream of a segment's plain bytes that counts the lines received, by their
    day (or hour), surely after ``floor`` (:meth:`read`, :meth:`read_into`);
    :func:`first_below` finds the first one before it when that count falls
    short. With no floor (a store without a creation time) it only reads."""

    def __init__(self, stream: io.BufferedIOBase, floor: bytes | None) -> None:
        self.stream = stream
        self.floor = floor
        #: The stream's last bytes where a counted prefix did not fit yet: the line
        #: starts in them are not judged (the first line's: a newline before it).
        self.edge = b"\n"
        self.after = 0  # lines seen that start with a prefix after the floor's
        self.nbytes = 0

    def read(self, size: int = -1) -> bytes:
        """Read on, counting what passes."""
        data = self.stream.read(size)
        if data:
            self._count(data, 0, len(data))
        return data

    def read_into(self, buf: bytearray, start: int) -> int:
        """Fill ``buf[start:]`` (less only at the end of the stream), counting what
        passes; the bytes read. Into one buffer the caller keeps: no new memory
        (and no page faults) per read."""
        end = start
        with memoryview(buf) as view:
            while end < len(buf) and (got := self.stream.readinto(view[end:])):
                end += got
        if end > start:
            self._count(buf, start, end)
        return end - start

    def _count(self, data: bytes | bytearray, start: int, end: int) -> None:
        self.nbytes += end - start
        if self.floor is None:
            return
        # (Nothing past ``end`` is looked at: in a reused buffer it is stale.)
        joined = self.edge + data[start : min(end, start + _WIDTH)]  # line starts across reads
        # The receive times of the first and the last line starts (whole ones).
        last = data.rfind(b"\n", start, end - _WIDTH)
        starts = (
            (joined, joined.find(b"\n"), len(joined)),
            (data, data.find(b"\n", start, end), end),
            (data, last, end),
        )
        whole = [(buf, at) for buf, at, stop in starts if 0 <= at <= stop - _WIDTH]
        stamps = {bytes(buf[at + 1 : at + _WIDTH]) for buf, at in whole}
        prefixes = self._prefixes(stamps)
        if not prefixes:  # no whole line start: none judged (the count may fall short)
            self.edge = (self.edge + data[start:end])[1 - _WIDTH :]
            return
        # Every line start is judged once, by the first read its prefix fits in:
        # those of the edge here (where data[:cut] alone is too short for one),
        # the rest in the data; the last cut bytes are the next read's edge.
        cut = len(next(iter(prefixes))) - 1  # they are of one length
        across = self.edge + data[start : min(end, start + cut)]
        for prefix in prefixes:
            self.after += across.count(prefix) + _occurrences(data, prefix, start, end)
        self.edge = (self.edge + data[max(start, end - cut) : end])[-cut:]

    def _prefixes(self, stamps: set[bytes]) -> set[bytes]:
        """What a read's lines are counted by, each a newline and a stamp prefix
        after the floor's, all of one length (so no line fits two): the prefix
        all of ``stamps`` share when it holds the day at least (the longer, the
        faster ``bytes.count`` skips), else the day of each, or the hour of each
        when one is on the floor's day."""
        floor = self.floor
        if floor is None or not stamps:
            return set()
        low, high = min(stamps), max(stamps)  # the prefix all share is theirs
        size = next((i for i, apart in enumerate(map(ne, low, high)) if apart), len(low))
        if size >= _PREFIXES[0] and low[:size] > floor[:size]:
            return {b"\n" + low[:size]}
        on_floor_day = any(stamp[: _PREFIXES[0]] == floor[: _PREFIXES[0]] for stamp in stamps)
        size = _PREFIXES[on_floor_day]
        return {b"\n" + stamp[:size] for stamp in stamps if stamp[:size] > floor[:size]}


def _occurrences(data: bytes | bytearray, needle: bytes, start: int, end: int) -> int:
    """``data.count(needle, start, end)``, by :data:`_CHUNK` bytes: each chunk goes on
    for the needle's length less one, so every occurrence is counted in the one
    chunk where it starts."""
    starts = range(start, end, _CHUNK)
    stops = map(min, map(add, starts, repeat(_CHUNK + len(needle) - 1)), repeat(end))
    return sum(map(data.count, repeat(needle), starts, stops))


def first_below(stream: BinaryIO, floor: bytes, limit: int) -> tuple[int, bytes] | None:
    """(line number, receive time) of the first line received before ``floor``,
    in the first ``limit`` bytes."""
    pattern, lines, carry = _below(floor), 0, b"\n"
    while limit > 0 and (data := stream.read(min(_SCAN, limit))):
        limit -= len(data)
        buf = carry + data
        end = buf.rfind(b"\n")  # the lines after each newline before it are complete
        found = pattern.search(buf, 0, end) if end > 0 else None
        while found is not None:
            stamp = buf[found.start() + 1 : found.start() + 1 + TIMESTAMP_LEN]
            if _STAMP.fullmatch(stamp):  # not a malformed line (its own finding)
                return lines + buf.count(b"\n", 0, found.start()) + 1, stamp
            found = pattern.search(buf, found.start() + 1, end)
        lines += buf.count(b"\n", 0, max(end, 0))
        carry = buf[max(end, 0) :][: TIMESTAMP_LEN + 1] if end >= 0 else buf[: TIMESTAMP_LEN + 1]
    found = pattern.match(carry)
    if found is not None and _STAMP.fullmatch(carry[1 : 1 + TIMESTAMP_LEN]):
        return lines + 1, carry[1 : 1 + TIMESTAMP_LEN]
    return None


def _sealed(files: SegmentFiles) -> tuple[int, int] | None:
    """(lines, bytes) the segment's last seal line covers (None: unreadable)."""
    if files.seal is None:
        return None
    try:
        with open_regular(files.seal) as stream:
            stream.seek(max(0, os.fstat(stream.fileno()).st_size - SEAL_TAIL))
            tail = stream.read(SEAL_TAIL).split(b"\n")
        seal = parse_seal(tail[-2]) if len(tail) > 1 else None
    except (OSError, StoreError):
        return None
    return None if seal is None else (seal.lines, seal.nbytes)


@contextlib.contextmanager
def watched_plain(ctx: VerifyRun, files: SegmentFiles) -> Iterator[StampFloor]:
    """:func:`..reader.open_plain` for the verifier: the segment's plain bytes,
    with every receive time read compared with the store's creation (the
    first one before it is kept for :func:`report_created`)."""
    if files.log is None:
        raise FileNotFoundError(files.name)
    floor = floor_of(ctx.info.created) if ctx.info is not None else None
    with open_plain(files.log) as stream:
        watch = StampFloor(stream, floor)
        yield watch
    if floor is None:
        return
    key = (files.qube, files.seq)
    ctx.before_created.pop(key, None)  # a path that read further decides
    if (watch.after, watch.nbytes) == _sealed(files):
        return  # every line is sealed and starts with a day (or hour) after the floor's
    with open_plain(files.log) as stream:
        # No further than the verifier read: a file growing while verified,
        # or larger than its seals allow, is not read to its end.
        hit = first_below(stream, floor, watch.nbytes)
    if hit is not None:
        ctx.before_created[key] = hit


def report_created(ctx: VerifyRun, files: SegmentFiles) -> None:
    """The segment's record received before the store was created, if any."""
    hit = ctx.before_created.pop((files.qube, files.seq), None)
    if hit is None or ctx.info is None:
        return
    line, stamp = hit
    ctx.add(
        ERROR,
        files.qube,
        f"received at {stamp.decode()}, before the store was created "
        f"({ctx.info.created}, less {CREATED_SLACK_SECONDS:.0f} s): written later "
        "with an earlier receive time (backdated)",
        files.seq,
        line,
        line,
    )
