"""Fair scheduling (collector/fair.py): in process, then through a real collector.

Timing goals (a quiet qube's ack p99 under a flood) are measured by
``make bench`` (fairness_bench); these tests assert order, counts and memory.
"""

import asyncio
import functools
import os
import socket
import threading
import time
from collections.abc import Callable

import pytest
from collector.helpers import Collector, connect, notes, read_acks, rss_kib, sent_lines, wait_for

from qubes_logvm.collector.fair import ChainSlots, Ingest, PendingBudget
from qubes_logvm.collector.server import FINAL_ACK_GRACE
from qubes_logvm.config.collector import parse_collector_config
from qubes_logvm.core.errors import ConfigError


@pytest.mark.inprocess
def test_chain_slots_run_a_waiting_small_batch_before_big_ones() -> None:
    order: list[str] = []

    async def main() -> None:
        slots = ChainSlots(threads=1)
        gate = threading.Event()
        first = asyncio.create_task(slots.run(1 << 20, gate.wait))
        await asyncio.sleep(0.05)  # the one thread is busy
        tasks = [
            asyncio.create_task(slots.run(size, functools.partial(order.append, name)))
            for name, size in (("big1", 1 << 20), ("big2", 1 << 20), ("small", 100))
        ]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *tasks)
        slots.shutdown()

    asyncio.run(main())
    assert order == ["small", "big1", "big2"]  # big ones in arrival order


@pytest.mark.inprocess
def test_chain_slots_a_cancelled_waiter_gives_its_turn_on() -> None:
    async def main() -> list[int]:
        slots = ChainSlots(threads=1)
        gate = threading.Event()
        first = asyncio.create_task(slots.run(0, gate.wait))
        await asyncio.sleep(0.05)
        cancelled = asyncio.create_task(slots.run(0, lambda: 1))
        later = asyncio.create_task(slots.run(0, lambda: 2))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        gate.set()
        await first
        done = [await later]
        done.append(await slots.run(0, lambda: 3))  # the slot came back
        slots.shutdown()
        return done

    assert asyncio.run(main()) == [2, 3]


class _Conn:
    """A connection with ``size`` bytes to escape (Ingest) or ``held`` (budget)."""

    def __init__(self, name: str, size: int, log: list[str]) -> None:
        self.name, self.left, self.log = name, size, log
        self.resumed = 0

    def ingest_slice(self, limit: int) -> bool:
        self.log.append(self.name)
        self.left -= min(limit, self.left)
        return self.left > 0

    def held(self) -> int:
        return self.left

    def budget_resumed(self) -> None:
        self.resumed += 1


@pytest.mark.inprocess
def test_ingest_takes_one_slice_of_each_connection_in_turn() -> None:
    log: list[str] = []

    async def main() -> None:
        ingest = Ingest(slice_bytes=10, small_read=5, turn_seconds=0)  # a slice a callback
        for conn in (_Conn("flood1", 35, log), _Conn("flood2", 35, log)):
            ingest.add(conn, conn.left)
        await asyncio.sleep(0)
        quiet = _Conn("quiet", 5, log)
        ingest.add(quiet, quiet.left)  # arrives after the first turn
        for _ in range(20):
            await asyncio.sleep(0)

    asyncio.run(main())
    # Busy connections take turns slice by slice; the quiet connection (little
    # waiting) goes at the next turn, before any round of theirs.
    assert log[:4] == ["flood1", "quiet", "flood2", "flood1"]
    assert log.count("flood1") == 4 and log.count("quiet") == 1


@pytest.mark.inprocess
def test_pending_budget_pauses_only_connections_over_their_share() -> None:
    log: list[str] = []

    async def main() -> tuple[bool, bool, int]:
        budget = PendingBudget(total=1 << 20)
        flooder, quiet = _Conn("flood", 900 << 10, log), _Conn("quiet", 100, log)
        budget.add(flooder.held())
        assert not budget.must_pause(flooder, 2)  # within the budget
        budget.add(200 << 10)
        paused = budget.must_pause(flooder, 2), budget.must_pause(quiet, 2)
        budget.release(500 << 10)
        await asyncio.sleep(0)
        return paused[0], paused[1], flooder.resumed

    assert asyncio.run(main()) == (True, False, 1)


@pytest.mark.inprocess
def test_pending_bytes_total_is_validated_naming_the_key() -> None:
    assert parse_collector_config({}).pending_bytes_total == 32 << 20
    assert parse_collector_config({"pending_bytes_total": "8M"}).pending_bytes_total == 8 << 20
    for bad in ("lots", "100K", -1):
        with pytest.raises(ConfigError, match="pending_bytes_total"):
            parse_collector_config({"pending_bytes_total": bad})


#: Enough one-line batches that their acks fill the collector's socket buffer.
LINES = 3000


@pytest.mark.timeout(120)
def test_a_sender_that_never_reads_its_final_ack_is_aborted(
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector({"session_linger": 0})
    with connect(collector.socket, "deaf") as sock:
        # Many small batches, each acked, none read: the collector's socket
        # buffer fills with acks, the final one cannot be written.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for i in range(LINES):
            sock.sendall(b"line %d\n" % i)
            time.sleep(0.002)
        sock.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: notes(collector.store, "deaf", "segment-end"), timeout=60)
        # Past the grace the collector has let the connection go: what the
        # socket held is there, the final ack (still in the collector's
        # buffer when it aborted) is not. Without the grace, reading now
        # would get every ack.
        time.sleep(FINAL_ACK_GRACE + 3)
        acks = read_acks(sock)
    assert [p for _, p, _ in sent_lines(collector.store, "deaf")] == [
        b"line %d" % i for i in range(LINES)
    ]
    assert acks and acks[-1] < LINES


@pytest.mark.timeout(180)
def test_binary_flood_on_eight_connections_quiet_qube_is_served_memory_bounded(
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(
        {
            "quota": {"default": "64M"},
            "segment": {"max_bytes": "8M"},
            "rate_limit": {"lines_per_second": 0},
            "pending_bytes_total": "4M",
            "global": {"keep_free": 0},
        }
    )
    stop = threading.Event()
    flooded = [0]

    def flood(qube: str) -> None:
        block = os.urandom(256 * 1024)
        with connect(collector.socket, qube) as sock:
            reader = threading.Thread(target=read_acks, args=(sock,), daemon=True)
            reader.start()
            while not stop.is_set():
                sock.sendall(block)
                flooded[0] += len(block)
            sock.shutdown(socket.SHUT_WR)
            reader.join(60)

    threads = [threading.Thread(target=flood, args=(f"flood{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    latencies = []
    try:
        time.sleep(1.0)
        with connect(collector.socket, "quiet") as sock:
            buffer = b""
            for i in range(1, 21):
                started = time.monotonic()
                sock.sendall(b"quiet %d\n" % i)
                while b"ack %d\n" % i not in buffer:
                    buffer += sock.recv(4096)
                latencies.append(time.monotonic() - started)
            sock.shutdown(socket.SHUT_WR)
            assert read_acks(sock) == []
        _, peak_kib = rss_kib(collector.pid)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert collector.stop() == 0
    print(f"8 binary flooders ({flooded[0] >> 20} MiB sent): quiet acks max {max(latencies):.3f}s")
    assert [p for _, p, _ in sent_lines(collector.store, "quiet")] == [
        b"quiet %d" % i for i in range(1, 21)
    ]
    assert peak_kib < 100 * 1024, peak_kib
