"""Where things live in a store (floor 2); see docs/store-format.md.

Trust side: qube names passed in come from qrexec and are validated again
here, so no path can leave the store.
"""

import argparse
import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ..core.errors import InvalidQubeName
from ..core.names import validate_qube_name

DEFAULT_STORE = Path("/var/lib/qubes-logvm")
#: The format a new store is created in (setup_keys, ``logvm setup-keys``;
#: ``--format 1`` for compatibility); store.json says which.
STORE_FORMAT = 2
#: The formats this code reads, writes and verifies (docs/store-format.md).
STORE_FORMATS = (1, 2)


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--store DIR`` option every program reading or writing a store takes."""
    parser.add_argument(
        "--store",
        type=Path,
        default=DEFAULT_STORE,
        help=f"store directory (default {DEFAULT_STORE})",
    )


_SEGMENT_FILE = re.compile(r"([0-9]{8})\.(log|log\.zst|seal)")


class SegmentFiles(NamedTuple):
    """The files of one segment as found on disk (either may be missing)."""

    qube: str
    seq: int
    log: Path | None  # plain or compressed
    seal: Path | None

    @property
    def compressed(self) -> bool:
        """True when the segment has been compressed by rotation."""
        return self.log is not None and self.log.name.endswith(".zst")

    @property
    def name(self) -> str:
        """The segment's name as reports show it (``work/00000003``)."""
        return f"{self.qube}/{self.seq:08d}"


class StoreLayout:
    """Paths of one store."""

    def __init__(self, root: Path | str = DEFAULT_STORE) -> None:
        self.root = Path(root)

    @property
    def store_json(self) -> Path:
        """Store identity and settings."""
        return self.root / "store.json"

    @property
    def state_dir(self) -> Path:
        """Sealing state (the current key) and other collector state."""
        return self.root / "state"

    @property
    def sealkey(self) -> Path:
        """The current epoch and key, overwritten in place."""
        return self.state_dir / "sealkey"

    @property
    def qubes_dir(self) -> Path:
        """Parent of the per-qube directories."""
        return self.root / "qubes"

    def qube_dir(self, qube: str) -> Path:
        """One qube's directory (the name is validated again)."""
        return self.qubes_dir / validate_qube_name(qube)

    def segment_log(self, qube: str, seq: int, *, compressed: bool = False) -> Path:
        """A segment's text file."""
        suffix = ".log.zst" if compressed else ".log"
        return self.qube_dir(qube) / f"{seq:08d}{suffix}"

    def segment_seal(self, qube: str, seq: int) -> Path:
        """A segment's seal file."""
        return self.qube_dir(qube) / f"{seq:08d}.seal"

    def tombstones(self, qube: str) -> Path:
        """Sealed records of segments deleted by rotation."""
        return self.qube_dir(qube) / "tombstones.seal"

    def lock(self, qube: str) -> Path:
        """flock target serialising changes to a qube's chain."""
        return self.qube_dir(qube) / "lock"

    def qubes(self) -> list[str]:
        """Names of the qubes that have a directory, sorted."""
        try:
            entries = os.listdir(self.qubes_dir)
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            try:
                names.append(validate_qube_name(entry))
            except InvalidQubeName:
                continue  # not a qube directory: the verifier reports strays
        return sorted(names)

    def segments(self, qube: str) -> list[SegmentFiles]:
        """A qube's segments in order, pairing text and seal files."""
        found: dict[int, dict[str, Path]] = {}
        try:
            entries = os.listdir(self.qube_dir(qube))
        except FileNotFoundError:
            return []
        for entry in entries:
            match = _SEGMENT_FILE.fullmatch(entry)
            if match:
                found.setdefault(int(match.group(1)), {})[match.group(2)] = (
                    self.qube_dir(qube) / entry
                )
        # Between rename and unlink, compression leaves both copies: the
        # plain one is the original and wins until rotation removes it.
        return [
            SegmentFiles(qube, seq, files.get("log") or files.get("log.zst"), files.get("seal"))
            for seq, files in sorted(found.items())
        ]


@contextlib.contextmanager
def qube_locked(layout: StoreLayout, qube: str) -> Iterator[None]:
    """Hold a qube's flock: the collector (opening, closing, deleting
    segments) and rotation (swapping in a compressed copy) never overlap."""
    layout.qube_dir(qube).mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lock(qube), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
