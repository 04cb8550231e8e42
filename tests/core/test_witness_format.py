"""The pure rules of the witness: message grammar, checkpoint order, key ladder."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from witness.conftest import KEY0, STORE_ID, line_of, make_seal, register_line

from qubes_logvm.core.errors import ProtocolError, StoreError
from qubes_logvm.core.ratelimit import TokenBucket
from qubes_logvm.core.seal import EpochKeys
from qubes_logvm.core.witness_format import (
    MAX_LINE_BYTES,
    REPLIES,
    Register,
    format_cp_line,
    format_held_line,
    judge_checkpoint,
    parse_cp_line,
    parse_message,
)
from support.keys import key_for_epoch

pytestmark = pytest.mark.inprocess


def test_register_and_seal_parse() -> None:
    assert parse_message(register_line()) == Register(STORE_ID, KEY0)
    created = register_line() + b" 10 2026-12-02T19:00:00Z"
    assert parse_message(created) == Register(STORE_ID, KEY0, 10.0, "2026-12-02T19:00:00Z")
    seal = make_seal(lines=3, nbytes=90, epoch=2)
    assert parse_message(line_of(seal)) == seal


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "malformed"),
        (b"register " + b"0" * 31 + b" " + b"0" * 64, "malformed"),  # short store id
        (b"register " + b"0" * 32 + b" " + b"0" * 64 + b" ", "malformed"),  # trailing space
        (b"register " + b"A" * 32 + b" " + b"0" * 64, "malformed"),  # uppercase hex
        (b"REGISTER " + b"0" * 32 + b" " + b"0" * 64, "malformed"),
        (b"register " + b"0" * 32 + b" " + b"0" * 64 + b" 2026-12-02T19:00:00Z", "malformed"),
        (b"register " + b"0" * 32 + b" " + b"0" * 64 + b" 10 2026-12-02 19:00", "malformed"),
        (b"\x00\xff\x1b[31m", "malformed"),  # binary, terminal escape
        (line_of(make_seal())[:-1], "malformed"),  # MAC one digit short
        (line_of(make_seal()) + b"\r", "malformed"),
        (line_of(make_seal(kind="tomb", lines=1, nbytes=5)), "kind"),
        (b"v1 batch ../../etc 1 0 1 5 " + b"0" * 192 + b"  ", "malformed"),
        (b"v1 batch work 01 0 1 5 " + b" ".join([b"0" * 64] * 3), "malformed"),  # leading 0
        (b"x" * MAX_LINE_BYTES, "too-long"),
    ],
)
def test_bad_messages_refused(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=f"^{reason}$"):
        parse_message(line)
    assert f"err {reason}" in REPLIES


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_message(data)


@pytest.mark.parametrize(
    ("held", "new", "verdict"),
    [
        (None, make_seal(), None),  # first checkpoint of a qube
        (make_seal(lines=2, nbytes=20), make_seal(lines=2, nbytes=20), "seen"),  # heartbeat
        (make_seal(lines=2, nbytes=20), make_seal(lines=3, nbytes=30), None),  # forward
        (make_seal(lines=2, nbytes=20, epoch=1), make_seal(lines=3, nbytes=30), "stale"),
        (make_seal(lines=3, nbytes=30), make_seal(lines=2, nbytes=20), "stale"),  # truncated
        (make_seal(seq=2), make_seal(seq=1, lines=9, nbytes=99), "stale"),  # older segment
        (make_seal(lines=3, nbytes=30, kind="close"), make_seal(lines=4, nbytes=40), "closed"),
        (make_seal(lines=3, nbytes=30), make_seal(seq=2), None),  # next segment
        (make_seal(lines=3, nbytes=30), make_seal(lines=3, nbytes=30, head=b"\1" * 32), None),
        (make_seal(lines=3, nbytes=30), make_seal(lines=4, nbytes=30), "fork"),
        (
            make_seal(lines=3, nbytes=30),
            make_seal(lines=4, nbytes=40, head=(30).to_bytes(32, "big")),
            "fork",
        ),
        (make_seal(lines=3, nbytes=30), make_seal(lines=4, nbytes=40, kind="open"), "fork"),
        (make_seal(lines=3, nbytes=30), make_seal(lines=3, nbytes=30, epoch=1, kind="tick"), None),
    ],
)
def test_judge_checkpoint(held: object, new: object, verdict: str | None) -> None:
    assert judge_checkpoint(held, new) == verdict  # type: ignore[arg-type]


def test_cp_line_round_trip() -> None:
    seal = make_seal(lines=1, nbytes=10)
    stamp = b"2026-11-28T17:58:34.123456Z"
    assert parse_cp_line(format_cp_line(stamp, seal).rstrip(b"\n")) == (stamp, seal)
    with pytest.raises(StoreError):
        parse_cp_line(b"cp yesterday " + line_of(seal))


def test_epoch_keys_match_the_ladder_in_any_order() -> None:
    keys = EpochKeys(KEY0)
    for epoch in (3000, 5, 2048, 1023, 1024, 3001, 0, 4097):
        assert keys.key(epoch) == key_for_epoch(KEY0, epoch)
    assert keys.cost(2500) < EpochKeys.STRIDE  # below the top: bounded work
    assert keys.cost(5000) == 5000 - 4097


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(1, 0.5)
    assert not bucket.take(1, 0.5)
    assert not bucket.take(10, 100.0)  # never more than the burst


def test_the_largest_held_lines_fit_the_witness_storage_bound() -> None:
    # Every number at the grammar's 18 digits, the longest qube name: what the
    # witness's storage bound counts per held tomb and per held retirement.
    from qubes_logvm.core.retire import Retire
    from qubes_logvm.core.tomb import Tomb
    from qubes_logvm.witness.state import CP_LINE_MAX, RET_LINE_MAX

    n, stamp = 10**18 - 1, b"2026-12-03T18:00:00.000000Z"
    tomb = Tomb("tomb", "q" * 31, n, n, n, n, n, n, n, "dispvm", bytes(32), bytes(32))
    retire = Retire(n, tomb.signed(bytes(32)), bytes(32)).signed(bytes(32))
    assert len(format_held_line(stamp, tomb.signed(bytes(32)))) <= CP_LINE_MAX
    assert len(format_held_line(stamp, retire)) <= RET_LINE_MAX
