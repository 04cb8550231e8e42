"""Batches of a streaming connection (issue 17: one-connection throughput):
bounded in bytes, sealed before their ack, reads sized by the connection count."""

import itertools
import socket
from collections.abc import Callable
from typing import cast

import pytest
from collector.helpers import Collector, connect, read_acks, sent_lines, verify_errors

from qubes_logvm.collector.qubewriter import FEW_BATCH_FACTOR, FEW_CONNECTIONS, StoreAccess
from qubes_logvm.collector.server import FEW_READ_BYTES, READ_BYTES, Server
from qubes_logvm.config.collector import CollectorConfig
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.sealfile import read_seal_file
from qubes_logvm.store.writer import Store

StartCollector = Callable[..., Collector]


@pytest.mark.inprocess
@pytest.mark.parametrize(
    ("pending", "read"),
    [(1 << 20, FEW_READ_BYTES), (512 << 10, 128 << 10), (64 << 10, READ_BYTES)],
)
def test_batches_and_reads_are_bigger_only_while_few_connections_are_open(
    pending: int, read: int
) -> None:
    shared = StoreAccess(cast(Store, None), CollectorConfig(pending_bytes=pending))
    server = Server(shared)
    for count in range(FEW_CONNECTIONS + 1):
        server.count = count
        assert shared.batch_bytes() == FEW_BATCH_FACTOR * pending
        assert len(server.read_view()) == read
    server.count = FEW_CONNECTIONS + 1
    assert shared.batch_bytes() == pending
    assert len(server.read_view()) == READ_BYTES
    shared.slots.shutdown()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pending", ["256K", "1M"])
def test_a_streaming_connection_is_sealed_in_bounded_batches_before_each_ack(
    start_collector: StartCollector, pending: str
) -> None:
    collector: Collector = start_collector(
        {"pending_bytes": pending, "rate_limit": {"lines_per_second": 0}}
    )
    line = b"x" * 90
    count = 200_000  # 18 MB, sent at once
    data = b"".join(b"%d %s\n" % (i, line) for i in range(count))
    sock = connect(collector.socket, "stream")
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    acks = read_acks(sock)
    sock.close()
    assert acks[-1] == count and acks == sorted(acks)
    seals = [
        seal
        for segment in StoreLayout(collector.store).segments("stream")
        if segment.seal is not None
        for seal in read_seal_file(segment.seal).seals
    ]
    # Every ack is the line count of a batch seal (less the segment-start
    # note): nothing was acknowledged before it was sealed.
    assert set(acks) <= {s.lines - 1 for s in seals if s.kind == "batch"}
    # Alone, a batch holds at most FEW_BATCH_FACTOR times pending_bytes plus
    # the records of three reads (the one that crossed it, two waiting
    # unescaped), each at most twice its raw size here (stamps).
    size = int(pending[:-1]) << (20 if pending.endswith("M") else 10)
    bound = FEW_BATCH_FACTOR * size + 2 * 3 * FEW_READ_BYTES
    sizes = [b.nbytes - a.nbytes for a, b in itertools.pairwise(seals) if b.kind == "batch"]
    print(f"{len(sizes)} batches, largest {max(sizes)} bytes (bound {bound})")
    assert max(sizes) <= bound, (max(sizes), bound)
    assert [p for _, p, _ in sent_lines(collector.store, "stream")] == data.splitlines()
    assert verify_errors(collector.store, collector.vkey) == []
