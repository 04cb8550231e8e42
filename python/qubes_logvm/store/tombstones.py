"""A qube's tombstone file: reading it, and appending and compacting it (floor 2).

``qubes/<qube>/tombstones.seal`` holds one sealed line per deleted segment
(:mod:`qubes_logvm.core.tomb`), oldest first. Deletion always takes the
qube's oldest segment, so the lines stand for segments ``1..K``. Past
:data:`TOMB_COMPACT_LINES` lines the file is replaced (temporary file,
fsync, rename) by one sealed ``summary`` line of everything it held, so a
flooding qube's evictions cannot grow it without bound; later deletions
append after it. That is the only shape compaction makes; the verifier
refuses any other (``store/verify/tombs.py``).

Trust side: the collector (the key holder) writes; everyone reads back
strictly, through :func:`~.files.read_regular` (never a link or FIFO).
"""

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import StoreError
from ..core.seal import ZERO, Seal
from ..core.tomb import Tomb, parse_tomb
from ..daemon_support import fsync_dir
from .files import append_line, read_regular
from .keystate import KeyState
from .layout import StoreLayout
from .tombreserve import TombReserve

log = logging.getLogger(__name__)

#: Lines after which the file is compacted to one summary line.
TOMB_COMPACT_LINES = 32
#: A tombstone file larger than this is not one the collector wrote.
MAX_TOMB_FILE = 1 << 20


@dataclass
class TombFile:
    """The parsed lines of a tombstone file."""

    tombs: list[tuple[int, Tomb]] = field(default_factory=list)  # (line number, tomb)
    torn_tail: bytes = b""
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    size: int = 0


def read_tomb_file(path: Path) -> TombFile:
    """Parse a tombstone file; an absent file is an empty one."""
    try:
        data = read_regular(path, MAX_TOMB_FILE)
    except FileNotFoundError:
        return TombFile()
    body, newline, torn = data.rpartition(b"\n")
    if not newline:
        body, torn = b"", data
    parsed = TombFile(torn_tail=torn, size=len(data))
    for number, line in enumerate(body.split(b"\n") if body else [], start=1):
        try:
            parsed.tombs.append((number, parse_tomb(line)))
        except StoreError as err:
            parsed.bad_lines.append((number, str(err)))
    return parsed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class TombstoneFile:
    """The writer's side: append sealed tombs, compact, know the newest."""

    def __init__(
        self, layout: StoreLayout, qube: str, on_tomb: Callable[[Tomb], None] | None = None
    ) -> None:
        self.path = layout.tombstones(qube)
        self.qube = qube
        self.on_tomb = on_tomb  # e.g. the witness's queue: every deletion is reported
        # A compaction a crash cut short: the old file is still whole.
        self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
        parsed = read_tomb_file(self.path)
        self.tombs = [tomb for _, tomb in parsed.tombs]
        self.reserve = TombReserve(layout)
        self.size = parsed.size  # counted in the qube's quota

    @property
    def newest(self) -> Tomb | None:
        """The newest line (its ``last`` and ``head`` link the chain on)."""
        return self.tombs[-1] if self.tombs else None

    @property
    def last_seq(self) -> int:
        """The newest deleted segment (0: none)."""
        return self.tombs[-1].last if self.tombs else 0

    def append(self, keys: KeyState, seq: int, final: Seal, reason: str, size: int) -> Tomb:
        """Seal the deletion of segment ``seq`` (its final seal ``final``); durable on return."""
        tomb = Tomb(
            "tomb",
            self.qube,
            seq,
            seq,
            keys.epoch,
            final.epoch,
            final.lines,
            final.nbytes,
            size,
            reason,
            final.head,
            self.tombs[-1].mac if self.tombs else ZERO,
        ).signed(keys.key)
        try:
            self._append_line(tomb.to_line())
        except OSError as err:
            # A full disk: the reserve gives the room (released, then re-made
            # by the caller once the segment is gone).
            if err.errno != errno.ENOSPC or not self.reserve.release():
                raise
            self._append_line(tomb.to_line())
        self.tombs.append(tomb)
        self.size += len(tomb.to_line())
        if self.on_tomb is not None:
            self.on_tomb(tomb)
        return tomb

    def _append_line(self, line: bytes) -> None:
        append_line(self.path, line, 0o640)

    def compact_if_due(self, keys: KeyState) -> None:
        """Replace the file by one summary line once it holds enough lines.

        Called after the segments the lines stand for are gone.
        """
        if len(self.tombs) < TOMB_COMPACT_LINES:
            return
        newest = self.tombs[-1]
        summary = Tomb(
            "summary",
            self.qube,
            1,
            newest.last,
            keys.epoch,
            newest.close_epoch,
            sum(t.records for t in self.tombs),
            sum(t.nbytes for t in self.tombs),
            sum(t.size for t in self.tombs),
            "compacted",
            newest.head,
            ZERO,
        ).signed(keys.key)
        line = summary.to_line()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            # The longer file is as valid: compacted at a later deletion.
            tmp.unlink(missing_ok=True)
            log.warning("%s: not compacted now: %s", self.path, err)
            return
        tmp.rename(self.path)
        fsync_dir(self.path.parent)
        self.tombs, self.size = [summary], len(line)
