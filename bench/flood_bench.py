"""Flood isolation and memory with 50 qubes connected (design.md bars).

One qube floods real log lines as fast as the collector takes them, under a
small quota, while 49 others stay connected and each send a line every half
second, timing each line from send to its ack (sealed and durable). Sampled
meanwhile: the flooder's bytes on disk and the collector's RSS.

Bars: the flooder within its quota plus one segment; the quiet qubes' p99
latency <= 1 s; collector RSS <= 60 MiB with 50 qubes connected.
"""

import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "python")]

QUIET_QUBES = 49
FLOOD_SECONDS = 20.0
QUOTA = 8 << 20
SEGMENT = 1 << 20


class _Quiet(threading.Thread):
    def __init__(self, sock_path: Path, qube: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.sock_path, self.qube, self.stop = sock_path, qube, stop
        self.latencies: list[float] = []

    def run(self) -> None:
        from collector.helpers import connect

        with connect(self.sock_path, self.qube) as sock:
            buffer, sent = b"", 0
            while not self.stop.is_set():
                started = time.monotonic()
                sock.sendall(b"%s quiet line %d\n" % (self.qube.encode(), sent))
                sent += 1
                while b"ack %d\n" % sent not in buffer:
                    buffer += sock.recv(4096)
                self.latencies.append(time.monotonic() - started)
                buffer = buffer[buffer.rfind(b"\n") + 1 :]
                time.sleep(0.5)
            sock.shutdown(socket.SHUT_WR)


def _flood(sock_path: Path, block: bytes, seconds: float) -> tuple[int, float]:
    from collector.helpers import connect, read_acks

    sent = 0
    with connect(sock_path, "flood") as sock:
        reader = threading.Thread(target=read_acks, args=(sock,), daemon=True)
        reader.start()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            sock.sendall(block)
            sent += len(block)
        sock.shutdown(socket.SHUT_WR)
        reader.join(120)
        return sent, time.monotonic() - started


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def run(ctx: Any) -> list[dict[str, Any]]:
    """Measure flood isolation and collector memory."""
    from collector.helpers import Collector, make_store, rss_kib

    from qubes_logvm.store.layout import StoreLayout
    from qubes_logvm.store.usage import usage

    with open(ctx.input_path, "rb") as stream:
        block = stream.read(1 << 20)
    block = block[: block.rfind(b"\n") + 1]
    workdir = Path(ctx.workdir)
    config = {
        "segment": {"max_bytes": SEGMENT},
        "quota": {"default": "64M", "qubes": {"flood": QUOTA}},
        "global": {"keep_free": 0},
        "rate_limit": {"qubes": {"flood": {"lines_per_second": 0}}},
    }
    collector = Collector(workdir, config)
    collector.vkey = make_store(collector.store)
    collector.start()
    layout = StoreLayout(collector.store)
    stop, sampling = threading.Event(), threading.Event()
    peaks = {"usage": 0, "rss": 0}

    def sample() -> None:
        while not sampling.is_set():
            peaks["usage"] = max(peaks["usage"], usage(layout, "flood"))
            peaks["rss"] = max(peaks["rss"], rss_kib(collector.pid)[0])
            time.sleep(0.01)

    quiet = [_Quiet(collector.socket, f"quiet{i}", stop) for i in range(QUIET_QUBES)]
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        for thread in quiet:
            thread.start()
        sampler.start()
        time.sleep(1)  # everyone connected before the flood starts
        flooded, seconds = _flood(collector.socket, block, FLOOD_SECONDS)
        stop.set()
        for thread in quiet:
            thread.join(30)
    finally:
        sampling.set()
        sampler.join(10)
        collector.stop()
        collector.kill()
    latencies = [x for thread in quiet for x in thread.latencies]
    p99 = _percentile(latencies, 0.99)
    bound = QUOTA + SEGMENT
    rss_mib = peaks["rss"] / 1024
    return [
        {
            "name": "flooding qube: peak bytes on disk",
            "value": peaks["usage"] / (1 << 20),
            "unit": "MiB",
            "bar": f"<= quota + 1 segment = {bound / (1 << 20):g} MiB",
            "ok": peaks["usage"] <= bound,
            "notes": f"{flooded / seconds / 1e6:.0f} MB/s flooded for {seconds:.0f} s",
        },
        {
            "name": f"quiet qubes ({QUIET_QUBES}) during the flood: ack latency p50",
            "value": _percentile(latencies, 0.5),
            "unit": "s",
        },
        {
            "name": f"quiet qubes ({QUIET_QUBES}) during the flood: ack latency p99",
            "value": p99,
            "unit": "s",
            "bar": "<= 1 s",
            "ok": p99 <= 1.0,
            "notes": f"{len(latencies)} lines, each sealed and durable at ack",
        },
        {
            "name": "logvm-collector RSS, 50 qubes connected, one flooding",
            "value": rss_mib,
            "unit": "MiB",
            "bar": "<= 60 MiB",
            "ok": rss_mib <= 60,
            "notes": "peak VmRSS sampled every 10 ms",
        },
    ]
