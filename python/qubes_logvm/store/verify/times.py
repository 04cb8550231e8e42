"""Receive times bound to what the witness saw; epochs per segment (floor 2).

The witness stamps every checkpoint it accepts with dom0's clock. A
checkpoint of segment ``S`` at record ``N``, stamped ``X``, says that at dom0
time ``X`` the qube's chain ended there: every record after it (records
``N+1..`` of ``S`` and every record of a later segment) was received after
``X``. So a receive time earlier than ``X`` (less :data:`CLOCK_SLACK_SECONDS`
for the two clocks and the checkpoint's way to the witness) was written
later with a time before the break-in: backdated. Only records after the
witness's newest checkpoint of each qube are read, which for an honest
store are the last seconds before verification.

:func:`print_epochs` says, per segment, the epochs its seals were made in
and, with the witness, the dom0 time by which they were all made (the
first time the witness heard a later epoch), so an admin can tell which
records were sealed after a suspected break-in; :func:`time_deletions`
gives every deletion the same bound.

Trust side: the checkpoints were MAC-checked before they get here; segment
lines are read through the bounded reader, never trusted for their syntax.
"""

import bisect
from collections.abc import Iterator
from dataclasses import replace

from ...core.errors import StoreError
from ...core.records import format_timestamp, parse_timestamp
from ...core.seal import Seal, parse_seal
from ..files import open_regular
from ..layout import SegmentFiles
from ..reader import StoredLine, iter_segment
from .context import VerifyRun
from .findings import ERROR, INFO

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


def note_epochs(ctx: VerifyRun, files: SegmentFiles, last_epoch: int) -> None:
    """Remember a checked segment's epoch range (the first seal line is read again)."""
    first = last_epoch
    if files.seal is not None:
        try:
            with open_regular(files.seal) as stream:
                head = stream.read(512).split(b"\n", 1)[0]
            first = min(parse_seal(head).epoch, last_epoch)
        except (OSError, StoreError):
            pass
    ctx.segment_epochs.setdefault(files.qube, []).append((files.seq, first, last_epoch))


class EpochsOver:
    """When, by dom0's clock, each epoch was over: the first time the witness heard a
    record of a later one (``heard``: (epoch, dom0 time) of every record it kept)."""

    def __init__(self, heard: list[tuple[int, bytes]]) -> None:
        heard = sorted(heard)
        self.epochs = [epoch for epoch, _ in heard]
        # by_then[i]: the earliest dom0 time of a record of epoch epochs[i] or later.
        self.by_then = [stamp for _, stamp in heard]
        for i in range(len(self.by_then) - 2, -1, -1):
            self.by_then[i] = min(self.by_then[i], self.by_then[i + 1])

    def after(self, epoch: int) -> bytes | None:
        """The dom0 time by which ``epoch`` was over; None: the witness heard no later one."""
        at = bisect.bisect_right(self.epochs, epoch)
        return self.by_then[at] if at < len(self.by_then) else None


def print_epochs(ctx: VerifyRun, heard: list[tuple[int, bytes]]) -> None:
    """One info line per segment: its epochs and, with the witness, when they were over."""
    over = EpochsOver(heard)
    for qube in sorted(ctx.segment_epochs):
        for seq, first, last in ctx.segment_epochs[qube]:
            text = f"epochs {first}-{last}"
            if heard:
                when = over.after(last)
                text += (
                    f", sealed before dom0 time {when.decode()} (the witness "
                    f"heard a later epoch then)"
                    if when is not None
                    else f", sealed after the witness's last record (epoch {over.epochs[-1]})"
                )
            ctx.add(INFO, qube, text, seq)


def time_deletions(ctx: VerifyRun, heard: list[tuple[int, bytes]]) -> None:
    """Each deletion printed (and counted) with the dom0 time its epoch was over by:
    in its own info line, or the retirement's that names it."""
    over, report = EpochsOver(heard), ctx.report
    lines: dict[str | None, list[int]] = {}
    for n, finding in enumerate(report.findings):
        if finding.severity == INFO:
            lines.setdefault(finding.qube, []).append(n)
    for n, deletion in enumerate(report.deletions):
        when = over.after(deletion.epoch) if deletion.epoch is not None else None
        if when is None:
            continue
        timed = replace(deletion, witnessed=when.decode())
        report.deletions[n] = timed
        said, now = str(deletion), str(timed)
        for line in lines.get(deletion.qube, []):
            finding = report.findings[line]
            if finding.message == said or finding.message.endswith(f": {said}"):
                report.findings[line] = replace(
                    finding, message=finding.message[: -len(said)] + now
                )
                break
