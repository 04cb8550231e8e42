"""Real journald (private namespace) -> real logvm-exporter -> fake collector."""

import signal
from pathlib import Path

import pytest
from exporter.helpers import FakeCollector, MakeExporter, deployed_program, wait_for, write_config

from support.journald import Journald

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _entries(prefix: str, count: int, **fields: object) -> list[dict[str, object]]:
    return [
        {"MESSAGE": f"{prefix} {i}", "SYSLOG_IDENTIFIER": "tester", **fields} for i in range(count)
    ]


def _mine(collector: FakeCollector, prefix: str) -> list[str]:
    return [m for m in collector.messages() if m.startswith(prefix + " ")]


def _config(tmp_path: Path, collector: FakeCollector, **extra: object) -> Path:
    extra.setdefault("sources", {"journal": {"identifiers": {"include": ["tester"]}}})
    return write_config(tmp_path / "exporter.yaml", collector.command, tmp_path / "state", **extra)


def test_every_entry_arrives_once_in_order_with_fields(
    tmp_path: Path, journald: Journald, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter(_config(tmp_path, collector), journald).start()
    odd = "two\nlines, a tab\tand \x1b[31mescape\x07 and ünïcödé \\ backslash"
    journald.send(
        [{"MESSAGE": odd, "SYSLOG_IDENTIFIER": "tester", "PRIORITY": 3, "SYSLOG_PID": "4242"}]
    )
    journald.send(_entries("seq", 300))
    journald.cat(["from systemd-cat"], tag="tester", priority="warning")
    wait_for(lambda: len(collector.lines()) >= 302, what="302 records")
    assert exporter.stop() == 0
    records = collector.records()
    assert len(records) == 302
    first = records[0]
    assert first.message.decode() == odd
    assert (first.ident, first.pid, first.priority) == ("tester", 4242, "err")
    assert first.host and first.time.endswith(("+00:00", "Z")) or "+" in first.time
    assert [r.message.decode() for r in records[1:301]] == [f"seq {i}" for i in range(300)]
    assert records[301].priority == "warning"
    assert records[301].message == b"from systemd-cat"
    assert all(b"\n" not in line for line in collector.lines())


def test_filters_priority_and_identifiers(
    tmp_path: Path, journald: Journald, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    sources = {
        "journal": {
            "min_priority": "warning",
            "identifiers": {"include": ["keep*"], "exclude": ["keep-not"]},
        }
    }
    config = _config(tmp_path, collector, sources=sources)
    exporter = make_exporter(config, journald).start()
    journald.send(
        [
            {"MESSAGE": "a kept", "SYSLOG_IDENTIFIER": "keep", "PRIORITY": 4},
            {"MESSAGE": "b too chatty", "SYSLOG_IDENTIFIER": "keep", "PRIORITY": 6},
            {"MESSAGE": "c other ident", "SYSLOG_IDENTIFIER": "other", "PRIORITY": 2},
            {"MESSAGE": "d excluded", "SYSLOG_IDENTIFIER": "keep-not", "PRIORITY": 2},
            {"MESSAGE": "e kept by glob", "SYSLOG_IDENTIFIER": "keeper", "PRIORITY": 0},
            {"MESSAGE": "z end", "SYSLOG_IDENTIFIER": "keep", "PRIORITY": 1},
        ]
    )
    wait_for(lambda: "z end" in collector.messages(), what="the last entry")
    assert exporter.stop() == 0
    assert collector.messages() == ["a kept", "e kept by glob", "z end"]


def test_restart_resumes_at_cursor(
    tmp_path: Path, journald: Journald, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    config = _config(tmp_path, collector)
    exporter = make_exporter(config, journald).start()
    journald.send(_entries("r", 100))
    wait_for(lambda: len(_mine(collector, "r")) == 100, what="first 100")
    assert exporter.stop() == 0  # clean stop: cursor saved, nothing sent twice
    journald.send(_entries("r", 200)[100:])
    exporter.start()
    wait_for(lambda: len(_mine(collector, "r")) >= 200, what="all 200")
    assert exporter.stop() == 0
    assert _mine(collector, "r") == [f"r {i}" for i in range(200)]


def test_kill_9_loses_nothing(
    tmp_path: Path, journald: Journald, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    config = _config(tmp_path, collector)
    exporter = make_exporter(config, journald).start()
    journald.send(_entries("k", 2000))
    wait_for(lambda: len(_mine(collector, "k")) >= 500, what="some entries")
    exporter.stop(signal.SIGKILL)
    exporter.start()
    wait_for(lambda: "k 1999" in _mine(collector, "k"), what="the last entry")
    exporter.stop()
    got = _mine(collector, "k")
    # At least once: every entry, in order; a resent tail may repeat.
    deduped = list(dict.fromkeys(got))
    assert deduped == [f"k {i}" for i in range(2000)]
    assert len(got) - len(deduped) <= 20000  # never more than the unacked window


@pytest.mark.timeout(300)
def test_collector_killed_mid_stream_loses_nothing(
    tmp_path: Path, journald: Journald, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    config = _config(tmp_path, collector)
    exporter = make_exporter(config, journald).start()
    collector.crash_after(500, 700, 700, 700)  # four connections die mid-stream
    journald.send(_entries("c", 3000))
    # Bounds for a loaded 2-core machine: the exporter reconnects with backoff.
    wait_for(lambda: collector.crashes() == 4, timeout=120, what="four crashes")
    wait_for(lambda: "c 2999" in _mine(collector, "c"), timeout=60, what="the last entry")
    assert exporter.stop() == 0
    assert list(dict.fromkeys(_mine(collector, "c"))) == [f"c {i}" for i in range(3000)]
    assert collector.connections() >= 5


def test_rotation_and_vacuum(
    tmp_path: Path, journald: Journald, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    config = _config(tmp_path, collector)
    exporter = make_exporter(config, journald).start()
    journald.send(_entries("v", 100))
    wait_for(lambda: len(_mine(collector, "v")) == 100, what="before rotation")
    journald.rotate()
    journald.send(_entries("v", 200)[100:])
    journald.rotate()
    journald.vacuum(files=1)
    journald.send(_entries("v", 300)[200:])
    wait_for(lambda: len(_mine(collector, "v")) >= 300, what="after rotation")
    assert exporter.stop() == 0
    # Down while the file holding the saved cursor is rotated and deleted:
    # resume at the oldest entry that still exists.
    journald.rotate()
    journald.send(_entries("v", 400)[300:])
    journald.rotate()
    journald.vacuum(files=2)  # the active file and the newest archive stay
    journald.send(_entries("v", 500)[400:])
    exporter.start()
    wait_for(lambda: "v 499" in _mine(collector, "v"), what="after restart")
    assert exporter.stop() == 0
    assert _mine(collector, "v") == [f"v {i}" for i in range(500)]


def test_denied_backs_off_then_catches_up(
    tmp_path: Path, journald: Journald, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    collector.set("deny")
    config = _config(tmp_path, collector)
    exporter = make_exporter(config, journald).start()
    journald.send(_entries("d", 50))
    wait_for(lambda: collector.connections() >= 2, what="two denied attempts")
    # Denied calls are retried slowly (backoff.max = 1s here), never in a loop.
    attempts = collector.connections()
    wait_for(lambda: collector.connections() > attempts, what="a later retry")
    assert collector.connections() < 20
    assert collector.lines() == []
    collector.clear("deny")
    wait_for(lambda: len(_mine(collector, "d")) == 50, what="catch-up")
    assert exporter.stop() == 0
    assert "denied by dom0's qrexec policy" in exporter.log.read_text()


def test_sigterm_drains_what_is_in_the_journal(
    tmp_path: Path, journald: Journald, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    config = _config(tmp_path, collector)
    exporter = make_exporter(config, journald).start()
    collector.set("down")  # the LogVM is away while the entries are written
    journald.send(_entries("t", 500))
    wait_for(lambda: collector.connections() >= 1, what="a failed attempt")
    collector.clear("down")
    assert exporter.stop() == 0
    assert _mine(collector, "t") == [f"t {i}" for i in range(500)]


@pytest.mark.slow
def test_memory_bounded_with_backlog_and_slow_collector(
    tmp_path: Path, journald: Journald, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    collector.set("down")
    config = _config(tmp_path, collector)
    exporter = make_exporter(config, journald)
    exporter.program = deployed_program()  # as a qube runs it (see helpers.DEPLOYED)
    exporter.start()
    big = "x" * 400
    for chunk in range(10):
        journald.send(_entries(f"m{chunk} {big}", 2000))
    wait_for(lambda: collector.connections() >= 2, what="retries")
    rss_backlog = exporter.rss_kib()
    collector.clear("down")
    collector.set("slow", "0.05")
    wait_for(lambda: len(collector.lines()) >= 5000, what="a slow start")
    rss_slow = exporter.rss_kib()
    collector.clear("slow")
    wait_for(lambda: len(collector.lines()) >= 20000, timeout=60, what="catch-up")
    rss_after = exporter.rss_kib()
    assert exporter.stop() == 0
    # The design bar (25 MiB), not growing with the 9 MB backlog. What counts:
    # VmRSS without the journal files' own pages (docs/exporter.md, "Memory").
    assert rss_backlog <= 25 * 1024, rss_backlog
    assert rss_slow <= 25 * 1024, rss_slow
    assert rss_after <= 25 * 1024, rss_after
    assert len(set(collector.lines())) == 20000
