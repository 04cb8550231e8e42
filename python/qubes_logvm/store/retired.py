"""Retired qubes: the directory of a fully deleted qube removed, sealed (floor 2).

When rotation has deleted every segment of a qube (a DispVM session past its
retention, typically), its directory would stay forever, and the collector
pays for every name ever seen. Format 2's epoch seal makes a missing
directory an error, so the collector first appends one sealed
:class:`~..core.retire.Retire` line to the store-wide ``state/retired.seal``
(the qube's final sealed state, its newest tomb's, MACed with the current
epoch key), then removes the directory and drops the qube's leaf before the
epoch is sealed (docs/store-format.md, "Retired qubes").

The file stays bounded: past :data:`MAX_LINES` lines it is rewritten
(tmp + fsync + rename) to its newest :data:`KEEP` lines (never dropping a
line of the current epoch, which the next epoch seal still needs); its
first line then links to a dropped one.

Trust side: the collector (the key holder) writes; everyone reads back
strictly, through :func:`~.files.read_regular` (never a link or FIFO).
"""

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import StoreError
from ..core.retire import Retire, parse_retire
from ..core.seal import ZERO
from ..core.tomb import Tomb
from ..daemon_support import fsync_dir
from .files import append_line, read_regular
from .keystate import KeyState
from .layout import StoreLayout

MAX_LINES = 1024
KEEP = 512
#: Most bytes of the file the collector or verifier reads.
MAX_RETIRED_FILE = 1 << 20
#: What a qube directory may hold to be retired: no segment, nothing unknown.
RETIRABLE = frozenset({"tombstones.seal", "tombstones.seal.tmp", "lock"})


def retired_path(layout: StoreLayout) -> Path:
    """``state/retired.seal``."""
    return layout.state_dir / "retired.seal"


@dataclass
class RetiredLines:
    """The parsed lines of ``state/retired.seal`` (unauthenticated)."""

    lines: list[tuple[int, Retire]] = field(default_factory=list)  # (line number, line)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    torn: bool = False


def read_retired(layout: StoreLayout) -> RetiredLines:
    """Parse the file; an absent file is an empty one."""
    try:
        data = read_regular(retired_path(layout), MAX_RETIRED_FILE)
    except FileNotFoundError:
        return RetiredLines()
    body, _, torn = data.rpartition(b"\n")
    parsed = RetiredLines(torn=bool(torn))
    for number, raw in enumerate(body.split(b"\n") if body else [], start=1):
        try:
            parsed.lines.append((number, parse_retire(raw)))
        except StoreError as err:
            parsed.bad_lines.append((number, str(err)))
    return parsed


def retire_of_tomb(keys: KeyState, tomb: Tomb, prev: bytes) -> Retire:
    """The sealed retirement of the qube whose newest tomb is ``tomb``."""
    return Retire(keys.epoch, tomb, prev).signed(keys.key)


def retirable(layout: StoreLayout, qube: str) -> bool:
    """The qube's directory holds no segment and nothing but its tombstones and lock."""
    try:
        entries = set(os.listdir(layout.qube_dir(qube)))
    except FileNotFoundError:
        return False
    return "tombstones.seal" in entries and entries <= RETIRABLE


class RetiredFile:
    """The collector's side: append retire lines, remove directories, compact."""

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout
        self.path = retired_path(layout)
        parsed = read_retired(layout)
        self.lines = [line for _, line in parsed.lines]
        self._rewrite = parsed.torn or bool(parsed.bad_lines)

    def full(self, epoch: int) -> bool:
        """This epoch's retirements reached :data:`KEEP`: later ones wait for the next
        epoch (compaction keeps every line of the current epoch, and the file must
        stay within :data:`MAX_RETIRED_FILE`)."""
        count = 0
        for line in reversed(self.lines):
            if line.epoch < epoch:
                break
            count += 1
        return count >= KEEP

    def retire(self, keys: KeyState, newest: Tomb) -> Retire:
        """Seal the retirement, then remove the directory (durable on return).

        Call with the qube's lock held and its directory :func:`retirable`.
        """
        line = retire_of_tomb(keys, newest, self.lines[-1].mac if self.lines else ZERO)
        if self._rewrite or len(self.lines) >= MAX_LINES:
            self._replace(line, keys.epoch)
        else:
            append_line(self.path, line.to_line(), 0o600)
            self.lines.append(line)
        qube_dir = self.layout.qube_dir(newest.qube)
        for name in sorted(RETIRABLE):  # the lock last: the chain is loadable until then
            with contextlib.suppress(FileNotFoundError):
                (qube_dir / name).unlink()
        qube_dir.rmdir()
        fsync_dir(self.layout.qubes_dir)
        return line

    def _replace(self, line: Retire, epoch: int) -> None:
        """Rewrite the file to its newest lines (and every line of this epoch) plus ``line``."""
        start = len(self.lines) - KEEP
        keep = [r for i, r in enumerate(self.lines) if i >= start or r.epoch >= epoch]
        keep.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(b"".join(r.to_line() for r in keep))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.layout.state_dir)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self.lines, self._rewrite = keep, False
