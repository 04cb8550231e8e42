"""Resources a sender cannot exhaust, on a small filesystem the test makes (tmpfs).

Issue 17's figures through a real collector: 100,000 one-line calls (marked
slow, ~100 s here), 200 qubes flooding, 10,000 DispVM names. They assert
counts, costs and memory; timing goals (ack p99, CPU share) are printed and
measured by ``make bench`` next to a baseline.
"""

import asyncio
import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from collector.helpers import (
    Collector,
    connect,
    make_store,
    notes,
    read_acks,
    rss_kib,
    send,
    sent_lines,
    verify_errors,
)

from bench.idle_bench import build_names
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.usage import FILE_COST, qube_usage, usage
from support.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)")

#: tmpfs inodes: without the per-file cost the calls below would use them all.
INODES = 1500
QUOTA = 4 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs with only INODES inodes, unmounted at the end."""
    with mounted_tmpfs(tmp_path, f"size=64m,nr_inodes={INODES}") as mount:
        yield mount


@pytest.mark.timeout(240)
def test_many_one_line_calls_stay_within_inode_and_block_budget(small_fs: Path) -> None:
    collector = Collector(
        small_fs,
        {
            "segment": {"max_bytes": "64K"},
            "quota": {"default": "16M", "qubes": {"calls": QUOTA}},
            "global": {"keep_free": 0, "keep_free_inodes": 100},
            "housekeeping_seconds": 0.5,
            "session_linger": 0,  # every call a segment: the worst case
        },
    )
    collector.vkey = make_store(collector.store)
    collector.start()
    calls = 1000  # 2,000 files without a per-file cost: more than the tmpfs has
    try:
        for i in range(calls):
            assert send(collector.socket, "calls", b"call %d\n" % i) == [1]
        assert send(collector.socket, "quiet", b"still here\n") == [1]
    finally:
        assert collector.stop() == 0
    cost = qube_usage(StoreLayout(collector.store), "calls")
    assert cost.disk <= QUOTA
    assert cost.files <= QUOTA // (FILE_COST + 4096)  # every file charged 16 KiB at least
    assert os.statvfs(small_fs).f_favail > 100
    stored = [payload for _, payload, _ in sent_lines(collector.store, "calls")]
    assert stored and stored == [b"call %d" % i for i in range(calls - len(stored), calls)]
    assert [p for _, p, _ in sent_lines(collector.store, "quiet")] == [b"still here"]
    assert verify_errors(collector.store, collector.vkey) == []


@pytest.mark.timeout(120)
def test_reconnects_within_the_linger_continue_one_segment(small_fs: Path) -> None:
    collector = Collector(small_fs, {"session_linger": "5s", "global": {"keep_free": 0}})
    collector.vkey = make_store(collector.store)
    collector.start()
    calls = 2000  # ~4,000 files without the linger: more than the tmpfs has
    layout = StoreLayout(collector.store)
    try:
        for i in range(calls):
            assert send(collector.socket, "calls", b"call %d\n" % i) == [1]
        for i in range(4):  # a DispVM never lingers: its name may be a new DispVM's
            assert send(collector.socket, "disp7", b"life %d\n" % i) == [1]
        running = (len(layout.segments("calls")), len(layout.segments("disp7")))
    finally:
        assert collector.stop() == 0
    assert running == (1, 4)
    stored = [payload for _, payload, _ in sent_lines(collector.store, "calls")]
    assert stored == [b"call %d" % i for i in range(calls)]
    assert verify_errors(collector.store, collector.vkey) == []


def _dispvm_reuse(workdir: Path, grace: str) -> tuple[list[bytes], int]:
    """An earlier disp9 logs two lines; a later disp9 floods. Returns the
    earlier lines left and the later flood's lines dropped for the quota."""
    workdir.mkdir()
    collector = Collector(
        workdir,
        {
            "segment": {"max_bytes": "64K"},
            "quota": {"classes": {"dispvm": "512K"}},
            "retention": {"dispvm_grace": grace},
            "global": {"keep_free": 0},
        },
    )
    collector.vkey = make_store(collector.store)
    collector.start()
    line = b"F" * 199 + b"\n"
    try:
        assert send(collector.socket, "disp9", b"first life 1\nfirst life 2\n") == [2]
        with connect(collector.socket, "disp9") as sock:
            for _ in range(40):
                sock.sendall(line * 500)  # 4 MB in all, 8x the quota
            sock.shutdown(socket.SHUT_WR)
            assert read_acks(sock)[-1] == 20000
    finally:
        assert collector.stop() == 0
    assert verify_errors(collector.store, collector.vkey) == []
    # The bar (design.md): a flooder stays within its quota + one segment.
    assert usage(StoreLayout(collector.store), "disp9") <= (512 + 64) * 1024
    earlier = [p for _, p, _ in sent_lines(collector.store, "disp9") if p.startswith(b"first")]
    dropped = sum(
        int(n.fields()["count"])
        for n in notes(collector.store, "disp9", "dropped")
        if n.fields()["reason"] == "quota"
    )
    return earlier, dropped


