"""Browser benchmark: time to first paint and search speed on the reading bench's store.

The store is reading_bench's (1 GiB plain, 64 MiB segments, all but each
qube's newest compressed; 32 MiB in ``--quick``). Measured:

- first paint: a fresh ``python`` process on a private Xvfb display builds
  the window (``BrowserWindow.setup``), chooses the biggest qube and draws
  its first rows; from the process start (imports included) to the end of
  that draw; bar (issue 14): 2 s. Baselines: a bare GTK window with one
  label, start to first draw (what any GTK program pays here), and
  ``python -c pass``.
- search: :func:`qubes_logvm.browser.search.find` over the biggest qube for
  patterns that do not occur (every row scanned: plain any case, the
  default; plain with case; a regex), in MB/s of plain text; next to
  grep with the same pattern (``-c -F``, ``-iF``, ``-iE``) on the same segments decompressed;
  bar: 100 MB/s.
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
    if win.records.shown and win.records.drawn:  # records, not "reading…" placeholders
        GLib.idle_add(report)
win.window.connect_after("draw", drawn)
Gtk.main()
"""

# The baseline: the least a GTK program does to show text (same imports of Gtk).
_BARE = r"""
import sys, time
start = float(sys.argv[1])
import gi
gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk
win = Gtk.Window(default_width=1280, default_height=800)
win.add(Gtk.Label(label="a label"))
def report():
    print(time.time() - start, flush=True)
    Gtk.main_quit()
win.connect_after("draw", lambda *_: GLib.idle_add(report))
win.show_all()
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


def _first_paint(display: str, code: str, *args: str) -> float:
    """Best of 3: a fresh process's start to its first draw."""
    env = {**os.environ, "DISPLAY": display, "GDK_BACKEND": "x11", "NO_AT_BRIDGE": "1"}
    best = float("inf")
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", code, *_argv(args)],
            env=env,
            capture_output=True,
            check=True,
            timeout=120,
        )
        best = min(best, float(done.stdout.split()[-1]))
    return best


def _argv(args: tuple[str, ...]) -> list[str]:
    """The child's arguments: the store (if any), the start time, the rest."""
    if not args:
        return [str(time.time())]
    return [args[0], str(time.time()), *args[1:]]


def _python_start() -> float:
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - begin


#: Patterns that occur nowhere (every row scanned): the browser's default
#: (plain, any case), plain with case, a regular expression (any case).
PATTERNS = {
    "plain, any case": Pattern("no such text anywhere"),
    "plain, case": Pattern("no such text anywhere", match_case=True),
    "regex, any case": Pattern(r"no such \w+ anywhere", regex=True),
}


def _search(rows: QubeRows, pattern: Pattern) -> float:
    begin = time.perf_counter()
    found = find(
        rows,
        pattern,
        -1,
        (0, rows.count),
        forward=True,
        cancel=threading.Event(),
        progress=lambda _f: None,
    )
    seconds = time.perf_counter() - begin
    if found is not None:
        raise RuntimeError("the bench pattern matched")
    return seconds


def _plain_size(path: Path) -> int:
    if not path.name.endswith(".zst"):
        return path.stat().st_size
    out = subprocess.run(["zstdcat", str(path)], capture_output=True, check=True).stdout
    return len(out)


def _grep_flags(pattern: Pattern) -> str:
    """grep's options for the same search: fixed or extended, any case or not."""
    return "-" + ("" if pattern.match_case else "i") + ("E" if pattern.regex else "F")


def _grep(layout: StoreLayout, qube: str, work: Path) -> dict[str, float]:
    """Seconds of grep with each pattern's options on the qube's plain segments."""
    files = []
    for segment in layout.segments(qube):
        if segment.log is None:
            continue
        target = work / f"grep-{segment.seq:08d}.log"
        with target.open("wb") as out:
            tool = "zstdcat" if segment.compressed else "cat"
            subprocess.run([tool, str(segment.log)], stdout=out, check=True)
        files.append(str(target))
    seconds = {}
    for pattern in PATTERNS.values():
        flags = _grep_flags(pattern)
        begin = time.perf_counter()
        grep = ["grep", "-c", flags, pattern.text, *files]
        subprocess.run(grep, capture_output=True, check=False)
        seconds[flags] = time.perf_counter() - begin
    return seconds


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
            paint = _first_paint(server[1], _CHILD, str(root), qube)
            bare = _first_paint(server[1], _BARE)
            rows.append(
                {
                    "name": "logvm-browser: process start to first rows drawn",
                    "value": round(paint, 3),
                    "unit": "s",
                    "baseline": f"bare GTK window with a label: {bare:.3f} s; "
                    f"python -c pass: {_python_start():.3f} s",
                    "bar": "<= 2 s",
                    "ok": paint <= 2.0,
                    "notes": f"store: {count:,} records, {total >> 20} MiB plain; qube {qube}",
                }
            )
        qube_rows = QubeRows(layout, qube)
        plain = sum(_plain_size(s.files.log) for s in qube_rows.segments if s.files.log)
        grep = _grep(layout, qube, work)
        for label, pattern in PATTERNS.items():
            speed = plain / _search(qube_rows, pattern) / 1e6
            flags = _grep_flags(pattern)
            rows.append(
                {
                    "name": f"logvm-browser search ({label}, every row)",
                    "mb_per_s": round(speed, 1),
                    "baseline": f"grep -c {flags}: {plain / grep[flags] / 1e6:.0f} MB/s",
                    "bar": ">= 100 MB/s",
                    "ok": speed >= 100,
                    "notes": f"{plain >> 20} MiB of {qube}'s plain text",
                }
            )
        return rows
    finally:
        if server is not None:
            server[0].terminate()
        shutil.rmtree(work, ignore_errors=True)
