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


def escape(untrusted: bytes) -> bytes:
    """Escape one line's bytes reversibly into printable UTF-8."""
    return _NEEDS_WORK.sub(_replace, untrusted)


# The same tokens without the newline, for blocks of lines escaped at once.
_NEEDS_WORK_BLOCK = re.compile(_NEEDS_WORK.pattern.replace(rb"\x0a-\x1f", rb"\x0b-\x1f"))
# Printable ASCII without the backslash, TAB and newline: bytes that pass as is.
_PLAIN_ASCII = b"\t\n" + bytes(range(0x20, 0x7F)).replace(b"\\", b"")
# The bytes terminal_safe leaves as they are in ASCII text: TAB and printable ASCII.
_TERMINAL_PLAIN = b"\t" + bytes(range(0x20, 0x7F))


def escape_block(untrusted: bytes) -> bytes:
    """Escape ``\\n``-separated lines at once; equals escaping each line and rejoining.

    A newline is never part of a multi-byte token, so no token spans two
    lines. Pure-ASCII blocks (most logs) take a path without a Python call per
    escaped byte: one ``replace`` per distinct byte to escape.
    """
    if not untrusted.isascii():
        return _NEEDS_WORK_BLOCK.sub(_replace, untrusted)
    found = set(untrusted.translate(None, _PLAIN_ASCII))
    if not found:
        return untrusted
    # The backslash first: the other replacements introduce backslashes.
    if 0x5C in found:
        found.discard(0x5C)
        untrusted = untrusted.replace(b"\\", b"\\\\")
    for byte in found:
        untrusted = untrusted.replace(bytes((byte,)), _HEX[byte])
    return untrusted


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
