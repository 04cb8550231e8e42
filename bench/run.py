"""``make bench``: run every bench module and print one table with ratios.

Entry point: ``python -m bench.run [--quick] [--only NAME...]`` from the repo
root. It builds the input once, then runs each module ``bench/*_bench.py``
that has ``run(ctx) -> list[dict]``, prints one table and writes
``bench-results/results.md`` and ``bench-results/results.json``.

``ctx`` (:class:`BenchContext`) gives every module:

- ``input_path``: one file of log lines, ``\\n``-terminated, built from the
  loghub samples in ``../shared/data/loghub/`` (repeated up to a fixed byte
  budget), or generated realistic lines when that folder is absent;
- ``input_lines``, ``input_bytes``: its size;
- ``source``: ``"loghub"`` or ``"generated"``;
- ``workdir``: a fresh directory for this module (removed afterwards);
- ``repo_root``, ``venv_bin`` (``.venv/bin``, where the console scripts are);
- ``quick``: True for a short smoke run.

Rows are dicts. Known keys (all optional except ``name``): ``lines_per_s``,
``mb_per_s``, ``value`` and ``unit`` (for other measures), ``ratio`` (to the
row's ``baseline``, named), ``bar``, ``ok``, ``notes``. Unknown keys go to the
JSON only.
"""

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
LOGHUB = REPO_ROOT.parent / "shared" / "data" / "loghub"
BUDGET_BYTES = 120 << 20
QUICK_BUDGET_BYTES = 8 << 20


@dataclass
class BenchContext:
    """What every bench module gets (see the module docstring)."""

    input_path: Path
    input_lines: int
    input_bytes: int
    source: str
    workdir: Path
    repo_root: Path
    venv_bin: Path
    quick: bool


def sample_lines() -> tuple[list[bytes], str]:
    """The loghub sample lines, or generated ones (and 'generated') without them."""
    files = sorted(LOGHUB.glob("*.log")) if LOGHUB.is_dir() else []
    lines = [line for p in files for line in p.read_bytes().split(b"\n") if line]
    if lines:
        return lines, "loghub"
    generated = [
        b"Nov 28 17:58:%02d work sshd[%d]: Accepted publickey for user from 10.137.0.%d "
        b"port %d ssh2: ED25519 SHA256:%032x" % (i % 60, 800 + i % 97, i % 250, 40000 + i, i)
        for i in range(20000)
    ]
    return generated, "generated"


def build_input(path: Path, budget: int) -> tuple[int, int, str]:
    """Write the input file once; returns (lines, bytes, source)."""
    lines, source = sample_lines()
    block = b"\n".join(lines) + b"\n"
    repeats = max(1, budget // len(block))
    with path.open("wb") as out:
        for _ in range(repeats):
            out.write(block)
    return len(lines) * repeats, len(block) * repeats, source


def _modules(only: list[str]) -> list[str]:
    names = sorted(p.stem for p in (REPO_ROOT / "bench").glob("*_bench.py"))
    return [n for n in names if not only or any(o in n for o in only)]


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


COLUMNS = (
    "name",
    "lines_per_s",
    "mb_per_s",
    "cpu_us_per_line",
    "value",
    "unit",
    "ratio",
    "baseline",
    "ok",
    "notes",
)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    columns = [c for c in COLUMNS if any(c in row for row in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; exit non-zero if a module failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--only", nargs="*", default=[], help="modules whose name contains")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    base = Path(tempfile.mkdtemp(prefix="logvm-bench-"))
    rows: list[dict[str, Any]] = []
    failed = []
    try:
        input_path = base / "input.log"
        budget = QUICK_BUDGET_BYTES if args.quick else BUDGET_BYTES
        nlines, nbytes, source = build_input(input_path, budget)
        print(f"input: {nlines:,} lines, {nbytes / 1e6:.1f} MB ({source})", flush=True)
        if source != "loghub":
            print(f"warning: no loghub samples at {LOGHUB}: generated text", file=sys.stderr)
        for name in _modules(args.only):
            workdir = base / name
            workdir.mkdir()
            ctx = BenchContext(
                input_path, nlines, nbytes, source, workdir, REPO_ROOT,
                Path(sys.executable).parent, args.quick,
            )  # fmt: skip
            print(f"== {name}", flush=True)
            start = time.monotonic()
            try:
                module = importlib.import_module(f"bench.{name}")
                result = module.run(ctx)
                found = result if isinstance(result, list) else [result]
                for row in found:
                    row.setdefault("module", name)
                rows += found
            except Exception:  # noqa: BLE001 (one failing module must not hide the others)
                traceback.print_exc()
                failed.append(name)
            print(f"   {time.monotonic() - start:.1f}s", flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = table(rows)
    print(text)
    out = REPO_ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    header = (
        f"# Benchmark results\n\ninput: {nlines:,} lines, {nbytes / 1e6:.1f} MB ({source})\n\n"
    )
    (out / "results.md").write_text(header + text + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
