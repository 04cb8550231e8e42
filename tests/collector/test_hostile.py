"""Hostile input through a real collector: stored escaped, attributed, capped, marked."""

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from collector.helpers import (
    Collector,
    connect,
    expected_lines,
    notes,
    read_acks,
    records,
    send,
    sent_lines,
    verify_errors,
    wait_for,
)

from qubes_logvm.store.layout import StoreLayout

CAP = 1000

HOSTILE = [
    # (qube, bytes sent): each case in its own qube
    ("plain", b"hello world\nsecond line\n"),
    ("binary", bytes(range(256)) + b"\n" + bytes(range(255, -1, -1)) + b"\n"),
    ("nul", b"a\x00b\x00\x00c\n"),
    ("esc", b"\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b31m\n"),
    ("badutf8", b"\xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x28\x8c\xbc \xed\xa0\x80\n"),
    ("unicode", "grüße ✓ \u202e evil \u200b zw \u2028 sep\n".encode()),
    ("cr", b"one\rtwo\r\nthree\r\n"),
    ("backslash", b"C:\\path\\x41 not an escape\\\n"),
    ("huge", b"A" * (CAP * 5 + 17) + b"\nshort\n" + b"B" * (CAP + 1) + b"\n"),
    ("noeol", b"first\nlast words without newline"),
    ("hugenoeol", b"x\n" + b"C" * (CAP * 3)),
    ("emptylines", b"\n\n\n"),
]


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    from collector.helpers import make_store

    workdir = tmp_path_factory.mktemp("hostile")
    instance = Collector(workdir, {"max_line_bytes": CAP, "descriptor_timeout": 2})
    instance.vkey = make_store(instance.store)
    instance.start()
    yield instance
    instance.kill()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("qube", "data"), HOSTILE, ids=[q for q, _ in HOSTILE])
def test_hostile_lines_land_escaped_and_attributed(
    collector: Collector, qube: str, data: bytes
) -> None:
    expected = expected_lines(data, CAP)
    acks = send(collector.socket, qube, data)
    assert acks and acks[-1] == len(expected)
    assert acks == sorted(acks)
    assert sent_lines(collector.store, qube) == expected
    for segment in StoreLayout(collector.store).segments(qube):
        assert segment.log is not None
        stored = segment.log.read_bytes()
        stored.decode("utf-8")  # always valid UTF-8
        # no control byte but TAB and the record separator
        assert not any(b < 0x20 and b not in (9, 10) or b == 0x7F for b in stored)
    assert verify_errors(collector.store, collector.vkey) == []


@pytest.mark.timeout(60)
def test_cap_marker_counts_cut_bytes(collector: Collector) -> None:
    send(collector.socket, "capped", b"Z" * (CAP + 4321) + b"\n")
    [record] = [r for r in records(collector.store, "capped") if r.kind != "C"]
    assert record.kind == "L" and record.cut == 4321 and record.payload == b"Z" * CAP


BAD_DESCRIPTORS = [
    # (name, descriptor bytes, data after it)
    ("missing-nul", b"logvm.Send work", b""),
    ("traversal", b"logvm.Send ../../etc\0", b"pwned\n"),
    ("slash", b"logvm.Send a/b\0", b"pwned\n"),
    ("another-service", b"qubes.Filecopy work\0", b"pwned\n"),
    ("too-long-name", b"logvm.Send " + b"a" * 40 + b"\0", b"pwned\n"),
    ("too-long", b"logvm.Send " + b"a" * 400, b"pwned\n"),
    ("no-source", b"logvm.Send\0", b"pwned\n"),
    ("three-words", b"logvm.Send work extra\0", b"pwned\n"),
    ("non-ascii", b"logvm.Send w\xc3\xb6rk\0", b"pwned\n"),
    ("empty", b"\0", b"pwned\n"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "descriptor", "data"), BAD_DESCRIPTORS, ids=[b[0] for b in BAD_DESCRIPTORS]
)
def test_bad_descriptor_closes_with_nothing_written(
    collector: Collector, name: str, descriptor: bytes, data: bytes
) -> None:
    before = set(StoreLayout(collector.store).qubes())
    with connect(collector.socket, descriptor=descriptor) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # closed already: fine
        assert read_acks(sock) == []
    assert set(StoreLayout(collector.store).qubes()) == before
    assert not (collector.store / "etc").exists()


@pytest.mark.timeout(60)
def test_silent_connection_times_out(collector: Collector) -> None:
    with connect(collector.socket) as sock:
        start = time.monotonic()
        assert sock.recv(10) == b""  # closed by the collector
        assert time.monotonic() - start < 20


@pytest.mark.timeout(60)
def test_no_data_session_is_recorded_and_acked(collector: Collector) -> None:
    assert send(collector.socket, "nodata", b"") == [0]
    # The segment closes just after the final ack.
    assert wait_for(
        lambda: [n.event for n in notes(collector.store, "nodata")]
        == ["segment-start", "segment-end"]
    )


@pytest.mark.timeout(60)
def test_dom0_form_of_descriptor_is_accepted(collector: Collector) -> None:
    acks = send(collector.socket, "", b"hi\n", descriptor=b"logvm.Send dom0src keyword @default\0")
    assert acks == [1]
    assert sent_lines(collector.store, "dom0src") == [("L", b"hi", 0)]


@pytest.mark.timeout(60)
def test_other_uid_is_refused(start_collector: Callable[..., Collector]) -> None:
    # Tests run as root; allowing only another uid shows the peer check.
    collector = start_collector({"allowed_uids": [4242], "allowed_group": None})
    assert send(collector.socket, "work", b"x\n") == []
    assert StoreLayout(collector.store).qubes() == []
    assert "uid 0" in collector.stderr()


def test_socket_mode_is_0660(collector: Collector) -> None:
    assert Path(collector.socket).stat().st_mode & 0o777 == 0o660
