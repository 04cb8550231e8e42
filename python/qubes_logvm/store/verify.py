"""The verifier: a store against its verification key (floor 2).

Implements "What a verifier checks" in docs/store-format.md and returns
structured findings (severity, qube, segment, line range, message) instead
of printing. Trust side: runs in the LogVM or on a copy of the store; every
file may have been edited by an intruder. The only trusted input is the
verification key ``K[0]`` (kept outside the LogVM). Seal lines count only
once their MAC is right under ``K[epoch]`` and they name this very segment;
segment bytes count only once they hash to an authenticated head.
"""

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InvalidQubeName, SealError, StoreError
from ..core.names import validate_qube_name
from ..core.seal import ZERO, Seal, evolve, genesis, parse_verification_key
from ..core.witness_format import EpochKeys
from .keystate import _RECORD_LEN, _decode, read_store_info
from .layout import SegmentFiles, StoreLayout
from .reader import count_lines, open_plain
from .sealfile import SealFile, read_seal_file
from .verify_data import DataResult, Interval, check_data

ERROR, WARNING, INFO = "error", "warning", "info"
FINAL_KINDS = ("close", "recover")
#: Without a usable key file, seal epochs above this are not derived (a forged
#: huge epoch must not make the verifier hash for hours): ~21 years of 10 s epochs.
MAX_EPOCH = 1 << 26
_QUBE_FILES = ("lock", "tombstones.seal")


@dataclass(frozen=True)
class Finding:
    """One result of verification, located as precisely as the evidence allows."""

    severity: str  # "error" | "warning" | "info"
    qube: str | None  # None: the store as a whole
    segment: int | None
    first_line: int | None  # 1-based record lines of the segment file as it is now
    last_line: int | None
    message: str

    @property
    def place(self) -> str:
        """``work/00000003 lines 5-8``, ``work``, or ``store``."""
        if self.qube is None:
            return "store"
        where = self.qube if self.segment is None else f"{self.qube}/{self.segment:08d}"
        if self.first_line is None:
            return where
        if self.last_line is None:
            return f"{where} line {self.first_line} onwards"
        if self.last_line == self.first_line:
            return f"{where} line {self.first_line}"
        return f"{where} lines {self.first_line}-{self.last_line}"

    def __str__(self) -> str:
        return f"{self.severity}: {self.place}: {self.message}"


