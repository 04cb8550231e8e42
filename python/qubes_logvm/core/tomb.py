"""Tombstone lines: what a deletion leaves, sealed (floor 1).

Format (docs/store-format.md, "Tombstones")::

    t1 <kind> <qube> <first> <last> <epoch> <close_epoch> <records> <nbytes> <size>
       <reason> <head> <prev> <mac>

one line, space-separated. ``kind`` is ``tomb`` (one deleted segment,
``first`` = ``last``) or ``summary`` (what compaction replaced: segments
``first..last``, their totals). ``epoch`` is the epoch of the deletion (or
compaction), ``close_epoch`` the epoch of the deleted segment's final seal
(of the newest one for a summary), ``records``/``nbytes`` the segment's
sealed totals, ``size`` the bytes it held on disk (text, compressed or not,
plus seal file), ``reason`` why it went (:data:`REASONS`), ``head`` the
chain head after it, ``prev`` the MAC of the previous line of the file
(zeros for the first), and ``mac`` = HMAC-SHA256(``K[epoch]``,
``"logvm-tomb-v1\\0"`` || the line up to the space before ``mac``).

Version-1 stores have ``v1 tomb ...`` seal lines instead (no reason, close
epoch or size); :func:`parse_tomb` reads both, :meth:`Tomb.mac_ok` checks
each under its own domain.

Trust side: parsed strictly; tombstone files are read back from a disk an
intruder may have edited, and tomb lines reach the witness from the LogVM.
"""

import hmac
import re
from dataclasses import dataclass, replace

from .errors import StoreError
from .seal import ZERO, Seal, line_mac, parse_seal, seal_mac
from .seal_line import ascii_line

TOMB_DOMAIN = b"logvm-tomb-v1\0"
#: Why a segment was deleted (the rules of store/retention.py and the quota).
REASONS = ("quota", "age", "global", "dispvm", "compacted", "unknown")
_NUM = r"(0|[1-9][0-9]{0,17})"
_TOMB_LINE = re.compile(
    r"t1 (tomb|summary) ([A-Za-z][A-Za-z0-9_.-]{0,30}) "
    + " ".join([_NUM] * 7)
    + r" ("
    + "|".join(REASONS)
    + r") ([0-9a-f]{64}) ([0-9a-f]{64}) ([0-9a-f]{64})"
)


@dataclass(frozen=True)
class Tomb:
    """One line of a qube's tombstone file (``version`` 1: a ``v1 tomb`` seal line)."""

    kind: str  # "tomb" | "summary"
    qube: str
    first: int
    last: int
    epoch: int
    close_epoch: int  # 0: not recorded (version 1)
    records: int
    nbytes: int
    size: int  # 0: not recorded (version 1)
    reason: str
    head: bytes
    prev: bytes
    mac: bytes = ZERO
    version: int = 2

    def body(self) -> bytes:
        """The MACed part of a ``t1`` line."""
        return (
            f"t1 {self.kind} {self.qube} {self.first} {self.last} {self.epoch} "
            f"{self.close_epoch} {self.records} {self.nbytes} {self.size} {self.reason} "
            f"{self.head.hex()} {self.prev.hex()}"
        ).encode("ascii")

    def as_seal(self) -> Seal:
        """The version-1 seal line this tomb was read from."""
        return Seal(
            "tomb",
            self.qube,
            self.last,
            self.epoch,
            self.records,
            self.nbytes,
            self.head,
            self.prev,
            self.mac,
        )

    def to_line(self) -> bytes:
        """The line as stored, newline included."""
        if self.version == 1:
            return self.as_seal().to_line()
        return self.body() + b" " + self.mac.hex().encode("ascii") + b"\n"

    def signed(self, key: bytes) -> "Tomb":
        """This tomb with its MAC computed under ``key`` (version 2 only)."""
        return replace(self, mac=tomb_mac(key, self.body()), version=2)

    def mac_ok(self, key: bytes) -> bool:
        """Constant-time check of the MAC under ``key``."""
        if self.version == 1:
            expected = seal_mac(key, self.as_seal().body())
        else:
            expected = tomb_mac(key, self.body())
        return hmac.compare_digest(self.mac, expected)

    @property
    def segments(self) -> int:
        """How many segments the line stands for."""
        return self.last - self.first + 1


def tomb_mac(key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of a tomb body under an epoch key."""
    return line_mac(TOMB_DOMAIN, key, body)


def parse_tomb(line: bytes) -> Tomb:
    """Parse a ``t1`` line or a version-1 ``v1 tomb`` line (without newline)."""
    if line.startswith(b"v1 "):
        seal = parse_seal(line)
        if seal.kind != "tomb":
            raise StoreError("not a tombstone line")
        return Tomb(
            "tomb",
            seal.qube,
            seal.seq,
            seal.seq,
            seal.epoch,
            0,
            seal.lines,
            seal.nbytes,
            0,
            "unknown",
            seal.head,
            seal.prev,
            seal.mac,
            version=1,
        )
    text = ascii_line(line, "tombstone line")
    match = _TOMB_LINE.fullmatch(text)
    if match is None:
        raise StoreError("malformed tombstone line")
    g = match.groups()
    first, last = int(g[2]), int(g[3])
    if first < 1 or last < first or (g[0] == "tomb" and first != last):
        raise StoreError("tombstone line: bad segment range")
    return Tomb(
        g[0],
        g[1],
        first,
        last,
        int(g[4]),
        int(g[5]),
        int(g[6]),
        int(g[7]),
        int(g[8]),
        g[9],
        bytes.fromhex(g[10]),
        bytes.fromhex(g[11]),
        bytes.fromhex(g[12]),
    )
