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


@pytest.mark.parametrize("seed", range(40))
def test_found_wherever_the_reads_cut_the_lines(seed: int) -> None:
    # Days after creation, the creation day itself, just before and after the
    # floor, a midnight, and one backdated record (or none) anywhere.
    rng = random.Random(seed)
    base = rng.choice([CREATED + 3 * 86400, CREATED, CREATED - CREATED_SLACK_SECONDS])
    stamps = sorted(base + rng.uniform(0, 2 * 86400) for _ in range(rng.randint(1, 300)))
    if rng.random() < 0.7:
        stamps.insert(
            rng.randrange(len(stamps) + 1), CREATED - rng.choice([3601, 4000, 86400 * 400])
        )
    data = _text(stamps)
    if rng.random() < 0.3:
        data = data[:-1]  # a last line without newline
    reads = [rng.choice([1, 7, 27, 100, 4096, 1 << 20]) for _ in range(50)]
    assert _first_hit(data, reads) == _expected(stamps)


def test_malformed_lines_are_not_taken_for_times() -> None:
    assert _first_hit(b"1999 is not a receive time\n" + _text([CREATED]), [1 << 20]) is None


def test_counted_without_a_search_when_every_line_is_after_the_floor() -> None:
    assert FLOOR is not None
    data = _text([CREATED + 86400 + i for i in range(1000)])
    watch = StampFloor(io.BytesIO(data), FLOOR)
    while watch.read(777):
        pass
    assert (watch.after, watch.nbytes) == (1000, len(data))
