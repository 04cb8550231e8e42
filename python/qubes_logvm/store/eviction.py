"""Which segments to delete, and how much each qube uses (floor 2).

Pure planning over the store's directory listing and file metadata: nothing
here deletes. The collector, the one holder of the sealing key and the one
writer of every chain, carries a plan out with
:meth:`~.writer.QubeChain.delete_oldest` (each deletion sealed as a
tombstone), e.g. through :func:`apply_plan`.

Rules, applied in this order (every rule deletes a qube's *oldest* closed
segments first, and never an open one):

1. quota: a qube over its quota (charged bytes: blocks plus a per-file cost)
   or its plain-bytes cap loses its own oldest segments until it fits
   (:mod:`.usage` defines the cost, the collector's ledger uses the same);
2. retention: closed segments older than the qube's ``max_age``;
3. DispVMs: with ``dispvm_delete_after_close``, every segment of a closed
   session (a session ends when its last segment closes) once that close is
   older than the setting;
4. global pressure (``global.max_bytes`` exceeded, free space below
   ``global.keep_free`` or free inodes (``f_favail``) below
   ``global.keep_free_inodes``): evict from the qubes furthest over their fair share
   (the capacity split in proportion to quotas). Qubes still over quota go
   first, so a qube within its quota never loses data while another is over.

A segment's age is measured on the sealed epoch count, not the wall clock
(:class:`EpochClock`): a segment whose final seal was made in epoch ``e`` is
``(current epoch - e) * epoch_seconds`` old. The collector's epoch timer runs
on the monotonic clock and ticks at most once per period whatever the wall
clock does, so a clock stepped forward (by an hour or by eight days) makes no
segment older and deletes nothing; time the collector was not running does
not count either (nothing was sealed then).

Trust side: runs in the LogVM over the store's own files; names found on
disk are validated by :class:`~.layout.StoreLayout`.
"""

import heapq
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, TypedDict

import zstandard

from ..config.storage_policy import (
    DISPVM_CLASS,
    RetentionConfig,
    class_of,
    max_age_for,
    plain_quota_for,
    quota_for,
)
from ..core.warnings import RepeatedWarning
from .layout import SegmentFiles, StoreLayout
from .sealfile import is_closed, last_seal
from .tombstones import read_tomb_file
from .usage import ZERO_COST, Cost, qube_usage, segment_cost, usage
from .writer import Store

log = logging.getLogger(__name__)
#: Pressure nothing can relieve lasts: said once per interval, not every pass.
_PRESSURE = RepeatedWarning(log)

#: Bytes read from the end of a seal file to find its last line.
#: Bytes read from the start of a segment to find its ``segment-start`` note.
_HEAD_BYTES = 4096

StatVfs = Callable[[str], os.statvfs_result]


class SegmentClock(Protocol):
    """Where ages are measured: a current time and each closed segment's close time."""

    @property
    def now(self) -> float:
        """The current time on this clock (seconds)."""
        ...

    def closed_at(self, files: SegmentFiles) -> float | None:
        """When a segment closed on this clock; None when it has no complete seal."""
        ...


@dataclass(frozen=True)
class EpochClock:
    """Ages on the sealed epoch count: epoch ``e`` is at ``e * epoch_seconds``.

    ``epoch`` is the key state's current epoch; a segment's close time is
    the epoch of its last seal (its ``close`` or ``recover`` seal).
    """

    epoch: int
    epoch_seconds: float

    @property
    def now(self) -> float:
        """The current epoch's start on this clock."""
        return self.at(self.epoch)

    def at(self, epoch: int) -> float:
        """Epoch ``epoch``'s start on this clock (seconds)."""
        return epoch * self.epoch_seconds

    def closed_at(self, files: SegmentFiles) -> float | None:
        """The epoch of the segment's last seal, in seconds."""
        seal = last_seal(files)
        return None if seal is None else self.at(seal.epoch)


class Planned(tuple[str, int]):
    """One planned deletion, ``(qube, seq)``, the rule that chose it (``reason``)
    and what the qube cost when it was planned (``cost``, for the witness)."""

    reason: str
    cost: Cost

    def __new__(cls, qube: str, seq: int, reason: str, cost: Cost = ZERO_COST) -> "Planned":
        self = super().__new__(cls, (qube, seq))
        self.reason = reason
        self.cost = cost
        return self


@dataclass
class _Segment:
    seq: int
    cost: Cost  # text (plain or compressed) plus seal file
    closed_at: float  # on the planning's SegmentClock (the sealed epoch count)
    files: SegmentFiles


