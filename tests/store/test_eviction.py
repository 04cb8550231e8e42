"""plan_deletions on real stores: quota, ages, DispVM sessions, global pressure."""

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from qubes_logvm.store.compress import compress_segment
from qubes_logvm.store.eviction import (
    EpochClock,
    Planned,
    ScanCache,
    apply_plan,
    plan_deletions,
    qube_report,
)
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.tombstones import TOMB_COMPACT_LINES, read_tomb_file
from qubes_logvm.store.usage import Cost, qube_usage, segment_cost, usage
from qubes_logvm.store.writer import Store
from support.segments import (
    MtimeClock,
    check_qube,
    config,
    new_store,
    sample_lines,
    set_closed_at,
    write_segment,
)

pytestmark = [pytest.mark.inprocess, pytest.mark.timeout(60)]

NOW = time.time()
HOUR = 3600.0
SEG = sample_lines(100)  # ~10 KB per segment
NO_FLOOR = "global: {keep_free: 0}\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    new_store(tmp_path / "store")
    opened = Store(tmp_path / "store")
    yield opened
    opened.keys.close()


def _fill(
    store: Store,
    qube: str,
    count: int,
    *,
    age: float = 0.0,
    session: str = "s1",
    reason: str = "connect",
) -> list[int]:
    seqs = [write_segment(store, qube, SEG, session=session, reason=reason) for _ in range(count)]
    for seq in seqs:
        set_closed_at(store.layout, qube, seq, NOW - age)
    return seqs


def _plan(store: Store, text: str, open_segments: dict[str, int] | None = None) -> list[Planned]:
    return plan_deletions(store.layout, config(text), MtimeClock(NOW), open_segments or {})


def usage_of(layout: StoreLayout, qube: str, seq: int) -> int:
    """Charged bytes of one segment (text and seals: blocks plus the per-file cost)."""
    return next(segment_cost(s).disk for s in layout.segments(qube) if s.seq == seq)


def _of(plan: Sequence[tuple[str, int]], qube: str) -> list[int]:
    return [seq for q, seq in plan if q == qube]


def test_nothing_to_do_within_quota(store: Store) -> None:
    _fill(store, "work", 3)
    assert _plan(store, NO_FLOOR) == []


def test_over_quota_loses_its_own_oldest_first(store: Store) -> None:
    _fill(store, "work", 8)  # ~85 KB of text, 8 x 40 KiB charged
    _fill(store, "quiet", 2)
    text = NO_FLOOR + "segment: {max_bytes: 8K}\nquota: {default: 1M, qubes: {work: 160K}}"
    plan = _plan(store, text)
    assert _of(plan, "quiet") == []
    doomed = _of(plan, "work")
    assert doomed == list(range(1, len(doomed) + 1))  # a prefix, oldest first
    sizes = {s.seq: segment_cost(s).disk for s in store.layout.segments("work")}
    left = usage(store.layout, "work") - sum(sizes[s] for s in doomed)
    assert left <= 160 * 1024 < left + sizes[doomed[-1]]  # no more than needed


def test_open_segment_is_never_chosen(store: Store) -> None:
    _fill(store, "work", 3, age=HOUR)
    chain = store.chain("work")
    chain.open_segment(store.keys, session="s9")
    chain.append(sample_lines(2000), 2000)  # the open segment alone is over quota
    chain.seal(store.keys)
    text = NO_FLOOR + "segment: {max_bytes: 8K}\nquota: {default: 16K}"
    plan = _plan(store, text, {"work": chain.seq})
    assert _of(plan, "work") == [1, 2, 3]
    # Retention and DispVM rules never reach it either.
    old = NO_FLOOR + "retention: {max_age: {default: 1s}}"
    set_closed_at(store.layout, "work", chain.seq, NOW - 10 * HOUR)
    assert _of(_plan(store, old, {"work": chain.seq}), "work") == [1, 2, 3]


