"""Quotas enforced by the real collector: flood isolation, SIGKILL during eviction, quota edits."""

import asyncio
import os
import random
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from collector.helpers import (
    Collector,
    Sink,
    connect,
    finish_and_wait,
    make_store,
    notes,
    read_acks,
    sent_lines,
    submit_text,
    verify_errors,
    wait_for,
)

from qubes_logvm.collector.qubewriter import QubeWriter, StoreAccess, _Batch, _parts
from qubes_logvm.config.collector import CollectorConfig
from qubes_logvm.config.storage_policy import RetentionConfig
from qubes_logvm.core.seal import parse_verification_key
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.tombstones import read_tomb_file
from qubes_logvm.store.usage import usage
from qubes_logvm.store.verify import verify_store
from qubes_logvm.store.writer import Store
from support.segments import product_env, sample_lines, write_segment

SEGMENT = 64 * 1024


@pytest.fixture(autouse=True)
def _product_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector subprocesses run this checkout's code, not an installed .deb."""
    monkeypatch.setenv("PYTHONPATH", product_env()["PYTHONPATH"])


def _errors(root: Path, vkey: str) -> list[str]:
    return [str(f) for f in verify_store(root, vkey).errors]


def _collector(workdir: Path, config: dict[str, object], vkey: str | None = None) -> Collector:
    workdir.mkdir(exist_ok=True)
    collector = Collector(workdir, config)
    collector.vkey = vkey or make_store(collector.store)
    return collector


class _Quiet(threading.Thread):
    """A qube sending one numbered line every ``period`` seconds; latency to its ack."""

    def __init__(self, sock_path: Path, qube: str, period: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.sock_path, self.qube, self.period, self.stop = sock_path, qube, period, stop
        self.sent: list[bytes] = []
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.sock_path, self.qube) as sock:
                buffer = b""
                while not self.stop.is_set():
                    line = b"%s quiet line %d" % (self.qube.encode(), len(self.sent))
                    started = time.monotonic()
                    sock.sendall(line + b"\n")
                    self.sent.append(line)
                    while b"ack %d\n" % len(self.sent) not in buffer:
                        buffer += sock.recv(4096)
                    self.latencies.append(time.monotonic() - started)
                    buffer = buffer[buffer.rfind(b"\n") + 1 :]
                    time.sleep(self.period)
                sock.shutdown(socket.SHUT_WR)
                read_acks(sock)
        except BaseException as err:  # noqa: BLE001 -- handed to the test thread
            self.error = err


