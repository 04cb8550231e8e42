"""logvm-forward end to end: a real store -> the real forwarder process -> the
qrexec stand-in (a /dev/tcp service in the forwarder qube) -> a real rsyslog
with mutual TLS on loopback; then ``logvm verify --forwarded`` on rsyslog's file."""

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from forward.conftest import FORWARD_BIN, forward_world

from qubes_logvm.cli import main as logvm_main
from qubes_logvm.core.records import line_record
from qubes_logvm.core.syslog5424 import decode_line
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.writer import Store
from support.central import SERVER_NAME, Rsyslog
from support.qrexec import World
from support.segments import product_env
from support.storebuilder import Built, Clock, build_store, fill_segment

pytestmark = [pytest.mark.timeout(240)]


def _config(
    path: Path, pki: Path, state: Path, *, client: str = "client", records: int = 500
) -> Path:
    config = {
        "server": {"name": SERVER_NAME},
        "connect": {"qube": "@default"},
        "tls": {
            "ca": str(pki / "ca.pem"),
            "cert": str(pki / f"{client}.pem"),
            "key": str(pki / f"{client}.key"),
        },
        "hostname": "qubes-test",
        "window": {"records": records, "seconds": "2s"},
        "poll": "0.1s",
        "retry_max": "0.5s",
        "connect_timeout": "5s",
        "state_dir": str(state),
    }
    path.write_text(json.dumps(config), encoding="ascii")
    return path


