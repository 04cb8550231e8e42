"""Restart times of the collector on a big store, next to rsyslog's on the same machine.

The store: 1 GiB of records (64 MiB with ``--quick``) in 50 qubes, 4 MiB
segments, built in-process with the store writer (``Store``/``QubeChain``, the
collector's own write path, sealed like the collector seals; minutes faster
than feeding 1 GiB through the daemon, and the files are the same). Then the
real ``logvm-collector`` is started on it and every qube connects and sends a
few lines (each qube's newest segment open, as on a running LogVM).

Rows:

- **SIGKILL -> serving**: the collector is SIGKILLed with the 50 connections
  open (their segments open with lines sealed and unsealed), started again,
  and timed from the kill until a new connection's line is acknowledged:
  process start, recovery of the 50 open segments (``recover`` seals), the
  usage scan of the whole store, the retention check, the first write;
- **SIGTERM -> exit**: with 50 connections open (idle senders, as every
  running qube keeps its call open), from SIGTERM until the process exited
  (drain, close seals of the 50 segments, key file);
- baselines, same run, same machine: ``rsyslogd -n`` start until its TCP
  port accepts, and SIGTERM to exit (the daemon a LogVM would otherwise run:
  the cost of being a daemon without a sealed store); ``logvm-collector
  --version`` (the Python interpreter and the program's imports: the floor
  of any restart of ours); and ``ls -R`` of the store (the floor of any
  start-up that looks at every file; page cache warm).

No bar: the figures say what an admin waits for after a crash or a restart.
"""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.writer import Store

QUBES = 50
SEGMENT = 4 << 20
BLOCK = 1 << 20


def _block(ctx: Any) -> tuple[bytes, int]:
    """About 1 MiB of record lines from the bench input."""
    stamp = format_timestamp(time.time())
    out, size = [], 0
    with ctx.input_path.open("rb") as source:
        for raw in source:
            text = raw.rstrip(b"\n").replace(b"\\", b"\\\\")
            record = line_record(stamp, text.decode("ascii", "backslashreplace").encode())
            out.append(record)
            size += len(record)
            if size >= BLOCK:
                break
    return b"".join(out), len(out)


