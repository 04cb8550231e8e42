"""The verifier's checks of a qube's tombstones (floor 2).

Rotation deletes a qube's oldest segment first and seals its tomb before it
removes the files (``store/tombstones.py``), so valid lines stand for the
prefix ``1..K`` of the qube's segments, oldest first, one segment per
``tomb`` line, linked by ``prev``. Compaction replaces the file by one
``summary`` line of segments ``1..K``. Version-1 stores kept the newest
``v1 tomb`` line instead (its ``seq`` at least 32). Anything else was not
made by rotation: tomb lines that skip a segment, start above 1, a summary
anywhere but first, a "compacted" file compaction could not have produced.

Trust side: tombstones.seal may have been edited or forged with the key an
intruder holds; a forged tomb can only claim a deletion in an epoch at or
after the break-in, and every deletion is reported (with the witness: and
must have been reported to it as it happened).
"""

from dataclasses import dataclass, field

from ...core.seal import ZERO
from ...core.tomb import Tomb
from ..tombstones import read_tomb_file
from .context import VerifyRun
from .findings import ERROR, INFO, WARNING, Deletion

#: The size at which a version-1 writer compacted (it kept the newest line).
V1_COMPACT_LINES = 32


@dataclass
class Tombs:
    """What a qube's valid tombstones establish."""

    last: int = 0  # newest deleted segment (0: none)
    head: bytes = ZERO  # its final chain head
    close_epoch: int = 0  # the newest deleted segment's close epoch (0: not recorded)
    lines: list[Tomb] = field(default_factory=list)


def check_tombs(ctx: VerifyRun, qube: str) -> Tombs:
    """Parse and check ``tombstones.seal``; report every deletion."""
    tombs = Tombs()
    parsed = read_tomb_file(ctx.layout.tombstones(qube))
    for number, bad in parsed.bad_lines:
        ctx.add(ERROR, qube, f"tombstones.seal line {number}: {bad}")
    if parsed.torn_tail:
        ctx.add(WARNING, qube, "tombstones.seal ends in a torn line (crash while deleting)")
    prev: Tomb | None = None
    for number, tomb in parsed.tombs:
        place = f"tombstones.seal line {number}"
        key = ctx.key(tomb.epoch)
        if key is None or not tomb.mac_ok(key) or tomb.qube != qube:
            ctx.add(ERROR, qube, f"{place}: not a tombstone sealed for {qube} with this key")
            continue
        problem = _first_problem(tomb) if prev is None else _next_problem(prev, tomb, tombs)
        if problem is not None:
            ctx.add(ERROR, qube, f"{place}: {problem}", tomb.last)
        if tomb.close_epoch > tomb.epoch:
            ctx.add(ERROR, qube, f"{place}: deleted before it was closed (epochs)", tomb.last)
        tombs.lines.append(tomb)
        tombs.last, tombs.head = max(tombs.last, tomb.last), tomb.head
        tombs.close_epoch = tomb.close_epoch
        prev = tomb
        _report(ctx, tomb)
    return tombs


def _first_problem(tomb: Tomb) -> str | None:
    """What is wrong with a first line: tomb 1, a summary of 1..K, or v1's kept line."""
    if tomb.version == 1 and tomb.prev != ZERO:
        if tomb.last >= V1_COMPACT_LINES:
            return None
        return (
            "a compacted tombstone file that compaction could not have made (a version-1 "
            f"writer kept the newest of {V1_COMPACT_LINES} lines, so segment "
            f"{V1_COMPACT_LINES} or later; this one is for segment {tomb.last})"
        )
    if tomb.prev != ZERO or (tomb.kind == "summary" and tomb.first != 1):
        return (
            "a compacted tombstone file that compaction could not have made (it starts "
            "with a summary of segments from 1, linked to nothing)"
        )
    if tomb.first != 1:
        return (
            f"the first tombstone is for segment {tomb.first}: segments "
            f"1-{tomb.first - 1} are gone without tombstones"
        )
    return None


def _next_problem(prev: Tomb, tomb: Tomb, tombs: Tombs) -> str | None:
    if tomb.kind == "summary":
        return "a summary line after the first: not made by compaction"
    if tomb.version < prev.version:
        return "a version-1 tomb line after a newer one (downgrade)"
    if tomb.prev != prev.mac:
        return "does not link to the line before (lines removed)"
    if tomb.first != tombs.last + 1:
        return (
            f"a tombstone for segment {tomb.first} after one for segment {tombs.last}: "
            "rotation deletes one segment after the other, oldest first (tomb lines "
            "removed, or not made by rotation)"
        )
    if tomb.epoch < prev.epoch:
        return "epoch goes back (out of order)"
    return None


def _report(ctx: VerifyRun, tomb: Tomb) -> None:
    if tomb.version == 1 and tomb.prev != ZERO and not ctx.report.deletions_for(tomb.qube):
        ctx.report.deletions.append(
            Deletion(tomb.qube, 1, tomb.last - 1, None, None, "unknown", None)
        )
        ctx.add(
            INFO,
            tomb.qube,
            f"segments 1-{tomb.last - 1} deleted by rotation (tombstones compacted in a "
            "version-1 store: no details kept)",
        )
    deletion = Deletion(
        tomb.qube, tomb.first, tomb.last, tomb.records, tomb.nbytes, tomb.reason, tomb.epoch
    )
    ctx.report.deletions.append(deletion)
    segment = tomb.last if tomb.first == tomb.last else None
    ctx.add(INFO, tomb.qube, str(deletion), segment)
