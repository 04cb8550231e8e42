"""The shared reading API (store.timeline) on a store the real collector wrote."""

import re
from pathlib import Path

import pytest

from qubes_logvm.core.entries import classify
from qubes_logvm.core.records import line_record, note_record
from qubes_logvm.store import timeline
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.timeline import Query
from qubes_logvm.store.writer import Store
from support.collected import ROUNDS, Collected, build_collected
from support.segments import write_segment

pytestmark = pytest.mark.inprocess


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Collected:
    return build_collected(tmp_path_factory.mktemp("collected"))


QUBES = ["disp7", "personal", "work"]


def sender_entries(c: Collected, query: Query | None = None) -> list[timeline.Entry]:
    return [e for e in timeline.merged(c.layout, QUBES, query) if not e.what.is_note]


@pytest.mark.timeout(60)
def test_merged_is_one_timeline_in_send_order(collected: Collected) -> None:
    got = [e for e in sender_entries(collected) if e.segment > 1 or e.qube != "work"]
    assert [e.qube for e in got] == [q for q, _ in ROUNDS]
    assert [e.when for e in got] == sorted(e.when for e in got)
    kinds = {e.what.kind for e in got}
    assert kinds == {"record", "line"}
    first = got[0].what
    assert first.sender is not None and first.sender.unit == "sshd.service"
    assert (first.sender.ident, first.sender.pid, first.priority) == ("sshd", 812, "err")
    assert first.sender.host == "claimed-host"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "query",
    [
        Query(),
        Query(severities=frozenset({0, 1, 2, 3})),
        Query(severities=frozenset({6})),
        Query(units=("sshd",)),
        Query(identifiers=("CRON",)),
        Query(pattern=re.compile("mixed", re.I)),
    ],
)
@pytest.mark.parametrize("count", [1, 3, 10, 1000])
def test_newest_equals_the_end_of_the_full_read(
    collected: Collected, query: Query, count: int
) -> None:
    everything = list(timeline.merged(collected.layout, QUBES, query))
    assert timeline.newest(collected.layout, QUBES, count, query) == everything[-count:]


@pytest.mark.timeout(60)
def test_priority_filter_on_records_and_foreign_lines(collected: Collected) -> None:
    errors = sender_entries(collected, Query(severities=frozenset(range(4))))
    texts = [e.what.message for e in errors]
    assert b"work error 0" in texts and b"<11>syslog err line 0" in texts
    assert not any(b"plain line" in t or b"info" in t for t in texts)


@pytest.mark.timeout(60)
def test_since_bisects_to_the_same_answer(collected: Collected) -> None:
    every = list(timeline.merged(collected.layout, QUBES))
    for entry in every[::3]:
        query = Query(since=entry.when, until=every[-2].when)
        want = [e for e in every if entry.when <= e.when <= every[-2].when]
        assert list(timeline.merged(collected.layout, QUBES, query)) == want


@pytest.mark.timeout(60)
def test_session_selects_one_connection(collected: Collected) -> None:
    first = next(timeline.entries(collected.layout, "work"))
    assert first.what.event == "segment-start" and first.session
    got = list(timeline.merged(collected.layout, QUBES, Query(session=first.session)))
    assert {(e.qube, e.segment) for e in got} == {("work", 1)}
    assert [e.what.message for e in got if e.what.kind == "record"] == [b"first session"]


@pytest.mark.timeout(60)
def test_globs_and_absent_names(collected: Collected) -> None:
    layout = collected.layout
    assert timeline.resolve_qubes(layout, ["p*", "w?rk", "work"]) == ["personal", "work"]
    assert timeline.resolve_qubes(layout, [], every=True) == QUBES
    assert timeline.resolve_qubes(layout, ["nosuch"]) == ["nosuch"]
    with pytest.raises(Exception, match="no qube 'nosuch'"):
        timeline.require_qubes(layout, ["nosuch"])


def test_a_sender_cannot_write_a_note() -> None:
    stamp = b"2026-11-28T17:00:00.000000Z"
    forged = line_record(stamp, b"2026-11-28T17:00:00.000000Z C dropped count=1")[:-1]
    assert classify(forged).kind == "line"
    real = note_record(stamp, "dropped", count=1, reason="quota")[:-1]
    assert classify(real).kind == "note" and classify(real).priority == "warning"
    assert classify(b"garbage").kind == "malformed"