def build_store(ctx: Any, root: Path, total: int) -> None:
    """``total`` bytes of records over :data:`QUBES` qubes, segments closed."""
    setup_keys(StoreLayout(root), epoch_seconds=10)
    block, nlines = _block(ctx)
    store = Store(root)
    try:
        for index in range(QUBES):
            chain = store.chain(f"qube{index}")
            for written in range(0, total // QUBES, len(block)):
                if written % SEGMENT < len(block):
                    if chain.is_open:
                        chain.close(store.keys, reason="disconnect")
                    chain.open_segment(store.keys, session="bench", reason="connect")
                chain.append(block, nlines)
                chain.seal(store.keys)
            chain.close(store.keys, reason="disconnect")
    finally:
        store.close()


class _Collector:
    def __init__(self, ctx: Any, work: Path, store: Path) -> None:
        self.argv = [str(ctx.venv_bin / "logvm-collector")]
        self.sock = work / "sock"
        self.err = work / "collector.err"  # recovery warnings: 50 per SIGKILL
        config = work / "collector.yaml"
        config.write_text(yaml.safe_dump({"rate_limit": {"lines_per_second": 0}}))
        self.argv += ["--socket", str(self.sock), "--store", str(store), "--config", str(config)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.sock.unlink(missing_ok=True)
        with self.err.open("ab") as err:
            self.proc = subprocess.Popen(self.argv, stderr=err)

    def connect(self, qube: str, deadline: float) -> socket.socket:
        while True:
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(str(self.sock))
                sock.sendall(b"logvm.Send %s\0" % qube.encode())
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("logvm-collector did not start") from None
                time.sleep(0.01)

    def serving(self, qube: str, timeout: float = 300) -> None:
        """Return once a line sent as ``qube`` was acknowledged."""
        deadline = time.monotonic() + timeout
        while True:
            sock = self.connect(qube, deadline)
            with sock:
                sock.sendall(b"probe\n")
                if b"ack 1\n" in _read_until(sock, b"ack 1\n"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("no ack from logvm-collector")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    sock.settimeout(120)
    while marker not in data:
        try:
            chunk = sock.recv(4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _open_senders(collector: _Collector) -> list[socket.socket]:
    senders = []
    for index in range(QUBES):
        sock = collector.connect(f"qube{index}", time.monotonic() + 60)
        sock.sendall(b"".join(b"line %d\n" % n for n in range(10)))
        _read_until(sock, b"ack 10\n")
        senders.append(sock)
    return senders


def _collector_rows(ctx: Any, work: Path, store: Path) -> tuple[float, float]:
    collector = _Collector(ctx, work, store)
    senders: list[socket.socket] = []
    try:
        collector.start()
        senders = _open_senders(collector)
        assert collector.proc is not None
        killed = time.perf_counter()
        collector.proc.kill()
        collector.proc.wait(30)
        collector.start()
        collector.serving("probe")
        kill_to_serving = time.perf_counter() - killed
        for sock in senders:
            sock.close()
        senders = _open_senders(collector)
        term = time.perf_counter()
        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGTERM)
        collector.proc.wait(120)
        return kill_to_serving, time.perf_counter() - term
    finally:
        for sock in senders:
            sock.close()
        collector.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rsyslog(work: Path) -> tuple[float, float]:
    """rsyslogd: start until its port accepts, SIGTERM until it exited."""
    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    work.mkdir()
    port = _free_port()
    conf = work / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{work}")\nmodule(load="imptcp")\n'
        f'input(type="imptcp" port="{port}" address="127.0.0.1")\n'
        f'action(type="omfile" file="{work / "out.log"}")\n'
    )
    start = time.perf_counter()
    proc = subprocess.Popen(
        [rsyslogd, "-n", "-f", str(conf), "-i", str(work / "pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.perf_counter() - start > 30:
                    raise RuntimeError("rsyslogd did not listen") from None
                time.sleep(0.005)
        listening = time.perf_counter() - start
        time.sleep(0.2)
        term = time.perf_counter()
        proc.terminate()
        proc.wait(30)
        return listening, time.perf_counter() - term
    finally:
        if proc.poll() is None:
            proc.kill()


def _version(ctx: Any) -> float:
    """``logvm-collector --version``: the interpreter and the program's imports."""
    start = time.perf_counter()
    subprocess.run(
        [str(ctx.venv_bin / "logvm-collector"), "--version"], stdout=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - start


def _ls_r(store: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["ls", "-R", str(store)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _row(name: str, seconds: float, baseline: str, base: float, notes: str) -> dict[str, Any]:
    return {
        "name": name,
        "value": round(seconds * 1000, 1),
        "unit": "ms",
        "baseline": baseline,
        "ratio": seconds / base if base else None,
        "notes": notes,
    }


def run(ctx: Any) -> list[dict[str, Any]]:
    """Build the store, then time the collector's and rsyslog's restarts."""
    total = (64 << 20) if ctx.quick else (1 << 30)
    store = ctx.workdir / "store"
    built = time.perf_counter()
    build_store(ctx, store, total)
    built = time.perf_counter() - built
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    kill_to_serving, term_to_exit = _collector_rows(ctx, ctx.workdir, store)
    rs_start, rs_term = _rsyslog(ctx.workdir / "rsyslog")
    walk = _ls_r(store)
    version = min(_version(ctx) for _ in range(3))
    what = f"{size / 2**30:.2f} GiB, {QUBES} qubes, {SEGMENT >> 20} MiB segments"
    return [
        _row(
            "collector SIGKILL -> serving",
            kill_to_serving,
            "rsyslogd start -> listening",
            rs_start,
            f"{what}; 50 open segments recovered; store built in-process in {built:.0f} s",
        ),
        _row(
            "collector SIGTERM -> exit",
            term_to_exit,
            "rsyslogd SIGTERM -> exit",
            rs_term,
            f"{what}; 50 connections open, each segment closed and sealed",
        ),
        _row("rsyslogd start -> listening", rs_start, "", 0, "baseline, no store"),
        _row("rsyslogd SIGTERM -> exit", rs_term, "", 0, "baseline"),
        _row("logvm-collector --version", version, "", 0, "Python start and imports: the floor"),
        _row("ls -R store", walk, "", 0, f"{what}; the floor of a start that sees every file"),
    ]
