"""Retire lines: round trip, MAC domain, strict parsing."""

import hashlib
import hmac

import pytest

from qubes_logvm.core.errors import StoreError
from qubes_logvm.core.retire import RETIRE_DOMAIN, Retire, parse_retire
from qubes_logvm.core.seal import ZERO
from qubes_logvm.core.tomb import Tomb

KEY = bytes(range(32))
TOMB = Tomb(
    "tomb", "disp42", 3, 3, 7, 6, 10, 500, 900, "dispvm", b"\x11" * 32, ZERO
).signed(b"\x22" * 32)  # fmt: skip


def test_round_trip_and_known_mac() -> None:
    line = Retire(9, TOMB, ZERO).signed(KEY)
    raw = line.to_line()
    assert raw.startswith(b"r1 retire 9 t1 tomb disp42 3 3 7 6 10 500 900 dispvm ")
    body = raw.rsplit(b" ", 1)[0]
    assert line.mac == hmac.new(KEY, RETIRE_DOMAIN + body, hashlib.sha256).digest()
    parsed = parse_retire(raw.rstrip(b"\n"))
    assert parsed == line and parsed.mac_ok(KEY) and parsed.qube == "disp42"
    assert parsed.leaf.seq == 3 and parsed.leaf.lines == 10 and parsed.leaf.head == TOMB.head


def test_edited_line_fails_its_mac() -> None:
    raw = Retire(9, TOMB, ZERO).signed(KEY).to_line().rstrip(b"\n")
    edited = parse_retire(raw.replace(b"r1 retire 9 ", b"r1 retire 8 "))
    assert not edited.mac_ok(KEY)


@pytest.mark.parametrize(
    "raw",
    [
        b"r1 retire 9 " + b"x" * 10,  # no tomb line
        b"r1 retire 09 " + TOMB.to_line().rstrip(b"\n") + b" " + b"0" * 64 + b" " + b"0" * 64,
        b"r1 retire 9 v1 tomb disp42 3 7 10 500 " + b"0" * 64 * 3,  # not a t1 line
    ],
)
def test_malformed_lines_are_refused(raw: bytes) -> None:
    with pytest.raises(StoreError):
        parse_retire(raw)
