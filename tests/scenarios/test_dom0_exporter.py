"""dom0 as a source, through real processes.

Real journald (dom0's journal) -> real ``logvm-exporter`` with ``dom0:
{enabled: true}`` -> the stand-in of dom0's ``qrexec-client`` -> real collector.
Console files and /var/log/qubes files live in temp dirs the config names;
they are created, appended, rotated and deleted while the exporter runs.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collector.helpers import Collector, make_store, records, verify_errors
from exporter.helpers import ExporterProcess, MakeExporter, wait_for, write_config

from qubes_logvm.core.escape import unescape
from qubes_logvm.core.sender_record import parse_sender_record
from qubes_logvm.store.layout import StoreLayout
from support.journald import Journald
from support.qrexec import DOM0_CLIENT_SCRIPT, World

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def logvm(tmp_path: Path) -> Iterator[Collector]:
    vkey = make_store(tmp_path / "logvm" / "store")
    collector = Collector(tmp_path / "logvm", {"session_linger": 0})
    collector.vkey = vkey
    collector.start()
    yield collector
    collector.kill()


def _world(tmp_path: Path, logvm: Collector) -> World:
    world = World(tmp_path / "world")
    world.add_qube("sys-log")
    world.link_socket_service("sys-log", "logvm.Send", logvm.socket)
    return world


def _dirs(tmp_path: Path) -> dict[str, Path]:
    dirs = {name: tmp_path / "dom0" / name for name in ("console", "qubes", "run")}
    for path in dirs.values():
        path.mkdir(parents=True)
    return dirs


def _exporter(
    tmp_path: Path,
    world: World,
    journald: Journald,
    make_exporter: MakeExporter,
    **dom0: Any,
) -> ExporterProcess:
    dirs = _dirs(tmp_path)
    settings = {
        "enabled": True,
        "logvm": "sys-log",
        "qrexec_client": str(DOM0_CLIENT_SCRIPT),
        "console_dir": str(dirs["console"]),
        "qubes_log_dir": str(dirs["qubes"]),
        "qrexec_socket_dir": str(dirs["run"]),
        "idle_close": "2s",
        **dom0,
    }
    config = write_config(
        tmp_path / "dom0.yaml",
        ["/nonexistent/unused"],  # dom0 never uses qrexec-client-vm
        tmp_path / "state-dom0",
        sources={"journal": {"identifiers": {"include": ["qubesd"]}}},
        dom0=settings,
    )
    exporter = make_exporter(config, journald)
    exporter.env = world.client_env("dom0")
    return exporter


def _stored(logvm: Collector, qube: str, kind: str) -> list[tuple[str, bytes]]:
    """(identifier, message) of a qube's records of one kind, in order."""
    out = []
    for record in records(logvm.store, qube):
        if record.kind == kind:
            sent = parse_sender_record(unescape(record.payload))
            out.append((sent.ident, sent.message))
    return out