@pytest.mark.timeout(120)
def test_reused_dispvm_name_flood_leaves_the_earlier_session(tmp_path: Path) -> None:
    earlier, dropped = _dispvm_reuse(tmp_path / "grace", "1h")
    assert earlier == [b"first life 1", b"first life 2"] and dropped > 0
    # Past the grace the earlier session is fair game: the flood evicts it.
    earlier, _ = _dispvm_reuse(tmp_path / "none", "0")
    assert earlier == []


def _store_cost(layout: StoreLayout) -> int:
    return sum(qube_usage(layout, q).disk for q in layout.qubes())


@pytest.mark.timeout(180)
def test_flooders_keep_the_store_within_the_global_cap(tmp_path: Path) -> None:
    """20 qubes flood at once under a cap of a fifth of their quotas; housekeeping
    is slow (60 s), so only the running total at append time can hold the cap."""
    flooders, cap, batch = 20, 4 << 20, 128 << 10
    tmp_path.joinpath("c").mkdir()
    collector = Collector(
        tmp_path / "c",
        {
            "segment": {"max_bytes": "64K"},
            "quota": {"default": "1M"},
            "global": {"keep_free": 0, "max_bytes": cap},
            "pending_bytes": "64K",  # a batch: at most this plus one read
            "housekeeping_seconds": 60,
            "rate_limit": {"lines_per_second": 0},
        },
    )
    collector.vkey = make_store(collector.store)
    collector.start()
    layout = StoreLayout(collector.store)
    stop = threading.Event()
    peak = 0

    def flood(qube: str) -> None:
        line = b"%s " % qube.encode() + b"F" * 190 + b"\n"
        with connect(collector.socket, qube) as sock:
            reader = threading.Thread(target=read_acks, args=(sock,), daemon=True)
            reader.start()
            while not stop.is_set():
                sock.sendall(line * 300)
            sock.shutdown(socket.SHUT_WR)
            reader.join(60)

    threads = [threading.Thread(target=flood, args=(f"f{i}",)) for i in range(flooders)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            peak = max(peak, _store_cost(layout))
            time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        assert collector.stop() == 0
    evicted = sum(1 for q in layout.qubes() if layout.tombstones(q).exists())
    assert evicted >= flooders // 2, "too small a flood to test the cap"
    print(f"global cap: {flooders} flooders, peak {peak} bytes, cap {cap}, {evicted} evicted")
    assert peak <= cap + flooders * batch, (peak, cap)
    assert verify_errors(collector.store, collector.vkey) == []


#: DispVM names in the store for the idle-CPU test.
NAMES = 10_000


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(600)
def _wait_until_idle(pid: int, limit: float = 120.0) -> None:
    """Until two 1 s windows in a row cost under 20% of a core: the start-up
    pass over every name is done (on a loaded box it takes longer than on a
    quiet one, and must not be counted as idle)."""
    deadline, calm = time.monotonic() + limit, 0
    while calm < 2:
        assert time.monotonic() < deadline, "the collector never became idle"
        before, started = _cpu_seconds(pid), time.monotonic()
        time.sleep(1)
        share = (_cpu_seconds(pid) - before) / (time.monotonic() - started)
        calm = calm + 1 if share < 0.2 else 0


def test_ten_thousand_dispvm_names_keep_idle_cpu_low(tmp_path: Path) -> None:
    """A store that saw 10,000 DispVM names: idle housekeeping costs what changed,
    not every name ever seen (goal: under 2% of a core, issue 17)."""
    with mounted_tmpfs(tmp_path, f"size=512m,nr_inodes={8 * NAMES}") as fs:
        collector = Collector(
            fs, {"global": {"keep_free": 0, "max_bytes": "1G"}, "housekeeping_seconds": 1}
        )
        build_names(collector.store, NAMES)
        collector.vkey = ""
        collector.start(timeout=120)
        try:
            assert send(collector.socket, "disp1", b"back\n") == [1]
            time.sleep(2)  # two housekeeping periods: the first (full) pass has begun
            _wait_until_idle(collector.pid)  # and ends
            before, started = _cpu_seconds(collector.pid), time.monotonic()
            time.sleep(10)
            share = (_cpu_seconds(collector.pid) - before) / (time.monotonic() - started)
            rss, _ = rss_kib(collector.pid)
            assert send(collector.socket, "work", b"still served\n") == [1]
        finally:
            assert collector.stop() == 0
    print(f"{NAMES} DispVM names: idle CPU {share:.1%} of a core, RSS {rss >> 10} MiB")
    assert share < 0.05, share  # the 2% goal: make bench (idle_bench); 5% on a loaded box


def _flood_many(sock_path: Path, names: list[str], stop: threading.Event) -> int:
    """Flood from every name at once on one thread (non-blocking sockets);
    returns the bytes sent. Acks are read and dropped."""
    sel = selectors.DefaultSelector()
    socks = []
    by_fd = {}
    for name in names:
        for _ in range(100):  # the listen backlog may be full for a moment
            try:
                sock = connect(sock_path, name)
                break
            except BlockingIOError:
                time.sleep(0.01)
        sock.setblocking(False)
        socks.append(sock)
        by_fd[sock.fileno()] = sock
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, name.encode())
    sent = 0
    try:
        while not stop.is_set():
            for key, events in sel.select(0.1):
                sock = by_fd[key.fd]
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    if events & selectors.EVENT_READ:
                        sock.recv(65536)
                    if events & selectors.EVENT_WRITE:
                        sent += sock.send((key.data + b" " + b"F" * 190 + b"\n") * 300)
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            sock.close()
        sel.close()
    return sent


