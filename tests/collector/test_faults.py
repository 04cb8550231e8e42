"""Faults a LogVM meets (issue 18), through a real collector process.

A crash inside a new qube's first segment, a newest segment cut below its
seals, senders vanishing while their step is queued, a full filesystem.
After each: the collector serves every other qube, nothing acknowledged is
lost, and verify passes (or reports exactly the crash remnant, a warning).
"""

import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from collector.helpers import (
    COLLECTOR,
    Collector,
    Sink,
    connect,
    finish_and_wait,
    make_store,
    notes,
    records,
    send,
    sent_lines,
    submit_text,
    until,
    verify_errors,
    wait_for,
)

from qubes_logvm.collector.qubewriter import QubeWriter, StoreAccess
from qubes_logvm.config.collector import CollectorConfig
from qubes_logvm.config.storage_policy import RetentionConfig
from qubes_logvm.core.escape import unescape
from qubes_logvm.store.keystate import read_epoch
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.remnant import OPENING_REMNANT
from qubes_logvm.store.retired import read_retired
from qubes_logvm.store.sealfile import is_closed
from qubes_logvm.store.tombstones import read_tomb_file
from qubes_logvm.store.verify import verify_store
from qubes_logvm.store.writer import QubeChain, Store
from support.faketime import faketime_env, step
from support.programs import program
from support.segments import product_env, sample_lines, write_segment
from support.tmpfs import fill, mounted_tmpfs

KILL_IN_OPEN = {"LOGVM_FAIL_POINT": "open-segment"}
SEGMENT = 64 * 1024


def lines(tag: str, count: int) -> bytes:
    return b"".join(b"%s line %d\n" % (tag.encode(), i) for i in range(count))


def warnings(store: Path, vkey: str) -> list[str]:
    return [str(f) for f in verify_store(store, vkey).warnings]


def died(collector: Collector) -> bool:
    return collector.proc is not None and collector.proc.poll() is not None


@pytest.mark.parametrize("torn", [False, True], ids=["empty-seal", "torn-seal"])
def test_kill_inside_first_segment_leaves_a_remnant_every_qube_served(
    start_collector: Callable[..., Collector], torn: bool
) -> None:
    collector = start_collector()
    assert send(collector.socket, "old", lines("old", 3)) == [3]
    collector.kill()
    collector.start(env=KILL_IN_OPEN)
    send(collector.socket, "newqube", lines("new", 5))  # killed while opening
    assert wait_for(lambda: died(collector))
    assert collector.proc is not None and collector.proc.returncode == -9
    collector.proc = None
    seal = StoreLayout(collector.store).segment_seal("newqube", 1)
    assert seal.read_bytes() == b""
    if torn:
        seal.write_bytes(b"open newqube 1 ")  # a seal line the crash cut short
    assert verify_errors(collector.store, collector.vkey) == []
    assert any(OPENING_REMNANT in w for w in warnings(collector.store, collector.vkey))
    collector.start()
    assert send(collector.socket, "newqube", lines("new", 5)) == [5]
    assert send(collector.socket, "other", lines("other", 2)) == [2]
    assert send(collector.socket, "old", lines("old", 1)) == [1]
    assert collector.stop() == 0
    assert "removed a segment whose opening a crash cut" in collector.stderr()
    assert [p for _, p, _ in sent_lines(collector.store, "newqube")] == [
        b"new line %d" % i for i in range(5)
    ]
    assert verify_errors(collector.store, collector.vkey) == []


