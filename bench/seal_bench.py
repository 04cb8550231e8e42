"""Seal overhead (issue 17 item 4): bytes of seals an idle and a busy qube cost.

Measured by running the real ``logvm-collector`` on a fresh store of each
format, with a short epoch (0.1 s, so an hour's worth of epochs passes in
seconds):

- idle: one qube connects, sends one line, then stays connected and silent;
  the seal bytes the store gains over the measured epochs (the qube's seal
  files plus the store-wide ``state/epochs.seal`` and ``state/epoch-leaves``)
  scaled to a day of 10 s epochs (8,640 epochs). Format 1 (a ``tick`` seal
  per connected qube per epoch) is the baseline;
- busy: the bench input sent over one connection as fast as the collector
  takes it; seal bytes per byte of log text stored.

Bars (design.md, issue 17): <= 100 KiB/day for an idle connected qube,
<= 1% of stored bytes for a busy one.
"""

import socket
import subprocess
import time
from typing import Any

from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout

EPOCH_S = 0.1
DAY_EPOCHS = 86400 / 10
IDLE_BAR = 100 * 1024
BUSY_BAR = 0.01


class _Collector:
    def __init__(self, ctx: Any, name: str, store_format: int) -> None:
        self.work = ctx.workdir / name
        self.work.mkdir()
        self.store = self.work / "store"
        setup_keys(StoreLayout(self.store), epoch_seconds=EPOCH_S, store_format=store_format)
        self.sock = self.work / "sock"
        self.proc = subprocess.Popen(
            [
                str(ctx.venv_bin / "logvm-collector"),
                *("--socket", str(self.sock), "--store", str(self.store)),
            ],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not self.sock.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("logvm-collector did not start")
            time.sleep(0.05)

    def qube_seal_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.store.glob("qubes/*/*.seal"))

    def state_seal_bytes(self) -> int:
        state = self.store / "state"
        files = (state / "epochs.seal", state / "epoch-leaves")
        return sum(p.stat().st_size for p in files if p.exists())

    def seal_bytes(self) -> int:
        return self.qube_seal_bytes() + self.state_seal_bytes()

    def log_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.store.glob("qubes/*/*.log"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _idle(ctx: Any, store_format: int, seconds: float) -> float:
    """Seal bytes one idle connected qube adds to the store in a day of 10 s epochs.

    Its seal files' growth scaled to a day, plus the largest size the
    store-wide epoch files reached (they are bounded, not growing: each day
    adds at most that much, shared by every qube).
    """
    collector = _Collector(ctx, f"idle{store_format}", store_format)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(collector.sock))
            sock.sendall(b"logvm.Send idle\0one line and then silence\n")
            sock.recv(4096)  # the ack: sealed and durable
            time.sleep(1.0)  # past the first epochs
            before, start = collector.qube_seal_bytes(), time.monotonic()
            state_max = 0
            while time.monotonic() < start + seconds:
                time.sleep(EPOCH_S / 2)
                state_max = max(state_max, collector.state_seal_bytes())
            grown, elapsed = collector.qube_seal_bytes() - before, time.monotonic() - start
    finally:
        collector.stop()
    return max(grown, 0) / (elapsed / EPOCH_S) * DAY_EPOCHS + state_max


def _busy(ctx: Any, store_format: int) -> float:
    """Seal bytes per byte of log text for the bench input sent at full speed."""
    collector = _Collector(ctx, f"busy{store_format}", store_format)
    try:
        with socket.socket(socket.AF_UNIX) as sock, ctx.input_path.open("rb") as f:
            sock.connect(str(collector.sock))
            sock.sendall(b"logvm.Send busy\0")
            sock.sendfile(f)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        return collector.seal_bytes() / max(collector.log_bytes(), 1)
    finally:
        collector.stop()


def run(ctx: Any) -> list[dict[str, Any]]:
    """The idle and busy rows, format 2 next to format 1."""
    seconds = 3.0 if ctx.quick else 20.0
    idle1, idle2 = _idle(ctx, 1, seconds), _idle(ctx, 2, seconds)
    busy1, busy2 = _busy(ctx, 1), _busy(ctx, 2)
    scaled = (
        f"real collector, {EPOCH_S} s epochs for {seconds:g} s: the qube's seal files' "
        "growth scaled to 8,640 10-s epochs, plus the largest size of the store-wide "
        "state/epochs.seal + epoch-leaves (bounded to 64 lines, shared by all qubes; "
        "store-wide ~1.7 MB a day are appended and compacted away, not kept)"
    )
    return [
        {
            "name": "seal bytes per day, idle connected qube (format 2)",
            "value": round(idle2 / 1024, 1),
            "unit": "KiB/day",
            "baseline": round(idle1 / 1024, 1),
            "bar": "<= 100 KiB/day",
            "ok": idle2 <= IDLE_BAR,
            "notes": scaled + "; baseline: format 1 (tick seals)",
        },
        {
            "name": "seal bytes per byte of busy logs (format 2)",
            "value": round(busy2 * 100, 3),
            "unit": "%",
            "baseline": round(busy1 * 100, 3),
            "bar": "<= 1%",
            "ok": busy2 <= BUSY_BAR,
            "notes": "bench input over one connection at full speed; baseline: format 1",
        },
    ]
