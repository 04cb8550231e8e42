"""Syslog source: parsing, and the real daemon fed by logger(1) and a real rsyslog."""

import calendar
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from exporter.helpers import ExporterProcess, FakeCollector, MakeExporter, wait_for, write_config

from qubes_logvm.exporter.syslog import parse_syslog

pytestmark = pytest.mark.timeout(60)
NOW = time.mktime((2026, 11, 28, 17, 0, 0, 0, 0, -1))


@pytest.mark.parametrize(
    ("raw", "host", "priority", "ident", "pid", "message"),
    [
        # syslog(3) on /dev/log: no hostname
        (b"<30>Nov 28 16:58:34 sshd[812]: Accepted key", b"here", 6, b"sshd", 812, b"Accepted key"),  # noqa: E501
        # forwarded RFC 3164 with a hostname
        (b"<11>Nov  3 01:02:03 work app: failed", b"work", 3, b"app", None, b"failed"),
        # RFC 5424 with structured data and a BOM
        (
            b'<165>1 2026-11-28T16:00:00.5Z web evntslog 42 ID47 [x@1 a="b"] \xef\xbb\xbfhi there',
            b"web", 5, b"evntslog", 42, b"hi there",
        ),
        # RFC 5424 with nil fields
        (b"<14>1 - - - - - - bare", b"here", 6, None, None, b"bare"),
        # no PRI at all: shipped whole
        (b"just text", b"here", None, None, None, b"just text"),
    ],
)  # fmt: skip
def test_parse(
    raw: bytes,
    host: bytes,
    priority: int | None,
    ident: bytes | None,
    pid: int | None,
    message: bytes,
) -> None:
    _, got_host, got_priority, got_ident, got_pid, got_message = parse_syslog(raw, NOW, b"here")
    assert (got_host, got_priority, got_ident, got_pid, got_message) == (
        host, priority, ident, pid, message,
    )  # fmt: skip


def test_5424_time_is_kept_as_an_instant() -> None:
    usec, *_ = parse_syslog(b"<14>1 2026-11-28T16:00:00.25+01:00 h a - - - m", NOW, b"x")
    assert usec == (calendar.timegm((2026, 11, 28, 15, 0, 0)) * 1_000_000) + 250_000


def _start(
    tmp_path: Path, collector: FakeCollector, make_exporter: MakeExporter
) -> tuple[ExporterProcess, Path]:
    sock = tmp_path / "syslog.sock"
    sources = {"journal": {"enabled": False}, "syslog": {"enabled": True, "socket": str(sock)}}
    config = write_config(
        tmp_path / "exporter.yaml", collector.command, tmp_path / "state", sources=sources
    )
    return make_exporter(config).start(), sock


def test_logger_to_socket(
    tmp_path: Path, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    exporter, sock = _start(tmp_path, collector, make_exporter)
    subprocess.run(["logger", "-u", str(sock), "-t", "plain", "-p", "user.err", "m1"], check=True)
    subprocess.run(
        ["logger", "-u", str(sock), "--rfc5424", "-t", "modern", "--id=77", "m2 x"], check=True
    )
    wait_for(lambda: len(collector.lines()) >= 2)
    assert exporter.stop() == 0
    first, second = collector.records()
    assert (first.ident, first.priority, first.message) == ("plain", "err", b"m1")
    assert (second.ident, second.pid, second.message) == ("modern", 77, b"m2 x")


@pytest.mark.skipif(shutil.which("rsyslogd") is None, reason="rsyslog is not installed")
def test_real_rsyslog_forwards(
    tmp_path: Path, collector: FakeCollector, make_exporter: MakeExporter
) -> None:
    exporter, sock = _start(tmp_path, collector, make_exporter)
    inbox = tmp_path / "rsyslog-in.sock"
    work = tmp_path / "rsyslog-work"
    work.mkdir()
    conf = tmp_path / "rsyslog.conf"
    # The one-line forwarding rule documented in docs/exporter.md, after an input
    # socket of the test's own (never the host's /dev/log).
    conf.write_text(
        f'global(workDirectory="{work}")\n'
        'module(load="imuxsock" SysSock.Use="off")\n'
        f'input(type="imuxsock" Socket="{inbox}" CreatePath="on")\n'
        f"$ModLoad omuxsock\n$OMUxSockSocket {sock}\n*.* :omuxsock:\n"
    )
    rsyslog = subprocess.Popen(
        ["rsyslogd", "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslog.pid")],
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(inbox.exists, what="rsyslog's input socket")
        for i in range(50):
            subprocess.run(["logger", "-u", str(inbox), "-t", "viarsyslog", f"r {i}"], check=True)
        wait_for(lambda: len([m for m in collector.messages() if m.startswith("r ")]) >= 50)
    finally:
        rsyslog.terminate()
        rsyslog.wait(timeout=10)
    assert exporter.stop() == 0
    mine = [r for r in collector.records() if r.ident == "viarsyslog"]
    assert [r.message.decode() for r in mine] == [f"r {i}" for i in range(50)]
