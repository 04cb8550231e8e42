"""The hot path's pieces against simple reference models."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qubes_logvm.collector.lines import LineSplitter, _has_longer_line, first_lines
from qubes_logvm.core.escape import escape, escape_block, unescape
from qubes_logvm.core.ratelimit import TokenBucket
from qubes_logvm.core.records import parse_record

pytestmark = pytest.mark.inprocess

STAMP = b"2026-11-28T17:58:34.123456Z"


@given(st.binary(max_size=2000))
def test_escape_block_equals_escaping_each_line(data: bytes) -> None:
    assert escape_block(data) == b"\n".join(escape(line) for line in data.split(b"\n"))


@given(st.lists(st.binary(max_size=300), max_size=10), st.integers(1, 200))
def test_splitter_matches_model(pieces: list[bytes], cap: int) -> None:
    splitter = LineSplitter(cap)
    out = b""
    count = 0
    for piece in pieces:
        records, n = splitter.feed(piece, STAMP)
        out += records
        count += n
        assert splitter.buffered <= cap  # memory bounded
    records, n = splitter.finish(STAMP)
    out += records
    count += n
    parsed = [parse_record(line) for line in out.split(b"\n")[:-1]]
    assert len(parsed) == count
    data = b"".join(pieces)
    parts = data.split(b"\n")
    model = [("L", p[:cap], max(0, len(p) - cap)) for p in parts[:-1]]
    if parts[-1]:
        model.append(("P", parts[-1][:cap], max(0, len(parts[-1]) - cap)))
    assert [(r.kind, unescape(r.payload), r.cut) for r in parsed] == model


@given(st.lists(st.integers(0, 40), max_size=30), st.integers(1, 50))
def test_longer_line_check_equals_the_split(lengths: list[int], limit: int) -> None:
    block = b"\n".join(b"x" * n for n in lengths)
    assert _has_longer_line(block, limit) == (max(map(len, block.split(b"\n"))) > limit)


def test_first_lines() -> None:
    assert first_lines(b"a\nb\nc\n", 2) == b"a\nb\n"
    assert first_lines(b"a\nb\nc\n", 0) == b""


def test_token_bucket() -> None:
    bucket = TokenBucket(10, 20, now=0.0)
    assert bucket.take_up_to(50, now=0.0) == 20
    assert bucket.take_up_to(50, now=1.0) == 10
    assert bucket.take_up_to(5, now=1.0) == 0
    bucket.configure(0, 1)
    assert bucket.take_up_to(1000, now=1.0) == 1000
