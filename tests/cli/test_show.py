"""``logvm show``/``follow``/``list`` options on a store the real collector wrote.

The store (tests/support/collected.py): three qubes sending at once, receive
times interleaved in a known order, exporter records of several priorities,
units and identifiers, foreign lines (one with a syslog ``<PRI>``), hostile
escape sequences and an overlong line; work's first session compressed.
"""

import io
import json
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qubes_logvm.cli import main
from qubes_logvm.core.records import format_timestamp, line_record, parse_timestamp
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.writer import Store
from support.collected import HOSTILE, ROUNDS, Collected, build_collected

pytestmark = pytest.mark.inprocess


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Collected:
    return build_collected(tmp_path_factory.mktemp("collected"))


def show(c: Collected, *args: str, **edges: object) -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.StringIO()
    argv = [*args, "--store", str(c.root)]
    code = main(argv, stdout=out, stderr=err, **edges)  # type: ignore[arg-type]
    return code, out.getvalue().decode("utf-8"), err.getvalue()


def sender_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if " [logvm] " not in line]


def messages(out: str) -> list[str]:
    return [json.loads(line)["message"] for line in out.splitlines()]


@pytest.mark.timeout(60)
def test_merged_view_of_three_qubes_in_receive_order(collected: Collected) -> None:
    code, out, _ = show(collected, "show", "--all", "--utc", "-o", "short-iso")
    assert code == 0
    lines = [x for x in sender_lines(out) if "first session" not in x]
    # The qube token, without the markers the LogVM sticks to it.
    assert [x.split(" ")[1].split("[")[0] for x in lines] == [q for q, _ in ROUNDS]
    stamps = [x.split(" ")[0] for x in out.splitlines()]
    assert lines[0].endswith(" work sshd[812]: work error 0")
    assert lines[2].endswith(" disp7 plain line 0 from disp7")
    assert len(stamps[0]) == len("2026-11-28T18:05:26.123456+00:00")
    # No qube named: every qube, the same as --all; globs select.
    assert show(collected, "show", "--utc", "-o", "short-iso")[1] == out
    _, some, _ = show(collected, "show", "p*", "d?sp7", "-o", "cat")
    assert "work error" not in some and "personal info 0" in some and "plain line 0" in some


@pytest.mark.timeout(60)
def test_notes_are_marked_as_the_logvms(collected: Collected) -> None:
    _, out, _ = show(collected, "show", "work")
    notes = [x for x in out.splitlines() if " [logvm] work: " in x]
    assert [n.split(": ", 1)[1].split(" ")[0] for n in notes] == [
        "segment-start",
        "segment-end",
        "segment-start",
        "segment-end",
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "prio, expect",
    [
        ("err", ["work error 0", "<11>syslog err line 0", "work error 1"]),
        ("warning..err", ["work error 0", "Warning Mixed Case 0", "<11>syslog err line 0"]),
        ("3..4", ["work error 0", "Warning Mixed Case 0", "<11>syslog err line 0"]),
        ("debug..debug", ["personal debug 0", "personal debug 1", "personal debug 2"]),
        ("crit", [HOSTILE.decode("utf-8", "replace")]),
    ],
)
def test_priority_on_records_and_foreign_lines(
    collected: Collected, prio: str, expect: list[str]
) -> None:
    code, out, _ = show(collected, "show", "-p", prio, "-o", "json")
    assert code == 0
    got = messages(out)
    if prio == "crit":
        assert len(got) == 1 and json.loads(out)["qube"] == "work"
        return
    assert got[:3] == expect
    assert not any("plain line" in str(m) for m in got)  # no priority: not matched


