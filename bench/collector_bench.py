"""Collector throughput on ONE connection, next to ``cat`` and rsyslog, same input.

- ``cat``: ``cat INPUT > FILE`` (no fsync): the ceiling of copying bytes;
- ``rsyslog``: ``rsyslogd -n`` with imptcp on a loopback port and omfile
  (template ``%rawmsg%``), fed over one TCP connection; measured from
  connect until the output file holds every line (rsyslog does not fsync);
- ``logvm-collector``: the real daemon on a fresh store, fed over one Unix
  socket connection after the descriptor; measured from connect until the
  final ``ack`` (every line escaped, stamped, fsynced and sealed).

Then the same input split over 50 connections at once (50 qubes for the
collector, 50 TCP connections for rsyslog), each sending its share.

Alone (at most 4 connections open) the collector reads up to 256 KiB at
once and lets a qube's batch grow to 4x ``pending_bytes`` (4 MiB by
default) while the previous one is written, each batch's write and
fdatasync overlapping its hashing; an ack still follows only the batch's
durable seal (docs/collector.md, "Throughput"). The 50-connection rows run
with 64 KiB reads and ``pending_bytes`` as configured.

Bars (issue 17): one connection at least 2x rsyslog's rate, 50 connections
at least 1.5x. On a loaded machine the wall-clock rates vary from run to
run (rsyslog's too), so each row also has the daemon's CPU time per line
during the run (``/proc/PID/stat``, start-up excluded), and the collector's
rows the ratio of rsyslog's CPU per line to the collector's.
"""

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.dom0_bench import _cpu_seconds
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout


def _row(name: str, ctx: Any, timed: tuple[float, float | None], notes: str) -> dict[str, Any]:
    seconds, cpu = timed
    row = {
        "name": name,
        "lines_per_s": ctx.input_lines / seconds,
        "mb_per_s": ctx.input_bytes / seconds / 1e6,
        "seconds": seconds,
        "notes": notes,
    }
    if cpu is not None:
        row["cpu_us_per_line"] = cpu / ctx.input_lines * 1e6
    return row


