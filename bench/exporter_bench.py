"""Exporter benchmark: journal -> exporter -> qrexec stand-in -> collector -> sealed store.

``run(workdir)`` returns figures for ``make bench``: end-to-end throughput
(the journal pre-filled, then drained by a fresh exporter), latency p50/p99
at a low rate (10 entries/s, journal write to stored in a sealed segment,
polled every 5 ms), and the exporter's RSS idle and under load. Needs root
(a real journald in a private namespace).
"""

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "python")]


def _rss(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0])
    return fields


def run(workdir: Path, entries: int = 20_000) -> dict[str, object]:
    """Run the benchmark in ``workdir``; returns a dict of figures."""
    from collector.helpers import Collector, make_store, sent_lines
    from exporter.helpers import ExporterProcess, write_config

    from support.journald import Journald
    from support.qrexec import World

    workdir.mkdir(parents=True, exist_ok=True)
    make_store(workdir / "logvm/store")
    logvm = Collector(workdir / "logvm").start()
    world = World(workdir / "world")
    world.add_qube("sys-log")
    world.add_qube("work")
    world.link_socket_service("sys-log", "logvm.Send", logvm.socket)
    command, env = world.client_command("work")
    sources = {"journal": {"identifiers": {"include": ["bench"]}}}
    config = write_config(workdir / "e.yaml", command, workdir / "state", sources=sources)
    result: dict[str, object] = {}
    try:
        with Journald(workdir / "journald", max_file_size="64M") as jd:
            line = "bench entry %d " + "x" * 80
            for start in range(0, entries, 20_000):
                jd.send([{"MESSAGE": line % i, "SYSLOG_IDENTIFIER": "bench"}
                         for i in range(start, min(entries, start + 20_000))])  # fmt: skip
            exporter = ExporterProcess(config, workdir, jd)
            exporter.env = env
            began = time.monotonic()
            exporter.start()
            peak: dict[str, int] = {}
            while len(sent_lines(logvm.store, "work")) < entries:
                rss = _rss(exporter.pid)
                if rss["VmRSS"] > peak.get("VmRSS", 0):
                    peak = rss
                time.sleep(0.2)
            elapsed = time.monotonic() - began
            result["throughput_lines_per_s"] = round(entries / elapsed)
            result["rss_load_kib"] = peak
            time.sleep(2)
            result["rss_idle_kib"] = _rss(exporter.pid)
            latencies = []
            for i in range(100):
                marker = f"lat {i}"
                sent = time.monotonic()
                jd.send([{"MESSAGE": marker, "SYSLOG_IDENTIFIER": "bench"}])
                while not any(p.endswith(marker.encode()) for _k, p, _c in
                              sent_lines(logvm.store, "work")[-5:]):  # fmt: skip
                    time.sleep(0.005)
                latencies.append(time.monotonic() - sent)
                time.sleep(max(0.0, 0.1 - (time.monotonic() - sent)))
            latencies.sort()
            result["latency_p50_s"] = round(latencies[49], 3)
            result["latency_p99_s"] = round(latencies[98], 3)
            exporter.stop()
    finally:
        logvm.kill()
    return result


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)))