class Forward:
    """The forwarder as a real process in the qube sys-log."""

    def __init__(self, tmp: Path, store: Path, world: World, *configs: Path) -> None:
        self.store, self.configs = store, configs
        self.env = world.client_env("sys-log", product_env())
        self.err = tmp / "forward.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Forward":
        self.proc = subprocess.Popen(
            [str(FORWARD_BIN), "--store", str(self.store), *self._config_args(), "-v"],
            env=self.env,
            stderr=self.err.open("ab"),
            start_new_session=True,
        )
        return self

    def _config_args(self) -> list[str]:
        """``--config`` for each file, merged in order as the unit's defaults are."""
        return [arg for path in self.configs for arg in ("--config", str(path))]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM as the unit's KillMode=mixed sends it (to the forwarder only:
        it ends its qrexec call itself), then SIGKILL to what is left; SIGKILL
        to the whole group at once, as a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            if sig == signal.SIGTERM:
                self.proc.send_signal(sig)
            else:
                os.killpg(self.proc.pid, sig)
            self.proc.wait(30)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def log(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""


def _sealed_records(built: Built) -> Counter[tuple[str, int, int]]:
    """Every record line the seals cover: (qube, seq, line)."""
    out: Counter[tuple[str, int, int]] = Counter()
    layout = built.layout
    for qube in layout.qubes():
        for files in layout.segments(qube):
            if files.log is None or files.seal is None:
                continue
            last = files.seal.read_bytes().split(b"\n")[-2].split(b" ")
            for line in range(1, int(last[5]) + 1):
                out[(qube, files.seq, line)] = 1
    return out


def _received(server: Rsyslog) -> Counter[tuple[str, int, int]]:
    out: Counter[tuple[str, int, int]] = Counter()
    for raw in server.lines():
        message = decode_line(raw)
        if message is not None and message.msgid == "rec":
            f = message.fields
            out[(f["qube"], int(f["seg"]), int(f["line"]))] += 1
    return out


def _wait(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _verify(
    tmp: Path, built: Built, central: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    key = tmp / "vk.txt"
    key.write_text(built.key, encoding="ascii")
    code = logvm_main(["verify", "--store", str(built.root), "--key", str(key),
                       "--forwarded", str(central)])  # fmt: skip
    return code, capsys.readouterr().out


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build_store(tmp_path / "store", leave_open=False)


@dataclass
class Forwarded:
    """A built store forwarded to rsyslog, and what the tests look at."""

    tmp: Path
    built: Built
    rsyslog: Rsyslog
    world: World
    forward: Forward
    capsys: pytest.CaptureFixture[str]

    def verify(self, central: Path) -> tuple[int, str]:
        """``logvm verify --forwarded central``: exit status and output."""
        return _verify(self.tmp, self.built, central, self.capsys)


@pytest.fixture
def forwarded(
    tmp_path: Path,
    built: Built,
    rsyslog: Rsyslog,
    pki: Path,
    capsys: pytest.CaptureFixture[str],
) -> Forwarded:
    """The built store forwarded to rsyslog until every record is there and
    the cursors are committed; the forwarder stopped."""
    world = forward_world(tmp_path / "world", rsyslog.port)
    config = _config(tmp_path / "forward.yaml", pki, tmp_path / "state")
    forward = Forward(tmp_path, built.root, world, config).start()
    try:
        expected = _sealed_records(built)
        _wait(lambda: set(_received(rsyslog)) == set(expected), "every record at the server")
        _wait(lambda: (tmp_path / "state/cursors.json").exists(), "cursors committed")
    finally:
        forward.stop()
    return Forwarded(tmp_path, built, rsyslog, world, forward, capsys)


def test_every_record_arrives_once_and_the_copy_verifies(forwarded: Forwarded) -> None:
    world, forward, rsyslog = forwarded.world, forwarded.forward, forwarded.rsyslog
    received = _received(rsyslog)
    assert received == _sealed_records(forwarded.built), forward.log()  # exactly once normally
    code, out = forwarded.verify(rsyslog.output)
    assert code == 0, out
    assert out.splitlines()[-1].startswith("OK: intact")
    # The header carries the exporter-style fields where the record has them.
    first = next(decode_line(r) for r in rsyslog.lines() if b" rec [" in r)
    assert first is not None and first.hostname == "qubes-test"
    calls = world.calls()
    assert {c["resolved_target"] for c in calls if c["result"] == "allow"} == {"sys-logfwd"}


def test_a_line_edited_or_dropped_at_the_server_is_caught(forwarded: Forwarded) -> None:
    tmp_path = forwarded.tmp
    lines = forwarded.rsyslog.output.read_bytes().splitlines(keepends=True)
    place = b'qube="personal" seg="2" line="3"'
    target = next(i for i, r in enumerate(lines) if b" rec [" in r and place in r)
    edited = lines.copy()
    edited[target] = edited[target].replace(b"sshd[42]: ok", b"sshd[42]: OK")
    assert edited[target] != lines[target]
    central = tmp_path / "edited.log"
    central.write_bytes(b"".join(edited))
    code, out = forwarded.verify(central)
    assert code == 1
    assert "personal/00000002" in out and "error" in out
    dropped = tmp_path / "dropped.log"
    dropped.write_bytes(b"".join(lines[:target] + lines[target + 1 :]))
    code, out = forwarded.verify(dropped)
    assert code == 1
    assert "personal/00000002 line 3: never arrived at the server" in out


@pytest.mark.parametrize(
    ("client", "server_cert"),
    [
        ("rogue-client", "server"),  # our client certificate from another CA: refused
        ("client", "rogue"),  # a server whose certificate our pinned CA did not sign
    ],
)
def test_mutual_tls_refusals(
    tmp_path: Path, built: Built, pki: Path, client: str, server_cert: str
) -> None:
    server = Rsyslog(tmp_path / "central", pki, server_cert=server_cert).start()
    try:
        world = forward_world(tmp_path / "world", server.port)
        config = _config(tmp_path / "forward.yaml", pki, tmp_path / "state", client=client)
        forward = Forward(tmp_path, built.root, world, config).start()
        try:
            _wait(lambda: "window not confirmed" in forward.log(), "a refused window")
        finally:
            forward.stop()
    finally:
        server.stop()
    assert not _received(server)
    assert not (tmp_path / "state/cursors.json").exists()
    if server_cert == "rogue":
        assert "certificate is refused (unable to get local issuer" in forward.log()
    else:
        assert "right after the handshake" in forward.log() or "closed" in forward.log()


def _call_open() -> bool:
    return (
        subprocess.run(
            ["pgrep", "-f", "qrexec-client-vm @default logvm.Forward"], check=False
        ).returncode
        == 0
    )


def _grow(built: Built, segments: int, per_batch: int, pause: float) -> None:
    """More closed segments for qube 'busy', written by the real writer as time passes."""
    store = Store(built.root)
    clock = Clock()
    chain = store.chain("busy")
    for _ in range(segments):
        fill_segment(store, chain, clock, batches=4, per_batch=per_batch, close=True)
        time.sleep(pause)
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill-forwarder", "restart-rsyslog", "drop-connection"])
def test_faults_lose_nothing_and_duplicate_at_most_one_window(
    tmp_path: Path,
    built: Built,
    rsyslog: Rsyslog,
    pki: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
) -> None:
    window = 300
    world = forward_world(tmp_path / "world", rsyslog.port)
    config = _config(tmp_path / "forward.yaml", pki, tmp_path / "state", records=window)
    forward = Forward(tmp_path, built.root, world, config).start()
    # Records keep arriving while the faults happen: 25 segments of 400 records.
    writer = threading.Thread(target=_grow, args=(built, 25, 100, 0.1))
    writer.start()
    try:
        for _ in range(10):
            time.sleep(0.2)
            # Each fault hits a window in flight (a qrexec call is open).
            _wait(_call_open, "a window in flight", timeout=20)
            if fault == "kill-forwarder":
                forward.stop(signal.SIGKILL)
                forward.start()
            elif fault == "restart-rsyslog":
                rsyslog.stop()
                rsyslog.start()
            else:  # the qrexec call dies under the forwarder (the forwarder qube restarts)
                subprocess.run(
                    ["pkill", "-KILL", "-f", "qrexec-client-vm @default logvm.Forward"],
                    check=False,
                )
        writer.join()
        expected = _sealed_records(built)
        _wait(lambda: set(_received(rsyslog)) == set(expected), "every record after faults")
    finally:
        writer.join()
        forward.stop()
    received = _received(rsyslog)
    assert set(received) == set(expected)  # nothing lost
    assert len(expected) > 10000
    duplicates = sum(count - 1 for count in received.values())
    # At most one window sent twice per fault (+ the store message and seal lines).
    assert duplicates <= 10 * window, duplicates
    if fault != "kill-forwarder":
        assert forward.log().count("window not confirmed") >= 1
    code, out = _verify(tmp_path, built, rsyslog.output, capsys)
    assert code == 0, out


def test_segment_deleted_before_it_was_forwarded_is_reported(
    tmp_path: Path, built: Built, rsyslog: Rsyslog, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'work' lost its first segment before forwarding ever started (rotation).
    world = forward_world(tmp_path / "world", rsyslog.port)
    store = Store(built.root)
    store.chain("work").delete_oldest(store.keys)
    store.close()
    config = _config(tmp_path / "forward.yaml", pki, tmp_path / "state")
    forward = Forward(tmp_path, built.root, world, config).start()
    try:
        expected = _sealed_records(built)
        _wait(lambda: set(_received(rsyslog)) == set(expected), "every record at the server")
    finally:
        forward.stop()
    tombs = [decode_line(r) for r in rsyslog.lines() if b" tomb [" in r]
    assert sorted(int(m.fields["seg"]) for m in tombs if m is not None) == [1, 2]
    code, out = _verify(tmp_path, built, rsyslog.output, capsys)
    assert code == 0, out


def test_new_records_follow_and_the_cursor_resumes(
    tmp_path: Path, built: Built, rsyslog: Rsyslog, pki: Path
) -> None:
    world = forward_world(tmp_path / "world", rsyslog.port)
    config = _config(tmp_path / "forward.yaml", pki, tmp_path / "state")
    forward = Forward(tmp_path, built.root, world, config).start()
    try:
        _wait(lambda: set(_received(rsyslog)) == set(_sealed_records(built)), "first records")
        forward.stop()
        store = Store(built.root)
        chain = store.chain("late")
        chain.open_segment(store.keys, session="late1")
        chain.append(line_record(Clock().stamp(), b"after the restart"), 1)
        chain.seal(store.keys)
        store.close()
        forward.start()
        _wait(lambda: ("late", 1, 2) in _received(rsyslog), "the new record")
    finally:
        forward.stop()
    assert max(_received(rsyslog).values()) == 1  # a restart between windows resends nothing
    layout = StoreLayout(built.root)
    assert "late" in layout.qubes()