def test_unclosed_segment_after_a_crash_is_left_alone(store: Store) -> None:
    _fill(store, "work", 1, age=HOUR)
    chain = store.chain("work")
    chain.open_segment(store.keys)
    chain.append(SEG, SEG.count(b"\n"))
    chain.seal(store.keys)  # the collector "dies" here: no close seal
    text = NO_FLOOR + "retention: {max_age: {default: 1s}}"
    set_closed_at(store.layout, "work", 2, NOW - HOUR)
    assert _plan(store, text) == [("work", 1)]  # not reported open, still not chosen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # default max_age: everything closed before the cutoff
        ("retention: {max_age: {default: 2d}}", {"work": [1, 2], "disp5": [1, 2]}),
        # by class: only the DispVM's
        ("retention: {max_age: {classes: {dispvm: 2d}}}", {"work": [], "disp5": [1, 2]}),
        # by name beats default; 0 keeps forever
        (
            "retention: {max_age: {default: 2d, qubes: {work: 0}}}",
            {"work": [], "disp5": [1, 2]},
        ),
        # forever (the default)
        ("retention: {}", {"work": [], "disp5": []}),
    ],
)
def test_retention_ages(store: Store, text: str, expected: dict[str, list[int]]) -> None:
    for qube in ("work", "disp5"):
        _fill(store, qube, 2, age=3 * 86400)
        _fill(store, qube, 1, age=HOUR)
    plan = _plan(store, NO_FLOOR + text)
    assert {q: _of(plan, q) for q in expected} == expected


DAY = 86400.0


def test_ages_count_sealed_epochs_not_the_wall_clock(store: Store) -> None:
    """A segment's age is (current epoch - its close epoch) x epoch length."""
    old = write_segment(store, "work", SEG)
    for _ in range(3):
        store.tick()  # three epochs (of a day, for this clock) pass
    new = write_segment(store, "work", SEG)
    # The wall clock says both closed long ago (a clock stepped forward 8 days):
    set_closed_at(store.layout, "work", old, NOW - 8 * DAY)
    set_closed_at(store.layout, "work", new, NOW - 8 * DAY)
    cfg = config(NO_FLOOR + "retention: {max_age: {default: 2d}}")
    clock = EpochClock(store.keys.epoch, DAY)
    assert plan_deletions(store.layout, cfg, clock, {}) == [("work", old)]
    assert [p.reason for p in plan_deletions(store.layout, cfg, clock, {})] == ["age"]
    # Without epochs passing nothing ages, whatever the wall clock says.
    assert plan_deletions(store.layout, cfg, EpochClock(store.keys.epoch, 1.0), {}) == []
    store.tick()
    store.tick()
    assert _of(
        plan_deletions(store.layout, cfg, EpochClock(store.keys.epoch, DAY), {}), "work"
    ) == [
        old,
        new,
    ]


def test_dispvm_delete_after_close(store: Store) -> None:
    _fill(store, "disp12", 1, age=2 * HOUR, session="a")  # 1: session a
    _fill(store, "disp12", 1, age=2 * HOUR, session="b")  # 2-3: session b, rolled once,
    _fill(store, "disp12", 1, age=5 * 60, session="b2", reason="roll")  # closed 5 min ago
    _fill(store, "disp12", 1, age=HOUR, session="c")  # 4: session c
    _fill(store, "work", 2, age=2 * HOUR)
    text = NO_FLOOR + "retention: {dispvm_delete_after_close: 10m}"
    # Session b ended 5 minutes ago: it stays, and so does c behind it.
    assert _plan(store, text) == [("disp12", 1)]
    text = NO_FLOOR + "retention: {dispvm_delete_after_close: 1m}"
    assert _plan(store, text) == [("disp12", 1), ("disp12", 2), ("disp12", 3), ("disp12", 4)]
    assert _plan(store, NO_FLOOR) == []  # not configured: kept


def test_dispvm_running_session_keeps_its_rolled_segments(store: Store) -> None:
    _fill(store, "disp3", 1, age=2 * HOUR, session="old")
    _fill(store, "disp3", 1, age=HOUR, session="run")
    _fill(store, "disp3", 1, age=HOUR, session="run2", reason="roll")
    chain = store.chain("disp3")
    chain.open_segment(store.keys, session="run3", reason="roll")  # the same session, still open
    text = NO_FLOOR + "retention: {dispvm_delete_after_close: 1m}"
    assert _plan(store, text, {"disp3": chain.seq}) == [("disp3", 1)]
    chain.close(store.keys)
    set_closed_at(store.layout, "disp3", chain.seq, NOW - HOUR)
    assert _of(_plan(store, text), "disp3") == [1, 2, 3, 4]