def test_kill_inside_a_later_segment_then_continues_the_chain(
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector()
    assert send(collector.socket, "alpha", lines("a", 3)) == [3]
    collector.kill()
    collector.start(env=KILL_IN_OPEN)
    send(collector.socket, "alpha", lines("b", 3))
    assert wait_for(lambda: died(collector))
    collector.proc = None
    collector.start()
    assert send(collector.socket, "alpha", lines("c", 2)) == [2]
    assert collector.stop() == 0
    assert verify_errors(collector.store, collector.vkey) == []
    assert [seg.seq for seg in StoreLayout(collector.store).segments("alpha")] == [1, 2]


def test_sigterm_once_listening_before_serving_exits_cleanly(tmp_path: Path) -> None:
    """systemd may stop the collector the moment its socket listens (before the
    event loop takes the signals): it still stops cleanly, exit 0."""
    collector = Collector(tmp_path)
    collector.vkey = make_store(collector.store)
    store = Store(collector.store)
    write_segment(store, "alpha", sample_lines(3), close=False)  # left open: to recover
    store.keys.close()  # (a crash: nothing closed)
    argv = [str(COLLECTOR), "--socket", str(collector.socket), "--store", str(collector.store)]
    argv += ["--config", str(collector.config_path)]
    env = {**os.environ, "LOGVM_FAIL_POINT": "listening", "LOGVM_FAIL_SIGNAL": "SIGTERM"}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert b"Traceback" not in done.stderr
    assert verify_errors(collector.store, collector.vkey) == []
    assert all(map(is_closed, StoreLayout(collector.store).segments("alpha")))


def _open_session(collector: Collector, qube: str, count: int) -> socket.socket:
    """A connection with ``count`` lines acknowledged, kept open."""
    sock = connect(collector.socket, qube)
    sock.sendall(lines(qube, count))
    got = b""
    while not got.endswith(b"ack %d\n" % count):
        chunk = sock.recv(4096)
        assert chunk, "closed before the ack"
        got += chunk
    return sock


def test_segment_shorter_than_its_seals_quarantines_that_qube_only(
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector()
    sessions = [_open_session(collector, q, 20) for q in ("alpha", "beta")]
    collector.kill()
    for sock in sessions:
        sock.close()
    log = StoreLayout(collector.store).segment_log("alpha", 1)
    with log.open("r+b") as stream:
        stream.truncate(40)  # damage: below what its seals cover
    collector.start()
    assert send(collector.socket, "beta", lines("beta", 4)) == [4]
    assert send(collector.socket, "gamma", lines("gamma", 4)) == [4]
    assert send(collector.socket, "alpha", lines("alpha", 4)) == []  # set aside
    assert collector.stop() == 0
    err = collector.stderr()
    assert "alpha: quarantined" in err
    assert "1 qube(s) quarantined at start" in err
    assert "beta: quarantined" not in err
    assert [p for _, p, _ in sent_lines(collector.store, "beta")][-4:] == [
        b"beta line %d" % i for i in range(4)
    ]
    errors = verify_errors(collector.store, collector.vkey)
    assert errors and all("alpha" in e for e in errors)


def _vanish(sock: socket.socket) -> None:
    # RST, not FIN: the peer is gone at once (qrexec killed with its VM).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_twenty_senders_vanishing_at_once_then_sigterm_exits_promptly(
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(
        {"max_connections_per_qube": 64, "rate_limit": {"lines_per_second": 0}}
    )
    for round_ in range(3):
        socks = [connect(collector.socket, "disp9") for _ in range(20)]
        for i, sock in enumerate(socks):
            sock.sendall(lines(f"r{round_}s{i}", 300))
        for sock in socks:
            _vanish(sock)
    # The vanished connections are let go as the collector notices the resets.
    assert wait_for(lambda: send(collector.socket, "disp9", lines("after", 3)) == [3])
    assert send(collector.socket, "other", lines("other", 3)) == [3]
    # The bound is the test's patience, not a timing goal (bench measures it).
    assert collector.stop(timeout=10) == 0
    assert "Traceback" not in collector.stderr()
    assert verify_errors(collector.store, collector.vkey) == []
    segments = StoreLayout(collector.store).segments("disp9")
    assert [p for _, p, _ in sent_lines(collector.store, "disp9")][-3:] == [
        b"after line %d" % i for i in range(3)
    ]
    assert segments  # every session was closed: verify found no open segment


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs made for the test (root only)."""
    with mounted_tmpfs(tmp_path, "size=4m") as mount:
        yield mount


# Format 1 with long epochs: no tick falls inside the full window (a missed
# epoch is an error there, the test below); format 2 with 0.2 s epochs: the
# epochs the disk refused are at most a gap (a warning).
@pytest.mark.parametrize(
    ("store_format", "epoch_seconds"), [(1, 120), (2, 0.2)], ids=["format-1", "format-2"]
)
def test_full_disk_drops_lines_whole_and_logging_resumes(
    tmp_path: Path, small_fs: Path, store_format: int, epoch_seconds: float
) -> None:
    collector = Collector(tmp_path, {"global": {"keep_free": 0}})
    collector.store = small_fs / "store"
    collector.vkey = make_store(collector.store, epoch_seconds, store_format)
    collector.start()
    try:
        sock = _open_session(collector, "alpha", 10)
        filler = small_fs / "filler"
        fill(filler)
        sock.sendall(lines("full", 2000))
        got = b""
        while b"ack 2010\n" not in got:
            chunk = sock.recv(4096)
            assert chunk, f"closed: {collector.stderr()}"
            got += chunk
        filler.unlink()
        sock.sendall(lines("later", 5))
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(4096):
            got += chunk
        assert got.endswith(b"ack 2015\n")
        sock.close()
        assert collector.stop() == 0
    finally:
        collector.kill()
    stored = [p for _, p, _ in sent_lines(collector.store, "alpha")]
    assert stored[:10] == [b"alpha line %d" % i for i in range(10)]
    assert stored[-5:] == [b"later line %d" % i for i in range(5)]
    assert all(p.startswith((b"alpha", b"full", b"later")) for p in stored)
    drops = notes(collector.store, "alpha", "dropped")
    assert any(n.fields().get("reason") == "disk-full" for n in drops)
    assert "dropped" in collector.stderr()
    report = verify_store(collector.store, collector.vkey)
    assert [str(f) for f in report.errors] == []
    others = [str(f) for f in report.warnings if "epoch seals missing" not in str(f)]
    assert others == []


def test_a_config_that_deletes_at_once_is_reported_at_start(
    tmp_path: Path, small_fs: Path
) -> None:
    collector = Collector(tmp_path, {"global": {"keep_free": 0}})
    collector.store = small_fs / "store"
    collector.vkey = make_store(collector.store)
    collector.start()
    try:
        for _ in range(2):
            assert send(collector.socket, "alpha", lines("alpha", 5)) == [5]
        assert collector.stop() == 0
        assert "delete" not in collector.stderr()
        collector.write_config({"global": {"keep_free": "8M"}})  # more than the filesystem
        collector.start()
        assert collector.stop() == 0
    finally:
        collector.kill()
    err = collector.stderr()
    assert re.search(r"the retention settings delete [12] closed segment\(s\) of 1 qube\(s\)", err)
    assert "below global.keep_free (8 MiB)" in err


def test_clock_stepped_back_keeps_receive_times_monotonic(
    start_collector: Callable[..., Collector], tmp_path: Path
) -> None:
    offset = tmp_path / "faketime"
    clock_env = faketime_env(offset)
    collector = start_collector()
    collector.kill()
    collector.start(env=clock_env)
    sock = _open_session(collector, "alpha", 5)
    offset.write_text("-1h\n")  # the LogVM's clock goes back an hour
    got = b""
    sock.sendall(lines("back", 5))
    while b"ack 10\n" not in got:
        got += sock.recv(4096)
    offset.write_text("+0\n")
    sock.sendall(lines("again", 5))
    sock.shutdown(socket.SHUT_WR)
    while chunk := sock.recv(4096):
        got += chunk
    assert got.endswith(b"ack 15\n")
    sock.close()
    assert send(collector.socket, "alpha", lines("next", 2)) == [2]
    assert collector.stop() == 0
    stamps = [r.stamp for r in records(collector.store, "alpha")]
    assert stamps == sorted(stamps)  # segment notes included
    steps = notes(collector.store, "alpha", "clock-step")
    assert len(steps) == 1
    assert 3590_000 < int(steps[0].fields()["back_ms"]) < 3610_000
    assert verify_errors(collector.store, collector.vkey) == []


def _one_by_one(collector: Collector, qube: str, tag: str, count: int) -> None:
    """One session sending ``count`` lines, each after the last one's ack
    (each its own read: its own receive time)."""
    with connect(collector.socket, qube) as sock:
        got = b""
        for i in range(count):
            sock.sendall(b"%s %d\n" % (tag.encode(), i))
            while b"ack %d\n" % (i + 1) not in got:
                chunk = sock.recv(4096)
                assert chunk, f"closed: {collector.stderr()}"
                got += chunk
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass


def _show(store: Path, *args: str) -> list[str]:
    """``logvm show`` (the real program) on the store: the sender text it prints."""
    shown = subprocess.run(
        [str(program("logvm")), "show", "--store", str(store), "-o", "cat", *args],
        capture_output=True, env=product_env(), timeout=60, check=True,
    )  # fmt: skip
    return shown.stdout.decode().splitlines()


def _iso(stamp: bytes) -> str:
    return stamp.decode().replace("Z", "+00:00")


def test_since_until_across_a_clock_stepped_back_and_a_restart(tmp_path: Path) -> None:
    """The LogVM's clock goes back an hour mid-session, the collector restarts
    on the wrong clock, then the clock is right again: receive times never go
    back (a clock-step note each time) and `logvm show --since/--until` prints
    exactly the records of the window."""
    collector = Collector(tmp_path, {"global": {"keep_free": 0}, "session_linger": 0})
    collector.vkey = make_store(collector.store, epoch_seconds=120)
    offset = tmp_path / "faketime"
    clock_env = faketime_env(offset)
    collector.start(env=clock_env)
    try:
        _one_by_one(collector, "alpha", "before", 7)
        step(offset, -3600)
        _one_by_one(collector, "alpha", "during", 7)
        assert collector.stop() == 0
        collector.start(env=clock_env)  # restarted, the clock still an hour back
        _one_by_one(collector, "alpha", "restart", 7)
        step(offset, 0)
        _one_by_one(collector, "alpha", "after", 7)
        assert collector.stop() == 0
    finally:
        collector.kill()
    stored = records(collector.store, "alpha")
    stamps = [r.stamp for r in stored]
    assert stamps == sorted(stamps)  # across segments and the restart too
    assert len(notes(collector.store, "alpha", "clock-step")) == 2
    sent = {unescape(r.payload).decode(): r.stamp for r in stored if r.kind == "L"}
    since, until = _iso(sent["before 3"]), _iso(sent["after 3"])
    window = _show(collector.store, "alpha", "--since", since, "--until", until)
    assert window == [f"before {i}" for i in range(3, 7)] + [
        f"{tag} {i}" for tag in ("during", "restart") for i in range(7)
    ] + [f"after {i}" for i in range(4)]
    assert len(window) == 22
    assert _show(collector.store, "--until", since) == [f"before {i}" for i in range(4)]
    assert _show(collector.store, "--since", until) == [f"after {i}" for i in range(3, 7)]
    assert verify_errors(collector.store, collector.vkey) == []


def test_clock_jumped_forward_eight_days_deletes_nothing_epochs_passing_do(
    tmp_path: Path,
) -> None:
    """Retention ages count sealed epochs: a clock jump ages nothing.

    Deterministic: the epochs are an hour long, so none passes in real time;
    both the wall and the monotonic clock are the test's (libfaketime), and
    only the test's steps make epochs pass. beta keeps one epoch, alpha four:
    beta's deletion shows housekeeping ran after the jump.
    """
    hour = 3600
    config: dict[str, object] = {"housekeeping_seconds": 0.2, "session_linger": 0}
    config["global"] = {"keep_free": 0, "keep_free_inodes": 0}
    config["retention"] = {"max_age": {"default": "4h", "qubes": {"beta": "1h"}}}
    collector = Collector(tmp_path, config)
    collector.vkey = make_store(collector.store, epoch_seconds=hour)
    layout = StoreLayout(collector.store)
    offset = tmp_path / "faketime"
    collector.start(env=faketime_env(offset, monotonic=True))
    try:
        for qube in ("alpha", "alpha", "beta"):
            assert send(collector.socket, qube, lines(qube, 5)) == [5]
        assert wait_for(lambda: sum(map(is_closed, layout.segments("alpha"))) == 2)
        assert wait_for(lambda: all(map(is_closed, layout.segments("beta"))))
        start = read_epoch(layout)
        assert start is not None
        jump = 8 * 86400
        step(offset, jump)  # 8 days at once (a bad NTP answer, a paused LogVM)
        assert wait_for(layout.tombstones("beta").exists), collector.stderr()
        assert read_epoch(layout) == start + 1  # the jump counted one epoch, not 192
        tombs = layout.tombstones("alpha")
        assert not tombs.exists(), "a clock jump deleted segments"
        for passed in (2, 3, 4):  # real epochs passing: one per hour stepped
            step(offset, jump + (passed - 1) * hour)
            assert wait_for(lambda n=passed: read_epoch(layout) == start + n)
            assert passed == 4 or not tombs.exists()
        assert wait_for(tombs.exists), collector.stderr()
        assert collector.stop() == 0
    finally:
        collector.kill()
    reasons = [t.reason for _, t in read_tomb_file(tombs).tombs]
    assert reasons and set(reasons) == {"age"}
    # beta, all deleted epochs ago, may be retired since: its newest tomb is
    # then in the sealed retire line (its directory gone), not in its own file.
    if layout.tombstones("beta").exists():
        beta = [t.reason for _, t in read_tomb_file(layout.tombstones("beta")).tombs]
    else:
        beta = [r.tomb.reason for _, r in read_retired(layout).lines if r.qube == "beta"]
    assert beta == ["age"]
    assert verify_errors(collector.store, collector.vkey) == []


def _flood(collector: Collector, until: Callable[[], bool], limit: int = 60) -> None:
    """Send 1000-line batches on one connection (rolled at 256K) until ``until()``."""
    sock = connect(collector.socket, "alpha")
    sent = 0
    try:
        for batch in range(limit):
            if until():
                break
            sock.sendall(b"".join(b"flood %d %s\n" % (batch, b"x" * 200) for _ in range(1000)))
            sent += 1000
            got = b""
            while b"ack %d\n" % sent not in got:
                chunk = sock.recv(4096)
                assert chunk, collector.stderr()
                got += chunk
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    finally:
        sock.close()


def _free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@pytest.mark.parametrize("filler", [False, True], ids=["full-of-logs", "full-of-another-file"])
def test_a_full_store_frees_itself_when_the_cap_is_lowered(
    tmp_path: Path, small_fs: Path, filler: bool
) -> None:
    """Deleting needs room for the tombstone: the reserve gives it on a full disk."""
    floors: dict[str, object] = {"keep_free": 0, "keep_free_inodes": 0}
    base: dict[str, object] = {
        "global": floors,
        "segment": {"max_bytes": "256K"},
        "housekeeping_seconds": 0.2,
        "session_linger": 0,
    }
    collector = Collector(tmp_path, base)
    collector.store = small_fs / "store"
    collector.vkey = make_store(collector.store, epoch_seconds=120)
    collector.start()
    try:
        layout = StoreLayout(collector.store)
        if filler:
            _flood(collector, lambda: len(layout.segments("alpha")) >= 4)
            fill(small_fs / "filler")
        else:
            _flood(collector, lambda: "dropped" in collector.stderr())  # filled by the logs
        full = _free(small_fs)
        assert full < 256 * 1024
        segments = len(layout.segments("alpha"))
        collector.write_config({**base, "global": {**floors, "max_bytes": "600K"}})
        collector.signal(signal.SIGHUP)
        tombs = layout.tombstones("alpha")
        assert wait_for(lambda: len(layout.segments("alpha")) <= 3), collector.stderr()
        assert _free(small_fs) > full + 256 * 1024
        assert send(collector.socket, "alpha", lines("after", 5)) == [5]  # logging goes on
        assert collector.stop() == 0
    finally:
        collector.kill()
    deleted = [t for _, t in read_tomb_file(tombs).tombs]
    assert deleted and {t.reason for t in deleted} <= {"global", "compacted"}
    assert deleted[-1].last >= segments - 3
    assert (layout.state_dir / "tomb-reserve").exists()  # made again after freeing
    assert verify_errors(collector.store, collector.vkey) == []


@pytest.mark.parametrize("store_format", [1, 2], ids=["format-1", "format-2"])
def test_epochs_go_on_while_seals_cannot_be_written_then_sigterm_exits(
    tmp_path: Path, small_fs: Path, store_format: int
) -> None:
    """A full disk fails the epoch seals: the key still evolves every epoch, the
    tasks survive, and SIGTERM exits 0 within seconds once space is back.
    Format 2 records the epochs it could not seal as a gap: a warning, no error."""
    config = {"global": {"keep_free": 0, "keep_free_inodes": 0}, "housekeeping_seconds": 0.2}
    collector = Collector(tmp_path, config)
    collector.store = small_fs / "store"
    collector.vkey = make_store(collector.store, epoch_seconds=0.25, store_format=store_format)
    layout = StoreLayout(collector.store)
    collector.start()
    try:
        sock = _open_session(collector, "alpha", 10)
        filler = small_fs / "filler"
        fill(filler)
        assert wait_for(lambda: "not sealed" in collector.stderr(), timeout=25), collector.stderr()
        failed_at = read_epoch(layout)
        assert failed_at is not None
        # Forward security goes on: the key file is overwritten in place, epoch after epoch.
        assert wait_for(lambda: (read_epoch(layout) or 0) >= failed_at + 4, timeout=10)
        assert not died(collector)
        filler.unlink()
        freed_at = read_epoch(layout) or 0
        # An epoch sealed with space back: format 2 writes the gap line then.
        assert wait_for(lambda: (read_epoch(layout) or 0) >= freed_at + 2, timeout=10)
        sock.sendall(lines("back", 5))
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
        assert got.endswith(b"ack 15\n")
        sock.close()
        assert send(collector.socket, "beta", lines("beta", 3)) == [3]  # others served
        stopped = time.monotonic()
        assert collector.stop() == 0
        assert time.monotonic() - stopped < 10
    finally:
        collector.kill()
    assert [p for _, p, _ in sent_lines(collector.store, "alpha")][-5:] == [
        b"back line %d" % i for i in range(5)
    ]
    report = verify_store(collector.store, collector.vkey)
    errors = [str(f) for f in report.errors]
    if store_format == 1:
        # Format 1 cannot record the epochs it could not seal: verify reports
        # them, and nothing else may be wrong.
        assert errors and all("epochs without a seal" in e for e in errors), errors
        return
    assert errors == []
    # Exactly the epochs the disk refused, as a warning and a limit.
    gaps = [str(f) for f in report.warnings if "store-wide epoch seals missing" in str(f)]
    assert len(gaps) == 1, [str(f) for f in report.warnings]
    first, last = map(int, re.findall(r"epochs (\d+)-(\d+)", gaps[0])[0])
    assert first <= failed_at <= last < freed_at + 2
    assert any(f"epochs {first}-{last} were not sealed" in limit for limit in report.limits)


def test_verify_on_a_running_store_across_epoch_changes_finds_nothing(
    tmp_path: Path,
) -> None:
    """`logvm verify` while the collector writes and the key evolves every 0.1 s."""
    collector = Collector(tmp_path, {"global": {"keep_free": 0}})
    collector.vkey = make_store(collector.store, epoch_seconds=0.1)
    keyfile = tmp_path / "vkey"
    keyfile.write_text(collector.vkey + "\n")
    collector.start()
    socks = [_open_session(collector, q, 5) for q in ("alpha", "beta", "disp3")]
    try:
        results = []
        for run in range(8):
            for sock in socks:
                sock.sendall(lines("run%d" % run, 200))
            verify = subprocess.run(
                [str(program("logvm")), "verify", "--store", str(collector.store),
                 "--key", str(keyfile)],
                capture_output=True, env=product_env(), timeout=60, check=False,
            )  # fmt: skip
            results.append((verify.returncode, verify.stdout + verify.stderr))
        for sock in socks:
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
            sock.close()
        assert collector.stop() == 0
    finally:
        collector.kill()
    for code, out in results:
        assert code == 0, out.decode()
        assert b"forged" not in out
    assert verify_errors(collector.store, collector.vkey) == []


def _open_with_unsealed_tail_at_a_page_end(root: Path) -> None:
    """alpha: an open segment whose seal file ends just short of a page boundary
    (the recover seal needs a new block) and an unsealed tail, as a crash leaves."""
    store = Store(root)
    seq = write_segment(store, "alpha", sample_lines(3), close=False)
    chain = store.chain("alpha")
    seal_path = store.layout.segment_seal("alpha", seq)
    while 4096 - seal_path.stat().st_size % 4096 >= 300:
        chain.append(sample_lines(1), 1)
        chain.seal(store.keys)
    with store.layout.segment_log("alpha", seq).open("ab") as stream:
        stream.write(sample_lines(2, "unsealed"))
    write_segment(store, "beta", sample_lines(3))
    store.keys.close()  # a crash: nothing closed


def test_recovery_hitting_a_full_disk_sets_that_qube_aside_others_served(
    tmp_path: Path, small_fs: Path
) -> None:
    collector = Collector(tmp_path, {"global": {"keep_free": 0, "keep_free_inodes": 0}})
    collector.store = small_fs / "store"
    collector.vkey = make_store(collector.store, epoch_seconds=120)
    _open_with_unsealed_tail_at_a_page_end(collector.store)
    filler = small_fs / "filler"
    fill(filler)
    collector.start()
    try:
        # The socket listens before recovery ends: wait for its verdict.
        quarantined = r"alpha: quarantined: .*No space left"
        assert wait_for(lambda: re.search(quarantined, collector.stderr())), collector.stderr()
        assert not died(collector), collector.stderr()
        filler.unlink()
        assert send(collector.socket, "beta", lines("beta", 3)) == [3]
        assert collector.stop() == 0
        collector.start()  # space is back: alpha's tail is recovered now
        assert send(collector.socket, "alpha", lines("alpha", 2)) == [2]
        assert collector.stop() == 0
    finally:
        collector.kill()
    assert "torn" not in collector.stderr()  # the failed recover seal was cut back
    assert "alpha: sealed 2 records a crash had left unsealed" in collector.stderr()
    alpha = [p for _, p, _ in sent_lines(collector.store, "alpha")]
    assert alpha[-2:] == [b"alpha line 0", b"alpha line 1"]
    assert verify_errors(collector.store, collector.vkey) == []


@pytest.mark.timeout(60)
def test_a_full_disk_in_a_split_batch_keeps_the_parts_before_and_the_notes_once(
    tmp_path: Path, small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch bigger than the roll size is written in parts, the collector's
    # pending notes (here a clock step) with the first. The disk fills during
    # the second part: the first part stays stored, sealed and acked, the
    # parts after it are written once the disk has room, the second part's
    # lines are dropped and noted, and the notes are not written a second time.
    root = small_fs / "store"
    vkey = make_store(root)
    store = Store(root)
    retention = RetentionConfig(
        segment_max_bytes=SEGMENT, global_keep_free=0, global_keep_free_inodes=0
    )
    config = CollectorConfig(retention=retention, session_linger=0)
    wall = [2_000_000_000.0]
    big = [b"big line %05d " % i + b"z" * 90 for i in range(2000)]  # about 220 KB: 4 parts
    filler, calls = small_fs / "filler", []
    real = QubeChain.append_sealed

    def append_sealed(chain: QubeChain, parts: Sequence[bytes], nlines: int, keys: Any) -> Any:
        calls.append(nlines)
        if len(calls) != 3:  # the first batch, the big one's first part, its second
            return real(chain, parts, nlines, keys)
        fill(filler)
        try:
            return real(chain, parts, nlines, keys)
        finally:
            filler.unlink()

    monkeypatch.setattr(QubeChain, "append_sealed", append_sealed)

    async def run() -> list[tuple[int, bool]]:
        access = StoreAccess(store, config, clock=lambda: wall[0])
        writer = QubeWriter("alpha", access, on_idle=lambda _: None)
        feed = Sink()
        assert writer.attach(feed)
        submit_text(writer, feed, b"first\n")
        await until(lambda: bool(feed.acks))
        wall[0] -= 30  # stepped back: a clock-step note waits for the next batch
        submit_text(writer, feed, b"\n".join(big) + b"\n")
        await until(lambda: len(feed.acks) == 2)
        return await finish_and_wait(writer, feed)

    try:
        acks = asyncio.run(run())
    finally:
        store.close()
    assert acks[-1] == (2001, True)
    assert len(calls) >= 5 and calls[0] == 1
    first, second = calls[1] - 1, calls[2]  # (the first part's count holds the note)
    stored = [p for _, p, _ in sent_lines(root, "alpha")]
    assert stored == [b"first", *big[:first], *big[first + second :]]
    assert len(notes(root, "alpha", "clock-step")) == 1
    drops = notes(root, "alpha", "dropped")
    assert [(n.fields()["reason"], n.fields()["count"]) for n in drops] == [
        ("disk-full", str(second))
    ]
    assert verify_errors(root, vkey) == []
