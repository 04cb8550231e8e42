"""Finding the next or previous matching record, off the main loop (floor 4).

Matches as ``logvm show -g`` does: the pattern against the unescaped message
(:attr:`core.entries.Understood.message`). A plain pattern of printable ASCII
is first looked for in the stored bytes of whole chunks at C speed (its
escaped form is itself, so a line that does not hold it cannot match); only
candidate lines are understood. Progress is reported as rows scanned; a
:class:`threading.Event` cancels.
"""

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .model import QubeRows

_BLOCK = 4096  # rows read per step


@dataclass(frozen=True)
class Pattern:
    """What to look for."""

    text: str
    regex: bool = False
    match_case: bool = False

    def compiled(self) -> "re.Pattern[str]":
        """The pattern on the unescaped message (raises re.error for a bad regex)."""
        flags = 0 if self.match_case else re.IGNORECASE
        return re.compile(self.text if self.regex else re.escape(self.text), flags)

    def prefilter(self) -> "re.Pattern[bytes] | None":
        """A bytes pattern every matching stored line holds, when there is a cheap one."""
        printable = all(32 <= ord(c) < 127 for c in self.text) and "\\" not in self.text
        if self.regex or not printable or not self.text:
            return None
        flags = 0 if self.match_case else re.IGNORECASE
        return re.compile(re.escape(self.text.encode("ascii")), flags)


def find(
    rows: QubeRows,
    pattern: Pattern,
    start: int,
    bounds: tuple[int, int],
    *,
    forward: bool,
    cancel: threading.Event,
    progress: Callable[[float], None],
) -> int | None:
    """The first matching row after ``start`` (or before it), within ``bounds``."""
    wanted = pattern.compiled()
    cheap = pattern.prefilter()
    low, high = bounds
    total = max(1, high - low)
    row = start + 1 if forward else start - 1
    done = 0
    while low <= row < high and not cancel.is_set():
        first, last = (
            (row, min(high, row + _BLOCK)) if forward else (max(low, row - _BLOCK + 1), row + 1)
        )
        entries = rows.stored(first, last)
        order = range(len(entries)) if forward else range(len(entries) - 1, -1, -1)
        for index in order:
            seg, stored = entries[index]
            if cheap is not None and cheap.search(stored.data) is None:
                continue
            message = rows.entry(seg, stored).what.message
            if wanted.search(message.decode("utf-8", "replace")):
                return first + index
        done += last - first
        progress(min(1.0, done / total))
        row = last if forward else first - 1
        if not entries:
            break
    return None
