"""``logvm show`` and ``logvm follow``: a qube's records, decorated or raw (floor 3).

Trust side: reads segments an intruder may have edited; lines are parsed
strictly, anything malformed is shown as such, and all output goes through
:class:`.common.Output` (terminal-safe). Following polls the newest segment
and watches for new ones; no inotify needed.
"""

import collections
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StoreError
from ..core.escape import unescape
from ..core.records import parse_record
from ..store.layout import SegmentFiles, StoreLayout
from ..store.reader import MAX_LINE, LineFilter, StoredLine, iter_segment
from .common import Env, UsageError

POLL_SECONDS = 0.5
_READ = 1 << 20


@dataclass(frozen=True)
class ShowOptions:
    """What ``show`` was asked for."""

    qube: str
    line_filter: LineFilter
    raw: bool = False
    last: int | None = None  # only the last N lines before following
    follow: bool = False


def compile_pattern(text: str | None) -> "re.Pattern[bytes] | None":
    """The ``--grep`` regular expression, matched against stored (escaped) lines."""
    if text is None:
        return None
    try:
        return re.compile(text.encode("utf-8"))
    except re.error as err:
        raise UsageError(f"--grep: not a regular expression: {err}") from err


def decorate(line: StoredLine) -> bytes:
    """A stored line as a reader wants it: truncation, partial lines and notes marked."""
    try:
        record = parse_record(line.data)
    except StoreError:
        text = b"[malformed line] " + line.data
    else:
        if record.kind == "C":
            text = record.stamp + b" [logvm] " + record.payload
        else:
            # Undo the collector's escaping layer for reading; the output
            # stream (Output.line -> terminal_safe) escapes again whatever
            # is not printable, so a sender's raw ESC shows as \x1b, and an
            # exporter's own escaping shows once, not doubled. --raw prints
            # the stored bytes exactly.
            text = record.stamp + b" " + unescape(record.payload)
            if record.kind == "P":
                text += b" [partial: the stream ended without a newline]"
            if record.cut:
                text += b" [truncated %d bytes]" % record.cut
    if line.overlong:
        text += b" [display cut: %d more bytes]" % line.overlong
    if not line.complete:
        text += b" [incomplete: no newline yet]"
    return text


def _print(env: Env, options: ShowOptions, lines: Iterable[StoredLine]) -> None:
    for line in lines:
        env.out.line(line.data if options.raw else decorate(line))


def _existing(layout: StoreLayout, options: ShowOptions) -> Iterator[StoredLine]:
    for segment in layout.segments(options.qube):
        if segment.log is None or options.line_filter.skips_segment(segment):
            continue
        yield from options.line_filter.apply(iter_segment(segment))


def run_show(env: Env, options: ShowOptions, *, sleep: Callable[[float], None]) -> int:
    """Print a qube's records in order across segments; then follow if asked."""
    if not env.layout.qube_dir(options.qube).is_dir() and not options.follow:
        raise StoreError(f"no qube {options.qube!r} in {env.layout.root}")
    if not options.follow:
        lines: Iterable[StoredLine] = _existing(env.layout, options)
        if options.last is not None:
            lines = collections.deque(lines, maxlen=options.last)
        _print(env, options, lines)
        return 0
    _follow(env, options, sleep)
    return 0


class _Tail:
    """Reads the lines appended to one plain segment since the last poll."""

    def __init__(self, path: Path) -> None:
        try:
            self._stream = path.open("rb")
        except OSError as err:
            raise StoreError(f"{path}: cannot read: {err.strerror}") from err
        self._pending = b""
        self._number = 1

    def poll(self) -> list[StoredLine]:
        """Complete lines that arrived (an overlong one is cut for display)."""
        data = self._stream.read(_READ * 16)
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        lines = []
        for text in complete:
            lines.append(StoredLine(self._number, text[:MAX_LINE], True, len(text[MAX_LINE:])))
            self._number += 1
        if len(self._pending) > MAX_LINE:
            self._pending = self._pending[:MAX_LINE]  # the rest shows as display-cut
        return lines

    def finish(self) -> list[StoredLine]:
        """The last lines, including one without a newline, before moving on."""
        lines = self.poll()
        if self._pending:
            lines.append(StoredLine(self._number, self._pending, False))
            self._pending = b""
        self._stream.close()
        return lines


def _newer(layout: StoreLayout, qube: str, seq: int) -> list[SegmentFiles]:
    if not os.path.isdir(layout.qubes_dir / qube):
        return []
    return [s for s in layout.segments(qube) if s.seq > seq and s.log is not None]


def _follow(env: Env, options: ShowOptions, sleep: Callable[[float], None]) -> None:
    """Print what exists (or its last N lines), then new lines as they come."""
    chosen = options.line_filter
    segments = _newer(env.layout, options.qube, 0)
    backlog: Iterable[StoredLine] = (
        line for s in segments[:-1] for line in chosen.apply(iter_segment(s))
    )
    tail, seq = None, 0
    if segments:
        newest = segments[-1]
        seq = newest.seq
        if newest.compressed:
            backlog = _chain(backlog, chosen.apply(iter_segment(newest)))
        else:
            tail = _Tail(newest.log)  # type: ignore[arg-type]
            backlog = _chain(backlog, chosen.apply(tail.poll()))
    if options.last is not None:
        backlog = collections.deque(backlog, maxlen=options.last)
    _print(env, options, backlog)
    env.out.flush()
    while True:
        sleep(POLL_SECONDS)
        newer = _newer(env.layout, options.qube, seq)
        if tail is not None:
            lines = tail.finish() if newer else tail.poll()
            _print(env, options, chosen.apply(lines))
            tail = None if newer else tail
        for segment in newer:
            seq = segment.seq
            if segment is newer[-1] and not segment.compressed:
                tail = _Tail(segment.log)  # type: ignore[arg-type]
                _print(env, options, chosen.apply(tail.poll()))
            else:
                _print(env, options, chosen.apply(iter_segment(segment)))
        env.out.flush()


def _chain(*parts: Iterable[StoredLine]) -> Iterator[StoredLine]:
    for part in parts:
        yield from part
