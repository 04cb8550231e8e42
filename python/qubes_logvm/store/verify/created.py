"""Receive times against the store's creation time (floor 2).

``store.json`` says when ``logvm setup-keys`` made the store; every record
the collector stores gets its receive time from the LogVM's clock after
that. So a record received before ``created`` (less
:data:`CREATED_SLACK_SECONDS` for the clock being stepped back after setup)
was written later with a made-up time: backdated. This holds without the
witness; with it, the creation time the store registered is the one that
counts (store.json is the LogVM's word, see docs/threat-model.md).

The check rides on the verifier's own reading of each segment
(:func:`watched_plain`): it sees every byte once, as the fast or the
general path reads it, and costs two ``bytes.count`` passes per read in
the common case (every line of the read from one day after the floor's);
a read that spans days, or the creation day itself, is searched with one
regex that matches a line start lexicographically below the floor.

Trust side: the bytes are the store's, possibly an intruder's; nothing here
parses more than a line's first :data:`~...core.records.TIMESTAMP_LEN` bytes.
"""

import calendar
import contextlib
import functools
import re
import time
from collections.abc import Iterator
from typing import BinaryIO, cast

from ...core.records import TIMESTAMP_LEN
from ..layout import SegmentFiles
from ..reader import open_plain
from .context import VerifyRun
from .findings import ERROR

#: How far before store.json's creation time a receive time may lie (the
#: LogVM's clock stepped back, e.g. by the first clock sync after setup).
CREATED_SLACK_SECONDS = 3600.0
_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_FLOOR_LEN = 19  # YYYY-MM-DDTHH:MM:SS
_DAY_LEN = 10


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
    """A stream of a segment's plain bytes that notes the first record received
    before ``floor`` (``hit``: its line number and receive time)."""

    def __init__(self, stream: BinaryIO, floor: bytes) -> None:
        self.stream = stream
        self.floor = floor
        self.pattern = _below(floor)
        self.carry = b"\n"  # the line being read: a newline, then its first bytes
        self.day = b""  # a day after the floor's that the last line read was on
        self.lines = 0  # complete lines seen
        self.hit: tuple[int, bytes] | None = None

    def read(self, size: int = -1) -> bytes:
        """Read on, watching what passes."""
        data = self.stream.read(size)
        if data and self.hit is None:
            self._see(data)
        return data

    def finish(self) -> None:
        """The last line, when the segment ends without a newline."""
        if self.hit is None and len(self.carry) > 1:
            self._check(self.carry, 0, len(self.carry))

    def _see(self, data: bytes) -> None:
        first = data.find(b"\n")
        if first < 0:
            self.carry = (self.carry + data)[: TIMESTAMP_LEN + 1]
            return
        # The carried line ends here; then the lines after each newline up to the last.
        self._check(self.carry + data[:first], 0, len(self.carry) + first)
        last = data.rfind(b"\n")
        if self.hit is None and last > first:
            self._check(data, first, last)
        self.carry = b"\n" + data[last + 1 : last + 1 + TIMESTAMP_LEN]

    def _check(self, buf: bytes, start: int, end: int) -> None:
        """The complete lines that follow each newline of ``buf[start:end]``."""
        count = buf.count(b"\n", start, end)
        if self.day and buf.count(b"\n" + self.day, start, end) == count:
            self.lines += count
            return
        found = self.pattern.search(buf, start, end)
        while found is not None:
            stamp = buf[found.start() + 1 : found.start() + 1 + TIMESTAMP_LEN]
            if _STAMP.fullmatch(stamp):  # not a malformed line (its own finding)
                self.hit = (self.lines + buf.count(b"\n", start, found.start()) + 1, stamp)
                return
            found = self.pattern.search(buf, found.start() + 1, end)
        self.lines += count
        tail = buf.rfind(b"\n", start, end) + 1
        day = buf[tail : tail + _DAY_LEN]
        self.day = day if day > self.floor[:_DAY_LEN] else b""


@contextlib.contextmanager
def watched_plain(ctx: VerifyRun, files: SegmentFiles) -> Iterator[BinaryIO]:
    """:func:`..reader.open_plain` for the verifier: the segment's plain bytes,
    with every receive time read compared with the store's creation (the
    first one before it is kept for :func:`report_created`)."""
    if files.log is None:
        raise FileNotFoundError(files.name)
    floor = floor_of(ctx.info.created) if ctx.info is not None else None
    with open_plain(files.log) as stream:
        if floor is None:
            yield stream
            return
        watch = StampFloor(stream, floor)
        yield cast(BinaryIO, watch)
        watch.finish()
        key = (files.qube, files.seq)
        if watch.hit is not None:
            ctx.before_created[key] = watch.hit
        else:
            ctx.before_created.pop(key, None)  # a path that read further found none


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
