"""The grammar of a seal line, without the cryptography (floor 1).

A line of a ``.seal`` file (docs/store-format.md) is
``v1 <kind> <qube> <seq> <epoch> <lines> <nbytes> <head> <prev> <mac>``.
:func:`qubes_logvm.core.seal.parse_seal` builds a :class:`~.seal.Seal` from
these fields; a reader that only needs how far a segment is sealed (``logvm
show -n``, :mod:`qubes_logvm.store.tail`) takes :func:`sealed_extent` and
never loads hashlib, hmac or the seal classes.

Trust side: pure; strict, because seal files are read back from a disk an
intruder may have edited (and the reader does not verify them).
"""

import re

from .errors import StoreError

_SEAL_LINE = re.compile(
    r"v1 (open|batch|tick|close|recover|tomb) ([A-Za-z][A-Za-z0-9_.-]{0,30}) "
    r"(0|[1-9][0-9]{0,17}) (0|[1-9][0-9]{0,17}) (0|[1-9][0-9]{0,17}) (0|[1-9][0-9]{0,18}) "
    r"([0-9a-f]{64}) ([0-9a-f]{64}) ([0-9a-f]{64})"
)


def ascii_line(line: bytes, what: str) -> str:
    """A stored line as text; StoreError naming ``what`` when it is not ASCII."""
    try:
        return line.decode("ascii")
    except UnicodeDecodeError as err:
        raise StoreError(f"{what} is not ASCII") from err


def seal_fields(line: bytes) -> tuple[str, ...]:
    """The nine fields of one seal line (without newline); StoreError if malformed."""
    match = _SEAL_LINE.fullmatch(ascii_line(line, "seal line"))
    if match is None:
        raise StoreError("malformed seal line")
    return match.groups()


def sealed_extent(line: bytes) -> tuple[int, int]:
    """``(lines, nbytes)`` of the segment a seal line covers; StoreError if malformed."""
    fields = seal_fields(line)
    return int(fields[4]), int(fields[5])