def _quiet_acks(sock_path: Path, stop: threading.Event, out: list[float]) -> None:
    with connect(sock_path, "quiet") as sock:
        buffer, count = b"", 0
        while not stop.is_set():
            started = time.monotonic()
            count += 1
            sock.sendall(b"quiet line %d\n" % count)
            while b"ack %d\n" % count not in buffer:
                buffer += sock.recv(4096)
            out.append(time.monotonic() - started)
            buffer = buffer[buffer.rfind(b"\n") + 1 :]
            time.sleep(0.05)
        sock.shutdown(socket.SHUT_WR)
        read_acks(sock)


@pytest.mark.timeout(300)
def test_two_hundred_flooders_cap_memory_and_a_quiet_qube(tmp_path: Path) -> None:
    """200 qubes flood at once: the store stays within the global cap plus one
    batch per qube, the collector's RSS within 100 MiB, a quiet qube's lines
    are all acked (its ack p99 is printed; the 1 s goal is make bench's)."""
    flooders, cap, batch = 200, 16 << 20, (64 + 64) << 10  # pending_bytes + one read
    tmp_path.joinpath("c").mkdir()
    collector = Collector(
        tmp_path / "c",
        {
            "segment": {"max_bytes": "64K"},
            "quota": {"default": "1M"},
            "global": {"keep_free": 0, "max_bytes": cap},
            "pending_bytes": "64K",
            "housekeeping_seconds": 60,
            "rate_limit": {"lines_per_second": 0},
        },
    )
    collector.vkey = make_store(collector.store, epoch_seconds=10)  # the default
    collector.start()
    layout = StoreLayout(collector.store)
    stop, quiet_stop = threading.Event(), threading.Event()
    sent, latencies, peak = [0], list[float](), 0
    flood = threading.Thread(
        target=lambda: sent.__setitem__(
            0, _flood_many(collector.socket, [f"f{i}" for i in range(flooders)], stop)
        )
    )
    quiet = threading.Thread(target=_quiet_acks, args=(collector.socket, quiet_stop, latencies))
    try:
        flood.start()
        time.sleep(1.0)
        quiet.start()
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            peak = max(peak, _store_cost(layout))
            time.sleep(0.2)
        quiet_stop.set()
        quiet.join(60)
        stop.set()
        flood.join(60)
        _, hwm_kib = rss_kib(collector.pid)
    finally:
        stop.set()
        quiet_stop.set()
        assert collector.stop() == 0
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{flooders} flooders, {sent[0] >> 20} MiB sent: store peak {peak >> 20} MiB "
        f"(cap {cap >> 20} MiB), RSS peak {hwm_kib >> 10} MiB, quiet ack p99 {p99:.3f} s "
        f"max {ordered[-1]:.3f} s over {len(ordered)} lines"
    )
    assert peak <= cap + flooders * batch, (peak, cap)
    assert hwm_kib <= 100 * 1024, hwm_kib
    stored = [p for _, p, _ in sent_lines(collector.store, "quiet")]
    assert stored == [b"quiet line %d" % i for i in range(1, len(latencies) + 1)]
    assert len(latencies) >= 5


