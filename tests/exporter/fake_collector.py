"""A small stand-in for "qrexec-client-vm @default logvm.Send" + collector.

Speaks the wire protocol of docs/protocol.md: reads lines from stdin, appends
them to ``DIR/received`` (fsynced), then writes ``ack <N>``. Its behaviour is
steered by files in DIR, so a test can change it between connections:

- ``DIR/deny``: exit 126 at once, as qrexec-client-vm does when the policy
  denies the call;
- ``DIR/down``: exit 1 at once (the LogVM is absent);
- ``DIR/slow``: sleep that many seconds before each ack;
- ``DIR/noack``: store but never acknowledge;
- ``DIR/hang``: read nothing, never acknowledge, never end (a paused LogVM
  or a hung qrexec-client-vm) until killed;
- ``DIR/crash``: thresholds, one per connection in turn: once this
  connection has stored the first one's count of lines, it takes that one
  off the file (removed when none is left), appends a line to
  ``DIR/crashes`` and dies at once without acknowledging them (the LogVM
  crashes).

Every start appends one line to ``DIR/connections``; its pid goes to
``DIR/pid`` so a test can kill it mid-stream.
"""

import io
import os
import sys
import time
from pathlib import Path


def _maybe_crash(state: Path, total: int) -> None:
    """Die like a crashed LogVM once ``total`` reaches this connection's threshold."""
    crash = state / "crash"
    if not crash.exists():
        return
    thresholds = crash.read_text().split()
    if not thresholds or total < int(thresholds[0]):
        return
    if thresholds[1:]:
        fresh = state / "crash.tmp"
        fresh.write_text(" ".join(thresholds[1:]))
        fresh.replace(crash)  # atomic: the next connection reads whole thresholds
    else:
        crash.unlink()
    with (state / "crashes").open("a") as handle:
        handle.write(f"{os.getpid()} {total}\n")
    os._exit(137)


def main() -> int:
    """Run one connection."""
    state = Path(sys.argv[1])
    with (state / "connections").open("a") as handle:
        handle.write(f"{os.getpid()}\n")
    if (state / "deny").exists():
        return 126
    if (state / "down").exists():
        return 1
    (state / "pid").write_text(str(os.getpid()))
    if (state / "hang").exists():
        time.sleep(3600)
    received = os.open(state / "received", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    stdin = sys.stdin.buffer
    assert isinstance(stdin, io.BufferedReader)
    total = 0
    partial = b""
    while True:
        chunk = stdin.read1(1 << 16)
        if not chunk:
            break
        data = partial + chunk
        cut = data.rfind(b"\n") + 1
        partial = data[cut:]
        if not cut:
            continue
        os.write(received, data[:cut])
        os.fsync(received)
        total += data[:cut].count(b"\n")
        _maybe_crash(state, total)
        slow = state / "slow"
        if slow.exists():
            time.sleep(float(slow.read_text() or "0.2"))
        if not (state / "noack").exists():
            sys.stdout.write(f"ack {total}\n")
            sys.stdout.flush()
    os.close(received)
    return 0


if __name__ == "__main__":
    sys.exit(main())
