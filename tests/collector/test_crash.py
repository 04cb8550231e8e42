"""Crash: SIGKILL the collector at random moments while senders stream.

After a restart (which seals what the crash left with ``recover``), every
line that was acknowledged is in the store and the seals verify.
"""

import random
import socket
import threading
import time
from collections.abc import Callable

import pytest
from collector.helpers import Collector, connect, sent_lines, verify_errors

TRIALS = 20
SENDERS = ("alpha", "beta", "disp7")


class Sender(threading.Thread):
    """Streams numbered lines and records the highest ack."""

    def __init__(self, path: str, qube: str, trial: int) -> None:
        super().__init__(daemon=True)
        self.path, self.qube, self.trial = path, qube, trial
        self.acked = 0
        self.sent = 0

    def line(self, number: int) -> bytes:
        return b"t%d %s line %d \x1b %s\n" % (self.trial, self.qube.encode(), number, b"p" * 50)

    def run(self) -> None:
        try:
            sock = connect(self.path, self.qube)  # type: ignore[arg-type]
        except OSError:
            return
        sock.settimeout(5)
        reader = threading.Thread(target=self._read_acks, args=(sock,), daemon=True)
        reader.start()
        try:
            while True:
                batch = b"".join(self.line(self.sent + i) for i in range(200))
                sock.sendall(batch)
                self.sent += 200
                time.sleep(0.002)
        except OSError:
            pass
        reader.join(5)
        sock.close()

    def _read_acks(self, sock: socket.socket) -> None:
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
                *lines, data = data.split(b"\n")
                for ack in lines:
                    self.acked = max(self.acked, int(ack.split()[1]))
        except OSError:
            pass


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_never_loses_acknowledged_lines(start_collector: Callable[..., Collector]) -> None:
    # No rate limit: dropped lines are acknowledged too, and would not be stored.
    collector = start_collector({"rate_limit": {"lines_per_second": 0}})
    rng = random.Random(20261128)
    acked_total = 0
    for trial in range(TRIALS):
        # A qube name per trial keeps each check small (DispVM-like names too).
        senders = [Sender(str(collector.socket), f"{q}{trial}", trial) for q in SENDERS]
        for sender in senders:
            sender.start()
        time.sleep(rng.uniform(0.05, 0.6))
        collector.kill()
        for sender in senders:
            sender.join(10)
        collector.start()
        for sender in senders:
            stored = {p for kind, p, _ in sent_lines(collector.store, sender.qube)}
            wanted = [sender.line(i)[:-1] for i in range(sender.acked)]
            missing = [w for w in wanted if w not in stored]
            assert not missing, f"trial {trial} {sender.qube}: {len(missing)} acked lines lost"
            acked_total += sender.acked
    assert acked_total > 0
    assert collector.stop() == 0
    assert verify_errors(collector.store, collector.vkey) == []
