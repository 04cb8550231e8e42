"""The verifier's check of retired qubes (format 2; floor 2).

Implements "Retired qubes" of docs/store-format.md. ``state/retired.seal``
must be a chain of MAC-valid retire lines (``prev`` linking each to the one
before, epochs never decreasing); a line counts only when it authenticates
under ``K[epoch]``. A qube directory missing from the store is accepted only
through the epoch seal: a retired qube's leaf leaves the root from the epoch
of its retire line on, and until that epoch is sealed the verifier takes its
leaf from the retire line (:func:`retired_leaf`), so a directory removed
without a line, or a line forged, re-made or replayed, makes the root or
the file's chain fail. The retire line holds the qube's newest tombstone,
which must authenticate under the key of an epoch before the retirement's
(so ``K[E]`` alone cannot retire a qube that had segments at ``E-1``). A
retire line for a qube whose directory still holds segments sealed before
the retirement is an error (a live qube said gone); a
directory that holds only segments sealed since is the name reused (a fresh
chain, verified as any other).

Trust side: every line is authenticated before it counts; what is printed is
made from validated tokens.
"""

from ...core.epochseal import Leaf
from ...core.errors import StoreError
from ...core.retire import Retire
from ...core.seal import Seal
from ...core.tomb import Tomb
from ..files import irregular
from ..retired import read_retired, retired_path
from ..sealfile import read_seal_file
from ..tombstones import read_tomb_file
from .context import VerifyRun
from .findings import ERROR, INFO, WARNING, Deletion

#: Retirements listed one per line up to this many; beyond, one summary line.
LISTED = 20


def check_retired(ctx: VerifyRun, names: list[str]) -> None:
    """Authenticate ``state/retired.seal`` into ``ctx.retired``; report each retirement."""
    path = retired_path(ctx.layout)
    try:
        kind = irregular(path)
    except FileNotFoundError:
        return
    if kind is not None:
        ctx.add(ERROR, None, f"state/retired.seal is {kind}, not a regular file (not read)")
        return
    try:
        parsed = read_retired(ctx.layout)
    except (OSError, StoreError) as err:
        ctx.add(ERROR, None, f"state/retired.seal: {err}")
        return
    for number, reason in parsed.bad_lines:
        ctx.add(ERROR, None, f"state/retired.seal line {number}: {reason}")
    if parsed.torn:
        ctx.add(WARNING, None, "state/retired.seal ends in a torn line (crash while retiring)")
    before: Retire | None = None
    for number, line in parsed.lines:
        key = ctx.key(line.epoch)
        if key is None or not line.mac_ok(key):
            ctx.add(
                ERROR,
                line.qube,
                f"state/retired.seal line {number}: MAC wrong (a retire line forged, re-made "
                "or made without the key)",
            )
            continue
        if not _tomb_sealed_before(ctx, line, number):
            continue
        if before is not None and (line.prev != before.mac or line.epoch < before.epoch):
            ctx.add(
                ERROR,
                line.qube,
                f"state/retired.seal line {number}: does not follow the line before (retire "
                "lines removed, replaced or replayed)",
            )
        before = line
        ctx.retired[line.qube] = line
    present = set(names)
    gone = [r for q, r in sorted(ctx.retired.items()) if q not in present]
    for qube in sorted(present & set(ctx.retired)):
        _check_present(ctx, ctx.retired[qube])
    _report_gone(ctx, gone)


def _tomb_sealed_before(ctx: VerifyRun, line: Retire, number: int) -> bool:
    """The retired qube's last deletion, sealed in an epoch before the retirement:
    ``K[E]`` alone cannot retire a qube that still had segments at ``E-1``."""
    tomb = line.tomb
    key = ctx.key(tomb.epoch) if tomb.version == 2 else None
    if key is not None and tomb.mac_ok(key) and tomb.epoch < line.epoch:
        return True
    ctx.add(
        ERROR,
        line.qube,
        f"state/retired.seal line {number}: the retirement's last deletion (segment "
        f"{tomb.last}, epoch {tomb.epoch}) is not a tombstone sealed before the retirement "
        f"(epoch {line.epoch}): a retire line made with the current key",
    )
    return False


def retired_leaf(ctx: VerifyRun, qube: str, epoch: int) -> Leaf | None:
    """A retired qube's leaf in the epoch seal of ``epoch`` (sealed before it retired)."""
    line = ctx.retired.get(qube)
    return line.leaf if line is not None and line.epoch > epoch else None