async def _calls(sock_path: Path, qube: str, count: int, parallel: int) -> list[int]:
    """``count`` one-line calls from ``qube``, ``parallel`` at a time; the final acks."""

    acks = [0] * count
    numbers = iter(range(count))

    async def caller() -> None:
        for number in numbers:
            for _ in range(100):  # the listen backlog may be full for a moment
                try:
                    reader, writer = await asyncio.open_unix_connection(str(sock_path))
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            writer.write(b"logvm.Send %s\0call %d\n" % (qube.encode(), number))
            writer.write_eof()
            reply = await reader.read()
            writer.close()
            acks[number] = int(reply.split()[-1]) if reply.startswith(b"ack ") else -1

    await asyncio.gather(*(caller() for _ in range(parallel)))
    return acks


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_hundred_thousand_one_line_calls_within_budget_another_qube_logs(
    small_fs: Path,
) -> None:
    """Issue 17's figure: 100,000 calls (8 at a time, the per-qube limit) on a
    tmpfs of INODES inodes, the product's session_linger; another qube calls
    all along and is never stopped."""

    collector = Collector(
        small_fs,
        {
            "segment": {"max_bytes": "1M"},
            "quota": {"default": "16M", "qubes": {"calls": QUOTA}},
            "global": {"keep_free": 0, "keep_free_inodes": 100},
            "housekeeping_seconds": 1,
        },
    )
    collector.vkey = make_store(collector.store, epoch_seconds=10)
    collector.start()
    calls, stop, quiet_acks = 100_000, threading.Event(), list[list[int]]()

    def other() -> None:
        while not stop.is_set():
            quiet_acks.append(send(collector.socket, "other", b"line %d\n" % len(quiet_acks)))
            time.sleep(0.2)

    thread = threading.Thread(target=other)
    thread.start()
    started = time.monotonic()
    try:
        acks = asyncio.run(_calls(collector.socket, "calls", calls, 8))
        seconds = time.monotonic() - started
    finally:
        stop.set()
        thread.join(60)
        assert collector.stop() == 0
    layout = StoreLayout(collector.store)
    cost = qube_usage(layout, "calls")
    print(
        f"{calls} calls in {seconds:.0f} s: {cost.files} files, {cost.disk >> 10} KiB charged, "
        f"{len(layout.segments('calls'))} segments; other qube {len(quiet_acks)} calls"
    )
    assert acks.count(1) == calls  # every call's line stored and acknowledged
    assert cost.disk <= QUOTA and cost.files <= QUOTA // (FILE_COST + 4096)
    assert os.statvfs(small_fs).f_favail > 100
    assert quiet_acks and all(a == [1] for a in quiet_acks)
    stored = [p for _, p, _ in sent_lines(collector.store, "other")]
    assert stored == [b"line %d" % i for i in range(len(quiet_acks))]
