"""Retire lines: a fully deleted qube's directory removed, sealed (floor 1).

Format (docs/store-format.md, "Retired qubes")::

    r1 retire <epoch> <tomb line> <prev> <mac>

one line, space-separated, in the store-wide file ``state/retired.seal``.
``epoch`` is the epoch of the retirement; ``<tomb line>`` is the qube's
newest tombstone line as its ``tombstones.seal`` held it (``t1 ...``, MAC
and all: the deletion of its last segment, sealed in an earlier epoch under
that epoch's key, so its final chain head and totals, the qube's epoch-seal
leaf); ``prev`` is the MAC of the file's line before (zeros for the first);
``mac`` = HMAC-SHA256(``K[epoch]``, ``"logvm-retire-v1\\0"`` || the line up
to the space before ``mac``).

Trust side: parsed strictly; the file is read back from a disk an intruder
may have edited, and retire lines reach the witness from the LogVM.
"""

import hmac
import re
from dataclasses import dataclass, replace

from .epochseal import Leaf
from .errors import StoreError
from .seal import ZERO, line_mac
from .seal_line import ascii_line
from .tomb import Tomb, parse_tomb

RETIRE_DOMAIN = b"logvm-retire-v1\0"
_RETIRE_LINE = re.compile(r"r1 retire (0|[1-9][0-9]{0,17}) (t1 .+) ([0-9a-f]{64}) ([0-9a-f]{64})")


@dataclass(frozen=True)
class Retire:
    """One line of ``state/retired.seal``."""

    epoch: int
    tomb: Tomb  # the qube's newest tomb (its own MAC, under K[tomb.epoch])
    prev: bytes
    mac: bytes = ZERO

    @property
    def qube(self) -> str:
        """The retired qube."""
        return self.tomb.qube

    def body(self) -> bytes:
        """The MACed part of the line."""
        tomb = self.tomb.to_line().rstrip(b"\n")
        return b"r1 retire %d %s %s" % (self.epoch, tomb, self.prev.hex().encode("ascii"))

    def to_line(self) -> bytes:
        """The line as stored, newline included."""
        return self.body() + b" " + self.mac.hex().encode("ascii") + b"\n"

    def signed(self, key: bytes) -> "Retire":
        """This line with its MAC computed under ``key`` (``K[epoch]``)."""
        return replace(self, mac=line_mac(RETIRE_DOMAIN, key, self.body()))

    def mac_ok(self, key: bytes) -> bool:
        """Constant-time check of the line's own MAC under ``key`` (not the tomb's)."""
        return hmac.compare_digest(self.mac, line_mac(RETIRE_DOMAIN, key, self.body()))

    @property
    def leaf(self) -> Leaf:
        """The qube's epoch-seal leaf when it was retired (its newest tomb's)."""
        tomb = self.tomb
        return Leaf(tomb.qube, tomb.last, tomb.records, tomb.nbytes, tomb.head)


def parse_retire(line: bytes) -> Retire:
    """Parse an ``r1 retire`` line (without newline); StoreError if malformed."""
    match = _RETIRE_LINE.fullmatch(ascii_line(line, "retire line"))
    if match is None:
        raise StoreError("malformed retire line")
    epoch, tomb, prev, mac = match.groups()
    return Retire(
        int(epoch), parse_tomb(tomb.encode("ascii")), bytes.fromhex(prev), bytes.fromhex(mac)
    )
