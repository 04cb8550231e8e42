"""Reading benchmark: ``logvm show -n 10``, ``--since`` and ``--grep`` on a 1 GiB store.

Input: the bench input's lines (loghub samples) as exporter records of four
qubes, interleaved in receive time, written through the real writer into
64 MiB segments (every segment but each qube's newest compressed, as
rotation leaves them): 1 GiB of plain text (32 MiB in ``--quick``).
Receive times are synthetic (one record per millisecond, ending now); the
writer gets the same clock (``Store(clock=...)``), so its segment notes
carry the same times.

Measured, as processes (best of 3, so Python's start is included; the
in-process figure is given too), with ``logvm`` as a package install runs
it: ``make install-python`` into a scratch root, byte-compiled as
dh_python3 and RPM's brp-python-bytecompile do, started by the
distribution's ``/usr/bin/python3`` (not the venv's, whose site hooks and
editable-install finder no installed system has; without .pyc files every
start would compile the sources, ~40 ms). The machine's load average is
in the notes: on a shared machine it is most of the spread between runs.

- ``logvm show --all -n 10`` next to ``journalctl -n 10`` on a journal of
  similar size made from the same lines by ``systemd-journal-remote``
  (bounded: at most ``JOURNAL_SECONDS`` of conversion; its real size is
  reported); bar (issue 13): under 0.2 s;
- ``logvm show --all --since T`` (the last ~1000 records) next to
  ``journalctl --since T``; bar: under 0.2 s;
- ``logvm --help`` next to ``python3 -c pass`` (the same interpreter): how
  much of the fixed cost above is the interpreter's own start;
- ``logvm show QUBE --grep RE`` in MB/s of stored text next to ``grep -c``
  on the same plain segments.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qubes_logvm.core.records import format_timestamp
from qubes_logvm.exporter.record import format_record
from qubes_logvm.store.compress import compress_segment
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.timeline import Query, merged, newest, resolve_qubes
from qubes_logvm.store.writer import Store

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
QUBES = ("work", "personal", "sys-net", "disp1234")
BAR_SECONDS = 0.2
JOURNAL_SECONDS = 150.0
JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")
PRIORITIES = (6, 6, 6, 5, 4, 3, 6, 7)


class _Clock:
    """Stands in for the writer's ``time`` module during the build."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


def _records(lines: list[bytes], count: int) -> Iterator[tuple[int, bytes]]:
    """(index, exporter record) cycling through the input lines."""
    src = b"2026-11-28T18:05:26.123456+01:00"
    for index in range(count):
        line = lines[index % len(lines)]
        prio = PRIORITIES[index % len(PRIORITIES)]
        yield (
            index,
            format_record(src, b"host", prio, "app.service", "app", 800 + index % 97, line),
        )


def _build(root: Path, lines: list[bytes], total: int, segment: int) -> tuple[int, float]:
    """The store; returns (records, receive time of the first record)."""
    setup_keys(StoreLayout(root), epoch_seconds=3600)
    clock = _Clock()
    store = Store(root, clock=clock.time)
    per_line = len(lines[0]) + 100
    count = total // per_line
    start = time.time() - count * 0.001
    chains = {q: store.chain(q) for q in QUBES}
    sizes = dict.fromkeys(QUBES, 0)
    pending: dict[str, list[bytes]] = {q: [] for q in QUBES}
    try:
        clock.now = start
        for chain in chains.values():
            chain.open_segment(store.keys, session="bench")
        prefix_second, prefix = -1, b""
        for index, record in _records(lines, count):
            moment = start + index * 0.001
            clock.now = moment
            second = int(moment)
            if second != prefix_second:
                prefix_second, prefix = second, format_timestamp(second)[:19]
            stamp = b"%s.%06dZ" % (prefix, int((moment - second) * 1e6))
            qube = QUBES[index % len(QUBES)]
            escaped = record[:-1].replace(b"\\", b"\\\\")
            pending[qube].append(b"%s L %s\n" % (stamp, escaped))
            if len(pending[qube]) >= 2048:
                _flush(store, chains[qube], pending[qube], sizes, qube, segment)
        for qube in QUBES:
            _flush(store, chains[qube], pending[qube], sizes, qube, segment)
            chains[qube].seal(store.keys)
    finally:
        store.keys.close()
    return count, start


def _flush(
    store: Store, chain: Any, block: list[bytes], sizes: dict[str, int], qube: str, segment: int
) -> None:
    if not block:
        return
    data = b"".join(block)
    chain.append(data, len(block))
    chain.seal(store.keys)
    sizes[qube] += len(data)
    block.clear()
    if sizes[qube] >= segment:
        chain.close(store.keys)
        chain.open_segment(store.keys, session="bench")
        sizes[qube] = 0


