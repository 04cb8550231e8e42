"""Reversible escaping and line capping (floor 1).

Trust side: the input is untrusted bytes from another qube; the output is
printable UTF-8 that can be shown on a terminal and stored as one line.

Rules (specified in docs/store-format.md):
- printable ASCII and TAB pass through;
- a backslash becomes ``\\\\``;
- valid UTF-8 characters pass through unless they are controls (Cc), format
  characters (Cf: bidi overrides, zero-width), or line/paragraph separators;
- every other byte, and every byte of a refused character, becomes ``\\xHH``
  (lowercase hex).
:func:`unescape` inverts this exactly.
"""

import functools
import re
import unicodedata

# Anything that is not printable ASCII/TAB: either one well-formed UTF-8
# multi-byte character (judged by category) or one byte to escape.
_NEEDS_WORK = re.compile(
    rb"[\x00-\x08\x0a-\x1f\x7f\\]"
    rb"|[\xc2-\xdf][\x80-\xbf]"
    rb"|\xe0[\xa0-\xbf][\x80-\xbf]"
    rb"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}"
    rb"|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}"
    rb"|[\x80-\xff]"
)
_UNESCAPE = re.compile(rb"\\(\\|x[0-9a-f]{2})")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_HEX = [b"\\x%02x" % i for i in range(256)]
#: Below this many bytes :func:`escape` takes the regex pass (fewer steps).
SHORT = 256


def _hex_bytes(data: bytes) -> bytes:
    return b"".join(_HEX[b] for b in data)


def _replace(match: "re.Match[bytes]") -> bytes:
    token = match.group()
    if len(token) == 1:
        return b"\\\\" if token == b"\\" else _HEX[token[0]]
    if unicodedata.category(token.decode("utf-8")) in _REFUSED_CATEGORIES:
        return _hex_bytes(token)
    return token


def _replace_keep_backslash(match: "re.Match[bytes]") -> bytes:
    token = match.group()
    return token if token == b"\\" else _replace(match)


def escape_simple(untrusted: bytes) -> bytes:
    """The definition: one regex pass, a Python call per token to escape.

    The reference the vectorised paths are tested against; the quickest for
    a few bytes, a few MB/s on binary data.
    """
    return _NEEDS_WORK.sub(_replace, untrusted)


class _Lanes:
    """Byte tables of the vectorised path, for one set of bytes that pass as is.

    Each input byte becomes four output bytes, one from each table (lane),
    NUL where it has fewer: ``\\xHH``, ``\\\\``, or the byte and three NULs. A
    byte of a character that passes keeps the byte and three NULs whatever
    the tables say. NUL is never in the output (it is escaped), so deleting
    the NULs leaves the escaped text.
    """

    def __init__(self, passing: bytes) -> None:
        self.passing = passing
        self.passing_text = passing + bytes(range(0x80, 0x100))  # in well-formed text
        keep = frozenset(passing)
        digits = b"0123456789abcdef"
        self.tables = (
            bytes(b if b in keep else 0x5C for b in range(256)),
            bytes(0 if b in keep else 0x5C if b == 0x5C else 0x78 for b in range(256)),
            bytes(0 if b in keep or b == 0x5C else digits[b >> 4] for b in range(256)),
            bytes(0 if b in keep or b == 0x5C else digits[b & 15] for b in range(256)),
        )


_PRINTABLE = bytes(range(0x20, 0x7F)).replace(b"\\", b"")
_LINE = _Lanes(b"\t" + _PRINTABLE)
_BLOCK = _Lanes(b"\t\n" + _PRINTABLE)  # lines escaped at once: the newline passes
# The bytes terminal_safe leaves as they are in ASCII text: TAB and printable ASCII.
_TERMINAL_PLAIN = b"\t" + bytes(range(0x20, 0x7F))
# Bytes of the multi-byte characters that pass become 0xFF, all others NUL.
_HIGH_MARKED = bytes(0x80) + b"\xff" * 0x80


def _byte_class(data: bytes) -> bytes:
    return b"".join(b"\\x%02x" % b for b in data)


#: The planes holding every refused character of this Python's Unicode
#: (controls, format characters, separators): the basic plane, the
#: supplementary multilingual one, the tags (a test checks all the others).
REFUSED_PLANES = (0, 1, 14)


def refused_codes(planes: "tuple[int, ...] | range") -> list[int]:
    """Code points above ASCII in ``planes`` whose category is refused."""
    return [
        code
        for plane in planes
        for code in range(max(plane << 16, 0x80), (plane + 1) << 16)
        if not 0xD800 <= code < 0xE000  # surrogates: not UTF-8 at all
        and unicodedata.category(chr(code)) in _REFUSED_CATEGORIES
    ]


@functools.cache
def _refused_characters() -> list[tuple["re.Pattern[bytes]", bytes, tuple[bytes, ...]]]:
    """Patterns of the refused multi-byte characters, by length, each with a
    fill of as many ``?`` and the lead bytes it starts with (a pattern is
    searched only where one of them occurs: ``in`` is much quicker than the
    pattern's search); built on first use (~25 ms)."""
    by_prefix: dict[bytes, list[int]] = {}
    for code in refused_codes(REFUSED_PLANES):
        raw = chr(code).encode()
        by_prefix.setdefault(raw[:-1], []).append(raw[-1])
    by_length: dict[int, list[bytes]] = {}
    for prefix, last in by_prefix.items():
        alternative = _byte_class(prefix) + b"[" + _byte_class(bytes(last)) + b"]"
        by_length.setdefault(len(prefix) + 1, []).append(alternative)
    return [
        (
            re.compile(b"|".join(alts)),
            b"?" * n,
            tuple(sorted({bytes(prefix[:1]) for prefix in by_prefix if len(prefix) + 1 == n})),
        )
        for n, alts in sorted(by_length.items())
    ]


