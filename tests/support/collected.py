"""A store written by the real ``logvm-collector``, for the reading tests.

Three qubes send at once over real sockets: ``work`` and ``personal`` send
exporter records (every priority, units, identifiers, pids), ``disp7``
sends foreign lines (free text, a syslog ``<PRI>`` line, escape sequences,
an overlong line). Each line is sent only once the previous one is stored,
so receive times interleave across the qubes deterministically. A first
session of ``work`` is closed and compressed; the others stay open.
"""

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.helpers import Collector, connect, make_store, read_acks, send, wait_for

from qubes_logvm.exporter.record import format_record
from qubes_logvm.store.compress import compress_segment
from qubes_logvm.store.layout import StoreLayout

STAMP = b"2026-11-28T18:05:26.123456+01:00"
HOSTILE = b"\x1b[2J\x1b]0;owned\x07\x1b[31mred\r\x9b31m\xe2\x80\xae\x08\x00end"


def record(prio: int, unit: str, ident: str, pid: int | None, message: bytes) -> bytes:
    """One exporter record line as logvm-exporter sends it."""
    return format_record(STAMP, b"claimed-host", prio, unit, ident, pid, message)


#: (qube, line) in the order sent; receive times follow this order.
ROUNDS: list[tuple[str, bytes]] = []
for _round in range(3):
    ROUNDS += [
        ("work", record(3, "sshd.service", "sshd", 812, b"work error %d" % _round)),
        ("personal", record(6, "cron.service", "CRON", 90, b"personal info %d" % _round)),
        ("disp7", b"plain line %d from disp7\n" % _round),
        ("work", record(4, "app.service", "app", None, b"Warning Mixed Case %d" % _round)),
        ("personal", record(7, "-", "kernel", None, b"personal debug %d" % _round)),
        ("disp7", b"<11>syslog err line %d\n" % _round),
    ]
ROUNDS += [
    ("work", record(2, "sshd.service", "sshd", 812, HOSTILE)),
    ("disp7", HOSTILE + b"\n"),
    ("personal", b"x" * 5000 + b"\n"),
]


@dataclass
class Collected:
    """The store, its verification key and what was sent."""

    root: Path
    key: str
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def layout(self) -> StoreLayout:
        """The store's paths."""
        return StoreLayout(self.root)


@contextlib.contextmanager
def collecting(workdir: Path, config: dict[str, Any]) -> Iterator[Collector]:
    """A real collector on a new store; stopped cleanly after the block (killed on error)."""
    collector = Collector(workdir, config)
    collector.vkey = make_store(collector.store)
    collector.start()
    try:
        yield collector
        collector.stop()
    finally:
        collector.kill()


def await_ack(sock: socket.socket, count: int, qube: str) -> None:
    """Read the connection's acknowledgements until ``ack <count>``."""
    got = b""
    sock.settimeout(30)
    while b"ack %d\n" % count not in got:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"collector did not acknowledge a line of {qube}")
        got += chunk
    sock.settimeout(None)


def end_sender(sock: socket.socket) -> None:
    """A sender's end: its side closed, every acknowledgement read."""
    sock.shutdown(socket.SHUT_WR)
    read_acks(sock)
    sock.close()


def build_collected(workdir: Path) -> Collected:
    """Run a collector, send ROUNDS, compress work's first session; stop nothing else."""
    # No linger: work's first call is a session (and a segment) of its own.
    with collecting(workdir, {"max_line_bytes": 4096, "session_linger": 0}) as collector:
        send(collector.socket, "work", record(5, "early.service", "early", 1, b"first session"))
        layout = StoreLayout(collector.store)
        socks: dict[str, socket.socket] = {}
        for qube in ("work", "personal", "disp7"):
            socks[qube] = connect(collector.socket, qube)
        wait_for(lambda: all(layout.qube_dir(q).is_dir() for q in socks))
        sent = dict.fromkeys(socks, 0)
        for qube, line in ROUNDS:
            # The next line goes out once this one is acknowledged (stamped and
            # durable): receive times interleave in ROUNDS' order.
            socks[qube].sendall(line)
            sent[qube] += line.count(b"\n")
            await_ack(socks[qube], sent[qube], qube)
        for sock in socks.values():
            end_sender(sock)
    [first] = [s for s in layout.segments("work") if s.seq == 1]
    compress_segment(layout, first)
    return Collected(collector.store, collector.vkey, list(ROUNDS))
