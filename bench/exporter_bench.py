"""Exporter benchmark: journal -> exporter -> qrexec stand-in -> collector -> sealed store.

All in one real journald (private namespace), on the first N lines of the
shared bench input (N = 200,000; 20,000 with ``--quick``):

- ``journald ingest``: how fast ``systemd-cat`` can fill the journal (until
  a reader sees every entry): the ceiling for any "journal in" pipeline;
- ``rsyslog imjournal->omfile``: rsyslogd inside the namespace reading the
  same, pre-filled journal from its start (rate limit off), until its output
  file holds every entry; once with rsyslog's default state saving (every 10
  messages) and once saving every 100,000 (its fastest);
- ``logvm-exporter end-to-end``: a fresh exporter (no saved cursor) on the
  same pre-filled journal, through the qrexec stand-in into a real collector,
  until every entry is a stored line covered by a seal; ratio to the faster
  rsyslog imjournal run (the bar: at least rsyslog's rate);
- ``rsyslog imptcp->omfile``: the same lines over TCP (context: rsyslog
  without a journal in front);
- exporter memory: peak VmRSS (VmHWM) while draining, VmRSS idle afterwards,
  with the split into anonymous, file and shmem pages (the journal files on
  tmpfs show up as shmem);
- latency at 10 entries/s: from journald's own receive time of an entry
  (``__REALTIME_TIMESTAMP``, the record's time field) to its line being in
  the store and covered by a seal, polled every 5 ms.

Needs root (namespaces). ``run(ctx)`` returns rows for :mod:`bench.run`.
"""

import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "python")]

from bench.collector_bench import _rsyslog  # noqa: E402

FULL_ENTRIES = 200_000
QUICK_ENTRIES = 20_000
LATENCY_SAMPLES = 100
RSS_BAR_KIB = 25 * 1024
_LINE = re.compile(rb"^\S+ L ", re.MULTILINE)

_SENDER = r"""
import sys
from systemd import journal
for line in sys.stdin:
    journal.send(line.rstrip("\n"), SYSLOG_IDENTIFIER="latency")
"""


class StoreWatch:
    """Counts a qube's stored lines (kind L) and sealed bytes, incrementally."""

    def __init__(self, store: Path, qube: str) -> None:
        self.dir = store / "qubes" / qube
        self.offsets: dict[Path, int] = {}
        self.lines = 0
        self.tail = b""

    def poll(self) -> int:
        """Read what was appended to every segment since the last call."""
        for path in sorted(self.dir.glob("*.log")):
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            cut = data.rfind(b"\n") + 1
            self.offsets[path] = self.offsets.get(path, 0) + cut
            self.lines += len(_LINE.findall(data, 0, cut))
            self.tail = (self.tail + data[:cut])[-65536:]
        return self.lines

    def sealed(self) -> bool:
        """Every complete line so far is covered by a seal line."""
        for path, size in self.offsets.items():
            seal = path.with_suffix(".seal").read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
            if int(seal.split(b" ")[6]) < size:
                return False
        return True


def _status(pid: int) -> dict[str, int]:
    """Memory of a process in KiB (see :func:`exporter.helpers.memory_kib`)."""
    from exporter.helpers import memory_kib

    return memory_kib(pid)