def _refused_may_be_in(data: bytes, leads: tuple[bytes, ...]) -> bool:
    return any(lead in data for lead in leads)


def _passing_mask(untrusted: bytes) -> bytes:
    """0xFF for each byte of a multi-byte character that passes, NUL elsewhere.

    The codecs find the characters: every byte that is in none becomes one
    surrogate, then one ``?``, so the marked copy has the input's length and
    a byte >= 0x80 only inside a well-formed character. Refused characters
    are then marked ``?`` too (a lead byte is never a continuation byte, so
    their patterns match only whole characters).
    """
    text = untrusted.decode("utf-8", "surrogateescape")
    marked = text.encode("utf-8", "replace")
    for pattern, fill, leads in _refused_characters():
        if _refused_may_be_in(marked, leads):
            marked = pattern.sub(fill, marked)
    return marked.translate(_HIGH_MARKED)


def _escape_lanes(untrusted: bytes, lanes: _Lanes) -> bytes:
    """Escape any bytes with C-level passes only (no Python call per token).

    Per-byte selection between the tables' lanes and the input is done on
    the bytes as big integers (``&``, ``|``).
    """
    size = len(untrusted)
    keep = int.from_bytes(_passing_mask(untrusted), "little")
    drop = ~keep
    out = bytearray(4 * size)
    for index, table in enumerate(lanes.tables):
        lane = int.from_bytes(untrusted.translate(table), "little") & drop
        if index == 0:
            lane |= int.from_bytes(untrusted, "little") & keep
        out[index::4] = lane.to_bytes(size, "little")
    return bytes(out.translate(None, b"\0"))


def _escape_text(untrusted: bytes, lanes: _Lanes) -> bytes | None:
    """Well-formed UTF-8 without a refused character (most non-ASCII text):
    only ASCII bytes to escape, as in ASCII text; None for anything else."""
    try:
        untrusted.decode("utf-8")
    except UnicodeDecodeError:
        return None
    for pattern, _, leads in _refused_characters():
        if _refused_may_be_in(untrusted, leads) and pattern.search(untrusted):
            return None
    return _escape_ascii(untrusted, lanes.passing_text)


def _escape_ascii(untrusted: bytes, passing: bytes) -> bytes:
    """Bytes where only ASCII ones need escaping: one ``replace`` per distinct
    byte to escape (an ASCII byte is never inside a multi-byte character)."""
    found = set(untrusted.translate(None, passing))
    if not found:
        return untrusted
    # The backslash first: the other replacements introduce backslashes.
    if 0x5C in found:
        found.discard(0x5C)
        untrusted = untrusted.replace(b"\\", b"\\\\")
    for byte in found:
        untrusted = untrusted.replace(bytes((byte,)), _HEX[byte])
    return untrusted


def escape(untrusted: bytes) -> bytes:
    """Escape one line's bytes reversibly into printable UTF-8."""
    if len(untrusted) < SHORT:
        return escape_simple(untrusted)
    if untrusted.isascii():
        return _escape_ascii(untrusted, _LINE.passing)
    text = _escape_text(untrusted, _LINE)
    return _escape_lanes(untrusted, _LINE) if text is None else text


def escape_block(untrusted: bytes) -> bytes:
    """Escape ``\\n``-separated lines at once; equals escaping each line and rejoining.

    A newline is never part of a multi-byte token, so no token spans two
    lines. Pure-ASCII blocks (most logs) take a path without a Python call per
    escaped byte: one ``replace`` per distinct byte to escape, and so do
    well-formed UTF-8 blocks without a refused character; other blocks take
    the lanes (:class:`_Lanes`), also without one.
    """
    if untrusted.isascii():
        return _escape_ascii(untrusted, _BLOCK.passing)
    text = _escape_text(untrusted, _BLOCK)
    return _escape_lanes(untrusted, _BLOCK) if text is None else text


def needs_escaping(data: bytes) -> bool:
    """Fast C-level pre-check: False guarantees :func:`escape` leaves ``data`` as is.

    True means there is a backslash, a control or non-ASCII byte to look at
    (well-formed printable UTF-8 then passes through unchanged).
    """
    return _NEEDS_WORK.search(data) is not None


def unescape(escaped: bytes) -> bytes:
    """Invert :func:`escape`."""
    if b"\\" not in escaped:  # most fields: no escape in them (a C-level scan)
        return escaped
    return _UNESCAPE.sub(
        lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]), escaped
    )


def terminal_safe(data: bytes) -> bytes:
    """Make already-stored text safe for a terminal, keeping backslashes.

    Stored text is escaped at ingest, but a reader must not trust the disk
    (an intruder may have written raw escape sequences there), so every
    display path passes through this.
    """
    # Printable ASCII (most log text) passes as is: a C-level check first.
    if data.isascii() and not data.translate(None, _TERMINAL_PLAIN):
        return data
    return _NEEDS_WORK.sub(_replace_keep_backslash, data)


def cap(untrusted: bytes, max_bytes: int) -> tuple[bytes, int]:
    """Cut a raw line to ``max_bytes``; return the kept part and bytes cut."""
    if len(untrusted) <= max_bytes:
        return untrusted, 0
    return untrusted[:max_bytes], len(untrusted) - max_bytes
