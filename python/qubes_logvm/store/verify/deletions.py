"""Deletions in the store against the deletions the witness heard of (floor 2).

The collector reports every deletion to the witness as it happens (its
newest tomb per qube stands for all older ones: deletion takes the oldest
segment first). So, with the witness's records:

- a tomb in the store beyond the newest deletion the witness heard of for
  that qube is an error when the witness heard anything from the LogVM in a
  later epoch (the report would have reached it first), else a warning (made
  after the witness's last word: not reported yet);
- a tomb the witness heard of that the store lacks (tombstones stop short),
  or a segment the witness heard deleted that the store still holds, is an
  error (tombstones removed, or the store rolled back);
- the tomb the witness heard must be the store's own line for that segment.

Trust side: both the store's tombs and the witness's records were MAC-checked
before they get here.
"""

from ...core.tomb import Tomb
from .context import VerifyRun
from .findings import ERROR, WARNING
from .retired import heard_since_retirement, retired_tombs


def check_deletions(
    ctx: VerifyRun, heard: dict[str, tuple[bytes, Tomb]], newest_epoch: int
) -> None:
    """Add every disagreement between the store's deletions and the witness's."""
    since = heard_since_retirement(ctx, heard)
    for qube, lines in sorted(ctx.tomb_lines.items()):
        stamp, told = since.get(qube, (b"", None))
        for tomb in lines:
            if tomb.version == 1:
                continue  # version-1 writers did not report deletions
            if told is not None and tomb.last <= told.last:
                if tomb.kind == "tomb" and tomb.last == told.last and tomb != told:
                    ctx.add(
                        ERROR,
                        qube,
                        "witness: this tombstone is not the one the witness "
                        f"heard of at {stamp.decode()} (re-made)",
                        tomb.last,
                    )
                continue
            _unheard(ctx, qube, tomb, newest_epoch)
    _check_retired(ctx, heard, newest_epoch)
    for qube, (stamp, told) in sorted(since.items()):
        store_last = max((t.last for t in ctx.tomb_lines.get(qube, [])), default=0)
        if qube not in ctx.tomb_lines:
            continue  # the qube's directory is gone: reported with its checkpoints
        if store_last < told.last:
            ctx.add(
                ERROR,
                qube,
                f"witness: the witness heard at {stamp.decode()} that segment {told.last} was "
                f"deleted ({told.reason}), the store's tombstones stop at segment {store_last} "
                "(tombstones removed, or the store rolled back)",
                told.last,
            )


def _check_retired(
    ctx: VerifyRun, heard: dict[str, tuple[bytes, Tomb]], newest_epoch: int
) -> None:
    """A retired qube's final tomb (its directory is gone): heard as any deletion."""
    for qube, tomb in sorted(retired_tombs(ctx).items()):
        stamp, told = heard.get(qube, (b"", None))
        if told is None or told.last < tomb.last:
            _unheard(ctx, qube, tomb, newest_epoch)
        elif told.last == tomb.last and tomb.kind == "tomb" and told != tomb:
            ctx.add(
                ERROR,
                qube,
                "witness: the retired qube's last tombstone is not the one the witness "
                f"heard of at {stamp.decode()} (re-made)",
                tomb.last,
            )


def _unheard(ctx: VerifyRun, qube: str, tomb: Tomb, newest_epoch: int) -> None:
    segs = (
        f"segment {tomb.last}"
        if tomb.first == tomb.last
        else (f"segments {tomb.first}-{tomb.last}")
    )
    if tomb.epoch < newest_epoch:
        ctx.add(
            ERROR,
            qube,
            f"witness: the deletion of {segs} ({tomb.reason}, epoch {tomb.epoch}) was never "
            f"reported to the witness, which heard from the LogVM up to epoch {newest_epoch} "
            "(a deletion disguised as rotation)",
            tomb.last,
        )
    else:
        ctx.add(
            WARNING,
            qube,
            f"witness: the deletion of {segs} ({tomb.reason}, epoch {tomb.epoch}) was made after "
            "the witness's newest record: not reported to it yet",
            tomb.last,
        )