@pytest.mark.timeout(60)
def test_unit_identifier_session(collected: Collected) -> None:
    _, out, _ = show(collected, "show", "-u", "sshd", "-o", "cat")
    assert out.splitlines()[:3] == ["work error 0", "work error 1", "work error 2"]
    _, out, _ = show(collected, "show", "-u", "cron.*", "-t", "CRON", "-o", "cat")
    assert out.splitlines() == ["personal info 0", "personal info 1", "personal info 2"]
    _, out, _ = show(collected, "show", "work", "-o", "json", "-n", "1")
    [last] = [json.loads(x) for x in out.splitlines()]
    _, out, _ = show(collected, "show", "--session", last["session"], "-o", "json")
    assert {(o["qube"], o["segment"]) for o in map(json.loads, out.splitlines())} == {("work", 2)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, count",
    [
        (["-g", "mixed"], 3),  # all lower case: ignores case
        (["-g", "Mixed"], 3),
        (["-g", "MIXED"], 0),  # a capital: case matters
        (["-g", "MIXED", "-i"], 3),
        (["-g", r"\x1b\[2J"], 2),  # matched on the unescaped text the qube sent
        (["-g", r"^<11>"], 3),
    ],
)
def test_grep_smart_case_on_unescaped_text(
    collected: Collected, args: list[str], count: int
) -> None:
    code, out, _ = show(collected, "show", *args, "-o", "cat")
    assert code == 0
    assert len(out.splitlines()) == count


@pytest.mark.timeout(60)
def test_lines_reverse_and_their_errors(collected: Collected) -> None:
    _, everything, _ = show(collected, "show", "-o", "json")
    every = everything.splitlines()
    for n in ("1", "4", "100"):
        assert show(collected, "show", "-n", n, "-o", "json")[1].splitlines() == every[-int(n) :]
    _, out, _ = show(collected, "show", "-n", "4", "-r", "-o", "json")
    assert out.splitlines() == every[-4:][::-1]
    assert show(collected, "show", "-r", "-o", "json")[1].splitlines() == every[::-1]
    assert show(collected, "show", "-n", "all", "-o", "json")[1].splitlines() == every
    for bad in ("-1", "x"):
        code, _, err = show(collected, "show", "-n", bad)
        assert code == 2 and "--lines" in err


