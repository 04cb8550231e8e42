"""Compression benchmark: ``logvm-rotate``'s zstd path next to the ``zstd -3`` CLI.

Same input, same machine, same run. Input: the loghub samples from
``../shared/data/loghub`` (each file alone for ratios; all of them as stored
record lines, repeated to a segment of ``SEGMENT_MB`` MiB, for throughput),
or generated log-like text when that folder is absent.

Bars (design.md): ratio within 5% of ``zstd -3``; throughput >= 0.8x the CLI.
Our figure includes the fsync of the compressed file (the CLI does none); the
full ``compress_segment`` (write, fsync, decompress and re-hash against the
seals, rename, unlink) is reported too, without a bar.

``run(ctx)`` returns a list of result rows (dicts with ``name``, ``value``,
``unit`` and, for rows with a bar, ``baseline``, ``bar``, ``ok``). ``ctx`` may
carry ``workdir`` (a Path) and ``quick`` (bool); both are optional.
"""

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run import LOGHUB
from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.store.compress import compress_segment, write_frame
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.writer import Store

SEGMENT_MB = 32
LEVEL = 3


def _samples() -> dict[str, bytes]:
    files = sorted(LOGHUB.glob("*.log")) if LOGHUB.is_dir() else []
    if files:
        return {p.stem: p.read_bytes() for p in files}
    lines = [
        b"Nov 28 17:58:%02d work sshd[%d]: Accepted publickey for user from 10.137.0.%d port %d"
        % (i % 60, 800 + i % 97, i % 250, 40000 + i * 7 % 20000)
        for i in range(40000)
    ]
    return {"generated": b"\n".join(lines) + b"\n"}


def _records(text: bytes) -> bytes:
    stamp = format_timestamp(time.time())
    out = []
    for line in text.splitlines():
        escaped = line.replace(b"\\", b"\\\\").decode("ascii", "backslashreplace").encode()
        out.append(line_record(stamp, escaped))
    return b"".join(out)


def _best(runs: int, action: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def _cli(src: Path, dst: Path) -> None:
    subprocess.run(
        ["zstd", f"-{LEVEL}", "-q", "-f", "-o", str(dst), str(src)], check=True, timeout=300
    )


def _ours(src: Path, dst: Path) -> None:
    write_frame(src, dst, src.stat().st_size, LEVEL, lambda: False)


def _ratios(work: Path, samples: dict[str, bytes]) -> list[dict[str, Any]]:
    rows = []
    for name, data in samples.items():
        src = work / f"{name}.log"
        src.write_bytes(data)
        _cli(src, work / "cli.zst")
        _ours(src, work / "ours.zst")
        cli = len(data) / (work / "cli.zst").stat().st_size
        ours = len(data) / (work / "ours.zst").stat().st_size
        rows.append(_row(f"compression ratio {name}", ours, "x", cli, ">= 0.95x zstd -3"))
        rows[-1]["ok"] = ours >= 0.95 * cli
    return rows


def _row(name: str, value: float, unit: str, baseline: float, bar: str) -> dict[str, Any]:
    return {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3),
        "bar": bar,
    }


def _segment_store(work: Path, segment: bytes) -> Path:
    root = work / "store"
    setup_keys(StoreLayout(root), epoch_seconds=3600)
    store = Store(root)
    chain = store.chain("bench")
    chain.open_segment(store.keys, session="bench")
    step = 1 << 20
    for offset in range(0, len(segment), step):
        part = segment[offset : offset + step]
        chain.append(part, part.count(b"\n"))
    chain.seal(store.keys)
    chain.close(store.keys)
    store.close()
    return root


def _throughput(work: Path, samples: dict[str, bytes], quick: bool) -> list[dict[str, Any]]:
    blob = _records(b"".join(samples.values()))
    size = (8 if quick else SEGMENT_MB) << 20
    segment = blob * (size // len(blob)) + blob[: size % len(blob)]
    segment = segment[: segment.rfind(b"\n") + 1]
    src = work / "segment.log"
    src.write_bytes(segment)
    runs = 2 if quick else 3
    mib = len(segment) / (1 << 20)
    cli = mib / _best(runs, lambda: _cli(src, work / "cli.zst"))
    ours = mib / _best(runs, lambda: _ours(src, work / "ours.zst"))
    ratio_cli = len(segment) / (work / "cli.zst").stat().st_size
    ratio_ours = len(segment) / (work / "ours.zst").stat().st_size
    rows = [
        _row("compression MB/s (segment)", ours, "MiB/s", cli, ">= 0.8x zstd -3"),
        _row("compression ratio (segment)", ratio_ours, "x", ratio_cli, ">= 0.95x zstd -3"),
    ]
    rows[0]["ok"] = ours >= 0.8 * cli
    rows[1]["ok"] = ratio_ours >= 0.95 * ratio_cli
    # The whole crash-safe path on a real sealed segment.
    root = _segment_store(work, segment)
    layout = StoreLayout(root)
    [files] = layout.segments("bench")
    start = time.perf_counter()
    compress_segment(layout, files, level=LEVEL)
    full = mib / (time.perf_counter() - start)
    rows.append(
        {
            "name": "compress_segment MB/s (write+fsync+verify+swap)",
            "value": round(full, 1),
            "unit": "MiB/s",
        }
    )
    return rows


def run(ctx: Any = None) -> list[dict[str, Any]]:
    """Measure; every row with a bar says whether it was met."""
    if shutil.which("zstd") is None:
        return [{"name": "compression", "skipped": "zstd CLI not installed (make deps)"}]
    quick = bool(getattr(ctx, "quick", False))
    base = getattr(ctx, "workdir", None)
    with tempfile.TemporaryDirectory(prefix="rotation-bench-", dir=base) as tmp:
        work = Path(tmp)
        samples = _samples()
        return _ratios(work, samples) + _throughput(work, samples, quick)


if __name__ == "__main__":
    for result in run():
        print(result)
