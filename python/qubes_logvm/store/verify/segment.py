"""The verifier's checks of one segment: its seal lines, then its bytes (floor 2).

Implements checks 1-3 and 5-8 of "What a verifier checks" in
docs/store-format.md for one segment. Trust side: every file may have been
edited by an intruder; seal lines count only once their MAC is right under
``K[epoch]`` and they name this very segment; segment bytes count only once
they hash to an authenticated head.
"""

import contextlib
import itertools
from pathlib import Path

from ...core.errors import StoreError
from ...core.seal import FINAL_KINDS, ZERO, Seal
from ...core.sizes import human_size
from ..files import TooLarge
from ..layout import SegmentFiles
from ..reader import open_plain
from ..sealfile import SealFile, read_seal_file
from .chain import ChainCheck, ChainMismatch
from .context import VerifyRun
from .created import watched_plain
from .data import DataResult, Interval, check_data, count_up_to
from .fast import fast_segment
from .findings import ERROR, WARNING
from .remnant import opening_remnant

#: Most bytes after the last seal line the verifier reads. A crash leaves at
#: most one batch and one read unsealed (``pending_bytes``, 1 MiB by default,
#: or 4 times that while at most 4 connections are open: collector/qubewriter.py
#: FEW_BATCH_FACTOR; a read is at most 256 KiB); a file longer than this
#: (huge, sparse, or growing while verified) is an error named by its size,
#: never read to its end.
TAIL_READ = 64 << 20


def numbered(parsed: SealFile) -> list[tuple[int, Seal]]:
    """The parsed seal lines with their 1-based line numbers in the file."""
    bad = {number for number, _ in parsed.bad_lines}
    total = len(parsed.seals) + len(bad)
    numbers = [n for n in range(1, total + 1) if n not in bad]
    return list(zip(numbers, parsed.seals, strict=True))


def verify_segment(
    ctx: VerifyRun,
    files: SegmentFiles,
    head: bytes | None,
    min_epoch: int,
    newest: bool,
    doubled: Path | None = None,
) -> tuple[bytes | None, int]:
    """Check one segment; return its final chain head (None: unknown) and last epoch.

    ``doubled``: a compressed copy lying next to the plain one.
    """
    qube, seq = files.qube, files.seq
    if files.seal is None:
        _no_seal_file(ctx, files)
        return None, min_epoch
    if doubled is None:
        fast = fast_segment(ctx, files, head, min_epoch, newest)
        if fast is not None:
            return fast
    parsed = _read_seals(ctx, files, files.seal)
    if parsed is not None and not parsed.seals and not parsed.bad_lines:
        remnant = opening_remnant(files, parsed, newest)
        if remnant is not None:
            ctx.add(WARNING, qube, remnant, seq)
            return head, min_epoch
    anchors = _seal_lines(ctx, files, parsed, newest) if parsed is not None else []
    if not anchors:
        if parsed is not None:  # else already reported
            ctx.add(ERROR, qube, "no valid seal line: nothing in this segment can be checked", seq)
        return None, min_epoch
    _check_open(ctx, files, anchors[0], head, min_epoch)
    intervals = _intervals(ctx, files, anchors)
    last = anchors[-1][1]
    if files.log is None:
        _missing_log(ctx, files, last)
        return last.head, last.epoch
    with watched_plain(ctx, files) as stream:
        result = check_data(stream, intervals, Reporter(ctx, qube, seq), TAIL_READ)
    ctx.report.bytes_hashed += result.bytes_hashed
    if result.tail_bytes >= TAIL_READ:
        _oversized(ctx, files, files.log, last, anchors[-1][0])
    else:
        _check_end(ctx, files, last, anchors[-1][0], result, newest)
    if doubled is not None:
        _check_doubled(ctx, files, doubled, [seal for _, seal in anchors])
    return last.head, last.epoch


def _no_seal_file(ctx: VerifyRun, files: SegmentFiles) -> None:
    """A segment without seals: its lines counted (no further than :data:`TAIL_READ`)."""
    lines = size = 0
    if files.log is not None:
        with open_plain(files.log) as stream:
            lines, size = count_up_to(stream, TAIL_READ)
    more = f" and more (not read past {human_size(TAIL_READ)})" if size >= TAIL_READ else ""
    ctx.add(
        ERROR,
        files.qube,
        f"no seal file: lines 1-{lines}{more} are not sealed",
        files.seq,
        1,
        lines,
    )