@dataclass
class _Qube:
    name: str
    quota: int
    plain_quota: int
    usage: Cost
    segments: list[_Segment]  # deletable ones, oldest first (the open one excluded)
    doomed: int = 0  # how many of ``segments`` the plan deletes, from the front
    freed: Cost = ZERO_COST
    reasons: list[str] = field(default_factory=list)  # why, for each doomed segment

    @property
    def remaining(self) -> Cost:
        return self.usage - self.freed

    @property
    def over_quota(self) -> bool:
        left = self.remaining
        return left.disk > self.quota or left.plain > self.plain_quota

    def take(self, count: int, reason: str) -> None:
        """Plan the deletion of the ``count`` oldest segments (at least)."""
        while self.doomed < min(count, len(self.segments)):
            self.freed += self.segments[self.doomed].cost
            self.doomed += 1
            self.reasons.append(reason)


def _size(path: os.PathLike[str] | None) -> int:
    if path is None:
        return 0
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _segments(
    all_files: list[SegmentFiles], open_seq: int | None, clock: SegmentClock
) -> list[_Segment]:
    result = []
    for files in all_files:
        if open_seq is not None and files.seq >= open_seq:
            break  # the open segment (and anything after it) is never a candidate
        if files.seal is None:
            break  # not a whole segment: leave it to the verifier
        closed_at = clock.closed_at(files)
        if closed_at is None:
            break
        result.append(_Segment(files.seq, segment_cost(files), closed_at, files))
    return result


def start_fields(files: SegmentFiles) -> dict[str, str]:
    """The ``key=value`` fields of the segment's first record (its start note)."""
    if files.log is None:
        return {}
    try:
        with open(files.log, "rb") as raw:
            if files.compressed:
                head = zstandard.ZstdDecompressor().stream_reader(raw).read(_HEAD_BYTES)
            else:
                head = raw.read(_HEAD_BYTES)
    except (OSError, zstandard.ZstdError) as err:
        log.warning("%s: cannot read its first record: %s", files.name, err)
        return {}
    words = head.split(b"\n", 1)[0].split(b" ")
    if words[1:3] != [b"C", b"segment-start"]:
        return {}
    fields = {}
    for word in words[3:]:
        key, _, value = word.partition(b"=")
        fields[key.decode("ascii", "replace")] = value.decode("ascii", "replace")
    return fields


def _continues(fields: dict[str, str], previous: dict[str, str]) -> bool:
    """True when a segment (start note ``fields``) continues the previous one's session."""
    if fields.get("reason") == "roll":
        return True  # rolled at the size or age limit, same connection(s)
    session = fields.get("session")
    return session is not None and session == previous.get("session")


def _dispvm_count(segments: list[_Segment], open_files: SegmentFiles | None, cutoff: float) -> int:
    """How many oldest segments belong to sessions that closed at or before ``cutoff``.

    A session is a run of segments each continuing the one before; it ends
    when its last segment closes. The session of the open segment is running
    and keeps all of its segments.
    """
    notes = [start_fields(s.files) for s in segments]
    limit = len(segments)
    if open_files is not None:
        fields = start_fields(open_files)
        while limit > 0 and _continues(fields, notes[limit - 1]):
            limit -= 1
            fields = notes[limit]
    count = 0
    while count < limit:
        end = count
        while end + 1 < limit and _continues(notes[end + 1], notes[end]):
            end += 1
        if segments[end].closed_at > cutoff:
            break
        count = end + 1
    return count


def _age_count(segments: list[_Segment], cutoff: float) -> int:
    count = 0
    while count < len(segments) and segments[count].closed_at <= cutoff:
        count += 1
    return count


def _scan_qube(
    layout: StoreLayout, cfg: RetentionConfig, name: str, clock: SegmentClock, open_seq: int | None
) -> _Qube:
    all_files = layout.segments(name)
    segments = _segments(all_files, open_seq, clock)
    now = clock.now
    qube = _Qube(
        name, quota_for(cfg, name), plain_quota_for(cfg, name), qube_usage(layout, name), segments
    )
    # A deletion a crash cut short (tombstone written, files left) is finished first.
    tombs = read_tomb_file(layout.tombstones(name)).tombs
    if tombs:
        # (its tomb exists already and keeps the reason it was written with)
        last_deleted = tombs[-1][1].last
        qube.take(sum(1 for s in segments if s.seq <= last_deleted), "unknown")
    while qube.over_quota and qube.doomed < len(segments):
        qube.take(qube.doomed + 1, "quota")
    max_age = max_age_for(cfg, name)
    if max_age > 0:
        qube.take(_age_count(segments, now - max_age), "age")
    after = cfg.dispvm_delete_after_close
    if after is not None and class_of(cfg, name) == DISPVM_CLASS:
        open_files = next((f for f in all_files if f.seq == open_seq), None)
        qube.take(_dispvm_count(segments, open_files, now - after), "dispvm")
    return qube


