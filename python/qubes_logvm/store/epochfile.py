"""The store-wide epoch file of format 2: the collector's side (floor 2).

``state/epochs.seal`` gets one :class:`~..core.epochseal.EpochLine` per
epoch, written by :meth:`Store.tick` with ``K[e]`` before the key evolves;
``state/epoch-leaves`` lists the leaves of the newest line (rewritten only
when they changed) so a verifier can name the qube that differs. Both are
described in docs/store-format.md ("Version 2").

The file stays small: past :data:`MAX_LINES` lines it is rewritten
(tmp + fsync + rename) to its newest :data:`KEEP` lines. Older lines are not
needed: each line commits to every chain's newest seal, and later chain
seals cover every earlier byte, so the newest line covers all the older
ones did.

Trust side: runs in the LogVM inside the collector; leaves are kept in
memory (updated on every seal), never rebuilt from disk per epoch.
"""

import contextlib
import logging
import os
from pathlib import Path

from ..core.epochseal import EpochLine, Leaf, merkle_root, parse_epoch_line
from ..core.errors import StoreError
from ..core.faults import fail_point
from ..core.seal import ZERO, Seal
from ..core.tomb import Tomb
from ..daemon_support import fsync_dir
from .files import read_regular
from .keystate import KeyState
from .layout import StoreLayout
from .sealfile import last_seal_line
from .tombstones import read_tomb_file

log = logging.getLogger(__name__)

MAX_LINES = 64
KEEP = 2
#: Most bytes of the epoch file the collector or verifier reads.
MAX_EPOCH_FILE = 1 << 20


def epochs_path(layout: StoreLayout) -> Path:
    """``state/epochs.seal``."""
    return layout.state_dir / "epochs.seal"


def leaves_path(layout: StoreLayout) -> Path:
    """``state/epoch-leaves`` (unauthenticated; checked against the root)."""
    return layout.state_dir / "epoch-leaves"


def leaf_of_seal(seal: Seal) -> Leaf:
    """A chain's state after ``seal``."""
    return Leaf(seal.qube, seal.seq, seal.lines, seal.nbytes, seal.head)


def leaf_of_tomb(tomb: Tomb) -> Leaf:
    """A chain's state when its newest segment is gone (the tomb keeps its totals)."""
    return Leaf(tomb.qube, tomb.last, tomb.records, tomb.nbytes, tomb.head)


def read_leaf(layout: StoreLayout, qube: str) -> Leaf | None:
    """A qube's state from disk (at start): its newest seal, else its newest tomb."""
    for files in reversed(layout.segments(qube)):
        seal = last_seal_line(files.seal)
        if seal is not None:
            return leaf_of_seal(seal)
    tombs = read_tomb_file(layout.tombstones(qube)).tombs
    return leaf_of_tomb(tombs[-1][1]) if tombs else None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class EpochFile:
    """Appends the store-wide epoch lines; records the epochs it could not seal."""

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout
        self.path = epochs_path(layout)
        self.leaves: dict[str, Leaf] = {}
        self._digests: dict[str, bytes] = {}
        self._written_leaves: dict[str, Leaf] | None = None
        self.lines: list[bytes] = []  # the file's whole lines, as written
        self.last_epoch: int | None = None
        self._rewrite = False  # the last write failed: the next one rewrites the file
        self._load()

    def _load(self) -> None:
        try:
            data = read_regular(self.path, MAX_EPOCH_FILE)
        except (FileNotFoundError, StoreError):
            return
        for raw in data.split(b"\n")[:-1]:
            try:
                line = parse_epoch_line(raw)
            except StoreError:
                self._rewrite = True
                continue
            self.lines.append(raw + b"\n")
            if line.kind == "epoch":
                self.last_epoch = line.epoch
        if not data.endswith(b"\n") and data:
            self._rewrite = True  # a torn line: never append after it

    def load_leaves(self) -> None:
        """Every qube's state from disk (once, when the store opens)."""
        for qube in self.layout.qubes():
            try:
                leaf = read_leaf(self.layout, qube)
            except (OSError, StoreError):
                continue
            if leaf is not None:
                self.update(leaf)

    def update(self, leaf: Leaf) -> None:
        """A chain sealed (cheap: one hash when the epoch is sealed)."""
        self.leaves[leaf.qube] = leaf
        self._digests.pop(leaf.qube, None)

    def forget(self, qube: str) -> None:
        """A qube retired (store/retired.py): no leaf from the next epoch line on."""
        self.leaves.pop(qube, None)
        self._digests.pop(qube, None)

    def root(self) -> bytes:
        """The Merkle root of the leaves in memory."""
        digests = self._digests
        for qube, leaf in self.leaves.items():
            if qube not in digests:
                digests[qube] = leaf.digest()
        return merkle_root([digests[qube] for qube in sorted(self.leaves)])

    def seal(self, keys: KeyState) -> EpochLine:
        """Write the line for the current epoch (a gap line first, if epochs were missed).

        Returns the epoch line once it is durable (the witness is sent it).

        Raises OSError when the file cannot be written; the caller evolves the
        key anyway, and the next successful call records the gap.
        """
        epoch, key = keys.epoch, keys.key
        prev = self._prev()
        new: list[EpochLine] = []
        # The first epoch sealed is 1 (a store opens at epoch 1): epochs the
        # disk refused before any line was written are a gap too.
        last = 0 if self.last_epoch is None else self.last_epoch
        if epoch > last + 1:
            gap = EpochLine("gap", epoch, last + 1, epoch - 1, ZERO, prev)
            new.append(gap.signed(key))
            prev = new[-1].mac
        new.append(EpochLine("epoch", epoch, len(self.leaves), 0, self.root(), prev).signed(key))
        data = [line.to_line() for line in new]
        if self._rewrite or len(self.lines) + len(data) > MAX_LINES:
            self._replace((self.lines + data)[-KEEP:])
        else:
            self._append(b"".join(data))
            self.lines.extend(data)
        self.last_epoch = epoch
        self._write_leaves()
        return new[-1]

    def _prev(self) -> bytes:
        if not self.lines:
            return ZERO
        return bytes.fromhex(self.lines[-1][-65:-1].decode("ascii"))

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                fail_point("epoch-seal")
                _write_all(fd, data)
                os.fdatasync(fd)
            except OSError:
                self._rewrite = True
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def _replace(self, lines: list[bytes]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fail_point("epoch-seal")
            with open(tmp, "wb") as out:
                out.write(b"".join(lines))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.layout.state_dir)
        except OSError:
            self._rewrite = True
            tmp.unlink(missing_ok=True)
            raise
        self.lines, self._rewrite = lines, False

    def _write_leaves(self) -> None:
        """The sidecar, when the leaves changed (best effort: the root vouches for it)."""
        if self._written_leaves == self.leaves:
            return
        path = leaves_path(self.layout)
        tmp = path.with_name(path.name + ".tmp")
        text = "".join(self.leaves[q].to_line() + "\n" for q in sorted(self.leaves))
        try:
            tmp.write_text(text, encoding="ascii")
            os.replace(tmp, path)
        except OSError as err:
            log.warning("%s: not written: %s", path, err.strerror)
            return
        self._written_leaves = dict(self.leaves)