@dataclass
class Report:
    """Everything verification found, plus what it covered."""

    findings: list[Finding] = field(default_factory=list)
    qubes: int = 0
    segments: int = 0
    bytes_hashed: int = 0

    @property
    def errors(self) -> list[Finding]:
        """The findings that make verification fail."""
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong (warnings allowed)."""
        return not self.errors


@dataclass
class _Ctx:
    layout: StoreLayout
    store_id: str
    keys: EpochKeys
    report: Report
    max_epoch: int = MAX_EPOCH
    key_epoch: int | None = None
    cursor: tuple[int, bytes] = (-1, b"")

    def add(
        self,
        severity: str,
        qube: str | None,
        message: str,
        segment: int | None = None,
        first: int | None = None,
        last: int | None = None,
    ) -> None:
        self.report.findings.append(Finding(severity, qube, segment, first, last, message))

    def key(self, epoch: int) -> bytes | None:
        """``K[epoch]``, walking on from the last lookup: seal files rise one epoch at a time."""
        if epoch > self.max_epoch:
            return None
        at, key = self.cursor
        if not key or not at <= epoch <= at + 64:
            at, key = epoch, self.keys.key(epoch)
        while at < epoch:
            key, at = evolve(key), at + 1
        self.cursor = (at, key)
        return key


def verify_store(
    root: Path | str, verification_key: str, qubes: list[str] | None = None
) -> Report:
    """Verify the store at ``root`` (all qubes, or the ones named)."""
    store_id, key0 = parse_verification_key(verification_key)
    layout = StoreLayout(root)
    ctx = _Ctx(layout, store_id, EpochKeys(key0), Report())
    try:
        found_id = read_store_info(layout).store_id
    except StoreError as err:
        if not layout.qubes_dir.is_dir():
            raise
        ctx.add(ERROR, None, f"{err} (store.json removed or replaced?)")
        found_id = store_id
    if found_id != store_id:
        ctx.add(
            ERROR,
            None,
            f"store.json says store id {found_id}, the verification key is for "
            f"{store_id}: wrong key, or store.json was replaced",
        )
    _check_key_file(ctx)
    names = qubes if qubes else _store_qubes(ctx)
    for qube in names:
        try:
            validate_qube_name(qube)
        except InvalidQubeName as err:
            ctx.add(ERROR, qube, f"not a qube name: {err}")
            continue
        if not layout.qube_dir(qube).is_dir():
            ctx.add(ERROR, qube, "no such qube in the store")
            continue
        ctx.report.qubes += 1
        _verify_qube(ctx, qube)
    return ctx.report


def _store_qubes(ctx: _Ctx) -> list[str]:
    names = ctx.layout.qubes()
    try:
        entries = os.listdir(ctx.layout.qubes_dir)
    except FileNotFoundError:
        ctx.add(WARNING, None, "the store has no qubes/ directory")
        return []
    for stray in sorted(set(entries) - set(names)):
        ctx.add(WARNING, None, f"qubes/{stray!r} is not a qube directory (ignored)")
    return names


def _check_key_file(ctx: _Ctx) -> None:
    """The current epoch, if the key file derives from ``K[0]``: seals cannot be newer."""
    path = ctx.layout.sealkey
    try:
        with path.open("rb") as stream:
            raw = stream.read(_RECORD_LEN)
    except FileNotFoundError:
        ctx.add(WARNING, None, f"{path} is missing: cannot tell which epoch the store is at")
        return
    except OSError as err:
        ctx.add(WARNING, None, f"{path}: cannot read: {err.strerror}")
        return
    try:
        store_id, epoch, key = _decode(raw, path)
    except SealError as err:
        ctx.add(ERROR, None, str(err))
        return
    if store_id != ctx.store_id or epoch > MAX_EPOCH or ctx.keys.key(epoch) != bytes(key):
        ctx.add(
            ERROR,
            None,
            f"the sealing key file (epoch {epoch}) does not derive from this verification "
            "key: wrong key, or the key file was replaced",
        )
        return
    ctx.key_epoch = epoch
    ctx.max_epoch = epoch


def _verify_qube(ctx: _Ctx, qube: str) -> None:
    _stray_files(ctx, qube)
    tombs = _check_tombs(ctx, qube)
    segments = {s.seq: s for s in ctx.layout.segments(qube)}
    newest = max(segments, default=0)
    head: bytes | None = genesis(ctx.store_id, qube)
    epoch = 0
    # Tombstones are compacted to the newest ones (docs/store-format.md):
    # segments below the oldest tombstone kept were deleted in order before it.
    compacted = min(tombs, default=1) - 1
    if compacted:
        ctx.add(INFO, qube, f"segments 1-{compacted} deleted by rotation (tombstones compacted)")
    for seq in range(compacted + 1, max([newest, *tombs]) + 1):
        files, tomb = segments.get(seq), tombs.get(seq)
        if files is None:
            if tomb is None:
                ctx.add(ERROR, qube, "segment missing, and no tombstone: deleted", seq)
            head = tomb.head if tomb is not None else None
            continue
        if tomb is not None and files.log is None:
            # Deleted with a tombstone, killed before the seal file went:
            # the collector finishes the deletion when it next runs.
            ctx.add(WARNING, qube, "tombstoned, removal interrupted (seal file left)", seq)
            head = tomb.head
            continue
        ctx.report.segments += 1
        end_head, end_epoch = _verify_segment(ctx, files, head, epoch, seq == newest)
        if tomb is not None:
            ctx.add(WARNING, qube, "tombstoned but still present (rotation interrupted)", seq)
            if end_head is not None and tomb.head != end_head:
                ctx.add(ERROR, qube, "its tombstone names another final chain head", seq)
        head, epoch = end_head, max(epoch, end_epoch)
    if not segments and not tombs:
        ctx.add(INFO, qube, "no segments")


def _stray_files(ctx: _Ctx, qube: str) -> None:
    known = {p.name for s in ctx.layout.segments(qube) for p in (s.log, s.seal) if p}
    for entry in sorted(os.listdir(ctx.layout.qube_dir(qube))):
        if entry not in known and entry not in _QUBE_FILES:
            ctx.add(WARNING, qube, f"unexpected file {entry!r} (not verified)")


def _numbered(parsed: SealFile) -> list[tuple[int, Seal]]:
    bad = {number for number, _ in parsed.bad_lines}
    total = len(parsed.seals) + len(bad)
    numbers = [n for n in range(1, total + 1) if n not in bad]
    return list(zip(numbers, parsed.seals, strict=True))


def _check_tombs(ctx: _Ctx, qube: str) -> dict[int, Seal]:
    path = ctx.layout.tombstones(qube)
    if not path.exists():
        return {}
    parsed = read_seal_file(path)
    for number, problem in parsed.bad_lines:
        ctx.add(ERROR, qube, f"tombstones.seal line {number}: {problem}")
    if parsed.torn_tail:
        ctx.add(WARNING, qube, "tombstones.seal ends in a torn line (crash while deleting)")
    tombs: dict[int, Seal] = {}
    prev: bytes | None = None  # the first line may follow compacted ones
    last_seq, last_epoch = 0, 0
    for number, seal in _numbered(parsed):
        key = ctx.key(seal.epoch)
        where = f"tombstones.seal line {number}"
        if key is None or not seal.mac_ok(key) or seal.kind != "tomb" or seal.qube != qube:
            ctx.add(ERROR, qube, f"{where}: not a tombstone sealed for {qube} with this key")
            continue
        if prev is not None and seal.prev != prev:
            ctx.add(ERROR, qube, f"{where}: does not link to the line before (lines removed)")
        if seal.seq <= last_seq or seal.epoch < last_epoch:
            ctx.add(ERROR, qube, f"{where}: out of order", seal.seq)
        tombs[seal.seq] = seal
        prev, last_seq, last_epoch = seal.mac, seal.seq, seal.epoch
    return tombs


def _verify_segment(
    ctx: _Ctx, files: SegmentFiles, head: bytes | None, min_epoch: int, newest: bool
) -> tuple[bytes | None, int]:
    """Check one segment; return its final chain head (None: unknown) and last epoch."""
    qube, seq = files.qube, files.seq
    if files.seal is None:
        lines = count_lines(files.log)[0] if files.log is not None else 0
        ctx.add(ERROR, qube, f"no seal file: lines 1-{lines} are not sealed", seq, 1, lines)
        return None, min_epoch
    parsed = read_seal_file(files.seal)
    anchors = _seal_lines(ctx, files, parsed, newest)
    if not anchors:
        ctx.add(ERROR, qube, "no valid seal line: nothing in this segment can be checked", seq)
        return None, min_epoch
    _check_open(ctx, files, anchors[0], head, min_epoch)
    intervals = _intervals(ctx, files, anchors)
    last = anchors[-1][1]
    if files.log is None:
        _missing_log(ctx, files, last, newest)
        return last.head, last.epoch
    with open_plain(files.log) as stream:
        result = check_data(stream, intervals, Reporter(ctx, qube, seq))
    ctx.report.bytes_hashed += result.bytes_hashed
    _check_end(ctx, files, last, anchors[-1][0], result, newest)
    return last.head, last.epoch


class Reporter:
    """Adapter handing :mod:`.verify_data` a way to report errors about one segment."""

    def __init__(self, ctx: _Ctx, qube: str, seq: int) -> None:
        self._ctx, self._qube, self._seq = ctx, qube, seq

    def __call__(self, first: int | None, last: int | None, message: str) -> None:
        self._ctx.add(ERROR, self._qube, message, self._seq, first, last)


def _seal_lines(
    ctx: _Ctx, files: SegmentFiles, parsed: SealFile, newest: bool
) -> list[tuple[int, Seal]]:
    """Authenticated seal lines (file line number, seal); report the others."""
    qube, seq = files.qube, files.seq
    for number, problem in parsed.bad_lines:
        ctx.add(ERROR, qube, f"seal line {number}: {problem}", seq)
    if parsed.torn_tail:
        severity = WARNING if newest else ERROR
        ctx.add(severity, qube, "the seal file ends in a torn line (crash while sealing)", seq)
    anchors, bad_mac, foreign = [], [], []
    for number, seal in _numbered(parsed):
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
    ctx: _Ctx, files: SegmentFiles, first: tuple[int, Seal], head: bytes | None, min_epoch: int
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


def _intervals(ctx: _Ctx, files: SegmentFiles, anchors: list[tuple[int, Seal]]) -> list[Interval]:
    """The byte spans between authenticated seals, with the seal-file rules checked."""
    qube, seq = files.qube, files.seq
    intervals = []
    number0, seal0 = anchors[0]
    if seal0.nbytes:  # no authenticated start: the bytes before cannot be checked
        intervals.append(_span(None, seal0, number0, False))
        ctx.add(ERROR, qube, f"lines 1-{seal0.lines} cannot be checked", seq, 1, seal0.lines)
    for (n0, a), (n1, b) in itertools.pairwise(anchors):
        problem = _pair_problem(n0, a, n1, b)
        if problem is None:
            intervals.append(_span(a, b, n1, True))
            continue
        ctx.add(ERROR, qube, problem, seq, a.lines + 1, max(b.lines, a.lines + 1))
        if b.nbytes >= a.nbytes and b.lines >= a.lines:
            intervals.append(_span(a, b, n1, False))
    return intervals


def _pair_problem(n0: int, a: Seal, n1: int, b: Seal) -> str | None:
    """What breaks the rules between two consecutive authenticated seal lines."""
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
            b.epoch > a.epoch + 1,
            f"seal line {n1}: epoch jumps from {a.epoch} to {b.epoch}: epochs without a seal "
            "(seal lines removed, or seals re-made with a later key)",
        ),
    )
    return next((message for broken, message in rules if broken), None)


def _missing_log(ctx: _Ctx, files: SegmentFiles, last: Seal, newest: bool) -> None:
    if newest and last.kind == "open":
        ctx.add(WARNING, files.qube, "only an open seal, no segment file (crash)", files.seq)
        return
    ctx.add(
        ERROR,
        files.qube,
        f"segment file missing (sealed with {last.lines} lines)",
        files.seq,
        1,
        last.lines,
    )


def _check_end(
    ctx: _Ctx, files: SegmentFiles, last: Seal, number: int, result: DataResult, newest: bool
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
    if not closed and newest and ctx.key_epoch is not None and last.epoch + 1 < ctx.key_epoch:
        ctx.add(
            ERROR,
            qube,
            f"open, but its seals stop at epoch {last.epoch} while the store is at epoch "
            f"{ctx.key_epoch}: later seal lines were removed (or the collector restarted "
            "without recovering it)",
            seq,
        )
