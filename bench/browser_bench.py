"""Browser benchmark: time to first paint and search speed on the reading bench's store.

The store is reading_bench's (1 GiB plain, 64 MiB segments, all but each
qube's newest compressed; 32 MiB in ``--quick``). Measured:

- first paint: a fresh ``python`` process on a private Xvfb display builds
  the window (``BrowserWindow.setup``), chooses the biggest qube and draws
  its first rows; from the process start (imports included) to the end of
  that draw; bar (issue 14): 2 s. Baseline: the same process without GTK
  (``python -c pass``).
- search: :func:`qubes_logvm.browser.search.find` over the biggest qube for
  a plain pattern that does not occur (every row scanned), in MB/s of plain
  text; next to ``grep -c -F`` on the same segments decompressed; bar: 100 MB/s.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.reading_bench import _build, _input_lines
from qubes_logvm.browser.model import QubeRows
from qubes_logvm.browser.search import Pattern, find
from qubes_logvm.store.compress import compress_segment
from qubes_logvm.store.layout import StoreLayout

_CHILD = r"""
import sys, time
start = float(sys.argv[2])
from qubes_logvm.browser.window import BrowserWindow, load_css
from qubes_logvm.store.layout import StoreLayout
from gi.repository import GLib, Gtk
load_css()
win = BrowserWindow(None, StoreLayout(sys.argv[1]), ())
win.setup()
win.window.present()
win.choose_qube(sys.argv[3])
def report():
    print(time.time() - start, flush=True)
    Gtk.main_quit()
def drawn(*_):  # the window's draw includes its children's: the rows are on screen
    if win.records.shown:
        GLib.idle_add(report)
win.window.connect_after("draw", drawn)
Gtk.main()
"""


def _xvfb() -> tuple[subprocess.Popen[bytes], str] | None:
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None
    read, write = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as stream:
        number = stream.readline().strip()
    return (proc, f":{number}") if number else None


def _first_paint(root: Path, qube: str, display: str) -> float:
    env = {**os.environ, "DISPLAY": display, "GDK_BACKEND": "x11", "NO_AT_BRIDGE": "1"}
    best = float("inf")
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(root), str(time.time()), qube],
            env=env,
            capture_output=True,
            check=True,
            timeout=120,
        )
        best = min(best, float(done.stdout.split()[-1]))
    return best


def _python_start() -> float:
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - begin


def _search(layout: StoreLayout, qube: str) -> tuple[float, int]:
    rows = QubeRows(layout, qube)
    plain = sum(_plain_size(s.files.log) for s in rows.segments if s.files.log)
    begin = time.perf_counter()
    found = find(
        rows,
        Pattern("no such text anywhere"),
        -1,
        (0, rows.count),
        forward=True,
        cancel=threading.Event(),
        progress=lambda _f: None,
    )
    seconds = time.perf_counter() - begin
    if found is not None:
        raise RuntimeError("the bench pattern matched")
    return seconds, plain


def _plain_size(path: Path) -> int:
    if not path.name.endswith(".zst"):
        return path.stat().st_size
    out = subprocess.run(["zstdcat", str(path)], capture_output=True, check=True).stdout
    return len(out)


def _grep(layout: StoreLayout, qube: str, work: Path) -> float:
    files = []
    for segment in layout.segments(qube):
        if segment.log is None:
            continue
        target = work / f"grep-{segment.seq:08d}.log"
        with target.open("wb") as out:
            tool = "zstdcat" if segment.compressed else "cat"
            subprocess.run([tool, str(segment.log)], stdout=out, check=True)
        files.append(str(target))
    begin = time.perf_counter()
    subprocess.run(
        ["grep", "-c", "-F", "no such text anywhere", *files], capture_output=True, check=False
    )
    return time.perf_counter() - begin


def run(ctx: Any = None) -> list[dict[str, Any]]:
    """Build the store, time first paint and a full search, return the rows."""
    quick = bool(getattr(ctx, "quick", False))
    work = Path(tempfile.mkdtemp(prefix="browser-bench-", dir=getattr(ctx, "workdir", None)))
    total = (32 << 20) if quick else (1 << 30)
    segment = (4 << 20) if quick else (64 << 20)
    server = None
    try:
        root = work / "store"
        count, _ = _build(root, _input_lines(getattr(ctx, "input_path", None)), total, segment)
        layout = StoreLayout(root)
        for qube in layout.qubes():
            for files in layout.segments(qube)[:-1]:
                compress_segment(layout, files)
        qube = max(layout.qubes(), key=lambda q: len(layout.segments(q)))
        rows: list[dict[str, Any]] = []
        server = _xvfb()
        if server is not None:
            paint = _first_paint(root, qube, server[1])
            rows.append(
                {
                    "name": "logvm-browser: process start to first rows drawn",
                    "value": round(paint, 3),
                    "unit": "s",
                    "baseline": f"python -c pass: {_python_start():.3f} s",
                    "bar": "<= 2 s",
                    "ok": paint <= 2.0,
                    "notes": f"store: {count:,} records, {total >> 20} MiB plain; qube {qube}",
                }
            )
        seconds, plain = _search(layout, qube)
        grep = _grep(layout, qube, work)
        rows.append(
            {
                "name": "logvm-browser search (plain, every row)",
                "mb_per_s": round(plain / seconds / 1e6, 1),
                "baseline": f"grep -c -F: {plain / grep / 1e6:.0f} MB/s",
                "bar": ">= 100 MB/s",
                "ok": plain / seconds / 1e6 >= 100,
                "notes": f"{plain >> 20} MiB of {qube}'s plain text",
            }
        )
        return rows
    finally:
        if server is not None:
            server[0].terminate()
        shutil.rmtree(work, ignore_errors=True)
