"""Qube names, the qrexec descriptor and record lines."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qubes_logvm.core.errors import InvalidQubeName, ProtocolError, StoreError
from qubes_logvm.core.names import is_dispvm_name, parse_service_descriptor, validate_qube_name
from qubes_logvm.core.records import (
    format_timestamp,
    line_record,
    note_record,
    parse_record,
    parse_timestamp,
)

pytestmark = pytest.mark.inprocess


@pytest.mark.parametrize("name", ["work", "sys-net", "disp1234", "a", "A_b.c-d", "x" * 31])
def test_valid_names(name: str) -> None:
    assert validate_qube_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",  # empty
        "1abc",  # must start with a letter
        "../etc",  # traversal
        ".hidden",
        "a/b",
        "x" * 32,  # too long
        "wörk",  # non-ASCII
        "a b",
        "a\n",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidQubeName):
        validate_qube_name(name)


@pytest.mark.parametrize(
    ("descriptor", "source"),
    [
        (b"logvm.Send work", "work"),  # a qube's form
        (b"logvm.Send+arg disp12", "disp12"),  # with an argument
        (b"logvm.Send sys-usb name sys-log", "sys-usb"),  # dom0's longer form
    ],
)
def test_descriptor_ok(descriptor: bytes, source: str) -> None:
    assert parse_service_descriptor(descriptor) == source


@pytest.mark.parametrize(
    "descriptor",
    [
        b"",
        b"logvm.Send",  # no source
        b"logvm.Sender work",  # another service
        b"qubes.Filecopy work",
        b"logvm.Send ../../x",
        b"logvm.Send work extra",  # three fields
        b"logvm.Send w\xffork",
        b"logvm.Send " + b"a" * 300,
    ],
)
def test_descriptor_refused(descriptor: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_service_descriptor(descriptor)


def test_dispvm_names() -> None:
    assert is_dispvm_name("disp1234")
    assert not is_dispvm_name("disp12345")
    assert not is_dispvm_name("work")


def test_records_round_trip() -> None:
    stamp = format_timestamp(1764352714.123456)
    assert stamp == b"2025-11-28T17:58:34.123456Z"
    assert abs(parse_timestamp(stamp) - 1764352714.123456) < 1e-6
    rec = parse_record(line_record(stamp, b"hello world", cut=5)[:-1])
    assert (rec.kind, rec.cut, rec.payload) == ("L", 5, b"hello world")
    rec = parse_record(line_record(stamp, b"tail", partial=True)[:-1])
    assert (rec.kind, rec.cut) == ("P", 0)
    note = parse_record(note_record(stamp, "dropped", count=3, reason="rate-limit")[:-1])
    assert note.event == "dropped"
    assert note.fields() == {"count": "3", "reason": "rate-limit"}


@pytest.mark.parametrize(
    "line",
    [
        b"2025-11-28T17:58:34.123456Z X payload",  # unknown kind
        b"2025-11-28 17:58:34 L payload",  # wrong time format
        b"2025-11-28T17:58:34.123456Z Lt0 x",  # zero cut is not written
        b"2025-11-28T17:58:34.123456Z C Bad key=v",
    ],
)
def test_parse_record_is_strict(line: bytes) -> None:
    with pytest.raises(StoreError):
        parse_record(line)


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)))
def test_parse_timestamp_reads_what_strptime_reads(moment: datetime) -> None:
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode("ascii")
    expected = datetime.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert parse_timestamp(stamp) == expected.timestamp()


@pytest.mark.parametrize(
    "stamp",
    [
        b"2026-02-30T00:00:00.000000Z",  # no such day
        b"2026-13-01T00:00:00.000000Z",
        b"2026-12-01T24:00:00.000000Z",
        b"2026-12-01T23:59:60.000000Z",  # strptime's %S takes 60, datetime() does not
        b"2026-12-01T23:59:59.00000Z",  # five digits of microseconds
        b"2026-12-01 23:59:59.000000Z",
        b"2026-1-01T23:59:59.0000000Z",  # the width strptime would accept
        b"\xd9\xa2026-12-01T23:59:59.000000Z",
    ],
)
def test_parse_timestamp_refuses_what_is_not_a_receive_time(stamp: bytes) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(stamp)