@pytest.mark.timeout(60)
def test_time_input_as_journalctl(collected: Collected) -> None:
    _, everything, _ = show(collected, "show", "-o", "json")
    every = [json.loads(x) for x in everything.splitlines()]
    for since in ("-1h", "1 hour ago", "today", "-2d", "yesterday 10:00"):
        assert show(collected, "show", "--since", since, "-o", "json")[1] == everything, since
    assert show(collected, "show", "--since", "tomorrow")[1] == ""
    assert show(collected, "show", "-S", "+1h")[1] == ""
    middle = every[len(every) // 2]
    moment = datetime.fromtimestamp(parse_timestamp(middle["receive_stamp"].encode()), UTC)
    iso = moment.isoformat(timespec="microseconds")
    _, out, _ = show(collected, "show", "--since", iso, "-o", "json")
    assert [json.loads(x) for x in out.splitlines()] == [
        o for o in every if o["receive_stamp"] >= middle["receive_stamp"]
    ]
    naive = moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    _, out, _ = show(collected, "show", "--utc", "-U", naive, "-o", "json")
    assert [json.loads(x) for x in out.splitlines()] == [
        o for o in every if o["receive_stamp"] <= middle["receive_stamp"]
    ]
    code, _, err = show(collected, "show", "--since", "tomorrow", "--until", "today")
    assert code == 2 and "is after --until" in err
    code, _, err = show(collected, "show", "--since", "last tuesday")
    assert code == 2 and "cannot read time" in err


@pytest.mark.timeout(60)
def test_json_parses_back_with_the_senders_claims(collected: Collected) -> None:
    _, out, _ = show(collected, "show", "work", "-o", "json", "--utc")
    objects = [json.loads(x) for x in out.splitlines()]
    record = next(o for o in objects if o["message"] == "work error 0")
    assert record["kind"] == "record" and record["priority"] == "err"
    assert record["qube"] == "work" and record["segment"] == 2 and record["line"] == 2
    assert record["sender"] == {
        "time": "2026-11-28T18:05:26.123456+01:00",
        "host": "claimed-host",
        "unit": "sshd.service",
        "identifier": "sshd",
        "pid": 812,
        "priority": "err",
    }
    assert record["receive_time"].endswith("+00:00") and record["session"]
    note = objects[0]
    assert note["kind"] == "note" and note["event"] == "segment-start" and note["sender"] is None
    hostile = next(o for o in objects if o["priority"] == "crit")
    assert hostile["message"] == list(HOSTILE)  # not UTF-8: its bytes, as journalctl
    _, out, _ = show(collected, "show", "disp7", "-o", "json")
    plain = [json.loads(x) for x in out.splitlines() if "plain line 0" in x]
    assert plain[0]["kind"] == "line" and plain[0]["sender"] is None


@pytest.mark.timeout(60)
def test_raw_alias_cat_and_markers(collected: Collected) -> None:
    raw = show(collected, "show", "--raw")[1]
    assert raw == show(collected, "show", "-o", "raw")[1]
    assert " C segment-start seq=1 " in raw.splitlines()[0]
    _, out, _ = show(collected, "show", "personal", "-o", "cat")
    assert "x" * 4096 in out.splitlines()  # sender text only: no marker, no note
    assert "[logvm]" not in out and "[truncated" not in out
    _, out, _ = show(collected, "show", "personal")
    assert any(
        x.endswith(" personal[truncated 904 bytes] " + "x" * 4096) for x in out.splitlines()
    )


FORMATS = ["short", "short-precise", "short-iso", "cat", "json", "raw"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", FORMATS)
def test_no_control_byte_in_any_format(collected: Collected, fmt: str) -> None:
    out, err = io.BytesIO(), io.StringIO()
    main(["show", "-o", fmt, "--store", str(collected.root)], stdout=out, stderr=err)
    data = out.getvalue()
    assert re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", data) is None
    assert "\u202e" not in data.decode("utf-8")  # the bidi override stays escaped
    if fmt != "json":
        assert b"\\x1b[2J\\x1b]0;owned\\x07" in data


@pytest.mark.timeout(60)
def test_list_keeps_last_time_after_compression(collected: Collected) -> None:
    code, out, _ = show(collected, "list", "work", "--json")
    assert code == 0
    [obj] = [json.loads(x) for x in out.splitlines()]
    first = obj["segment_list"][0]
    assert first["state"] == "compressed" and first["last"] is not None
    _, raw, _ = show(collected, "show", "work", "-o", "raw")
    seg1 = [x for x in raw.splitlines()][:3]  # work/1: start, record, end
    assert first["last"] == max(x[:27] for x in seg1)
    _, text, _ = show(collected, "list")
    assert all(len(x) <= 80 for x in text.splitlines())
    assert "(compressed)" not in text


@pytest.mark.timeout(60)
def test_follow_says_when_a_qube_does_not_exist_yet(collected: Collected) -> None:
    def stop(_: float) -> None:
        raise KeyboardInterrupt

    code, out, err = show(collected, "follow", "work", "ghost", "-o", "cat", sleep=stop)
    assert code == 0
    assert "no qube 'ghost'" in err and "waiting for it" in err
    # -o cat is sender text only: work's 8 lines (fewer than -n's 10), no note.
    assert len(out.splitlines()) == 8 and out.splitlines()[0] == "first session"
    code, _, err = show(collected, "follow", "work", "-r")
    assert code == 2 and "--reverse" in err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_short_times_are_each_records_receive_time(
    collected: Collected, zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        _, out, _ = show(collected, "show", "--all", "-o", "json")
        stamps = [json.loads(x)["receive_stamp"].encode() for x in out.splitlines()]
        local = [datetime.fromtimestamp(parse_timestamp(s)).astimezone() for s in stamps]
        _, precise, _ = show(collected, "show", "--all", "-o", "short-precise")
        _, short, _ = show(collected, "show", "--all")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert [" ".join(x.split(" ")[:3]) for x in precise.splitlines()] == [
        m.strftime("%b %d %H:%M:%S.%f") for m in local
    ]
    assert [" ".join(x.split(" ")[:3]) for x in short.splitlines()] == [
        m.strftime("%b %d %H:%M:%S") for m in local
    ]


@pytest.mark.timeout(60)
def test_since_inside_the_compressed_segment(collected: Collected) -> None:
    _, out, _ = show(collected, "show", "work", "-o", "json")
    every = [json.loads(x) for x in out.splitlines()]
    compressed = [o for o in every if o["segment"] == 1]
    assert compressed and collected.layout.segments("work")[0].compressed
    since = compressed[-1]["receive_stamp"]  # the compressed segment's last record
    moment = datetime.fromtimestamp(parse_timestamp(since.encode()), UTC)
    _, out, _ = show(collected, "show", "work", "--utc", "-o", "json",
                     "--since", moment.isoformat(timespec="microseconds"))  # fmt: skip
    assert [json.loads(x) for x in out.splitlines()] == [
        o for o in every if o["receive_stamp"] >= since
    ]
    assert json.loads(out.splitlines()[0])["segment"] == 1


@pytest.mark.timeout(60)
def test_local_times_carry_the_offset_of_their_own_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Summer and winter time in one store: each record shows its own offset
    # (journalctl does the same), not the offset of the day logvm runs.
    root = tmp_path / "store"
    setup_keys(StoreLayout(root))
    moments = iter([1782900000.0] * 4 + [1796200000.0] * 4)  # July 2026, Dec 2026
    store = Store(root, clock=lambda: next(moments, 1796200000.0))
    chain = store.chain("work")
    chain.open_segment(store.keys)
    for moment in (1782900000, 1796200000):
        stamp = format_timestamp(moment)
        chain.append(line_record(stamp, b"at %d" % moment), 1)
        chain.seal(store.keys)
    store.keys.close()
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        code, out, _ = show_at(root, "show", "work", "-o", "short-iso")
        _, listed, _ = show_at(root, "list", "--json")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert code == 0
    lines = [x for x in out.splitlines() if " at " in x]
    assert lines[0].startswith("2026-07-01T") and lines[0].split(" ")[0].endswith("+02:00")
    assert lines[1].startswith("2026-12-") and lines[1].split(" ")[0].endswith("+01:00")
    assert listed


def show_at(root: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.StringIO()
    code = main([*args, "--store", str(root)], stdout=out, stderr=err)
    return code, out.getvalue().decode("utf-8"), err.getvalue()


@pytest.mark.timeout(60)
def test_lines_and_recent_since_never_read_the_older_segments(
    collected: Collected, tmp_path: Path
) -> None:
    # -n and a --since inside the newest segment are answered from the newest
    # segments backwards (issue 13): an older segment that cannot be read at
    # all (here work's first, compressed one, overwritten with garbage) does
    # not matter to them, while the full read needs it.
    copy = Collected(tmp_path / "store", collected.key)
    shutil.copytree(collected.root, copy.root)
    _, want, _ = show(collected, "show", "work", "-n", "3", "-o", "json")
    newest = [json.loads(x) for x in want.splitlines()]
    assert {o["segment"] for o in newest} == {2}
    [old] = [s for s in copy.layout.segments("work") if s.seq == 1]
    assert old.compressed and old.log is not None
    old.log.write_bytes(b"\x28\xb5\x2f\xfd garbage, not a zstd frame")
    assert show(copy, "show", "work", "-n", "3", "-o", "json")[1] == want
    since = newest[0]["receive_stamp"]
    _, recent, _ = show(copy, "show", "work", "--utc", "--since", since, "-o", "json")
    assert recent == want
    code, _, err = show(copy, "show", "work", "-o", "json")
    assert code == 2 and "00000001" in err
