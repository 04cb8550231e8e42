"""Cheap facts about segments and qubes, for ``logvm list``/``stats`` and the browser (floor 2).

Trust side: figures come from seal files and segment heads and tails as
found on disk, unverified (``logvm verify`` checks them). Kept cheap: seals,
a line at each end of plain segments and the last-time trailer of
compressed ones, never whole segments; :func:`count_drops` alone scans a
segment (at C speed) for drop notes.
"""

import os
import re
from dataclasses import dataclass

from .layout import SegmentFiles
from .reader import count_lines, first_stamp, last_stamp, open_plain
from .sealfile import last_good_seal

_DROPPED = re.compile(
    rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z C dropped count=([0-9]{1,18})[ \n]", re.M
)
_CHUNK = 16 << 20


@dataclass(frozen=True)
class SegmentInfo:
    """One segment's state, size, record count and first/last receive time."""

    files: SegmentFiles
    state: str  # open, closed, compressed, unsealed
    size: int  # bytes on disk (text and seal file)
    records: int
    first: str
    last: str


def file_size(path: os.PathLike[str] | None) -> int:
    """Bytes of a file, 0 when it is absent."""
    try:
        return os.stat(path).st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def segment_records(files: SegmentFiles) -> tuple[str, int]:
    """State and record count: from the last seal, plus lines of a plain unsealed tail."""
    if files.seal is None:
        return "unsealed", count_lines(files.log)[0] if files.log is not None else 0
    last = last_good_seal(files.seal)
    sealed = last.lines if last is not None else 0
    closed = last is not None and last.is_final
    if files.compressed:
        return "compressed", sealed
    tail = 0
    if files.log is not None and not closed:
        with files.log.open("rb") as stream:
            stream.seek(last.nbytes if last is not None else 0)
            while chunk := stream.read(_CHUNK):
                tail += chunk.count(b"\n")
    return ("closed" if closed else "open"), sealed + tail


def segment_info(files: SegmentFiles) -> SegmentInfo:
    """Cheap facts about one segment (a compressed one's last time from its trailer)."""
    state, records = segment_records(files)
    first = first_stamp(files) or b"-"
    last = last_stamp(files) or (b"(compressed)" if files.compressed else b"-")
    return SegmentInfo(
        files,
        state,
        file_size(files.log) + file_size(files.seal),
        records,
        first.decode("ascii", "replace"),
        last.decode("ascii", "replace"),
    )


def qube_summary(qube: str, rows: list[SegmentInfo]) -> dict[str, object]:
    """A qube's totals over its segments: count, size, records, first and last time."""
    first = next((r.first for r in rows if r.first[:1].isdigit()), None)
    last = next((r.last for r in reversed(rows) if r.last[:1].isdigit()), None)
    return {
        "qube": qube,
        "segments": len(rows),
        "size": sum(r.size for r in rows),
        "records": sum(r.records for r in rows),
        "first": first,
        "last": last,
    }


def qube_totals(qube: str, segments: list[SegmentFiles]) -> dict[str, object]:
    """What :func:`qube_summary` makes of every segment's :func:`segment_info`, reading
    receive times only at the ends (the first segment that has one, from each end):
    opening the browser on many compressed segments decompresses no middle one's head."""
    firsts = (first_stamp(f) for f in segments)
    lasts = (last_stamp(f) for f in reversed(segments))
    first = next((t.decode("ascii", "replace") for t in firsts if t), None)
    last = next((t.decode("ascii", "replace") for t in lasts if t), None)
    return {
        "qube": qube,
        "segments": len(segments),
        "size": sum(file_size(f.log) + file_size(f.seal) for f in segments),
        "records": sum(segment_records(f)[1] for f in segments),
        "first": first,
        "last": last,
    }


def count_drops(files: SegmentFiles) -> int:
    """Sum of ``C dropped count=N`` notes, found with a regex over large chunks."""
    if files.log is None:
        return 0
    total = 0
    carry = b""
    with open_plain(files.log) as stream:
        while chunk := stream.read(_CHUNK):
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            total += sum(int(n) for n in _DROPPED.findall(data, 0, cut))
    return total