def test_global_pressure_spares_qubes_within_quota_while_another_is_over(store: Store) -> None:
    _fill(store, "hog", 6)  # ~240 KiB charged, quota 128K: over
    _fill(store, "a", 3)  # within quota
    _fill(store, "b", 3)
    text = (
        "segment: {max_bytes: 8K}\nquota: {default: 1M, qubes: {hog: 128K}}\n"
        "global: {keep_free: 0, max_bytes: 350K}"
    )
    plan = _plan(store, text)
    assert _of(plan, "a") == [] and _of(plan, "b") == []
    assert _of(plan, "hog")


def test_global_pressure_takes_from_the_furthest_over_fair_share(store: Store) -> None:
    _fill(store, "big", 6)
    _fill(store, "a", 2)
    _fill(store, "b", 2)
    total = sum(usage(store.layout, q) for q in ("big", "a", "b"))
    text = f"global: {{keep_free: 0, max_bytes: {total - 60000}}}"
    plan = _plan(store, text)
    assert _of(plan, "a") == [] and _of(plan, "b") == []
    assert _of(plan, "big") == [1, 2]  # 40 KiB charged each: two to free 60 KB


def test_keep_free_floor_uses_statvfs(store: Store) -> None:
    _fill(store, "big", 4)
    _fill(store, "a", 1)

    class Low:
        f_frsize = 4096
        f_bavail = (256 << 20) // 4096 - 25  # 100 KiB short of the default 256M floor
        f_files = 1 << 20
        f_favail = 1 << 19  # plenty of inodes

    def low(_: str) -> os.statvfs_result:
        return Low()  # type: ignore[return-value]

    plan = plan_deletions(store.layout, config("{}"), MtimeClock(NOW), {}, statvfs=low)
    sizes = [usage_of(store.layout, "big", seq) for seq in (1, 2, 3)]
    assert sizes[0] + sizes[1] < 100 * 1024 <= sum(sizes)
    assert plan == [("big", 1), ("big", 2), ("big", 3)]


