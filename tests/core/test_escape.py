"""Reversible escaping: hostile bytes never reach the store raw."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubes_logvm.core import escape as escape_module
from qubes_logvm.core.escape import (
    REFUSED_PLANES,
    SHORT,
    cap,
    escape,
    escape_block,
    escape_simple,
    needs_escaping,
    refused_codes,
    terminal_safe,
    unescape,
)

pytestmark = pytest.mark.inprocess

_RAW_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (b"plain text\tand tab", b"plain text\tand tab"),  # printable ASCII and TAB kept
        (b"back\\slash", b"back\\\\slash"),  # backslash doubled so it stays reversible
        (b"\x1b[31mred", b"\\x1b[31mred"),  # ESC: terminal escape neutralised
        (b"nul\x00byte", b"nul\\x00byte"),
        (b"cr\rlf\n", b"cr\\x0dlf\\x0a"),  # embedded line breaks cannot split a record
        (b"del\x7f", b"del\\x7f"),
        ("caf\u00e9 \u65e5\u672c".encode(), "caf\u00e9 \u65e5\u672c".encode()),  # UTF-8 kept
        (b"\xc2\x9b2J", b"\\xc2\\x9b2J"),  # C1 CSI as UTF-8: a control, escaped
        ("a\u202eb".encode(), b"a\\xe2\\x80\\xaeb"),  # bidi override (Cf)
        ("x\u2028y".encode(), b"x\\xe2\\x80\\xa8y"),  # line separator (Zl)
        (b"bad\xff\xfe", b"bad\\xff\\xfe"),  # invalid UTF-8
        (b"\xed\xa0\x80", b"\\xed\\xa0\\x80"),  # encoded surrogate is invalid UTF-8
        (b"\xc0\xaf", b"\\xc0\\xaf"),  # overlong encoding
        (b"\xe2\x82", b"\\xe2\\x82"),  # truncated sequence
    ],
)
def test_escape_known_cases(raw: bytes, stored: bytes) -> None:
    assert escape(raw) == stored
    assert unescape(stored) == raw
    if raw != stored:
        assert needs_escaping(raw)  # the fast pre-check never misses work


@given(st.binary(max_size=512))
def test_escape_round_trips_and_is_printable(raw: bytes) -> None:
    stored = escape(raw)
    assert unescape(stored) == raw
    assert not _RAW_CONTROL.search(stored)
    text = stored.decode("utf-8")  # always valid UTF-8
    assert "\n" not in text


@given(st.text(max_size=200))
def test_escape_of_text_round_trips(text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    assert unescape(escape(raw)) == raw


def test_fast_check_passes_plain_ascii() -> None:
    assert not needs_escaping(b"Nov 28 17:58:34 host sshd[1]: ok\t=1")


def test_terminal_safe_keeps_backslashes_but_not_escapes() -> None:
    assert terminal_safe(b"a\\x1b b\x1b[2J") == b"a\\x1b b\\x1b[2J"


def test_cap_reports_bytes_cut() -> None:
    assert cap(b"abcdef", 4) == (b"abcd", 2)
    assert cap(b"abc", 4) == (b"abc", 0)


# Any bytes, and ASCII mixes that reach the fast paths' edges (TAB, DEL, "\\").
_EDGES = st.binary(max_size=200) | st.lists(
    st.sampled_from([b"a", b" ", b"~", b"\t", b"\x7f", b"\x1f", b"\\", b"\\x1b", b"\\\\"])
).map(b"".join)


@given(_EDGES)
def test_fast_paths_equal_the_full_substitution(data: bytes) -> None:
    # terminal_safe and unescape skip the regex when a C-level scan finds
    # nothing to do: the result is the regex's, byte for byte.
    full_safe = escape_module._NEEDS_WORK.sub(escape_module._replace_keep_backslash, data)
    assert terminal_safe(data) == full_safe
    full = re.sub(
        rb"\\(\\|x[0-9a-f]{2})",
        lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]),
        data,
    )
    assert unescape(data) == full


# Pieces the vectorised paths must judge exactly as the definition does:
# passing and refused characters of every length, broken ones, the bytes
# each path treats apart (backslash, newline, NUL, 0xFE/0xFF, '?').
_TOKENS = [
    *(c.encode() for c in "é日😀\u0378\U0010ffff"),  # pass (U+0378 is unassigned: passes)
    *(
        c.encode() for c in "\u0085\u00ad\u200b\u202e\u2028\u2029\ufeff\U0001d173\U000e0001"
    ),  # refused
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xc0\xaf",  # overlong
    b"\xe6\x97",  # truncated
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\\",
    b"\n",
    b"\r",
    b"\x00",
    b"\x7f",
    b"\xfe",
    b"\xff",
    b"?",
    b"a",
]
_MIXED = st.lists(st.one_of(st.binary(max_size=3), st.sampled_from(_TOKENS)), max_size=200).map(
    b"".join
)


@settings(deadline=None)  # the first call builds the refused characters' patterns
@given(_MIXED)
def test_fast_paths_equal_the_definition(raw: bytes) -> None:
    # Long enough for escape's vectorised paths (ASCII or lanes).
    padded = raw + b"." * SHORT
    assert escape(padded) == escape_simple(padded)
    assert escape(raw) == escape_simple(raw)
    assert escape_block(raw) == b"\n".join(escape_simple(line) for line in raw.split(b"\n"))


@settings(deadline=None)
@given(st.binary(min_size=SHORT, max_size=4 * SHORT))
def test_fast_paths_equal_the_definition_on_random_bytes(raw: bytes) -> None:
    assert escape(raw) == escape_simple(raw)
    assert escape_block(raw) == b"\n".join(escape_simple(line) for line in raw.split(b"\n"))


def test_every_refused_character_is_in_the_planes_searched() -> None:
    # The lanes path finds refused characters only in REFUSED_PLANES.
    others = tuple(p for p in range(17) if p not in REFUSED_PLANES)
    assert refused_codes(others) == []


@given(st.text(max_size=300))
def test_text_paths_equal_the_definition(text: str) -> None:
    # Well-formed UTF-8 (refused characters in it or not) and, through
    # surrogatepass, text with encoded surrogates (not well-formed).
    for raw in (text.encode(), text.encode("utf-8", "surrogatepass")):
        padded = raw + "é".encode() * SHORT
        assert escape(padded) == escape_simple(padded)
        assert escape_block(raw) == b"\n".join(escape_simple(line) for line in raw.split(b"\n"))
