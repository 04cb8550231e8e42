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
- ``DIR/crash``: once this connection has stored that many lines, remove
  the file and die at once without acknowledging them (the LogVM crashes).

Every start appends one line to ``DIR/connections``; its pid goes to
``DIR/pid`` so a test can kill it mid-stream.
"""

import io
import os
import sys
import time
from pathlib import Path


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
        crash = state / "crash"
        if crash.exists() and total >= int(crash.read_text() or "1"):
            crash.unlink()
            os._exit(137)
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