def _read_seals(ctx: VerifyRun, files: SegmentFiles, seal: Path) -> SealFile | None:
    """The parsed seal file; None (reported) when it is too large to be one."""
    try:
        return read_seal_file(seal)
    except TooLarge as err:
        ctx.add(
            ERROR,
            files.qube,
            f"the seal file holds {err.size} bytes, more than a seal file can be "
            f"({human_size(err.limit)}): not read, nothing in this segment can be checked",
            files.seq,
        )
        return None


def _check_doubled(ctx: VerifyRun, files: SegmentFiles, doubled: Path, seals: list[Seal]) -> None:
    """A compressed copy next to the plain one (rotation killed before its unlink)."""
    ctx.add(
        WARNING,
        files.qube,
        "compressed copy left next to the plain one (rotation "
        "interrupted; logvm-rotate removes one)",
        files.seq,
    )
    try:
        check = ChainCheck(files.name, seals)
        with open_plain(doubled) as stream:
            while chunk := stream.read(1 << 20):
                check.feed(chunk)
        check.finish()
    except (ChainMismatch, StoreError) as err:
        ctx.add(
            ERROR, files.qube, f"the compressed copy does not match the seals: {err}", files.seq
        )


class Reporter:
    """Adapter handing :mod:`.data` a way to report errors about one segment."""

    def __init__(self, ctx: VerifyRun, qube: str, seq: int) -> None:
        self._ctx, self._qube, self._seq = ctx, qube, seq

    def __call__(self, first: int | None, last: int | None, message: str) -> None:
        self._ctx.add(ERROR, self._qube, message, self._seq, first, last)


def _seal_lines(
    ctx: VerifyRun, files: SegmentFiles, parsed: SealFile, newest: bool
) -> list[tuple[int, Seal]]:
    """Authenticated seal lines (file line number, seal); report the others."""
    qube, seq = files.qube, files.seq
    for number, problem in parsed.bad_lines:
        ctx.add(ERROR, qube, f"seal line {number}: {problem}", seq)
    if parsed.torn_tail:
        severity = WARNING if newest else ERROR
        ctx.add(severity, qube, "the seal file ends in a torn line (crash while sealing)", seq)
    anchors, bad_mac, foreign = [], [], []
    for number, seal in numbered(parsed):
        key = ctx.key(seal.epoch)
        if key is None or not seal.mac_ok(key):
            bad_mac.append(number)
        elif (seal.qube, seal.seq) != (qube, seq) or seal.kind == "tomb":
            foreign.append(f"seal line {number} is for {seal.qube}/{seal.seq:08d} {seal.kind}")
        else:
            anchors.append((number, seal))
    for first, last in _ranges(bad_mac):
        lines = f"seal line {first}" if first == last else f"seal lines {first}-{last}"
        ctx.add(ERROR, qube, f"{lines}: MAC wrong under this key (forged or re-made)", seq)
    if foreign:
        ctx.add(ERROR, qube, f"seal file of another segment (moved?): {foreign[0]}", seq)
    return anchors


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for n in numbers:
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1] = (ranges[-1][0], n)
        else:
            ranges.append((n, n))
    return ranges


def _check_open(
    ctx: VerifyRun,
    files: SegmentFiles,
    first: tuple[int, Seal],
    head: bytes | None,
    min_epoch: int,
) -> None:
    number, seal = first
    qube, seq = files.qube, files.seq
    if number != 1 or seal.kind != "open" or seal.lines or seal.nbytes or seal.prev != ZERO:
        ctx.add(ERROR, qube, "the seal file does not start with a valid open seal", seq)
        return
    if head is not None and seal.head != head:
        ctx.add(
            ERROR,
            qube,
            "the open seal does not continue the chain of the segment before "
            "(a segment before it was removed or replaced)",
            seq,
        )
    if seal.epoch < min_epoch:
        ctx.add(
            ERROR,
            qube,
            f"opened in epoch {seal.epoch}, before the segment before it ended "
            f"(epoch {min_epoch}): segments replaced or reordered",
            seq,
        )


def _span(a: Seal | None, b: Seal, number: int, checkable: bool) -> Interval:
    start, lines0 = (a.nbytes, a.lines) if a is not None else (0, 0)
    head0 = a.head if a is not None and checkable else None
    return Interval(start, b.nbytes, lines0, b.lines, head0, b.head, number, checkable)


