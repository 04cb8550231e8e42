"""What a crash may leave in a store: the one definition (floor 2).

The collector's recovery (:class:`.writer.QubeChain`) and the verifier
(:mod:`.verify`) both judge a qube's files by these functions, so that what
the collector repairs silently is exactly what the verifier reports as a
crash remnant (a warning), and nothing else.

From the writer's order of writes (:mod:`.writer`), a crash (SIGKILL, power
loss after the last fdatasync) may leave only:

- **an opening remnant**: the newest segment's seal file empty or holding
  only a torn first line, its log empty or missing. ``open_segment`` creates
  both files, then writes the ``open`` seal, and only after that is durable
  appends the ``segment-start`` note; so nothing in it was sealed or
  acknowledged. Recovery removes both files and the chain continues from the
  segment before, the newest tombstone, or the genesis head (a qube's very
  first segment). See :func:`is_opening_remnant`.
- **a torn seal line** at the end of the newest segment's seal file (a seal
  being written): it covered nothing acknowledged; recovery cuts it.
- **an unsealed tail** after the newest open segment's last seal (records
  appended, not yet sealed, never acknowledged): recovery seals the whole
  lines as ``recover`` and cuts a torn last line.
- **a deletion cut short**: the newest tombstone's segment still present, or
  only its seal file; the deletion is finished at the next start.
- ``tombstones.seal.tmp`` (a compaction cut short; the old file is whole)
  and a torn last line of ``tombstones.seal``.

Nothing else: an ``open`` seal without its log, seals that cover more bytes
than the log holds, a missing seal file next to records, a missing key file
are never left by a crash (damage or tampering; the collector quarantines
such a qube at start and the verifier reports an error).
"""

import os

from .layout import SegmentFiles
from .sealfile import SealFile

#: How reports name an opening remnant.
OPENING_REMNANT = (
    "a crash while opening this segment left an empty or torn seal file and no records "
    "(crash remnant; the collector removes it at its next start)"
)


def is_opening_remnant(files: SegmentFiles, parsed: SealFile, *, newest: bool) -> bool:
    """True when ``files`` (with its seal file parsed) is an opening remnant.

    Only the newest segment of a qube can be one; its seal file must exist
    and hold no complete line (empty, or a torn first line), its log must be
    empty or missing. Does not look at the segments before: recovery checks
    that the chain can continue, the verifier checks the chain as usual.
    """
    if not newest or files.seal is None or parsed.seals or parsed.bad_lines:
        return False
    if files.log is None:
        return True
    try:
        return os.lstat(files.log).st_size == 0
    except FileNotFoundError:
        return True


def seal_covers_log(sealed_nbytes: int, log_size: int) -> bool:
    """False when the seals claim more bytes than the log holds (never a crash)."""
    return log_size >= sealed_nbytes
