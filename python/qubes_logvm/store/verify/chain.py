"""Recomputing a segment's chain over its bytes, fed in pieces (floor 2).

Used where a whole segment must match its seals exactly before anything is
changed (rotation checks a compressed copy before it replaces the plain one)
and by the verifier for a compressed copy lying next to its plain original.
Trust side: the seals handed in are the segment's own, already parsed.
"""

from ...core.errors import StoreError
from ...core.seal import ChainHasher, Seal


class ChainMismatch(StoreError):
    """The bytes do not match the seals."""


class ChainCheck:
    """Recompute a segment's chain over its bytes, fed in pieces, against its seals."""

    def __init__(self, name: str, seals: list[Seal]) -> None:
        if not seals or seals[0].kind != "open" or seals[0].nbytes != 0:
            raise ChainMismatch(f"{name}: seal file does not start with an open seal")
        self.name = name
        self.seals = seals
        self.index = 1
        self.pos = 0
        self.hasher = ChainHasher(seals[0].head)
        self._settle()

    def _settle(self) -> None:
        while self.index < len(self.seals) and self.seals[self.index].nbytes <= self.pos:
            seal = self.seals[self.index]
            if seal.nbytes < self.pos:
                raise ChainMismatch(f"{self.name}: seal line {self.index + 1}: nbytes goes back")
            if self.hasher.digest() != seal.head:
                raise ChainMismatch(
                    f"{self.name}: bytes {self.pos} and before do not match "
                    f"seal line {self.index + 1}"
                )
            self.hasher = ChainHasher(seal.head)
            self.index += 1

    def feed(self, data: bytes) -> None:
        """The segment's next bytes."""
        while data:
            if self.index >= len(self.seals):
                raise ChainMismatch(f"{self.name}: bytes after the last seal")
            part = data[: self.seals[self.index].nbytes - self.pos]
            self.hasher.update(part)
            self.pos += len(part)
            data = data[len(part) :]
            self._settle()

    def finish(self) -> None:
        """All bytes were fed: every seal must have been reached."""
        if self.index < len(self.seals):
            raise ChainMismatch(f"{self.name}: {self.pos} bytes, seals cover more")