def retired_names(ctx: VerifyRun, epoch: int) -> set[str]:
    """Qubes the epoch seal of ``epoch`` still holds though they have retired since."""
    return {qube for qube, line in ctx.retired.items() if line.epoch > epoch}


def since_retirement(
    ctx: VerifyRun, qube: str, by_seq: dict[int, list[Seal]]
) -> dict[int, list[Seal]]:
    """The witness's checkpoints of ``qube`` less those of a life before its valid
    retirement whose final tomb covers them (a reused name's new chain is checked
    alone; a qube whose directory is gone has none left)."""
    line = ctx.retired.get(qube)
    if line is None:
        return by_seq
    tomb = line.tomb
    before = [cp for seals in by_seq.values() for cp in seals if cp.epoch < line.epoch]
    for cp in before:
        if cp.seq > tomb.last or tomb.epoch < cp.epoch:
            return by_seq  # not covered: checked as they are (and errors said)
        if cp.seq == tomb.last and tomb.kind == "tomb" and cp.lines > tomb.records:
            return by_seq
    after: dict[int, list[Seal]] = {}
    for seq, seals in by_seq.items():
        kept = [cp for cp in seals if cp.epoch >= line.epoch]
        if kept:
            after[seq] = kept
    return after


def heard_since_retirement(
    ctx: VerifyRun, heard: dict[str, tuple[bytes, Tomb]]
) -> dict[str, tuple[bytes, Tomb]]:
    """The deletions the witness heard, less those of a retired qube's earlier life."""
    return {
        qube: (stamp, tomb)
        for qube, (stamp, tomb) in heard.items()
        if qube not in ctx.retired or tomb.epoch >= ctx.retired[qube].epoch
    }


def retired_tombs(ctx: VerifyRun) -> dict[str, Tomb]:
    """The final tombs of the retired qubes whose directories are gone."""
    return {
        qube: line.tomb
        for qube, line in ctx.retired.items()
        if not ctx.layout.qube_dir(qube).exists()
    }


def _check_present(ctx: VerifyRun, line: Retire) -> None:
    """A retired qube whose directory exists: reused, or a retirement interrupted."""
    qube = line.qube
    for files in ctx.layout.segments(qube):
        try:
            seals = read_seal_file(files.seal).seals if files.seal is not None else []
        except (OSError, StoreError):
            continue  # the segment's own check names what is wrong with it
        if seals and seals[0].epoch < line.epoch:
            ctx.add(
                ERROR,
                qube,
                f"retired in epoch {line.epoch} (every segment deleted), yet its directory "
                f"holds segment {files.seq} sealed in epoch {seals[0].epoch}: a retire line "
                "for a qube that still has segments",
                files.seq,
            )
            return
    if ctx.layout.segments(qube):
        ctx.add(INFO, qube, f"name reused after its retirement in epoch {line.epoch}: a new chain")
        return
    try:
        tombs = read_tomb_file(ctx.layout.tombstones(qube)).tombs
    except (OSError, StoreError):
        tombs = []
    if tombs and tombs[-1][1] == line.tomb:
        ctx.add(
            WARNING,
            qube,
            f"retired in epoch {line.epoch} but its directory is still there (the collector "
            "was stopped while retiring it; it removes it at its next start)",
        )


def _report_gone(ctx: VerifyRun, gone: list[Retire]) -> None:
    # Each one's last deletion counts as the store's others do, and is named in
    # the retirement's line as it is printed on its own (the witness's time is
    # added there too: verify/times.py).
    deletions = [
        Deletion(line.qube, t.first, t.last, t.records, t.nbytes, t.reason, t.epoch)
        for line in gone
        for t in (line.tomb,)
    ]
    ctx.report.deletions.extend(deletions)
    for line, deletion in list(zip(gone, deletions, strict=True))[:LISTED]:
        ctx.add(
            INFO,
            line.qube,
            f"retired in epoch {line.epoch}, every segment deleted, directory removed; "
            f"the last deletion: {deletion}",
        )
    if len(gone) > LISTED:
        ctx.add(
            INFO,
            None,
            f"{len(gone) - LISTED} more qubes retired (every segment deleted, directory "
            f"removed), the newest in epoch {max(r.epoch for r in gone)}",
        )