def _intervals(
    ctx: VerifyRun, files: SegmentFiles, anchors: list[tuple[int, Seal]]
) -> list[Interval]:
    """The byte spans between authenticated seals, with the seal-file rules checked."""
    qube, seq = files.qube, files.seq
    intervals = []
    number0, seal0 = anchors[0]
    if seal0.nbytes:  # no authenticated start: the bytes before cannot be checked
        intervals.append(_span(None, seal0, number0, False))
        ctx.add(ERROR, qube, f"lines 1-{seal0.lines} cannot be checked", seq, 1, seal0.lines)
    for (n0, a), (n1, b) in itertools.pairwise(anchors):
        problem = _pair_problem(n0, a, n1, b, ctx.epoch_jumps)
        if problem is None:
            intervals.append(_span(a, b, n1, True))
            continue
        ctx.add(ERROR, qube, problem, seq, a.lines + 1, max(b.lines, a.lines + 1))
        if b.nbytes >= a.nbytes and b.lines >= a.lines:
            intervals.append(_span(a, b, n1, False))
    return intervals


def _pair_problem(n0: int, a: Seal, n1: int, b: Seal, jumps: bool) -> str | None:
    """What breaks the rules between two consecutive authenticated seal lines
    (``jumps``: format 2, whose seal epochs may jump: no tick seals)."""
    rules = (
        (a.kind in FINAL_KINDS, f"seal lines {n1}-: sealed after the segment was closed"),
        (b.kind == "open", f"seal line {n1}: a second open seal"),
        (
            n1 != n0 + 1 or b.prev != a.mac,
            f"seal line(s) between {n0} and {n1} missing or invalid (the link breaks): "
            "these lines cannot be checked",
        ),
        (
            b.nbytes < a.nbytes or b.lines < a.lines,
            f"seal line {n1} covers less than seal line {n0}",
        ),
        (b.epoch < a.epoch, f"seal line {n1}: epoch goes back from {a.epoch} to {b.epoch}"),
        (
            b.epoch > a.epoch + 1 and not jumps,
            f"seal line {n1}: epoch jumps from {a.epoch} to {b.epoch}: epochs without a seal "
            "(seal lines removed, or seals re-made with a later key)",
        ),
    )
    return next((message for broken, message in rules if broken), None)


def _oversized(ctx: VerifyRun, files: SegmentFiles, log: Path, last: Seal, number: int) -> None:
    """More bytes after the last seal than any crash leaves: not read to the end."""
    size = "more than " + human_size(last.nbytes + TAIL_READ)
    if not log.name.endswith(".zst"):
        with contextlib.suppress(OSError):
            size = str(log.stat(follow_symlinks=False).st_size)
    ctx.add(
        ERROR,
        files.qube,
        f"the file holds {size} bytes, its seals cover {last.nbytes} (seal line {number}): "
        f"more than {human_size(TAIL_READ)} after the last seal, more than the collector ever "
        "leaves unsealed (not read further)",
        files.seq,
    )


def _missing_log(ctx: VerifyRun, files: SegmentFiles, last: Seal) -> None:
    # Never a crash remnant: the collector creates both files before it
    # writes the open seal (writer.QubeChain.open_segment), and deletes the
    # log before the seal only after the tombstone is durable.
    ctx.add(
        ERROR,
        files.qube,
        f"segment file missing (sealed with {last.lines} lines, seals up to a "
        f"{last.kind} seal in epoch {last.epoch})",
        files.seq,
        1 if last.lines else None,
        last.lines or None,
    )


def _check_end(
    ctx: VerifyRun, files: SegmentFiles, last: Seal, number: int, result: DataResult, newest: bool
) -> None:
    """Bytes after the last seal, a segment left open, seals that stop early."""
    qube, seq = files.qube, files.seq
    first, end = result.sealed_end_line + 1, result.sealed_end_line + result.tail_lines
    closed = last.kind in FINAL_KINDS
    if result.tail_bytes and closed:
        ctx.add(ERROR, qube, f"data after the final seal (seal line {number})", seq, first, end)
    elif result.tail_bytes and newest and not result.broken:
        ctx.add(
            WARNING,
            qube,
            f"unsealed tail ({result.tail_bytes} bytes): not sealed yet, or left by a crash "
            "(the collector seals it as 'recover' when it starts)",
            seq,
            first,
            max(first, end),
        )
    elif result.tail_bytes and not newest:
        ctx.add(ERROR, qube, "unsealed data in a segment that is not the newest", seq, first, end)
    if not closed and not newest:
        ctx.add(ERROR, qube, "never closed, yet a later segment exists (final seal removed?)", seq)
    if (
        not closed
        and newest
        and not ctx.epoch_jumps  # format 2: the epoch seals check this (.epochs)
        and ctx.key_epoch is not None
        and last.epoch + 1 < ctx.key_epoch
    ):
        ctx.add(
            ERROR,
            qube,
            f"open, but its seals stop at epoch {last.epoch} while the store is at epoch "
            f"{ctx.key_epoch}: later seal lines were removed (or the collector restarted "
            "without recovering it)",
            seq,
        )