def _cat(ctx: Any) -> float:
    out = ctx.workdir / "cat.out"
    start = time.perf_counter()
    with out.open("wb") as sink:
        subprocess.run(["cat", str(ctx.input_path)], stdout=sink, check=True)
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def _count_lines(path: Path, state: list[int]) -> int:
    """Count newlines incrementally (state: [offset, count])."""
    try:
        with path.open("rb") as f:
            f.seek(state[0])
            data = f.read()
    except FileNotFoundError:
        return 0
    state[0] += len(data)
    state[1] += data.count(b"\n")
    return state[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: Connections of the second pair of rows.
MANY = 50


def _shares(ctx: Any, count: int) -> list[bytes]:
    """The input cut at line ends into ``count`` parts of about equal size."""
    data = ctx.input_path.read_bytes()
    parts, start = [], 0
    for index in range(1, count + 1):
        end = len(data) if index == count else data.find(b"\n", len(data) * index // count) + 1
        parts.append(data[start:end])
        start = end
    return parts


def _send_all(parts: list[bytes], opener: Callable[[int], socket.socket]) -> list[socket.socket]:
    """Send each part on its own connection at once (threads); the sockets stay open."""
    socks = [opener(index) for index in range(len(parts))]

    def send(sock: socket.socket, part: bytes) -> None:
        sock.sendall(part)
        sock.shutdown(socket.SHUT_WR)

    threads = [threading.Thread(target=send, args=pair) for pair in zip(socks, parts, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return socks


def _rsyslog(ctx: Any, connections: int = 1) -> tuple[float, float]:
    """Seconds until every line is in the file, and rsyslogd's CPU seconds."""
    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    work = ctx.workdir / f"rsyslog{connections}"
    work.mkdir()
    out = work / "out.log"
    port = _free_port()
    conf = work / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{work}" maxMessageSize="64k")\n'
        'module(load="imptcp")\n'
        # Off: log lines starting with digits (HDFS) would parse as octet counts.
        f'input(type="imptcp" port="{port}" address="127.0.0.1"'
        ' supportOctetCountedFraming="off")\n'
        'template(name="raw" type="string" string="%rawmsg%\\n")\n'
        f'action(type="omfile" file="{out}" template="raw")\n'
    )
    proc = subprocess.Popen(
        [rsyslogd, "-n", "-f", str(conf), "-i", str(work / "pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("rsyslogd did not listen") from None
                time.sleep(0.05)
        sock.close()
        time.sleep(0.2)
        state = [0, 0]
        parts = _shares(ctx, connections) if connections > 1 else []
        cpu = _cpu_seconds(proc.pid)
        start = time.perf_counter()
        if parts:
            for sock in _send_all(parts, lambda _: socket.create_connection(("127.0.0.1", port))):
                sock.close()
        else:
            with (
                socket.create_connection(("127.0.0.1", port)) as sock,
                ctx.input_path.open("rb") as f,
            ):
                sock.sendfile(f)
        while _count_lines(out, state) < ctx.input_lines:
            if time.perf_counter() - start > 60:
                raise RuntimeError(f"rsyslog stored {state[1]} of {ctx.input_lines} lines")
            time.sleep(0.01)
        return time.perf_counter() - start, _cpu_seconds(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait(20)


def _final_ack(sock: socket.socket) -> int:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return int(data.rstrip(b"\n").rsplit(b"\n", 1)[-1].split(b" ")[1])


def _collector_many(ctx: Any, path: Path, connections: int) -> float:
    """The input over ``connections`` qubes at once, until every final ack."""
    parts = _shares(ctx, connections)

    def opener(index: int) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        sock.sendall(b"logvm.Send bench%d\0" % index)
        return sock

    start = time.perf_counter()
    socks = _send_all(parts, opener)
    acked = 0
    for sock in socks:
        acked += _final_ack(sock)
        sock.close()
    seconds = time.perf_counter() - start
    if acked != ctx.input_lines:
        raise RuntimeError(f"collector acknowledged {acked} of {ctx.input_lines} lines")
    return seconds


def _collector(ctx: Any, connections: int = 1) -> tuple[float, float]:
    """Seconds until the final acks, and the collector's CPU seconds."""
    work = ctx.workdir / f"collector{connections}"
    work.mkdir()
    store = work / "store"
    setup_keys(StoreLayout(store), epoch_seconds=10)
    config = work / "collector.yaml"
    config.write_text(yaml.safe_dump({"rate_limit": {"lines_per_second": 0}}))
    path = work / "sock"
    proc = subprocess.Popen(
        [
            str(ctx.venv_bin / "logvm-collector"),
            *("--socket", str(path), "--store", str(store), "--config", str(config)),
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("logvm-collector did not start")
            time.sleep(0.05)
        cpu = _cpu_seconds(proc.pid)
        if connections > 1:
            return _collector_many(ctx, path, connections), _cpu_seconds(proc.pid) - cpu
        start = time.perf_counter()
        with socket.socket(socket.AF_UNIX) as sock, ctx.input_path.open("rb") as f:
            sock.connect(str(path))
            sock.sendall(b"logvm.Send bench\0")
            sock.sendfile(f)
            sock.shutdown(socket.SHUT_WR)
            final = _final_ack(sock)
        seconds = time.perf_counter() - start
        if final != ctx.input_lines:
            raise RuntimeError(f"collector acknowledged {final} of {ctx.input_lines} lines")
        return seconds, _cpu_seconds(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait(60)


def _cpu_ratio(row: dict[str, Any], rsyslog: dict[str, Any]) -> None:
    """rsyslog's CPU per line over the collector's (same input, same run)."""
    row["cpu_ratio"] = rsyslog["cpu_us_per_line"] / row["cpu_us_per_line"]
    row["notes"] += f"; CPU per line {row['cpu_ratio']:.2f}x rsyslog's"


def run(ctx: Any) -> list[dict[str, Any]]:
    """Measure cat, rsyslog and the collector on the same input."""
    cat = _row("cat > file", ctx, (_cat(ctx), None), "copy only, no fsync")
    rsyslog = _row("rsyslog imptcp->omfile", ctx, _rsyslog(ctx), "one TCP connection, no fsync")
    collector = _row(
        "logvm-collector",
        ctx,
        _collector(ctx),
        "one connection; escaped, stamped, fsynced and sealed at ack",
    )
    for row in (cat, rsyslog, collector):
        row["ratio"] = row["lines_per_s"] / rsyslog["lines_per_s"]
        row["baseline"] = "rsyslog imptcp->omfile"
    _cpu_ratio(collector, rsyslog)
    collector["bar"] = ">= 2x rsyslog"
    collector["ok"] = collector["ratio"] >= 2.0
    many_rsyslog = _row(
        f"rsyslog imptcp->omfile, {MANY} connections",
        ctx,
        _rsyslog(ctx, MANY),
        f"{MANY} TCP connections at once, no fsync",
    )
    many = _row(
        f"logvm-collector, {MANY} connected qubes",
        ctx,
        _collector(ctx, MANY),
        f"{MANY} qubes at once; until every final ack",
    )
    for row in (many_rsyslog, many):
        row["ratio"] = row["lines_per_s"] / many_rsyslog["lines_per_s"]
        row["baseline"] = f"rsyslog, {MANY} connections"
    _cpu_ratio(many, many_rsyslog)
    many["bar"] = ">= 1.5x rsyslog"
    many["ok"] = many["ratio"] >= 1.5
    return [cat, rsyslog, collector, many_rsyslog, many]