def _fill(jd: Any, data: bytes) -> tuple[float, int]:
    """systemd-cat the lines; seconds until a reader sees them all, entries in the journal."""
    from systemd import _reader

    want = data.count(b"\n")
    start = time.perf_counter()
    jd.run(["systemd-cat", "-t", "bench", "-p", "info"], input=data)
    reader = _reader._Reader(0, str(jd.journal_dir))
    reader.add_match("SYSLOG_IDENTIFIER=bench")
    seen = 0
    while seen < want:
        while reader._next():
            seen += 1
        if seen < want:
            reader.wait(1_000_000)
        if time.perf_counter() - start > 300:
            raise RuntimeError(f"journald took only {seen} of {want} entries")
    seconds = time.perf_counter() - start
    reader.flush_matches()
    reader.seek_head()
    total = 0
    while reader._next():
        total += 1
    reader.close()
    return seconds, total


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _imjournal(jd: Any, work: Path, total: int, persist: int | None) -> float:
    """rsyslogd in the namespace: imjournal from the start -> omfile; seconds to all."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = work / "out.log"
    state = f' PersistStateInterval="{persist}"' if persist else ""
    (work / "rsyslog.conf").write_text(
        f'global(workDirectory="{work}" maxMessageSize="64k")\n'
        f'module(load="imjournal" StateFile="{work}/imjournal.state"'
        f' ratelimit.interval="0" IgnorePreviousMessages="off"{state})\n'
        'template(name="rec" type="string" string="%timereported:::date-rfc3339%'
        ' %hostname% %syslogseverity-text% %programname%[%procid%]: %msg%\\n")\n'
        f'action(type="omfile" file="{out}" template="rec")\n'
    )
    start = time.perf_counter()
    proc = jd.popen(
        ["rsyslogd", "-n", "-f", str(work / "rsyslog.conf"), "-i", str(work / "pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while _count_lines(out) < total:
            if time.perf_counter() - start > 300 or proc.poll() is not None:
                raise RuntimeError(f"rsyslog imjournal wrote {_count_lines(out)} of {total}")
            time.sleep(0.02)
        return time.perf_counter() - start
    finally:
        _stop_inside(jd, proc)


def _stop_inside(jd: Any, proc: "subprocess.Popen[bytes]") -> None:
    """Stop a program started with ``jd.popen`` (signal its real pid, not nsenter)."""
    if proc.poll() is None:
        try:
            inner = jd.inner_pid(proc, timeout=1)
            subprocess.run(["kill", str(inner)], check=False)
            proc.wait(20)
        except (RuntimeError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(10)


def _row(name: str, lines: int, seconds: float, notes: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "lines_per_s": lines / seconds, "seconds": seconds, "notes": notes,
            **extra}  # fmt: skip


class EndToEnd:
    """A collector on a fresh store, reached by qube ``work`` through the qrexec stand-in."""

    def __init__(self, work: Path) -> None:
        from collector.helpers import Collector, make_store

        from support.qrexec import World

        make_store(work / "logvm/store", epoch_seconds=10)
        self.logvm = Collector(work / "logvm", {"rate_limit": {"lines_per_second": 0}})
        self.logvm.start()
        world = World(work / "world")
        world.add_qube("sys-log")
        world.add_qube("work")
        world.link_socket_service("sys-log", "logvm.Send", self.logvm.socket)
        self.command, self.env = world.client_command("work")
        self.watch = StoreWatch(self.logvm.store, "work")

    def exporter(self, jd: Any, work: Path) -> Any:
        from exporter.helpers import ExporterProcess, deployed_program, write_config

        config = write_config(
            work / "exporter.yaml",
            self.command,
            work / "state",
            batch={"max_lines": 1000, "max_delay": "50ms"},
        )
        exporter = ExporterProcess(config, work, jd)
        exporter.env = self.env
        exporter.program = deployed_program()  # as installed: compiled, no editable finder
        return exporter


def _drain(e2e: EndToEnd, exporter: Any, total: int) -> tuple[float, dict[str, int]]:
    """Start the exporter on the full journal; seconds until all is sealed, peak memory."""
    start = time.perf_counter()
    exporter.start()
    peak: dict[str, int] = {}
    while e2e.watch.poll() < total or not e2e.watch.sealed():
        status = _status(exporter.pid)
        if status["Counted"] > peak.get("Counted", 0):
            peak = status
        if time.perf_counter() - start > 600:
            raise RuntimeError(f"exporter: {e2e.watch.lines} of {total} lines stored")
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    peak["VmHWM"] = _status(exporter.pid)["VmHWM"]
    return seconds, peak


def _latency(jd: Any, e2e: EndToEnd) -> list[float]:
    """Entry -> sealed, in seconds, for LATENCY_SAMPLES entries at 10/s."""
    sender = jd.popen(["/usr/bin/python3", "-u", "-c", _SENDER], stdin=subprocess.PIPE)
    sealed = []
    try:
        for i in range(LATENCY_SAMPLES):
            began = time.monotonic()
            sender.stdin.write(b"lat-%04d\n" % i)
            sender.stdin.flush()
            marker = b": lat-%04d\n" % i
            while True:
                e2e.watch.poll()
                where = e2e.watch.tail.find(marker)
                if where >= 0 and e2e.watch.sealed():
                    break
                if time.monotonic() - began > 30:
                    raise RuntimeError(f"latency entry {i} not stored within 30 s")
                time.sleep(0.005)
            now = time.time()
            start = e2e.watch.tail.rfind(b"\n", 0, where) + 1
            stamp = e2e.watch.tail[start:where].split(b" ")[2].decode()
            sealed.append(now - datetime.fromisoformat(stamp).timestamp())
            time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))
    finally:
        sender.stdin.close()
        sender.wait(10)
    return sorted(sealed)


def _percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def _input(ctx: Any, count: int) -> tuple[bytes, int]:
    """The first ``count`` lines of the shared input (fewer if it is shorter)."""
    lines = []
    with Path(ctx.input_path).open("rb") as f:
        for line in f:
            lines.append(line)
            if len(lines) >= count:
                break
    return b"".join(lines), len(lines)


def _memory_rows(peak: dict[str, int], idle: dict[str, int]) -> list[dict[str, Any]]:
    def split(s: dict[str, int]) -> str:
        return (
            f"VmRSS {s['VmRSS'] / 1024:.1f} = anon {s['RssAnon'] / 1024:.1f}"
            f" + file {s['RssFile'] / 1024:.1f} + shmem {s['RssShmem'] / 1024:.1f} MiB,"
            f" of which journal files {s['Journal'] / 1024:.1f} MiB"
        )

    return [
        {"name": "logvm-exporter RSS under load (peak)", "value": peak["Counted"] / 1024,
         "unit": "MiB", "bar": "<= 25 MiB", "ok": peak["Counted"] <= RSS_BAR_KIB,
         "notes": f"VmRSS without journal-file pages; {split(peak)}; VmHWM"
                  f" {peak['VmHWM'] / 1024:.1f} MiB"},
        {"name": "logvm-exporter RSS idle", "value": idle["Counted"] / 1024,
         "unit": "MiB", "bar": "<= 25 MiB", "ok": idle["Counted"] <= RSS_BAR_KIB,
         "notes": f"VmRSS without journal-file pages; {split(idle)}"},
    ]  # fmt: skip


def _latency_rows(sealed: list[float]) -> list[dict[str, Any]]:
    p99 = _percentile(sealed, 0.99)
    return [
        {"name": "latency p50, journal entry -> sealed", "value": _percentile(sealed, 0.5),
         "unit": "s", "notes": f"10 entries/s, {len(sealed)} samples"},
        {"name": "latency p99, journal entry -> sealed", "value": p99, "unit": "s",
         "bar": "<= 1 s", "ok": p99 <= 1.0},
    ]  # fmt: skip


def _exporter_rows(jd: Any, work: Path, total: int, best: dict[str, Any]) -> list[dict[str, Any]]:
    """The exporter end to end on the pre-filled journal, then idle memory and latency."""
    e2e = EndToEnd(work)
    try:
        exporter = e2e.exporter(jd, work)
        seconds, peak = _drain(e2e, exporter, total)
        ours = _row("logvm-exporter end-to-end", total, seconds,
                    "same journal -> stand-in qrexec -> collector; fsynced, sealed")  # fmt: skip
        ours["ratio"] = ours["lines_per_s"] / best["lines_per_s"]
        ours["baseline"] = best["name"]
        ours["ok"] = ours["ratio"] >= 1.0
        time.sleep(2)
        idle = _status(exporter.pid)
        sealed = _latency(jd, e2e)
        exporter.stop()
    finally:
        e2e.logvm.kill()
    return [ours, *_memory_rows(peak, idle), *_latency_rows(sealed)]


def run(ctx: Any) -> list[dict[str, Any]]:
    """Fill a journal, then rsyslog imjournal, the exporter end to end, latency, memory."""
    from support.journald import Journald

    work = Path(ctx.workdir)
    data, count = _input(ctx, QUICK_ENTRIES if ctx.quick else FULL_ENTRIES)
    (work / "lines.log").write_bytes(data)
    rows = []
    with Journald(work / "journald", max_file_size="64M") as jd:
        fill, total = _fill(jd, data)
        rows.append(_row("journald ingest (systemd-cat)", count, fill,
                         "journal filled until a reader sees every entry"))  # fmt: skip
        imjournal = [
            _row(f"rsyslog imjournal->omfile{label}", total,
                 _imjournal(jd, work / "imjournal", total, persist),
                 f"pre-filled journal ({total} entries) from its start, no fsync")
            for label, persist in (("", None), (" (state every 100k)", 100_000))
        ]  # fmt: skip
        best = max(imjournal, key=lambda row: row["lines_per_s"])
        for row in imjournal:
            row["ratio"] = row["lines_per_s"] / best["lines_per_s"]
            row["baseline"] = best["name"]
        rows += imjournal
        rows += _exporter_rows(jd, work / "e2e", total, best)
    tcp = SimpleNamespace(workdir=work, input_path=work / "lines.log", input_lines=count)
    rows.append(_row("rsyslog imptcp->omfile", count, _rsyslog(tcp),
                     "same lines over one TCP connection (context)"))  # fmt: skip
    return rows


if __name__ == "__main__":
    import tempfile

    from bench.run import BenchContext, build_input, table

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        quick = "--quick" in sys.argv
        nlines, nbytes, source = build_input(base / "input.log", 8 << 20 if quick else 120 << 20)
        (base / "w").mkdir()
        ctx = BenchContext(base / "input.log", nlines, nbytes, source, base / "w", REPO,
                           Path(sys.executable).parent, quick)  # fmt: skip
        print(table(run(ctx)))
