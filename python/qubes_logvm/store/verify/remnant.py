"""What a crash may leave, as the verifier judges it (floor 2).

The definition is the store floor's (:mod:`..remnant`), shared with the
collector's recovery (``writer.QubeChain``); this module turns it into the
verifier's findings. Unsealed tails are judged in :mod:`.segment`, deletions
cut short in :mod:`.engine`.
"""

from ..layout import SegmentFiles
from ..remnant import OPENING_REMNANT, is_opening_remnant
from ..sealfile import SealFile


def opening_remnant(files: SegmentFiles, parsed: SealFile, newest: bool) -> str | None:
    """The warning for a half-opened newest segment; None when it is not one."""
    return OPENING_REMNANT if is_opening_remnant(files, parsed, newest=newest) else None
