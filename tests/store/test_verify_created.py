"""Receive times before the store's creation, found as the verifier reads (verify/created.py)."""

import io
import random

import pytest

from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.store.verify.created import (
    CREATED_SLACK_SECONDS,
    StampFloor,
    first_below,
    floor_of,
)

CREATED = 1_780_000_000.0  # 2026-05-28T20:26:40Z
FLOOR = floor_of(format_timestamp(CREATED).decode()[:19] + "Z")
HOUR_END = 1_780_099_200.0 - 0.5  # 2026-05-29T23:59:59.5Z: a day's and an hour's end


def _text(stamps: list[float]) -> bytes:
    return b"".join(
        line_record(format_timestamp(t), b"sshd[%d]: x" % i) for i, t in enumerate(stamps)
    )


def _first_hit(data: bytes, reads: list[int]) -> tuple[int, bytes] | None:
    """What watched_plain decides: the count as read in pieces of the given sizes
    covers every line (a sealed segment of ``data``), or the search finds the line."""
    assert FLOOR is not None
    watch = StampFloor(io.BytesIO(data), FLOOR)
    for size in reads:
        if not watch.read(size):
            break
    while watch.read(1 << 16):
        pass
    # Never a line counted twice (it could stand for a backdated one).
    assert watch.after <= data.count(b"\n") + (not data.endswith(b"\n"))
    if data.endswith(b"\n") and (watch.after, watch.nbytes) == (data.count(b"\n"), len(data)):
        return None
    return first_below(io.BytesIO(data), FLOOR, len(data))


def _expected(stamps: list[float]) -> tuple[int, bytes] | None:
    floor = CREATED - CREATED_SLACK_SECONDS
    for number, moment in enumerate(stamps, start=1):
        if int(moment) < int(floor):  # the floor is whole seconds
            return number, format_timestamp(moment)
    return None


def test_floor_is_creation_less_the_slack() -> None:
    assert floor_of("2026-05-28T20:26:40Z") == b"2026-05-28T19:26:40"
    assert floor_of("yesterday") is None


@pytest.mark.parametrize("seed", range(60))
def test_found_wherever_the_reads_cut_the_lines(seed: int) -> None:
    # Days after creation, the creation day itself, just before and after the
    # floor, a midnight, one backdated record (or none) anywhere; spread over
    # days, minutes (reads whose lines share the hour, the minute or not) or
    # seconds, so the prefixes counted change length from read to read.
    rng = random.Random(seed)
    base = rng.choice(
        [CREATED + 3 * 86400, CREATED, CREATED - CREATED_SLACK_SECONDS, HOUR_END - 300]
    )
    spread = rng.choice([2 * 86400, 600, 5])
    stamps = sorted(base + rng.uniform(0, spread) for _ in range(rng.randint(1, 300)))
    if rng.random() < 0.7:
        stamps.insert(
            rng.randrange(len(stamps) + 1), CREATED - rng.choice([3601, 4000, 86400 * 400])
        )
    data = _text(stamps)
    if rng.random() < 0.3:
        data = data[:-1]  # a last line without newline
    reads = [rng.choice([1, 7, 27, 100, 4096, 1 << 20]) for _ in range(50)]
    assert _first_hit(data, reads) == _expected(stamps)


@pytest.mark.parametrize("size", [4096, 1 << 20])
def test_lines_sharing_a_long_prefix_are_counted_in_one_pass(size: int) -> None:
    # A burst across a midnight, read in large pieces: every line counted as
    # read, by the prefix each read's lines share (no second reading).
    stamps = [HOUR_END - 60 + i * 0.01 for i in range(12000)]
    data = _text(stamps)
    watch = StampFloor(io.BytesIO(data), FLOOR)
    while watch.read(size):
        pass
    assert (watch.after, watch.nbytes) == (len(stamps), len(data))


def test_malformed_lines_are_not_taken_for_times() -> None:
    assert _first_hit(b"1999 is not a receive time\n" + _text([CREATED]), [1 << 20]) is None


def test_counted_without_a_search_when_every_line_is_after_the_floor() -> None:
    assert FLOOR is not None
    data = _text([CREATED + 86400 + i for i in range(1000)])
    watch = StampFloor(io.BytesIO(data), FLOOR)
    while watch.read(777):
        pass
    assert (watch.after, watch.nbytes) == (1000, len(data))


@pytest.mark.parametrize("seed", range(20))
def test_reads_into_a_reused_buffer_count_as_reads(seed: int) -> None:
    # The fast path reads into one buffer for the whole segment; what lies past
    # the bytes just read is stale (here: the segment's own lines again, which
    # would be counted twice if looked at). The counts must be those of plain
    # reads of the same sizes.
    assert FLOOR is not None
    rng = random.Random(seed)
    stamps = [CREATED + rng.choice([-90000, 0, 86400]) + i for i in range(rng.randint(1, 200))]
    data = _text(stamps)
    stale = data * (4200 // len(data) + 1)
    sizes = [rng.choice([1, 13, 27, 100, 4096]) for _ in range(len(data))]
    plain = StampFloor(io.BytesIO(data), FLOOR)
    into = StampFloor(io.BytesIO(data), FLOOR)
    got = b""
    for size in sizes:
        plain.read(size)
        start = rng.randrange(64)
        at = rng.randrange(len(stale) - start - size)
        buf = bytearray(stale[at : at + start + size])
        n = into.read_into(buf, start)
        got += buf[start : start + n]
        if n == 0:
            break
    assert got == data
    assert (into.after, into.nbytes) == (plain.after, plain.nbytes)


def test_no_floor_only_reads() -> None:
    data = _text([CREATED - 400 * 86400])
    watch = StampFloor(io.BytesIO(data), None)
    buf = bytearray(len(data) + 5)
    assert watch.read_into(buf, 5) == len(data) and buf[5:] == data
    assert (watch.after, watch.nbytes) == (0, len(data))


def test_stale_bytes_after_the_last_read_do_not_complete_a_line() -> None:
    # The end of a segment read short into a reused buffer whose stale bytes
    # go on like a receive time after the floor: counting them would add a
    # line that is not there (and hide a backdated one).
    assert FLOOR is not None
    data = _text([CREATED - 90000, CREATED + 86400])
    later = format_timestamp(CREATED + 86400)
    watch = StampFloor(io.BytesIO(data), FLOOR)
    assert watch.read_into(bytearray(len(data) - 3), 0) == len(data) - 3
    buf = bytearray(3) + later
    assert watch.read_into(buf, 0) == 3
    assert (watch.after, watch.nbytes) == (1, len(data))
