"""Running a real ``logvm-collector`` and talking to it as the qrexec agent does."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from qubes_logvm.collector.lines import LineSplitter
from qubes_logvm.collector.qubewriter import Feed, QubeWriter
from qubes_logvm.core.escape import unescape
from qubes_logvm.core.records import Record, parse_record
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.verify import verify_store
from support.programs import program
from support.qrexec import QUBES_GID

COLLECTOR = program("logvm-collector")


def make_store(root: Path, epoch_seconds: float = 1.0, store_format: int | None = None) -> str:
    """A fresh store (of ``store_format``, else the default); returns the verification key."""
    if store_format is None:
        return setup_keys(StoreLayout(root), epoch_seconds=epoch_seconds)
    return setup_keys(StoreLayout(root), epoch_seconds=epoch_seconds, store_format=store_format)


class Collector:
    """A collector subprocess on a store in ``workdir``."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.store = workdir / "store"
        self.socket = workdir / "logvm.Send.sock"
        self.config_path = workdir / "collector.yaml"
        self.stderr_path = workdir / "collector.err"
        self.write_config(config or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.vkey = ""

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the YAML config file the collector reads (with the test's
        group ``qubes`` as ``allowed_group`` unless it names one)."""
        self.config_path.write_text(yaml.safe_dump({"allowed_group": QUBES_GID, **config}))

    def start(self, timeout: float = 15.0, env: dict[str, str] | None = None) -> "Collector":
        """Start and wait until the socket accepts connections (``env``: extra
        environment, e.g. a failure point of :mod:`qubes_logvm.core.faults`)."""
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        err = self.stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(COLLECTOR),
                "--socket",
                str(self.socket),
                "--store",
                str(self.store),
                "--config",
                str(self.config_path),
            ],
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        err.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited: {self.stderr()}")
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.socket))
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("collector did not start listening")

    def stderr(self) -> str:
        """What the collector logged."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def signal(self, signum: int) -> None:
        """Send a signal."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        self.signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL (also the fixture finalizer)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    @property
    def pid(self) -> int:
        """The collector's process id."""
        if self.proc is None:
            raise RuntimeError("not running")
        return self.proc.pid


def connect(
    sock_path: Path, qube: str | None = None, descriptor: bytes | None = None
) -> socket.socket:
    """Connect and write the descriptor as qrexec would."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(sock_path))
    if descriptor is None:
        descriptor = b"logvm.Send %s\0" % qube.encode() if qube else b""
    if descriptor:
        sock.sendall(descriptor)
    return sock


def read_acks(sock: socket.socket) -> list[int]:
    """Read until the collector closes; return the acks received."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return [int(line.split(b" ")[1]) for line in data.split(b"\n") if line.startswith(b"ack ")]


def send(sock_path: Path, qube: str, data: bytes, descriptor: bytes | None = None) -> list[int]:
    """One whole call: descriptor, data, EOF; returns the acks."""
    with connect(sock_path, qube, descriptor) as sock:
        try:
            if data:
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused: the collector closed the connection
        return read_acks(sock)


def records(store: Path, qube: str) -> list[Record]:
    """All records of a qube, segments in order."""
    layout = StoreLayout(store)
    out = []
    for segment in layout.segments(qube):
        if segment.log is None or segment.compressed:
            continue
        for line in segment.log.read_bytes().split(b"\n")[:-1]:
            out.append(parse_record(line))
    return out


def sent_lines(store: Path, qube: str) -> list[tuple[str, bytes, int]]:
    """The qube's own lines as (kind, unescaped payload, bytes cut)."""
    return [(r.kind, unescape(r.payload), r.cut) for r in records(store, qube) if r.kind != "C"]


def notes(store: Path, qube: str, event: str | None = None) -> list[Record]:
    """The collector's notes in a qube's chain."""
    return [
        r for r in records(store, qube) if r.kind == "C" and (event is None or r.event == event)
    ]


def verify_errors(store: Path, vkey: str) -> list[str]:
    """Errors ``logvm verify`` logic finds (an unsealed tail is a warning, not listed)."""
    return [str(f) for f in verify_store(store, vkey).errors]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def expected_lines(data: bytes, cap: int) -> list[tuple[str, bytes, int]]:
    """Reference model: what the collector must store for one connection's bytes."""
    parts = data.split(b"\n")
    out = [("L", line[:cap], max(0, len(line) - cap)) for line in parts[:-1]]
    if parts[-1]:
        out.append(("P", parts[-1][:cap], max(0, len(parts[-1]) - cap)))
    return out


class Sink(Feed):
    """A connection as the writer sees it: records the acks it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.acks: list[tuple[int, bool]] = []

    def send_ack(self, handled: int, *, final: bool) -> None:
        self.acks.append((handled, final))

    def set_reading(self, reading: bool) -> None:
        pass

    def abort(self) -> None:
        raise AssertionError("the writer failed")


async def until(done: Callable[[], bool]) -> None:
    """Let the writer's task and its worker thread run until ``done()`` (bounded)."""
    async with asyncio.timeout(20):
        while not done():
            await asyncio.sleep(0.005)


def submit_text(writer: QubeWriter, feed: Feed, data: bytes) -> None:
    """Cut ``data`` into records as a connection does, and queue them."""
    splitter = LineSplitter(writer.shared.config.max_line_bytes)
    records, nlines = splitter.feed(data, writer.receive_time())
    writer.submit(feed, records, nlines)


async def finish_and_wait(writer: QubeWriter, feed: Sink) -> list[tuple[int, bool]]:
    """The sender closes its side: wait for the final ack and the writer to go idle."""
    writer.finish(feed)
    await until(lambda: bool(feed.acks) and feed.acks[-1][1])
    await until(lambda: writer.idle)
    return feed.acks