def _flood(sock_path: Path, seconds: float) -> int:
    """Send 200-byte lines as fast as the collector takes them; return lines sent."""
    line = b"F" * 199 + b"\n"
    block = line * 500
    sent = 0
    with connect(sock_path, "flood") as sock:
        reader = threading.Thread(target=read_acks, args=(sock,), daemon=True)
        reader.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.sendall(block)
            sent += 500
        sock.shutdown(socket.SHUT_WR)
        reader.join(60)
    return sent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_flood_stays_within_quota_and_quiet_qubes_lose_nothing(tmp_path: Path) -> None:
    quota = 512 * 1024
    collector = _collector(
        tmp_path / "c",
        {
            "segment": {"max_bytes": SEGMENT},
            "quota": {"default": "64M", "qubes": {"flood": quota}},
            "global": {"keep_free": 0},
            "rate_limit": {"qubes": {"flood": {"lines_per_second": 0}}},
            "housekeeping_seconds": 0.5,
        },
    ).start()
    layout = StoreLayout(collector.store)
    stop = threading.Event()
    quiet = [_Quiet(collector.socket, q, 0.02, stop) for q in ("quiet1", "quiet2")]
    peak = 0
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, usage(layout, "flood"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        for thread in quiet:
            thread.start()
        sampler.start()
        flooded = _flood(collector.socket, 6.0)
        stop.set()
        for thread in quiet:
            thread.join(30)
    finally:
        sampling = False
        sampler.join(10)
        assert collector.stop() == 0
    for thread in quiet:
        assert thread.error is None, thread.error
        stored = [payload for kind, payload, _ in sent_lines(collector.store, thread.qube)]
        assert stored == thread.sent  # nothing lost, nothing doubled, in order
    assert peak <= quota + SEGMENT, (peak, quota)
    tombs = read_tomb_file(layout.tombstones("flood")).tombs
    assert tombs, "the flooder never lost a segment: flood too small to test anything"
    assert _errors(collector.store, collector.vkey) == []
    latencies = sorted(x for t in quiet for x in t.latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"flood: {flooded} lines ({flooded * 200 >> 20} MiB) sent, peak usage {peak} bytes "
        f"(quota {quota} + segment {SEGMENT}), {len(tombs)} segments evicted; "
        f"quiet qubes: {len(latencies)} lines, latency p50 {latencies[len(latencies) // 2]:.4f}s "
        f"p99 {p99:.4f}s max {latencies[-1]:.4f}s"
    )


def _old_store(root: Path, qube: str, segments: int) -> tuple[str, dict[int, bytes]]:
    vkey = make_store(root)
    store = Store(root)
    for i in range(segments):
        write_segment(store, qube, sample_lines(300, f"seg{i}"))
    store.close()
    layout = StoreLayout(root)
    return vkey, {s.seq: s.log.read_bytes() for s in layout.segments(qube) if s.log}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_during_eviction_keeps_chain_verifiable(tmp_path: Path) -> None:
    """Kill the collector at random moments while housekeeping deletes 30 segments, 10 times."""
    pristine = tmp_path / "pristine"
    vkey, originals = _old_store(pristine, "old", 40)
    config = {
        "segment": {"max_bytes": "32K"},
        "quota": {"default": "64K"},
        "global": {"keep_free": 0},
        "housekeeping_seconds": 0.05,
    }
    rng = random.Random(7)
    states = set()
    for attempt in range(10):
        workdir = tmp_path / f"run{attempt}"
        workdir.mkdir()
        shutil.copytree(pristine, workdir / "store")
        collector = _collector(workdir, config, vkey)
        tombs = workdir / "store" / "qubes" / "old" / "tombstones.seal"
        try:
            collector.start()
            wait_for(tombs.exists, timeout=20, interval=0.001)
            time.sleep(rng.uniform(0, 0.05))
            collector.signal(signal.SIGKILL)
        finally:
            collector.kill()
        states.add(_check_eviction(collector.store, vkey, originals))
        collector.start()
        layout = StoreLayout(collector.store)
        assert wait_for(lambda: usage(layout, "old") <= 64 * 1024, 20)  # noqa: B023
        assert collector.stop() == 0
        _check_eviction(collector.store, vkey, originals)
        shutil.rmtree(workdir)
    print("eviction kill states:", sorted(states))


def _check_eviction(root: Path, vkey: str, originals: dict[int, bytes]) -> str:
    """The surviving segments are unchanged, a suffix, and the chain verifies."""
    assert _errors(root, vkey) == []
    layout = StoreLayout(root)
    alive = {s.seq: s for s in layout.segments("old")}
    lines = [t for _, t in read_tomb_file(layout.tombstones("old")).tombs]
    # Oldest first, each once; a compaction summary first stands for the
    # segments before (docs/store-format.md).
    summary = lines[0].last if lines and lines[0].kind == "summary" else 0
    tombs = [t.last for t in lines if t.kind == "tomb"]
    first = summary + 1
    assert tombs == list(range(first, first + len(tombs)))
    compacted = set(range(1, first))
    assert not compacted & set(alive)
    for seq, files in alive.items():
        if files.log is not None and seq not in tombs:
            assert files.log.read_bytes() == originals[seq]
    assert set(range(1, 41)) <= set(alive) | set(tombs) | compacted
    return f"{len(tombs)} tombs, {len(set(alive) & set(tombs))} tombstoned-but-present"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quota_edit_is_enforced_after_sighup_and_restart(tmp_path: Path) -> None:
    config: dict[str, object] = {
        "segment": {"max_bytes": "32K"},
        "quota": {"default": "2M"},
        "global": {"keep_free": 0},
        "housekeeping_seconds": 0.1,
    }
    collector = _collector(tmp_path / "c", config)
    _, key0 = parse_verification_key(collector.vkey)
    store = Store(collector.store)
    for i in range(20):
        write_segment(store, "work", sample_lines(300, f"seg{i}"))  # ~1.1 MiB charged
    store.close()
    collector.start()
    layout = StoreLayout(collector.store)
    time.sleep(1.0)
    before = usage(layout, "work")
    assert before > 512 * 1024  # within the 2M quota: nothing deleted
    assert not layout.tombstones("work").exists()
    config["quota"] = {"default": "2M", "qubes": {"work": "512K"}}
    collector.write_config(config)
    collector.signal(signal.SIGHUP)
    assert wait_for(lambda: usage(layout, "work") <= 512 * 1024, 20)
    assert collector.stop() == 0
    config["quota"] = {"default": "2M", "qubes": {"work": "256K"}}
    collector.write_config(config)
    collector.start()
    assert wait_for(lambda: usage(layout, "work") <= 256 * 1024, 20)
    assert collector.stop() == 0
    assert _errors(collector.store, collector.vkey) == []
    assert key0  # the same store throughout
    assert os.path.exists(layout.tombstones("work"))


@pytest.mark.inprocess
@pytest.mark.timeout(60)
def test_a_first_batch_bigger_than_the_quota_keeps_its_newest_lines(tmp_path: Path) -> None:
    # A qube's first batch may hold up to pending_bytes (1 MiB) under a smaller
    # quota: with no closed segment to delete yet it was dropped whole. Written
    # in parts of the roll size, each making room, it keeps its newest lines and
    # every deletion is a tombstone.
    vkey = make_store(tmp_path / "store")
    store = Store(tmp_path / "store")
    quota = 256 * 1024
    retention = RetentionConfig(segment_max_bytes=SEGMENT, quota_default=quota)
    config = CollectorConfig(retention=retention, session_linger=0)
    sent = [b"line %05d " % i + b"y" * 190 for i in range(4000)]  # about 850 KB

    async def run() -> list[tuple[int, bool]]:
        writer = QubeWriter("hog", StoreAccess(store, config), on_idle=lambda _: None)
        feed = Sink()
        assert writer.attach(feed)
        submit_text(writer, feed, b"\n".join(sent) + b"\n")  # before the writer's first step
        return await finish_and_wait(writer, feed)

    try:
        acks = asyncio.run(run())
    finally:
        store.close()
    assert acks == [(4000, True)]
    assert notes(tmp_path / "store", "hog", "dropped") == []  # nothing refused for the quota
    stored = [p for _, p, _ in sent_lines(tmp_path / "store", "hog")]
    assert stored == sent[-len(stored) :] and len(stored) * 200 > SEGMENT  # the newest
    directory = tmp_path / "store" / "qubes" / "hog"
    assert read_tomb_file(directory / "tombstones.seal").tombs  # the deletions are visible
    assert sum(p.stat().st_size for p in directory.iterdir()) <= quota + SEGMENT + 4096
    assert verify_errors(tmp_path / "store", vkey) == []


def test_batch_parts_are_whole_lines_within_the_roll_size() -> None:
    rng = random.Random(17)
    for _ in range(200):
        batch = _Batch()
        lines = [b"%d " % i + b"x" * rng.choice((0, 5, 60, 300)) + b"\n" for i in range(80)]
        cuts = sorted(rng.sample(range(1, len(lines)), rng.randrange(0, 6)))
        batch.chunks = [
            b"".join(lines[a:b]) for a, b in zip([0, *cuts], [*cuts, len(lines)], strict=True)
        ]
        batch.lines, batch.nbytes = len(lines), sum(map(len, lines))
        size = rng.choice((50, 200, 1000, batch.nbytes))
        parts = list(_parts(batch, size))
        assert b"".join(b"".join(p) for p, _ in parts) == b"".join(lines)
        assert sum(n for _, n in parts) == len(lines)
        for part, count in parts:
            text = b"".join(part)
            assert text.endswith(b"\n") and text.count(b"\n") == count
            # Within the size, but a line longer than it (alone).
            assert len(text) <= size or count == 1, (size, len(text))
        if batch.nbytes <= size:
            assert len(parts) == 1 and parts[0][0] is batch.chunks