#: A directory changed more recently than this is scanned again next time
#: (two changes within one timestamp tick would look like one).
_SETTLED_NS = 2_000_000_000
#: Seconds between plans that look at every qube again (what another
#: process, logvm-rotate, changed).
FULL_INTERVAL = 300.0


@dataclass
class _Seen:
    stamp: tuple[int, int]  # the qube directory's inode and mtime
    qube: _Qube  # as planned then: nothing to delete
    due: float  # from this time on the clock an age rule may delete something


class ScanCache:
    """What planning read of each qube that has not changed since.

    Housekeeping then costs what changed, not every qube ever seen. A qube
    with nothing to delete, no open segment and a settled directory is
    *quiet*: it is read again only when the collector marks it
    (:meth:`touch`: it wrote or deleted there), when an age rule could
    delete something (``max_age``, ``dispvm_delete_after_close``), when the
    configuration changes, and every :data:`FULL_INTERVAL` seconds (of
    ``monotonic``), when the plan lists the store and compares each
    directory's mtime (closed segments are never appended to; compression
    and deletion change the directory).
    """

    def __init__(
        self,
        full_interval: float = FULL_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.full_interval = full_interval
        self._monotonic = monotonic
        self._full_at = -math.inf
        self._seen: dict[str, _Seen] = {}
        self._due: list[tuple[float, str]] = []  # heap over _seen's due times
        self._quiet_total = ZERO_COST
        self._costs: dict[str, Cost] = {}  # the quiet qubes' costs (kept with _seen)
        self._touched: set[str] = set()
        self._active: set[str] = set()  # read last time and not quiet: read again
        self._cfg: RetentionConfig | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def touch(self, qube: str) -> None:
        """The collector changed ``qube``'s files (any thread)."""
        self._touched.add(qube)

    def _drop(self, name: str) -> None:
        seen = self._seen.pop(name, None)
        if seen is not None:
            self._quiet_total -= seen.qube.usage
            del self._costs[name]

    def names(self, layout: StoreLayout, cfg: RetentionConfig, now: float) -> list[str] | None:
        """The qubes to read this time, or None for every qube (a full pass)."""
        touched, self._touched = self._touched | self._active, set()
        self._active = set()
        while self._due and self._due[0][0] <= now:
            touched.add(heapq.heappop(self._due)[1])
        for name in touched:
            self._drop(name)
        if cfg is not self._cfg:  # new limits: every qube is judged again
            self._seen, self._due, self._quiet_total, self._costs = {}, [], ZERO_COST, {}
        if cfg is not self._cfg or self._monotonic() - self._full_at >= self.full_interval:
            self._cfg, self._full_at = cfg, self._monotonic()
            return None
        return sorted(touched)

    def scan(
        self,
        layout: StoreLayout,
        cfg: RetentionConfig,
        name: str,
        clock: SegmentClock,
        open_seq: int | None,
    ) -> _Qube | None:
        """:func:`_scan_qube`, or None when the qube is quiet and unchanged."""
        stamp = _dir_stamp(layout, name) if open_seq is None else None
        seen = self._seen.get(name)
        if seen is not None and stamp == seen.stamp and cfg is self._cfg and clock.now < seen.due:
            return None
        self._drop(name)
        qube = _scan_qube(layout, cfg, name, clock, open_seq)
        settled = stamp is not None and time.time_ns() - stamp[1] >= _SETTLED_NS
        if settled and stamp is not None and qube.doomed == 0:
            due = _due(cfg, qube)
            self._seen[name] = _Seen(stamp, qube, due)
            self._costs[name] = qube.usage
            self._quiet_total += qube.usage
            if due < math.inf:
                heapq.heappush(self._due, (due, name))
            return None
        self._active.add(name)
        return qube

    def quiet(self, skip: set[str]) -> list[_Qube]:
        """Copies of the quiet qubes (not in ``skip``), for global eviction."""
        return [replace(s.qube, reasons=[]) for n, s in self._seen.items() if n not in skip]

    def quiet_costs(self) -> Mapping[str, Cost]:
        """Every quiet qube's cost (kept as qubes turn quiet or change: no loop
        over every name here)."""
        return self._costs

    @property
    def quiet_total(self) -> Cost:
        """The quiet qubes' cost together."""
        return self._quiet_total

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget qubes no longer in the store."""
        present = set(names)
        for name in [n for n in self._seen if n not in present]:
            self._drop(name)
        self._active &= present


def _dir_stamp(layout: StoreLayout, name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(layout.qube_dir(name))
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _due(cfg: RetentionConfig, qube: _Qube) -> float:
    """The earliest clock time an age rule could delete one of ``qube``'s segments."""
    if not qube.segments:
        return math.inf
    oldest = qube.segments[0].closed_at
    due = math.inf
    max_age = max_age_for(cfg, qube.name)
    if max_age > 0:
        due = oldest + max_age
    after = cfg.dispvm_delete_after_close
    if after is not None and class_of(cfg, qube.name) == DISPVM_CLASS:
        due = min(due, oldest + after)
    return due


def _pressure(
    layout: StoreLayout, cfg: RetentionConfig, total: Cost, statvfs: StatVfs
) -> tuple[int, int]:
    """Charged bytes and inodes to free for the global cap and the keep-free floors."""
    need_bytes = need_files = 0
    if cfg.global_max_bytes and total.disk > cfg.global_max_bytes:
        need_bytes = total.disk - cfg.global_max_bytes
    if cfg.global_keep_free or cfg.global_keep_free_inodes:
        stats = statvfs(str(layout.root))
        need_bytes = max(need_bytes, cfg.global_keep_free - stats.f_bavail * stats.f_frsize)
        if stats.f_files:  # 0: the filesystem has no inode limit (btrfs)
            need_files = max(0, cfg.global_keep_free_inodes - stats.f_favail)
    return need_bytes, need_files


def _evict_globally(qubes: list[_Qube], need: Cost, capacity: int) -> None:
    """Free ``need`` (charged bytes and inodes) from the qubes furthest over their fair share.

    Qubes are judged by the same cost as their quotas; a qube over its quota
    goes before any within it.
    """
    total_quota = sum(q.quota for q in qubes) or 1
    freed = ZERO_COST
    while freed.disk < need.disk or freed.files < need.files:
        candidates = [q for q in qubes if q.doomed < len(q.segments)]
        if not candidates:
            _PRESSURE.warn(
                "pressure",
                "global pressure: %d bytes and %d inodes more to free, nothing left to delete",
                need.disk - freed.disk,
                max(0, need.files - freed.files),
            )
            return
        share = {q.name: capacity * q.quota / total_quota for q in candidates}
        victim = max(
            candidates,
            key=lambda q: (q.over_quota, q.remaining.disk - share[q.name], q.name),
        )
        before = victim.freed
        victim.take(victim.doomed + 1, "global")
        freed += victim.freed - before


def plan_deletions(
    layout: StoreLayout,
    cfg: RetentionConfig,
    clock: SegmentClock,
    open_segments: dict[str, int],
    *,
    statvfs: StatVfs = os.statvfs,
    usage_out: dict[str, Cost] | None = None,
    cache: ScanCache | None = None,
) -> list[Planned]:
    """The (qube, seq) pairs to delete, oldest first per qube, each with its reason.

    ``open_segments`` maps each qube with an open segment to that segment's
    number; it and anything newer are never chosen. Each qube's entries
    are its oldest segments, so deleting them with ``delete_oldest`` in
    list order removes exactly these. Ages (retention, DispVM deletion) are
    measured on ``clock``: the collector passes its :class:`EpochClock`.
    ``usage_out``, when given, receives every qube's cost once the plan is
    carried out. With a ``cache`` (the collector keeps one), unchanged qubes
    are not read again (:class:`ScanCache`).
    """
    if cache is None:
        qubes = [_scan_qube(layout, cfg, q, clock, open_segments.get(q)) for q in layout.qubes()]
        quiet_total = ZERO_COST
    else:
        qubes = _scan_changed(layout, cfg, clock, open_segments, cache)
        quiet_total = cache.quiet_total
    total = sum((q.remaining for q in qubes), quiet_total)
    need_bytes, need_files = _pressure(layout, cfg, total, statvfs)
    if need_bytes > 0 or need_files > 0:
        if cache is not None:  # every qube is a candidate: the quiet ones too
            qubes += cache.quiet({q.name for q in qubes})
        capacity = cfg.global_max_bytes or max(total.disk - need_bytes, 0)
        _evict_globally(qubes, Cost(need_bytes, need_files, 0), capacity)
        if cache is not None:
            for qube in qubes:
                if qube.doomed:
                    cache.touch(qube.name)  # read again once deleted
    if usage_out is not None:
        if cache is not None:
            usage_out.update(cache.quiet_costs())
        usage_out.update((q.name, q.remaining) for q in qubes)
    plan = []
    for qube in qubes:
        for segment, reason in zip(qube.segments[: qube.doomed], qube.reasons, strict=True):
            if not is_closed(segment.files):
                break  # a crash left it open: the collector recovers it first
            plan.append(Planned(qube.name, segment.seq, reason, qube.usage))
    return plan


def _scan_changed(
    layout: StoreLayout,
    cfg: RetentionConfig,
    clock: SegmentClock,
    open_segments: dict[str, int],
    cache: ScanCache,
) -> list[_Qube]:
    """The qubes that are not quiet (:class:`ScanCache`), read again."""
    names = cache.names(layout, cfg, clock.now)
    if names is None:
        names = layout.qubes()
        cache.keep_only(names)
    else:
        names = sorted(set(names) | set(open_segments))
    scanned = (cache.scan(layout, cfg, q, clock, open_segments.get(q)) for q in names)
    return [q for q in scanned if q is not None]


def apply_plan(store: Store, plan: Iterable[Planned]) -> list[tuple[str, int]]:
    """Carry out a plan with sealed tombstones (for the collector, the key holder).

    A qube whose oldest segment is no longer the planned one (the plan is
    stale) is skipped for the rest of this plan. Returns what was deleted.
    """
    done: list[tuple[str, int]] = []
    skipped: set[str] = set()
    for planned in plan:
        qube, seq = planned
        if qube in skipped:
            continue
        chain = store.chain(qube)
        oldest = next(iter(store.layout.segments(qube)), None)
        if oldest is None or oldest.seq != seq:
            skipped.add(qube)
            continue
        if chain.delete_oldest(store.keys, keep_newest=0, reason=planned.reason) == seq:
            done.append((qube, seq))
        else:
            skipped.add(qube)
    return done


def _evictions(layout: StoreLayout, qube: str) -> int:
    """Segments deleted so far: deletions take the oldest, so every segment up
    to the newest tombstone's (compaction sums the older ones up)."""
    tombs = read_tomb_file(layout.tombstones(qube)).tombs
    return tombs[-1][1].last if tombs else 0


class QubeReport(TypedDict):
    """What :func:`qube_report` returns (sizes in bytes, ages in seconds)."""

    qube: str
    qube_class: str | None
    usage: int
    quota: int
    max_age: float
    segments: int
    segments_plain: int
    segments_compressed: int
    plain_bytes: int
    compressed_bytes: int
    compressed_plain_bytes: int
    compression_ratio: float | None
    evictions: int


def qube_report(layout: StoreLayout, cfg: RetentionConfig, qube: str) -> QubeReport:
    """Figures for ``logvm stats``: usage against quota, compression, evictions.

    ``compression_ratio`` is the plain size (from the seals' ``nbytes``) of
    the compressed segments over their size on disk; None when none is
    compressed. ``evictions`` counts tombstones (segments deleted by
    quota, retention or global pressure).
    """
    segments = layout.segments(qube)
    compressed = [s for s in segments if s.compressed]
    plain_of_compressed = 0
    for files in compressed:
        seal = last_seal(files)
        plain_of_compressed += seal.nbytes if seal is not None else 0
    compressed_bytes = sum(_size(s.log) for s in compressed)
    return {
        "qube": qube,
        "qube_class": class_of(cfg, qube),
        "usage": usage(layout, qube),
        "quota": quota_for(cfg, qube),
        "max_age": max_age_for(cfg, qube),
        "segments": len(segments),
        "segments_plain": len(segments) - len(compressed),
        "segments_compressed": len(compressed),
        "plain_bytes": sum(_size(s.log) for s in segments if not s.compressed),
        "compressed_bytes": compressed_bytes,
        "compressed_plain_bytes": plain_of_compressed,
        "compression_ratio": (
            plain_of_compressed / compressed_bytes if compressed_bytes else None
        ),
        "evictions": _evictions(layout, qube),
    }