def test_apply_plan_writes_tombstones_and_chain_verifies(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key0 = new_store(root)
    store = Store(root)
    _fill(store, "work", 5)
    text = NO_FLOOR + "segment: {max_bytes: 8K}\nquota: {default: 100K}"
    plan = _plan(store, text)
    assert apply_plan(store, plan) == plan
    assert apply_plan(store, plan) == []  # stale now: nothing happens
    report = qube_report(store.layout, config(text), "work")
    store.close()
    assert check_qube(root, key0, "work") == [s for s in range(1, 6) if ("work", s) not in plan]
    assert report["evictions"] == len(plan)
    assert report["usage"] == usage(StoreLayout(root), "work") <= 100 * 1024
    assert report["quota"] == 100 * 1024 and report["segments_compressed"] == 0


def test_deletion_cut_short_is_planned_and_finished_without_a_second_tomb(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key0 = new_store(root)
    store = Store(root)
    _fill(store, "work", 3)
    layout = store.layout
    saved = {
        p: p.read_bytes() for p in (layout.segment_log("work", 1), layout.segment_seal("work", 1))
    }
    assert store.chain("work").delete_oldest(store.keys, keep_newest=0) == 1
    for path, data in saved.items():  # as if killed after the tombstone, before the unlinks
        path.write_bytes(data)
    layout.segment_log("work", 1).unlink()  # ... or between the two unlinks
    plan = _plan(store, NO_FLOOR)  # nothing over quota, nothing old: only the leftover
    assert plan == [("work", 1)]
    store.keys.close()
    restarted = Store(root)  # a new collector: the chain is loaded from disk
    assert restarted.chain("work").delete_oldest(restarted.keys, keep_newest=0) == 1
    restarted.close()
    assert [t.last for _, t in read_tomb_file(layout.tombstones("work")).tombs] == [1]
    assert check_qube(root, key0, "work") == [2, 3]


def _repetitive(store: Store, qube: str, count: int) -> None:
    """``count`` closed, compressed segments of the same line (~100 KB plain each)."""
    line = sample_lines(1, "same", width=100)
    for _ in range(count):
        seq = write_segment(store, qube, line * 1000)
        files = next(s for s in store.layout.segments(qube) if s.seq == seq)
        compress_segment(store.layout, files)
        set_closed_at(store.layout, qube, seq, NOW)


def test_plain_bytes_cap_evicts_a_repetitive_flood_within_its_disk_quota(store: Store) -> None:
    _repetitive(store, "rep", 6)
    cost = qube_usage(store.layout, "rep")
    assert cost.disk < 256 * 1024 < 2 * cost.disk < cost.plain  # ~200K on disk, ~530K of text
    text = NO_FLOOR + "segment: {max_bytes: 8K}\nquota: {default: 256K, plain_ratio: 1}"
    doomed = _of(_plan(store, text), "rep")
    left = cost.plain - sum(
        segment_cost(s).plain for s in store.layout.segments("rep") if s.seq in doomed
    )
    assert doomed == [1, 2, 3, 4] and left <= 256 * 1024  # the cap: 1 x the quota
    roomy = text.replace("plain_ratio: 1", "plain_ratio: 8")
    assert _of(_plan(store, roomy), "rep") == []


def test_inode_floor_evicts_by_cost_from_the_qube_over_its_share(store: Store) -> None:
    _fill(store, "many", 6)
    _fill(store, "few", 1)

    class FewInodes:
        f_frsize = 4096
        f_bavail = 1 << 30  # blocks galore
        f_files = 1000
        f_favail = 995  # 5 short of a 1000-inode floor: 3 segments (2 files each)

    def stats(_: str) -> os.statvfs_result:
        return FewInodes()  # type: ignore[return-value]

    cfg = config("global: {keep_free: 0, keep_free_inodes: 1000}")
    plan = plan_deletions(store.layout, cfg, MtimeClock(NOW), {}, statvfs=stats)
    assert plan == [("many", 1), ("many", 2), ("many", 3)]


def test_stats_count_evictions_after_tombstone_compaction(store: Store) -> None:
    _fill(store, "work", TOMB_COMPACT_LINES + 3)
    chain = store.chain("work")
    for _ in range(TOMB_COMPACT_LINES + 1):
        assert chain.delete_oldest(store.keys, keep_newest=0) is not None
    assert len(read_tomb_file(store.layout.tombstones("work")).tombs) < TOMB_COMPACT_LINES
    report = qube_report(store.layout, config(NO_FLOOR), "work")
    assert report["evictions"] == TOMB_COMPACT_LINES + 1


def _settle(layout: StoreLayout, ago: float) -> None:
    """Qube directories last changed ``ago`` seconds ago (the cache trusts settled ones)."""
    for qube in layout.qubes():
        os.utime(layout.qube_dir(qube), (NOW - ago, NOW - ago))


def test_scan_cache_reads_again_only_what_changed(store: Store) -> None:
    _fill(store, "work", 3, age=2 * HOUR)
    _fill(store, "quiet", 2, age=2 * HOUR)
    _settle(store.layout, 60)
    cfg = config(NO_FLOOR + "retention: {max_age: {default: 1d, qubes: {work: 3h}}}")
    monotonic = [0.0]
    cache = ScanCache(full_interval=300, monotonic=lambda: monotonic[0])
    usage: dict[str, Cost] = {}

    def plan(at: float = NOW) -> list[Planned]:
        usage.clear()
        got = plan_deletions(store.layout, cfg, MtimeClock(at), {}, cache=cache, usage_out=usage)
        assert set(usage) == {"work", "quiet"}  # every qube's cost, read or remembered
        return got

    assert plan() == [] and len(cache) == 2  # the first plan reads every qube
    before = usage["quiet"]
    # A change the collector did not make (logvm-rotate's) waits for the
    # next full pass: nothing is read now.
    _fill(store, "quiet", 1, age=2 * HOUR)
    _settle(store.layout, 50)
    assert plan() == [] and usage["quiet"] == before
    # What the collector changed it marks: read again at once.
    cache.touch("quiet")
    assert plan() == [] and usage["quiet"] == qube_usage(store.layout, "quiet") != before
    # Every FULL_INTERVAL the whole store is looked at.
    _fill(store, "quiet", 1, age=2 * HOUR)
    _settle(store.layout, 40)
    monotonic[0] = 301
    assert plan() == [] and usage["quiet"] == qube_usage(store.layout, "quiet")
    # An age rule falls due without any change: read again and planned.
    assert _of(plan(NOW + 2 * HOUR), "work") == [1, 2, 3]
    assert _of(plan(NOW + 2 * HOUR), "quiet") == []
    # New settings (a reload): every qube is judged again, unchanged or not.
    cfg = config(NO_FLOOR + "segment: {max_bytes: 16K}\nquota: {qubes: {quiet: 64K}}")
    assert _of(plan(), "quiet")[:1] == [1]
