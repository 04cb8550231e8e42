"""``logvm list`` and ``logvm stats``: what the store holds (floor 3).

Trust side: figures come from seal files and segment heads and tails as
found on disk, unverified (``logvm verify`` checks them). Kept cheap: list
reads seals, a line at each end of plain segments and the last-time
trailer of compressed ones, never whole segments;
stats also scans for drop notes at C speed.
"""

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from ..config.collector import load_collector_config
from ..core.errors import StoreError
from ..core.records import parse_timestamp
from ..store.eviction import qube_report
from ..store.layout import SegmentFiles, StoreLayout
from ..store.reader import count_lines, first_stamp, last_stamp, open_plain
from ..store.sealfile import read_seal_file
from .common import Env, human_size

FINAL_KINDS = ("close", "recover")
_DROPPED = re.compile(
    rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z C dropped count=([0-9]{1,18})[ \n]", re.M
)
_CHUNK = 16 << 20


@dataclass(frozen=True)
class SegmentInfo:
    """One row of ``logvm list``."""

    files: SegmentFiles
    state: str  # open, closed, compressed, unsealed
    size: int  # bytes on disk (text and seal file)
    records: int
    first: str
    last: str


def _size(path: os.PathLike[str] | None) -> int:
    try:
        return os.stat(path).st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def _records(files: SegmentFiles) -> tuple[str, int]:
    """State and record count: from the last seal, plus lines of a plain unsealed tail."""
    if files.seal is None:
        return "unsealed", count_lines(files.log)[0] if files.log is not None else 0
    seals = read_seal_file(files.seal).seals
    last = seals[-1] if seals else None
    sealed = last.lines if last is not None else 0
    closed = last is not None and last.kind in FINAL_KINDS
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
    state, records = _records(files)
    first = first_stamp(files) or b"-"
    last = last_stamp(files) or (b"(compressed)" if files.compressed else b"-")
    return SegmentInfo(
        files,
        state,
        _size(files.log) + _size(files.seal),
        records,
        first.decode("ascii", "replace"),
        last.decode("ascii", "replace"),
    )


def _when(stamp: str, zone: tzinfo) -> str:
    """A stored stamp as ``Nov 28 18:05:26`` (15 columns), or the marker as it is."""
    try:
        moment = datetime.fromtimestamp(parse_timestamp(stamp.encode("ascii")), zone)
    except ValueError:
        return stamp
    return moment.strftime("%b %d %H:%M:%S")


def _qube_summary(qube: str, rows: list[SegmentInfo]) -> dict[str, object]:
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


def _segment_json(row: SegmentInfo) -> dict[str, object]:
    return {
        "segment": row.files.seq,
        "state": row.state,
        "size": row.size,
        "records": row.records,
        "first": row.first if row.first[:1].isdigit() else None,
        "last": row.last if row.last[:1].isdigit() else None,
    }


def run_list(env: Env, qubes: list[str], *, as_json: bool = False, utc: bool = False) -> int:
    """Print qubes and their segments (columns within 80 characters), or JSON lines."""
    names = qubes or env.layout.qubes()
    zone: tzinfo = UTC if utc else (datetime.now().astimezone().tzinfo or UTC)
    for qube in names:
        if not env.layout.qube_dir(qube).is_dir():
            raise StoreError(f"no qube {qube!r} in {env.layout.root}")
        rows = [segment_info(s) for s in env.layout.segments(qube)]
        summary = _qube_summary(qube, rows)
        if as_json:
            summary["segment_list"] = [_segment_json(r) for r in rows]
            env.out.line(json.dumps(summary, ensure_ascii=True))
            continue
        first, last = (_when(str(summary[k] or "-"), zone) for k in ("first", "last"))
        env.out.line(
            f"{qube}: {len(rows)} segments, {human_size(int(str(summary['size'])))}, "
            f"{summary['records']} records, {first} .. {last}"
        )
        for row in rows:
            env.out.line(
                f"  {row.files.seq:08d} {row.state:<10} {human_size(row.size):>10} "
                f"{row.records:>9}  {_when(row.first, zone):<15}  {_when(row.last, zone)}"
            )
    if not names and not as_json:
        env.out.line(f"no qubes in {env.layout.root}")
    return 0


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


def run_stats(env: Env, qubes: list[str]) -> int:
    """Per qube: usage against quota, compression, records, drops, evictions."""
    retention = load_collector_config(*env.configs).retention
    layout: StoreLayout = env.layout
    names = qubes or layout.qubes()
    env.out.line(
        f"{'qube':<20} {'usage':>10} {'quota':>10} {'used':>5} {'ratio':>6} "
        f"{'records':>10} {'drops':>8} {'evicted':>7}"
    )
    for qube in names:
        if not layout.qube_dir(qube).is_dir():
            raise StoreError(f"no qube {qube!r} in {layout.root}")
        report = qube_report(layout, retention, qube)
        segments = layout.segments(qube)
        records = sum(_records(s)[1] for s in segments)
        drops = sum(count_drops(s) for s in segments)
        usage, quota = int(str(report["usage"])), int(str(report["quota"]))
        ratio = report["compression_ratio"]
        shown = f"{float(str(ratio)):.1f}x" if ratio is not None else "-"
        env.out.line(
            f"{qube:<20} {human_size(usage):>10} {human_size(quota):>10} "
            f"{100 * usage // max(quota, 1):>4}% {shown:>6} {records:>10} {drops:>8} "
            f"{report['evictions']!s:>7}"
        )
    return 0
