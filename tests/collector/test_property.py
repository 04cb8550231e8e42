"""Property: any byte stream through a real collector is stored safely and reversibly."""

import socket
from collections.abc import Iterator

import pytest
from collector.helpers import Collector, connect, expected_lines, make_store, read_acks, sent_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qubes_logvm.store.layout import StoreLayout

CAP = 300
_counter = iter(range(1, 1 << 30))


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    workdir = tmp_path_factory.mktemp("property")
    instance = Collector(workdir, {"max_line_bytes": CAP, "rate_limit": {"lines_per_second": 0}})
    instance.vkey = make_store(instance.store)
    instance.start()
    yield instance
    instance.kill()


chunks = st.lists(
    st.one_of(
        st.binary(max_size=400),
        st.sampled_from([b"\n", b"\r\n", b"\x00", b"\x1b[", b"\\", b"\xff\n", "é\u202e".encode()]),
    ),
    max_size=12,
)


@pytest.mark.timeout(240)
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pieces=chunks)
def test_any_stream_round_trips(collector: Collector, pieces: list[bytes]) -> None:
    qube = f"hyp{next(_counter)}"
    with connect(collector.socket, qube) as sock:
        for piece in pieces:
            if piece:
                sock.sendall(piece)
        sock.shutdown(socket.SHUT_WR)
        acks = read_acks(sock)
    data = b"".join(pieces)
    expected = expected_lines(data, CAP)
    assert acks == sorted(acks) and acks[-1] == len(expected)
    assert sent_lines(collector.store, qube) == expected
    for segment in StoreLayout(collector.store).segments(qube):
        assert segment.log is not None
        stored = segment.log.read_bytes()
        stored.decode("utf-8")
        assert not any((b < 0x20 and b not in (9, 10)) or b == 0x7F for b in stored)
    assert collector.proc is not None and collector.proc.poll() is None