@pytest.mark.timeout(60)
def test_follower_sees_appends_and_new_segments(collected: Collected, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "store"
    shutil.copytree(collected.root, root)
    layout = StoreLayout(root)
    follower = timeline.Follower(layout, ["disp7", "newqube"])
    follower.start()
    assert follower.poll() == []
    assert follower.missing() == ["newqube"]
    [seg] = [s for s in layout.segments("disp7") if s.seq == 1]
    assert seg.log is not None
    stamp = b"2027-01-01T00:00:00.000000Z"
    with seg.log.open("ab") as stream:
        stream.write(line_record(stamp, b"appended"))
    (layout.qube_dir("newqube")).mkdir()
    layout.segment_log("newqube", 1).write_bytes(line_record(stamp, b"new qube"))
    got = follower.poll()
    assert [(e.qube, e.line, e.what.message) for e in got] == [
        ("disp7", 10, b"appended"),
        ("newqube", 1, b"new qube"),
    ]
    assert follower.missing() == []


@pytest.mark.timeout(60)
def test_until_keeps_records_after_a_late_segment_start_note(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path / "store")
    layout.qube_dir("work").mkdir(parents=True)
    early, late = b"2026-11-28T10:00:00.000000Z", b"2026-11-28T10:00:00.000900Z"
    layout.segment_log("work", 1).write_bytes(
        note_record(late, "segment-start", seq=1, session="s1")
        + line_record(early, b"first record")
        + line_record(late, b"second record")
    )
    got = [e.what.message for e in timeline.entries(layout, "work", Query(until=early))]
    assert got == [b"first record"]


@pytest.mark.timeout(60)
def test_until_reads_on_after_a_segment_past_it(tmp_path: Path) -> None:
    """A store from a collector before issue 18's fix: restarted on a clock
    set back an hour, its next segment starts below the stored stamps."""
    layout = StoreLayout(tmp_path / "store")
    layout.qube_dir("work").mkdir(parents=True)
    first, later = b"2026-11-28T10:00:00.000000Z", b"2026-11-28T10:00:05.000000Z"
    back = b"2026-11-28T09:00:01.000000Z"
    layout.segment_log("work", 1).write_bytes(
        line_record(first, b"first") + line_record(later, b"later")
    )
    layout.segment_log("work", 2).write_bytes(line_record(back, b"after the restart"))
    got = [e.what.message for e in timeline.entries(layout, "work", Query(until=first))]
    assert got == [b"first", b"after the restart"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", ["error", "line [0-2]", "owned", "x{10}", "seq=2", "^<11>", "0$"])
def test_grep_prefilter_changes_nothing(collected: Collected, text: str) -> None:
    pattern = re.compile(text, re.I)
    every = list(timeline.merged(collected.layout, QUBES))
    want = [e for e in every if pattern.search(e.what.message.decode("utf-8", "replace"))]
    assert want
    assert list(timeline.merged(collected.layout, QUBES, Query(pattern=pattern))) == want


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "text", ["kernel", "KERNEL", "ker.el", "^ker", "\\\\", r"\bkernel\b", r"^\w+ kernel$"]
)
@pytest.mark.parametrize("since", [None, b"2026-11-28T10:00:01.000000Z"])
def test_grep_by_blocks_keeps_malformed_lines_and_their_times(
    tmp_path: Path, text: str, since: bytes | None
) -> None:
    # Lines the block matcher must not lose or misdate: a malformed line sorts
    # by the stamp before it, even when that line was skipped; a torn last line.
    layout = StoreLayout(tmp_path)
    layout.qube_dir("work").mkdir(parents=True)
    t = [b"2026-11-28T10:00:0%d.000000Z" % i for i in range(4)]
    layout.segment_log("work", 1).write_bytes(
        line_record(t[0], b"kernel boot")
        + b"garbage kernel without a stamp\n"
        + line_record(t[1], b"quiet line")
        + line_record(t[2], b"back\\\\slash kernel")
        + b"another garbage KERNEL\n"
        + line_record(t[3], b"\\x6bernel written as an escape")
        + t[3]
        + b" L torn kernel"
    )
    pattern = re.compile(text, re.I)
    every = list(timeline.entries(layout, "work", Query(since=since)))
    want = [e for e in every if pattern.search(e.what.message.decode("utf-8", "replace"))]
    assert list(timeline.entries(layout, "work", Query(since=since, pattern=pattern))) == want


@pytest.mark.timeout(60)
def test_newest_over_lines_longer_than_the_first_blocks(tmp_path: Path) -> None:
    # Blocks read backwards start at a few KiB and double: lines of 1 KiB to
    # 600 KiB (beyond the largest block) still come back whole, numbered right.
    root = tmp_path / "store"
    setup_keys(StoreLayout(root))
    store = Store(root)
    stamp = b"2026-11-28T18:00:00.000000Z"
    sizes = [1 << 10, 20 << 10, 600 << 10, 3, 70 << 10, 5 << 10]
    data = b"".join(line_record(stamp, b"%d:" % n + b"x" * n) for n in sizes)
    write_segment(store, "long", data)
    store.keys.close()
    layout = StoreLayout(root)
    everything = list(timeline.merged(layout, ["long"]))
    for count in (1, 2, 3, 5, len(everything)):
        assert timeline.newest(layout, ["long"], count) == everything[-count:]
    assert [len(e.what.message) for e in everything if not e.what.is_note] == [
        len(b"%d:" % n) + n for n in sizes
    ]
