"""Receive times bound to what the witness saw (floor 2).

The witness stamps every checkpoint it accepts with dom0's clock. A
checkpoint of segment ``S`` at record ``N``, stamped ``X``, says that at dom0
time ``X`` the qube's chain ended there: every record after it (records
``N+1..`` of ``S`` and every record of a later segment) was received after
``X``. So a receive time earlier than ``X`` (less :data:`CLOCK_SLACK_SECONDS`
for the two clocks and the checkpoint's way to the witness) was written
later with a time before the break-in: backdated. Only records after the
witness's newest checkpoint of each qube are read, which for an honest
store are the last seconds before verification.

Trust side: the checkpoints were MAC-checked before they get here; segment
lines are read through the bounded reader, never trusted for their syntax.
"""

from collections.abc import Iterator

from ...core.errors import StoreError
from ...core.records import format_timestamp, parse_timestamp
from ...core.seal import Seal
from ..reader import StoredLine, iter_segment
from .context import VerifyRun
from .findings import ERROR

#: How far a receive time may lie before the witness's stamp of an earlier
#: checkpoint: the LogVM's and dom0's clocks, and the checkpoint's send queue.
CLOCK_SLACK_SECONDS = 300.0


def check_times(ctx: VerifyRun, newest: dict[str, tuple[bytes, Seal]]) -> None:
    """Every record after each qube's newest checkpoint was received after its stamp."""
    for qube, (stamp, cp) in sorted(newest.items()):
        floor = format_timestamp(parse_timestamp(stamp) - CLOCK_SLACK_SECONDS)
        for files in ctx.layout.segments(qube):
            if files.seq < cp.seq or files.log is None:
                continue
            skip = cp.lines if files.seq == cp.seq else 0
            try:
                _check_segment(ctx, qube, files.seq, iter_segment(files), skip, floor, stamp)
            except StoreError:
                continue  # unreadable: reported by the segment's own checks


def _check_segment(
    ctx: VerifyRun,
    qube: str,
    seq: int,
    lines: Iterator[StoredLine],
    skip: int,
    floor: bytes,
    stamp: bytes,
) -> None:
    for line in lines:
        if line.number <= skip:
            continue
        received = line.stamp
        if received is not None and received < floor:
            ctx.add(
                ERROR,
                qube,
                f"witness: received at {received.decode()}, but the witness's checkpoint of "
                f"{stamp.decode()} shows the qube's records ended before it then: written "
                "later with an earlier receive time (backdated)",
                seq,
                line.number,
                line.number,
            )
            return  # one finding per segment
