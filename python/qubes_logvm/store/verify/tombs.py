"""The verifier's checks of a qube's tombstones (floor 2).

Rotation deletes a qube's oldest segment first and seals a tombstone before
it removes the files (``writer.TombstoneFile``), so valid tombstones form
the prefix ``1..K`` of the qube's segments, oldest first, one line each,
linked by ``prev``. Compaction replaces the file by its newest line only
once it holds ``TOMB_COMPACT_LINES`` lines. Anything else was not made by
rotation: tomb lines that skip a segment, start above 1 without
compaction, or a "compacted" file compaction could not have produced.

Trust side: tombstones.seal may have been edited or forged with the key an
intruder holds; a forged tomb can only claim a deletion in an epoch at or
after the break-in, which is reported as every deletion is.
"""

from dataclasses import dataclass, field

from ...core.errors import StoreError
from ...core.seal import ZERO, Seal
from ..sealfile import read_seal_file
from .context import Ctx
from .findings import ERROR, INFO, WARNING, Deletion
from .segment import numbered

#: The size at which the writer compacts (``writer.TOMB_COMPACT_LINES``).
TOMB_COMPACT_LINES = 32


@dataclass
class Tombs:
    """What a qube's valid tombstones establish."""

    last: int = 0  # newest deleted segment (0: none)
    head: bytes = ZERO  # its final chain head
    close_epoch: int = 0  # the newest deleted segment's close epoch (0: not recorded)
    by_seq: dict[int, Seal] = field(default_factory=dict)
    compacted_to: int = 0  # segments 1..compacted_to deleted without details kept


def check_tombs(ctx: Ctx, qube: str) -> Tombs:
    """Parse and check ``tombstones.seal``; report every deletion."""
    path = ctx.layout.tombstones(qube)
    tombs = Tombs()
    try:
        parsed = read_seal_file(path)
    except StoreError as err:
        ctx.add(ERROR, qube, f"tombstones.seal: {err}")
        return tombs
    for number, problem in parsed.bad_lines:
        ctx.add(ERROR, qube, f"tombstones.seal line {number}: {problem}")
    if parsed.torn_tail:
        ctx.add(WARNING, qube, "tombstones.seal ends in a torn line (crash while deleting)")
    prev: bytes | None = None
    epoch = 0
    for number, seal in numbered(parsed):
        where = f"tombstones.seal line {number}"
        key = ctx.key(seal.epoch)
        if key is None or not seal.mac_ok(key) or seal.kind != "tomb" or seal.qube != qube:
            ctx.add(ERROR, qube, f"{where}: not a tombstone sealed for {qube} with this key")
            continue
        if prev is None:
            _first_line(ctx, qube, where, seal, tombs)
        else:
            if seal.prev != prev:
                ctx.add(ERROR, qube, f"{where}: does not link to the line before (lines removed)")
            if seal.seq != tombs.last + 1:
                ctx.add(
                    ERROR,
                    qube,
                    f"{where}: a tombstone for segment {seal.seq} after one for segment "
                    f"{tombs.last}: rotation deletes one segment after the other, oldest "
                    "first (tomb lines removed, or not made by rotation)",
                    seal.seq,
                )
        if seal.epoch < epoch:
            ctx.add(ERROR, qube, f"{where}: epoch goes back (out of order)", seal.seq)
        tombs.by_seq[seal.seq] = seal
        tombs.last, tombs.head = max(tombs.last, seal.seq), seal.head
        prev, epoch = seal.mac, max(epoch, seal.epoch)
        ctx.report.deletions.append(
            Deletion(qube, seal.seq, seal.seq, seal.lines, seal.nbytes, "unknown", seal.epoch)
        )
        ctx.add(
            INFO,
            qube,
            f"deleted by rotation in epoch {seal.epoch} ({seal.lines} records, "
            f"{seal.nbytes} bytes; version-1 tombstone: no reason recorded)",
            seal.seq,
        )
    return tombs


def _first_line(ctx: Ctx, qube: str, where: str, seal: Seal, tombs: Tombs) -> None:
    """The first line: tomb 1 (linked to nothing), or the line compaction kept."""
    if seal.prev == ZERO:
        if seal.seq != 1:
            ctx.add(
                ERROR,
                qube,
                f"{where}: the first tombstone is for segment {seal.seq}: segments "
                f"1-{seal.seq - 1} are gone without tombstones",
                seal.seq,
            )
        return
    if seal.seq < TOMB_COMPACT_LINES:
        ctx.add(
            ERROR,
            qube,
            f"{where}: a compacted tombstone file that compaction could not have made "
            f"(it keeps the newest of {TOMB_COMPACT_LINES} lines, so segment "
            f"{TOMB_COMPACT_LINES} or later; this one is for segment {seal.seq})",
            seal.seq,
        )
    tombs.compacted_to = seal.seq - 1
    ctx.report.deletions.append(
        Deletion(qube, 1, seal.seq - 1, None, None, "unknown (compacted)", None)
    )
    ctx.add(
        INFO,
        qube,
        f"segments 1-{seal.seq - 1} deleted by rotation (tombstones "
        "compacted in a version-1 store: no details kept)",
    )