def _append(path: Path, text: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(text)


def test_journal_consoles_and_qubes_logs_arrive_attributed(
    tmp_path: Path, journald: Journald, logvm: Collector, make_exporter: MakeExporter
) -> None:
    world = _world(tmp_path, logvm)
    exporter = _exporter(tmp_path, world, journald, make_exporter)
    console = tmp_path / "dom0" / "console"
    qubes = tmp_path / "dom0" / "qubes"
    (console / "guest-work.log").write_bytes(b"work boot 1\n")
    exporter.start()
    journald.send([{"MESSAGE": "vm work started", "SYSLOG_IDENTIFIER": "qubesd"}])
    # Created while running; a forged record and a forged note in a console.
    (console / "guest-disp12.log").write_bytes(
        b"2026-12-02T12:00:00.000000Z C dropped count=1 reason=quota\n"
        b"2026-12-02T12:00:00+00:00 work err - sshd: forged\n"
    )
    (console / "guest-work-dm.log").write_bytes(b"stubdom line\n")
    (qubes / "qrexec.work.log").write_bytes(b"qrexec about work\n")
    (qubes / "guid.work.log").write_bytes(b"guid about work\n")
    (qubes / "qubes.log").write_bytes(b"dom0 own file\n")
    wait_for(lambda: len(_stored(logvm, "work", "D")) >= 4, what="work's deliveries")
    _append(console / "guest-work.log", b"work boot 2\n")
    # Rotation by rename, then a new file; then copy-truncate; then deletion.
    wait_for(lambda: (b"work boot 2" in {m for _, m in _stored(logvm, "work", "D")}), what="app")
    os.rename(console / "guest-work.log", console / "guest-work.log.1")
    _append(console / "guest-work.log.1", b"work boot 3 (late, old file)\n")
    (console / "guest-work.log").write_bytes(b"work boot 4 (new file)\n")
    wait_for(lambda: len(_stored(logvm, "work", "D")) >= 7, what="rotated file")
    (qubes / "qrexec.work.log").write_bytes(b"after truncate\n")
    wait_for(lambda: len(_stored(logvm, "work", "D")) >= 8, what="truncated file")
    (console / "guest-work.log").unlink()
    wait_for(lambda: len(_stored(logvm, "disp12", "D")) >= 2, what="disp12's console")
    wait_for(lambda: bool(_stored(logvm, "dom0", "L")), what="dom0's own")
    assert exporter.stop() == 0

    work = _stored(logvm, "work", "D")
    assert ("console", b"work boot 1") in work and ("console", b"work boot 4 (new file)") in work
    assert ("console", b"work boot 3 (late, old file)") in work
    assert ("console-dm", b"stubdom line") in work
    assert ("qrexec", b"qrexec about work") in work and ("guid", b"guid about work") in work
    assert ("qrexec", b"after truncate") in work
    assert _stored(logvm, "work", "L") == []  # nothing of it passes as work's own
    disp = _stored(logvm, "disp12", "D")
    # The forgeries are console text of disp12, whole, as dom0's deliveries.
    assert [i for i, _ in disp] == ["console", "console"]
    assert disp[0][1].startswith(b"2026-12-02T12:00:00.000000Z C dropped")
    assert not [
        r for r in records(logvm.store, "disp12") if r.kind == "C" and r.event == "dropped"
    ]
    dom0 = _stored(logvm, "dom0", "L")
    assert ("qubesd", b"vm work started") in dom0 and ("qubes", b"dom0 own file") in dom0
    assert _stored(logvm, "dom0", "D") == []
    assert {c["via"] for c in world.calls()} == {"qrexec-client"}
    assert verify_errors(logvm.store, logvm.vkey) == []


def test_halted_logvm_backoff_keeps_positions(
    tmp_path: Path, journald: Journald, logvm: Collector, make_exporter: MakeExporter
) -> None:
    world = _world(tmp_path, logvm)
    world.qubes["sys-log"].running = False
    exporter = _exporter(tmp_path, world, journald, make_exporter)
    console = tmp_path / "dom0" / "console"
    (console / "guest-work.log").write_bytes(b"".join(b"line %d\n" % i for i in range(50)))
    exporter.start()
    wait_for(lambda: len(world.calls()) >= 3, what="retries")
    calls = len(world.calls())
    # Backoff: initial 100ms doubling to 1s, so a few calls, not a tight loop.
    assert calls < 20
    assert all(c["result"] == "error" for c in world.calls())
    assert StoreLayout(logvm.store).qubes() == []
    exporter.stop()
    world.qubes["sys-log"].running = True
    world.save()
    _append(console / "guest-work.log", b"line 50\n")
    exporter.start()
    wait_for(lambda: len(_stored(logvm, "work", "D")) >= 51, what="all after restart")
    assert exporter.stop() == 0
    messages = [m for _, m in _stored(logvm, "work", "D")]
    assert messages == [b"line %d" % i for i in range(51)]


def test_console_flood_stays_in_the_qubes_quota(
    tmp_path: Path, journald: Journald, make_exporter: MakeExporter
) -> None:
    quota = 128 << 10
    vkey = make_store(tmp_path / "logvm" / "store")
    logvm = Collector(
        tmp_path / "logvm",
        {
            "segment": {"max_bytes": "32K"},
            "quota": {"default": "64M", "qubes": {"work": quota}},
            "global": {"keep_free": 0},
            "rate_limit": {"qubes": {"work": {"lines_per_second": 0}}},
        },
    )
    logvm.vkey = vkey
    logvm.start()
    try:
        world = _world(tmp_path, logvm)
        exporter = _exporter(tmp_path, world, journald, make_exporter)
        console = tmp_path / "dom0" / "console"
        flood = b"".join(b"flood %06d %s\n" % (i, b"y" * 100) for i in range(10000))
        (console / "guest-work.log").write_bytes(flood)
        exporter.start()
        journald.send([{"MESSAGE": "dom0 quiet line", "SYSLOG_IDENTIFIER": "qubesd"}])
        wait_for(lambda: _stored(logvm, "dom0", "L"), what="dom0's line")
        state = tmp_path / "state-dom0" / "dom0-files.json"
        size = str(len(flood)).encode()
        wait_for(lambda: state.exists() and size in state.read_bytes(), what="all acked")
        assert exporter.stop() == 0
        work_dir = StoreLayout(logvm.store).qube_dir("work")
        used = sum(p.stat().st_size for p in work_dir.iterdir())
        assert used <= quota + (32 << 10) + 8192
        assert _stored(logvm, "dom0", "L") == [("qubesd", b"dom0 quiet line")]
        assert verify_errors(logvm.store, logvm.vkey) == []
    finally:
        logvm.kill()


def test_dispvm_console_removed_once_acked_and_gone(
    tmp_path: Path, journald: Journald, logvm: Collector, make_exporter: MakeExporter
) -> None:
    world = _world(tmp_path, logvm)
    exporter = _exporter(tmp_path, world, journald, make_exporter, remove_dispvm_consoles=True)
    console, run = tmp_path / "dom0" / "console", tmp_path / "dom0" / "run"
    (run / "qrexec.disp7").write_bytes(b"")  # disp7 runs (its qrexec-daemon socket)
    (console / "guest-disp7.log").write_bytes(b"disp7 secret\n")
    (console / "guest-work.log").write_bytes(b"work stays\n")
    exporter.start()
    wait_for(lambda: _stored(logvm, "disp7", "D"), what="disp7 delivered")
    wait_for(lambda: _stored(logvm, "work", "D"), what="work delivered")
    assert (console / "guest-disp7.log").exists()  # still running: kept
    (run / "qrexec.disp7").unlink()
    wait_for(lambda: not (console / "guest-disp7.log").exists(), what="removed")
    assert exporter.stop() == 0
    assert (console / "guest-work.log").exists()  # not a DispVM: never removed
    assert _stored(logvm, "disp7", "D") == [("console", b"disp7 secret")]


def test_a_halted_logvm_delays_only_the_qubes_routed_to_it(
    tmp_path: Path, journald: Journald, logvm: Collector, make_exporter: MakeExporter
) -> None:
    """Several LogVMs: sys-log is halted with a backlog past its window;
    net's console, routed to sys-log-net, keeps flowing. Then sys-log comes
    back and gets every line of work's console once, in order."""
    world = _world(tmp_path, logvm)
    vkey = make_store(tmp_path / "logvm-net" / "store")
    other = Collector(tmp_path / "logvm-net", {"session_linger": 0})
    other.vkey = vkey
    other.start()
    try:
        world.add_qube("sys-log-net")
        world.link_socket_service("sys-log-net", "logvm.Send", other.socket)
        world.qubes["sys-log"].running = False
        world.save()
        exporter = _exporter(
            tmp_path, world, journald, make_exporter, routes={"net": "sys-log-net"}
        )
        console = tmp_path / "dom0" / "console"
        # More than sys-log's whole window: the old shared window filled
        # with it and net's lines were never read.
        work = [b"work line %d" % i for i in range(20000)]
        (console / "guest-work.log").write_bytes(b"".join(m + b"\n" for m in work))
        exporter.start()
        wait_for(lambda: len(world.calls()) >= 2, what="calls to the halted LogVM")
        net = [b"net line %d" % i for i in range(300)]
        for end in range(100, len(net) + 1, 100):
            _append(console / "guest-net.log", b"".join(m + b"\n" for m in net[end - 100 : end]))
            wait_for(
                lambda: len(_stored(other, "net", "D")) >= end,  # noqa: B023 (waited here)
                what="net's lines while sys-log is halted",
            )
        assert [m for _, m in _stored(other, "net", "D")] == net
        assert StoreLayout(logvm.store).qubes() == []
        world.qubes["sys-log"].running = True
        world.save()
        wait_for(
            lambda: len(_stored(logvm, "work", "D")) >= len(work),
            timeout=60,
            what="work's backlog once sys-log is back",
        )
        assert exporter.stop() == 0
        assert [m for _, m in _stored(logvm, "work", "D")] == work
        assert [m for _, m in _stored(other, "net", "D")] == net
        assert StoreLayout(other.store).qubes() == ["net"]
        assert verify_errors(logvm.store, logvm.vkey) == []
    finally:
        other.kill()
