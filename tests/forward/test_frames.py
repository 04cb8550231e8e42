"""The forwarder's fast record frames equal the reference encoding, byte for byte.

``RecordFramer.frame`` builds a record's RFC 5425 frame from the stored line
with bytes operations; ``encode(record_message(...))`` is the one definition
that ``logvm verify --forwarded`` reads back. Any stored line, exporter
formatted or not, must give the same bytes through both.
"""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubes_logvm.core.syslog5424 import RecordFramer, decode_line, encode, record_message

pytestmark = [pytest.mark.inprocess]
STAMP = b"2026-12-01T10:00:00.123456Z"
FIELDS = {"store": "abc123", "qube": "work", "seg": "7"}
CASES = [
    STAMP + b" L 2026-12-01T10:00:00+00:00 work info cron.service CRON[1234]: hello",
    STAMP + b" L 2026-12-01T10:00:00+00:00 work err - sshd[0042]: leading zeros",
    STAMP + b" L t h - u app: no pid, unknown priority",
    STAMP + b" L t h debug u " + b"x" * 60 + b": a long APP-NAME",
    STAMP + b" L t h info u a\\x20b[1]: an escaped ident",
    STAMP + b" L t h info u gr\xc3\xbc\xc3\x9fe[1]: a non-ASCII ident",
    STAMP + b" L free text that is no exporter record",
    STAMP + b" P a partial line",
    STAMP + b" C segment-start session=s1 boot=b1",
    STAMP + b" L",
    STAMP + b" L ",
    STAMP + b' L t h info u app[1]: quotes " and ] and \\\\ in MSG',
]


def _reference(raw: bytes, line: int, session: str) -> bytes:
    message = record_message(raw, line, FIELDS, session)
    return encode(replace(message, hostname="qubes-host", pen=32473), facility=16)


@pytest.mark.parametrize("raw", CASES)
@pytest.mark.parametrize("session", ["", "s1", 'odd"]\\'])
def test_frame_equals_reference(raw: bytes, session: str) -> None:
    framer = RecordFramer("qubes-host", 32473, 16, FIELDS)
    framer.set_session(session)
    frame = framer.frame(raw, 418)
    assert frame == _reference(raw, 418, session)
    length, _, body = frame.partition(b" ")
    assert int(length) == len(body)
    decoded = decode_line(body)
    assert decoded is not None and decoded.fields["line"] == "418"


_TEXT = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b" "))
_PAYLOAD = st.one_of(
    _TEXT,
    st.builds(
        lambda sev, ident, pid, msg: b"t h %s u %s%s: %s" % (sev, ident, pid, msg),
        st.sampled_from([b"info", b"err", b"-", b"bogus"]),
        st.binary(min_size=1, max_size=60).filter(lambda b: not set(b) & set(b" []:\n")),
        st.sampled_from([b"", b"[1]", b"[007]", b"[0]", b"[12345678901]"]),
        _TEXT,
    ),
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([b"L", b"P", b"C"]), payload=_PAYLOAD)
def test_frame_equals_reference_for_any_line(kind: bytes, payload: bytes) -> None:
    raw = STAMP + b" " + kind + b" " + payload
    framer = RecordFramer("qubes-host", 32473, 16, FIELDS)
    assert framer.frame(raw, 1) == _reference(raw, 1, "")
