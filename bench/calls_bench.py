"""Many one-line calls from one qube: segments, files and cost, with and without the linger.

Each call is a whole ``logvm.Send`` connection with one line (as a qube
calling ``logger`` in a loop would make). With ``session_linger`` (default
2 s) the calls continue one segment; with 0 every call is a segment of two
files, charged 32 KiB each against the qube's quota (store/usage.py).
Issue 17 asks for 100,000 calls; at ~250 calls/s on this machine that
is 7 minutes, so the bench runs 20,000 with the linger (``--quick``: 2,000)
and 2,000 without it (each such call fsyncs two new files and the
directory: ~20 calls/s here).
"""

import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "python")]

CALLS = 20_000
QUICK_CALLS = 2_000


def _calls(workdir: Path, linger: float, count: int) -> dict[str, Any]:
    from collector.helpers import Collector, make_store, send

    from qubes_logvm.store.layout import StoreLayout
    from qubes_logvm.store.usage import qube_usage

    workdir.mkdir()
    collector = Collector(
        workdir,
        {"session_linger": linger, "global": {"keep_free": 0}, "quota": {"default": "64M"}},
    )
    collector.vkey = make_store(collector.store)
    collector.start()
    started = time.monotonic()
    try:
        for i in range(count):
            send(collector.socket, "calls", b"call %d\n" % i)
        seconds = time.monotonic() - started
    finally:
        collector.stop()
        collector.kill()
    layout = StoreLayout(collector.store)
    cost = qube_usage(layout, "calls")
    return {
        "calls_per_s": count / seconds,
        "files": cost.files,
        "cost": cost.disk,
        "segments_left": len(layout.segments("calls")),
    }


def run(ctx: Any) -> list[dict[str, Any]]:
    """The same calls with the default linger and with none."""
    rows = []
    for linger in (2.0, 0.0):
        count = QUICK_CALLS if ctx.quick or not linger else CALLS
        got = _calls(Path(ctx.workdir) / f"linger{linger:g}", linger, count)
        rows.append(
            {
                "name": f"{count:,} one-line calls, session_linger {linger:g} s: files left",
                "value": got["files"],
                "unit": "files",
                "baseline": "session_linger 0" if linger else None,
                "notes": f"{got['calls_per_s']:.0f} calls/s, {got['segments_left']} segments, "
                f"charged {got['cost'] / (1 << 20):.1f} MiB (quota 64 MiB)",
            }
        )
    return rows
