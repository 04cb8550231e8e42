"""What a crash may leave, as the verifier judges it (floor 2).

The collector's recovery (``writer.QubeChain._load``/``recover``) and the
verifier must agree on this, and issue 18 makes it one shared definition
(the store floor function by ``faults``); until that lands, the verifier's
rule lives here alone, so it can be swapped for the shared one.

What a crash may leave, from the writer's order of writes:

- the newest segment's seal file empty, or holding only a torn first line,
  with its log empty or missing: a crash inside ``open_segment`` before the
  ``open`` seal was durable (nothing was sealed or acknowledged; the
  collector removes both files when it starts);
- an unsealed tail after the newest open segment's last seal (handled in
  :mod:`.segment`: sealed as ``recover`` at the next start);
- the newest tombstone's segment still present, or only its seal file
  (handled in :mod:`.engine`: the deletion is finished at the next start).

Nothing else: an ``open`` seal without its log, seals cut back, a missing
key file are never left by a crash.
"""

import os

from ..layout import SegmentFiles
from ..sealfile import SealFile


def opening_remnant(files: SegmentFiles, parsed: SealFile, newest: bool) -> str | None:
    """The warning for a half-opened newest segment; None when it is not one."""
    if not newest or parsed.seals or parsed.bad_lines:
        return None
    try:
        size = os.lstat(files.log).st_size if files.log is not None else 0
    except FileNotFoundError:
        size = 0
    if size:
        return None
    return (
        "a crash while opening this segment left an empty or torn seal file and no records "
        "(crash remnant; the collector removes it at its next start)"
    )
