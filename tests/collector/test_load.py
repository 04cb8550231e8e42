"""Load: 50 qubes at once, one flooding garbage, one trickling; memory stays bounded."""

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest
from collector.helpers import Collector, connect, read_acks, rss_kib, sent_lines

QUBES = 50
LINES = 400


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fifty_qubes_one_flooding_one_trickling(start_collector: Callable[..., Collector]) -> None:
    collector = start_collector({"quota": {"default": "64M"}})
    stop = threading.Event()
    results: dict[str, list[int]] = {}

    def flood() -> None:
        with connect(collector.socket, "flood") as sock:
            garbage = os.urandom(1 << 20)
            try:
                while not stop.is_set():
                    sock.sendall(garbage)
            except OSError:
                pass

    def trickle() -> None:
        with connect(collector.socket, "trickle") as sock:
            for byte in b"slow line\n":
                if stop.is_set():
                    break
                sock.sendall(bytes([byte]))
                time.sleep(1)

    def normal(name: str) -> None:
        with connect(collector.socket, name) as sock:
            for i in range(LINES):
                sock.sendall(b"%s line %d\n" % (name.encode(), i))
                if i % 50 == 0:
                    time.sleep(0.05)
            sock.shutdown(socket.SHUT_WR)
            results[name] = read_acks(sock)

    names = [f"q{i}" for i in range(QUBES - 2)]
    threads = [threading.Thread(target=flood), threading.Thread(target=trickle)]
    threads += [threading.Thread(target=normal, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    peak = 0
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads[2:]) and time.monotonic() < deadline:
        peak = max(peak, rss_kib(collector.pid)[0])
        time.sleep(0.2)
    time.sleep(2)  # keep flooding a while with everyone connected
    rss, hwm = rss_kib(collector.pid)
    stop.set()
    for thread in threads:
        thread.join(30)
    for name in names:
        assert results[name] and results[name][-1] == LINES, name
        assert len(sent_lines(collector.store, name)) == LINES
    assert sent_lines(collector.store, "flood")
    assert max(peak, rss, hwm) <= 60 * 1024, f"RSS {peak} KiB, HWM {hwm} KiB"
