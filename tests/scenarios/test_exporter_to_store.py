"""Real journald -> real exporter -> qrexec stand-in (policy) -> real collector -> store."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collector.helpers import Collector, make_store, sent_lines, verify_errors
from exporter.helpers import ExporterProcess, MakeExporter, wait_for, write_config

from qubes_logvm.core.sender_record import ParsedRecord, parse_sender_record
from support.journald import Journald
from support.qrexec import SOCKET_PEERS, World

SocketPeer = dict[str, Any] | None

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def logvm(tmp_path: Path) -> Iterator[Collector]:
    vkey = make_store(tmp_path / "logvm" / "store")
    collector = Collector(tmp_path / "logvm")
    collector.vkey = vkey
    collector.start()
    yield collector
    collector.kill()


@pytest.fixture(params=sorted(SOCKET_PEERS))
def socket_peer(request: pytest.FixtureRequest) -> SocketPeer:
    """qrexec reaches the collector as root or as the LogVM's default user."""
    return SOCKET_PEERS[request.param]


def _world(tmp_path: Path, logvm: Collector, peer: SocketPeer = None) -> World:
    world = World(tmp_path / "world")
    world.add_qube("sys-log", socket_peer=peer)
    world.add_qube("work")
    world.link_socket_service("sys-log", "logvm.Send", logvm.socket)
    return world


def _stored(logvm: Collector, qube: str) -> list[ParsedRecord]:
    out = []
    for kind, payload, _cut in sent_lines(logvm.store, qube):
        if kind == "L":
            out.append(parse_sender_record(payload))
    return out


def _exporter(
    tmp_path: Path,
    world: World,
    journald: Journald,
    make_exporter: MakeExporter,
    qube: str = "work",
) -> ExporterProcess:
    command, env = world.client_command(qube)
    sources = {"journal": {"identifiers": {"include": ["e2e"]}}}
    config = write_config(
        tmp_path / f"{qube}.yaml", command, tmp_path / f"state-{qube}", sources=sources
    )
    exporter = make_exporter(config, journald)
    exporter.env = env
    return exporter


def test_journal_to_sealed_store_through_policy(
    tmp_path: Path,
    journald: Journald,
    logvm: Collector,
    make_exporter: MakeExporter,
    socket_peer: SocketPeer,
) -> None:
    world = _world(tmp_path, logvm, socket_peer)
    exporter = _exporter(tmp_path, world, journald, make_exporter).start()
    entries = [{"MESSAGE": f"e {i}\nsecond line", "SYSLOG_IDENTIFIER": "e2e", "PRIORITY": 5}
               for i in range(1000)]  # fmt: skip
    journald.send(entries[:500])
    wait_for(lambda: len(_stored(logvm, "work")) >= 500, what="first half stored")
    logvm.kill()  # the LogVM crashes mid-stream, then comes back
    journald.send(entries[500:])
    logvm.start()
    wait_for(lambda: len({r.message for r in _stored(logvm, "work")}) >= 1000, what="all stored")
    assert exporter.stop() == 0
    stored = _stored(logvm, "work")
    messages = list(dict.fromkeys(r.message for r in stored))
    assert messages == [f"e {i}\nsecond line".encode() for i in range(1000)]
    assert {(r.ident, r.priority) for r in stored} == {("e2e", "notice")}
    assert world.calls() and world.calls()[0]["source"] == "work"
    assert verify_errors(logvm.store, logvm.vkey) == []


def test_denied_by_the_projects_policy(
    tmp_path: Path, journald: Journald, logvm: Collector, make_exporter: MakeExporter
) -> None:
    world = _world(tmp_path, logvm)
    world.add_qube("sys-other")
    # The LogVM calling logvm.Send on itself is denied by the shipped policy.
    exporter = _exporter(tmp_path, world, journald, make_exporter, qube="sys-log").start()
    journald.send([{"MESSAGE": "loop", "SYSLOG_IDENTIFIER": "e2e"}])
    wait_for(lambda: "denied by dom0's qrexec policy" in exporter.log.read_text(), what="denial")
    exporter.stop()
    assert _stored(logvm, "sys-log") == []
