"""Store-wide epoch seals of format 2 (floor 1).

One line per epoch, written by the collector at the end of epoch ``e`` with
``K[e]`` before the key evolves (docs/store-format.md, "Version 2")::

    v2 epoch <e> <qubes> <root> <prev> <mac>
    v2 gap <e> <first> <last> <prev> <mac>

``root`` is a Merkle root over every chain's sealed state at the end of the
epoch: one leaf per qube that has a seal or a tomb, sorted by name, holding
(qube, seq, lines, nbytes, head) of the qube's newest seal (of its newest
tomb when no segment is left). A ``gap`` line, sealed in epoch ``e`` when
writing works again, says epochs ``first..last`` were not sealed store-wide
(the file could not be written). ``prev`` is the MAC of the line before in
the file, ``mac`` = HMAC-SHA256(``K[e]``, ``"logvm-epoch-v2\\0"`` || the line
up to the space before ``mac``).

Trust side: pure functions, strict parsing (the file is read back from a
disk an intruder may have edited).
"""

import hashlib
import re
from dataclasses import dataclass
from typing import ClassVar

from .errors import StoreError
from .seal import ZERO, MacLine
from .seal_line import ascii_line

EPOCH_DOMAIN = b"logvm-epoch-v2\0"
_LEAF, _NODE, _EMPTY = b"\x00", b"\x01", b"\x02"
_NUM = r"(0|[1-9][0-9]{0,17})"
_HEX = r"([0-9a-f]{64})"


@dataclass(frozen=True)
class Leaf:
    """One chain's sealed state."""

    qube: str
    seq: int
    lines: int
    nbytes: int
    head: bytes

    def digest(self) -> bytes:
        """The leaf's hash in the tree."""
        text = f"{self.qube}\0{self.seq} {self.lines} {self.nbytes} ".encode("ascii")
        return hashlib.sha256(EPOCH_DOMAIN + _LEAF + text + self.head).digest()

    def to_line(self) -> str:
        """The leaf as the sidecar file lists it."""
        return f"{self.qube} {self.seq} {self.lines} {self.nbytes} {self.head.hex()}"


def merkle_root(digests: list[bytes]) -> bytes:
    """The root over leaf hashes in name order (an odd last node is carried up)."""
    if not digests:
        return hashlib.sha256(EPOCH_DOMAIN + _EMPTY).digest()
    level = digests
    while len(level) > 1:
        paired = [
            hashlib.sha256(EPOCH_DOMAIN + _NODE + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def root_of(leaves: list[Leaf]) -> bytes:
    """The root of a set of leaves (any order)."""
    return merkle_root([leaf.digest() for leaf in sorted(leaves, key=lambda leaf: leaf.qube)])


@dataclass(frozen=True)
class EpochLine(MacLine):
    """One line of the store-wide epoch file.

    ``kind`` "epoch": ``a`` = qubes, ``root`` the Merkle root; "gap":
    ``a``..``b`` the epochs not sealed, ``root`` unused (zeros).
    """

    DOMAIN: ClassVar[bytes] = EPOCH_DOMAIN
    kind: str
    epoch: int
    a: int
    b: int
    root: bytes
    prev: bytes
    mac: bytes = ZERO

    def body(self) -> bytes:
        """The MACed part: the line without its final field."""
        if self.kind == "epoch":
            fields = f"{self.epoch} {self.a} {self.root.hex()}"
        else:
            fields = f"{self.epoch} {self.a} {self.b}"
        return f"v2 {self.kind} {fields} {self.prev.hex()}".encode("ascii")


_EPOCH_RE = re.compile(rf"v2 epoch {_NUM} {_NUM} {_HEX} {_HEX} {_HEX}")
_GAP_RE = re.compile(rf"v2 gap {_NUM} {_NUM} {_NUM} {_HEX} {_HEX}")


def parse_epoch_line(line: bytes) -> EpochLine:
    """Parse one line (without newline); StoreError if malformed."""
    text = ascii_line(line, "epoch line")
    match = _EPOCH_RE.fullmatch(text)
    if match is not None:
        e, n, root, prev, mac = match.groups()
        return EpochLine(
            "epoch",
            int(e),
            int(n),
            0,
            bytes.fromhex(root),
            bytes.fromhex(prev),
            bytes.fromhex(mac),
        )
    match = _GAP_RE.fullmatch(text)
    if match is None:
        raise StoreError("malformed epoch line")
    e, first, last, prev, mac = match.groups()
    if not int(first) <= int(last) < int(e):
        raise StoreError("gap line: epochs out of order")
    return EpochLine(
        "gap", int(e), int(first), int(last), ZERO, bytes.fromhex(prev), bytes.fromhex(mac)
    )