def _journal(work: Path, lines: list[bytes], count: int, start: float) -> tuple[Path, int, int]:
    """A journal of the same records; (directory, entries, bytes). Bounded in time."""
    directory = work / "journal"
    directory.mkdir()
    remote = subprocess.Popen(
        [str(JOURNAL_REMOTE), "-o", str(directory / "bench.journal"), "--split-mode=none", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert remote.stdin is not None
    deadline = time.monotonic() + JOURNAL_SECONDS
    boot = b"0123456789abcdef0123456789abcdef"
    written = 0
    for index in range(count):
        usec = int((start + index * 0.001) * 1e6)
        line = lines[index % len(lines)]
        remote.stdin.write(
            b"__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n_BOOT_ID=%s\n_HOSTNAME=%s\n"
            b"PRIORITY=%d\nSYSLOG_IDENTIFIER=app\n_PID=%d\n_SYSTEMD_UNIT=app.service\n"
            b"MESSAGE=%s\n\n"
            % (usec, index * 1000, boot, QUBES[index % 4].encode(),
               PRIORITIES[index % len(PRIORITIES)], 800 + index % 97, line.replace(b"\n", b" "))
        )  # fmt: skip
        written += 1
        if index % 65536 == 0 and time.monotonic() > deadline:
            break
    remote.stdin.close()
    remote.wait(timeout=600)
    size = sum(f.stat().st_size for f in directory.iterdir())
    return directory, written, size


def _best(runs: int, action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        begin = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - begin)
    return best


def _installed(work: Path) -> tuple[list[str], list[str], dict[str, str] | None, str]:
    """(logvm, python, environment, what): ``logvm`` as a package install runs it,
    and the interpreter that runs it; the venv's when the install fails."""
    root = work / "installed"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": ""}
    done = subprocess.run(
        ["make", "-s", "-C", str(REPO), "install-python", f"DESTDIR={root}",
         f"PKGBUILD={work / 'pkgbuild'}", f"PYTHON={SYSTEM_PYTHON}"],
        capture_output=True, check=False, timeout=600, env=env,
    )  # fmt: skip
    packages = sorted(root.glob("usr/lib/python3*/*-packages/qubes_logvm"))
    script = root / "usr/bin/logvm"
    if done.returncode != 0 or not packages or not script.exists():
        venv = [str(Path(sys.executable).with_name("logvm"))]
        return venv, [sys.executable], None, "the venv's logvm (make install-python failed)"
    compiled = [SYSTEM_PYTHON, "-m", "compileall", "-q", str(packages[0])]
    subprocess.run(compiled, check=True, timeout=600, env=env, stdout=subprocess.DEVNULL)
    env = {**os.environ, "PYTHONPATH": str(packages[0].parent)}
    what = f"logvm installed by make install-python, compiled, run by {SYSTEM_PYTHON}"
    return [SYSTEM_PYTHON, str(script)], [SYSTEM_PYTHON], env, what


def _process(
    args: list[str], ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None
) -> Callable[[], object]:
    def call() -> object:
        done = subprocess.run(args, stdout=subprocess.DEVNULL, check=False, timeout=600, env=env)
        if done.returncode not in ok:
            raise RuntimeError(f"{args[0]} exited {done.returncode}")
        return done

    return call


def _row(
    name: str, seconds: float, baseline: float | None, base_name: str, bar: bool
) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "value": round(seconds, 3), "unit": "s"}
    if baseline is not None:
        row["baseline"] = f"{base_name}: {baseline:.3f} s"
        row["ratio"] = round(seconds / baseline, 2) if baseline else None
    if bar:
        row["bar"] = f"< {BAR_SECONDS} s"
        row["ok"] = seconds < BAR_SECONDS
    return row


def run(ctx: Any = None) -> list[dict[str, Any]]:
    """Build the store (and the journal), time the reads, return the rows."""
    quick = bool(getattr(ctx, "quick", False))
    work = Path(tempfile.mkdtemp(prefix="reading-bench-", dir=getattr(ctx, "workdir", None)))
    source = getattr(ctx, "input_path", None)
    lines = _input_lines(source)
    total = (32 << 20) if quick else (1 << 30)
    segment = (4 << 20) if quick else (64 << 20)
    load_before = os.getloadavg()[0]
    try:
        logvm, python, env, how = _installed(work)
        root = work / "store"
        count, start = _build(root, lines, total, segment)
        layout = StoreLayout(root)
        for qube in layout.qubes():
            for files in layout.segments(qube)[:-1]:
                compress_segment(layout, files)
        stored = sum(f.stat().st_size for f in (root / "qubes").rglob("*.log*") if f.is_file())
        base = [*logvm, "show", "--all", "--no-pager", "--store", str(root)]
        rows = []
        qubes = resolve_qubes(layout, [], every=True)
        in_process = _best(3, lambda: newest(layout, qubes, 10))
        show_n = _best(3, _process([*base, "-n", "10"], env=env))
        startup = _best(3, _process([*logvm, "--help"], env=env))
        interpreter = _best(3, _process([*python, "-c", "pass"], env=env))
        since_moment = datetime.fromtimestamp(start + (count - 1000) * 0.001, UTC)
        since = since_moment.strftime("%Y-%m-%d %H:%M:%S")
        show_since = _best(3, _process([*base, "--utc", "--since", since], env=env))
        window = Query(since=format_timestamp(int(since_moment.timestamp())))
        in_since = _best(3, lambda: list(merged(layout, qubes, window)))
        journal_n = journal_since = None
        journal_note = "systemd-journal-remote not installed: no journal baseline"
        if JOURNAL_REMOTE.exists() and shutil.which("journalctl"):
            directory, entries, size = _journal(work, lines, count, start)
            jbase = ["journalctl", "--directory", str(directory), "--no-pager", "-q"]
            journal_n = _best(3, _process([*jbase, "-n", "10"]))
            journal_since = _best(3, _process([*jbase, "--utc", "--since", since]))
            journal_note = f"journal: {entries:,} entries, {size / 2**20:.0f} MiB on disk"
        note = (
            f"store: {count:,} records, {stored / 2**20:.0f} MiB on disk "
            f"(plain {total >> 20} MiB); {how}; "
            f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
        )
        rows.append(
            _row("logvm show --all -n 10 (process)", show_n, journal_n, "journalctl -n 10", True)
        )
        rows[-1]["notes"] = f"{note}; {journal_note}"
        rows.append(_row("store.timeline.newest(10) (in process)", in_process, None, "", False))
        rows.append(
            _row(
                "logvm --help (Python start and imports)",
                startup,
                interpreter,
                f"{python[0]} -c pass",
                False,
            )
        )
        rows.append(
            _row(
                "logvm show --all --since T (last 1000)",
                show_since,
                journal_since,
                "journalctl --since T",
                True,
            )
        )
        rows.append(_row("store.timeline.merged(since=T) (in process)", in_since, None, "", False))
        rows.append(_grep_row(work, layout, logvm, root, env))
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _grep_row(
    work: Path, layout: StoreLayout, logvm: list[str], root: Path, env: dict[str, str] | None
) -> dict[str, Any]:
    """``show --grep`` over one qube's segments, decompressed to plain first for both."""
    plain = work / "plain"
    plain.mkdir()
    files = []
    for seq, segment in enumerate(layout.segments("work")):
        if segment.log is None:
            continue
        target = plain / f"{seq:08d}.log"
        with target.open("wb") as out:
            subprocess.run(
                ["zstdcat" if segment.compressed else "cat", str(segment.log)],
                stdout=out,
                check=True,
            )
        files.append(target)
    nbytes = sum(f.stat().st_size for f in files)
    pattern = "error: connection reset|Failed password for root"
    args = ["show", "work", "--no-pager", "-o", "cat", "--grep", pattern, "--store", str(root)]
    ours = _best(2, _process([*logvm, *args], env=env))
    grep = _best(3, _process(["grep", "-c", "-E", pattern, *map(str, files)], (0, 1)))
    mb = nbytes / ours / 1e6
    return {
        "name": "logvm show QUBE --grep RE",
        "mb_per_s": round(mb, 1),
        "baseline": f"grep -c: {nbytes / grep / 1e6:.0f} MB/s",
        "ratio": round(grep / ours, 3),
        "notes": f"{nbytes / 2**20:.0f} MiB of one qube's segments (zstd read as a stream)",
    }


def _input_lines(source: object) -> list[bytes]:
    if isinstance(source, Path) and source.exists():
        with source.open("rb") as stream:
            data = stream.read(8 << 20)
        lines = [x for x in data.split(b"\n")[:-1] if x]
        if lines:
            return lines
    return [
        b"Nov 28 17:58:%02d sshd[%d]: Failed password for root from 10.137.0.%d port %d"
        % (i % 60, 800 + i % 97, i % 250, 40000 + i)
        for i in range(20000)
    ]


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    for result in run(None):
        print(result)
