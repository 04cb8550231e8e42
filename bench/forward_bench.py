"""Forwarding benchmark: ``logvm-forward`` to a real rsyslog over mutual TLS.

Input: the bench's log lines as stored records in a store written by the real
writer (sealed per batch), forwarded by the real ``logvm-forward`` process
through the qrexec stand-in (a ``/dev/tcp`` service in the forwarder qube) to
rsyslog (imtcp, gtls, mutual TLS) writing to a file. Measured: records/s and
MB/s of record text from start until the central file holds every record.
Baseline on the same lines: rsyslog's own TLS client (imptcp input, omfwd
with gtls and octet-counted framing) to the same kind of central server.

Bar (issue 16): a fast server is fed at >= 50k records/s.
"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "python")]

from qubes_logvm.core.records import format_timestamp, line_record  # noqa: E402
from qubes_logvm.store.keystate import setup_keys  # noqa: E402
from qubes_logvm.store.layout import StoreLayout  # noqa: E402
from qubes_logvm.store.writer import Store  # noqa: E402
from support.central import CLIENT_NAME, RSYSLOGD, SERVER_NAME, Rsyslog, make_pki  # noqa: E402
from support.qrexec import World  # noqa: E402

BAR_RECORDS_S = 50000.0


def _lines(ctx: Any, limit: int) -> list[bytes]:
    with Path(ctx.input_path).open("rb") as stream:
        return [line.rstrip(b"\n") for _, line in zip(range(limit), stream, strict=False)]


def _store(root: Path, lines: list[bytes]) -> int:
    setup_keys(StoreLayout(root), epoch_seconds=10)
    store = Store(root)
    chain = store.chain("work")
    chain.open_segment(store.keys, session="bench")
    stamp = format_timestamp(time.time())
    for start in range(0, len(lines), 1000):
        batch = lines[start : start + 1000]
        chain.append(b"".join(line_record(stamp, line) for line in batch), len(batch))
        chain.seal(store.keys)
    chain.close(store.keys)
    store.close()
    return sum(len(line) + 1 for line in lines)


def _wait_count(path: Path, marker: bytes, want: int, timeout: float) -> float:
    """Wait until ``path`` holds ``want`` markers, reading only what it gained
    (re-reading a file of 100 MB every poll took the CPU the measured side needs)."""
    start = time.perf_counter()
    count, tail = 0, b""
    while not path.exists():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{path}: not written")
        time.sleep(0.01)
    with path.open("rb") as stream:
        while count < want:
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"{path}: {count} of {want}")
            data = stream.read()
            if not data:
                time.sleep(0.05)
                continue
            data = tail + data
            count += data.count(marker)
            tail = data[-len(marker) + 1 :]  # holds no whole marker: a cut one counts next time
    return time.perf_counter() - start


def _forward(work: Path, pki: Path, lines: list[bytes]) -> float:
    nbytes = _store(work / "store", lines)
    server = Rsyslog(work / "central", pki).start()
    world = World(work / "world")
    world.add_qube("sys-log")
    world.add_qube("sys-logfwd")
    world.write_policy(
        "50-bench.policy", "logvm.Forward * sys-log @default allow target=sys-logfwd\n"
    )
    (world.qubes["sys-logfwd"].rpc_dir / "logvm.Forward").symlink_to(
        f"/dev/tcp/127.0.0.1/{server.port}"
    )
    (world.qubes["sys-logfwd"].rpc_config_dir / "logvm.Forward").write_text(
        "skip-service-descriptor = true\n", encoding="ascii"
    )
    config = work / "forward.yaml"
    config.write_text(json.dumps({
        "server": {"name": SERVER_NAME}, "connect": {"qube": "@default"},
        "tls": {"ca": str(pki / "ca.pem"), "cert": str(pki / "client.pem"),
                "key": str(pki / "client.key")},
        "poll": "0.05s", "state_dir": str(work / "state"),
    }), encoding="ascii")  # fmt: skip
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "logvm-forward"), "--store", str(work / "store"),
         "--config", str(config)],
        env=world.client_env("sys-log"),
    )  # fmt: skip
    try:
        elapsed = _wait_count(server.output, b" rec [", len(lines) + 1, 600)
    finally:
        proc.terminate()
        proc.wait(30)
        server.stop()
    return elapsed if nbytes else 0.0


def _omfwd(work: Path, pki: Path, lines: list[bytes]) -> float:
    central = Rsyslog(work / "central2", pki).start()
    relay_dir = work / "relay"
    relay_dir.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (relay_dir / "rsyslog.conf").write_text(f"""
global(workDirectory="{relay_dir}" maxMessageSize="512k"
  DefaultNetstreamDriverCAFile="{pki}/ca.pem"
  DefaultNetstreamDriverCertFile="{pki}/client.pem"
  DefaultNetstreamDriverKeyFile="{pki}/client.key")
module(load="imptcp")
input(type="imptcp" port="{port}" address="127.0.0.1")
action(type="omfwd" target="127.0.0.1" port="{central.port}" protocol="tcp"
  StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
  StreamDriverPermittedPeers="{SERVER_NAME}" TCP_Framing="octet-counted")
""", encoding="ascii")  # fmt: skip
    relay = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(relay_dir / "rsyslog.conf"), "-i", str(relay_dir / "pid")]
    )
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        payload = b"".join(b"<14>Dec  1 10:00:00 bench app: %s\n" % line for line in lines)
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(payload)
        _wait_count(central.output, b"\n", len(lines), 600)
        return time.perf_counter() - start
    finally:
        relay.terminate()
        relay.wait(30)
        central.stop()


def run(ctx: Any) -> list[dict[str, Any]]:
    """Both rows: forwarder and rsyslog's omfwd, same lines, same kind of server."""
    count = 20000 if ctx.quick else 300000
    lines = _lines(ctx, count)
    work = Path(ctx.workdir)
    pki = make_pki(work / "pki")
    mb = sum(len(line) for line in lines) / 1e6
    ours = _forward(work, pki, lines)
    theirs = _omfwd(work, pki, lines)
    baseline = {
        "name": "rsyslog omfwd TLS client -> rsyslog",
        "lines_per_s": len(lines) / theirs,
        "mb_per_s": mb / theirs,
        "notes": f"imptcp in, omfwd gtls octet-counted, mutual TLS ({CLIENT_NAME})",
    }
    forward = {
        "name": "logvm-forward -> qrexec stand-in -> rsyslog TLS",
        "lines_per_s": len(lines) / ours,
        "mb_per_s": mb / ours,
        "ratio": theirs / ours,
        "baseline": "rsyslog omfwd",
        "bar": f">= {BAR_RECORDS_S:.0f} records/s",
        "ok": len(lines) / ours >= BAR_RECORDS_S,
        "notes": "sealed records + seal lines, windows confirmed by close_notify",
    }
    return [baseline, forward]
