"""``logvm list`` and ``logvm stats``: what the store holds (floor 3).

Trust side: figures come from seal files and segment heads and tails as
found on disk, unverified (``logvm verify`` checks them). Kept cheap: list
reads seals, a line at each end of plain segments and the last-time
trailer of compressed ones, never whole segments;
stats also scans for drop notes at C speed.
"""

import json
from datetime import UTC, tzinfo

from ..config.collector import load_collector_config
from ..core.errors import StoreError
from ..core.sizes import human_size
from ..store.eviction import qube_report
from ..store.layout import StoreLayout
from ..store.retired import read_retired
from ..store.summary import SegmentInfo, count_drops, qube_summary, segment_info, segment_records
from .common import Env, stamp_moment


def _when(stamp: str, zone: tzinfo | None) -> str:
    """A stored stamp as ``Nov 28 18:05:26`` (15 columns), or the marker as it is."""
    try:
        moment = stamp_moment(stamp.encode("ascii"), zone)
    except ValueError:
        return stamp
    return moment.strftime("%b %d %H:%M:%S")


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
    zone = UTC if utc else None  # local: each time with its own offset
    retired = _retired(env.layout)
    for qube in names:
        if not env.layout.qube_dir(qube).is_dir():
            if qube in retired and not as_json:
                env.out.line(retired[qube])
                continue
            raise StoreError(f"no qube {qube!r} in {env.layout.root}")
        rows = [segment_info(s) for s in env.layout.segments(qube)]
        summary = qube_summary(qube, rows)
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
    _retired_footer(env, retired, qubes)
    return 0


def _retired(layout: StoreLayout) -> dict[str, str]:
    """Per retired qube whose directory is gone, what list says of it
    (state/retired.seal as it is: ``logvm verify`` authenticates it)."""
    try:
        lines = read_retired(layout).lines
    except (OSError, StoreError):
        return {}
    return {
        line.qube: (
            f"{line.qube}: retired in epoch {line.epoch} (every segment deleted, the last "
            f"{line.tomb.last:08d} with {line.tomb.records} records; directory removed)"
        )
        for _, line in lines
        if not layout.qube_dir(line.qube).is_dir()
    }


def _retired_footer(env: Env, retired: dict[str, str], qubes: list[str]) -> None:
    if retired and not qubes:
        env.out.line(
            f"{len(retired)} qubes retired (every segment deleted, directory removed; "
            "name them to see each)"
        )


def run_stats(env: Env, qubes: list[str]) -> int:
    """Per qube: usage against quota, compression, records, drops, evictions."""
    retention = load_collector_config(*env.configs).retention
    layout: StoreLayout = env.layout
    names = qubes or layout.qubes()
    env.out.line(
        f"{'qube':<20} {'usage':>10} {'quota':>10} {'used':>5} {'ratio':>6} "
        f"{'records':>10} {'drops':>8} {'evicted':>7}"
    )
    retired = _retired(layout)
    for qube in names:
        if qube in retired and not layout.qube_dir(qube).is_dir():
            env.out.line(retired[qube])
            continue
        if not layout.qube_dir(qube).is_dir():
            raise StoreError(f"no qube {qube!r} in {layout.root}")
        report = qube_report(layout, retention, qube)
        segments = layout.segments(qube)
        records = sum(segment_records(s)[1] for s in segments)
        drops = sum(count_drops(s) for s in segments)
        usage, quota = int(str(report["usage"])), int(str(report["quota"]))
        ratio = report["compression_ratio"]
        shown = f"{float(str(ratio)):.1f}x" if ratio is not None else "-"
        env.out.line(
            f"{qube:<20} {human_size(usage):>10} {human_size(quota):>10} "
            f"{100 * usage // max(quota, 1):>4}% {shown:>6} {records:>10} {drops:>8} "
            f"{report['evictions']!s:>7}"
        )
    _retired_footer(env, retired, qubes)
    return 0
