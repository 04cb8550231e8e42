"""Checking a store against the witness's records (floor 2).

``logvm verify --witness FILE --key FILE``: FILE is what ``logvm-witness
export LOGVM`` wrote (first line ``logvm-witness-export-v1 <logvm> <store
id>``, then ``cp <witness time> <seal line>`` lines). Findings go into the
same report as the store's own checks.

Rules: every checkpoint must carry a correct MAC under the key, for an epoch
the store can have reached (at most the key file's epoch: no key is derived
for a claimed epoch beyond it); for each qube and segment the witness
checkpointed, the store must hold that exact seal line in the segment's
``.seal`` file, or a valid ``tomb`` for that segment that covers it (no
fewer records and bytes, deleted no earlier than checkpointed), or lie below
a compacted tombstone. A qube the witness knows but the store lacks was
deleted. What this catches: truncation and re-sealing (the checkpointed
seal is gone), forks (same position, other head), rollback to an older copy
(newest checkpoints missing), deletion of a qube.

Trust side: the store and the witness file may both have been tampered with
on the way, so both are parsed strictly and read only as regular files.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ...core.epochseal import EpochLine
from ...core.errors import StoreError
from ...core.retire import Retire
from ...core.seal import ZERO, Seal
from ...core.tomb import Tomb
from ...core.witness_format import (
    POLICY_PREFIX,
    CostLine,
    Held,
    SettingsLine,
    parse_export_header,
    parse_held_line,
    parse_policy_line,
)
from ..files import read_regular
from ..sealfile import read_seal_file
from .context import MAX_EPOCH, VerifyRun
from .deletions import check_deletions
from .epochs import state_matches, store_epoch_lines
from .findings import ERROR, INFO
from .policy import check_policy, report_settings
from .retired import retired_names, since_retirement
from .times import check_times, print_epochs, time_deletions

#: The witness keeps at most two generations of 16 MiB by default.
MAX_WITNESS_FILE = 256 << 20


@dataclass
class WitnessFile:
    """What ``logvm-witness export`` wrote."""

    logvm: str
    store_id: str
    held: list[tuple[bytes, Held]]
    policy: bytes | None  # the retention policy dom0 deployed (JSON), if any
    epoch_seconds: float | None  # the epoch length the LogVM registered, if it said
    created: str | None = None  # the creation time the LogVM registered, if it said


def read_witness_file(path: Path) -> WitnessFile:
    """An export, parsed strictly; StoreError if bad."""
    try:
        data = read_regular(path, MAX_WITNESS_FILE)
    except FileNotFoundError as err:
        raise StoreError(f"{path}: cannot read the witness file: {err.strerror}") from err
    lines = data.split(b"\n")
    logvm, store_id, seconds, created = parse_export_header(lines[0])
    found = WitnessFile(logvm, store_id, [], None, seconds, created)
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        try:
            if line.startswith(POLICY_PREFIX) and number == 2:
                found.policy = parse_policy_line(line)
            else:
                found.held.append(parse_held_line(line))
        except StoreError as err:
            raise StoreError(f"{path}: line {number}: {err}") from err
    return found


def witness_vouches(ctx: VerifyRun, path: Path) -> bool:
    """True when the witness's records are for this key (a checkpoint MACs under it)."""
    export = read_witness_file(path)
    if export.store_id != ctx.store_id:
        return False
    for _, seal in export.held[:16]:
        key = ctx.key(seal.epoch) if seal.epoch <= MAX_EPOCH else None
        if key is not None and seal.mac_ok(key):
            return True
    return False


@dataclass
class _Heard:
    """The witness's MAC-valid records, sorted out."""

    by_qube: dict[str, dict[int, list[Seal]]] = field(default_factory=dict)
    deletions: dict[str, tuple[bytes, Tomb]] = field(default_factory=dict)
    epochs: list[tuple[bytes, EpochLine]] = field(default_factory=list)
    newest: dict[str, tuple[bytes, Seal]] = field(default_factory=dict)  # furthest on, per qube
    newest_epoch: int = 0
    stamps: list[tuple[int, bytes]] = field(default_factory=list)  # (epoch, dom0 time)
    settings: list[tuple[bytes, SettingsLine]] = field(default_factory=list)
    costs: dict[str, list[tuple[bytes, CostLine]]] = field(default_factory=dict)
    retired: dict[str, tuple[bytes, Retire]] = field(default_factory=dict)

    def add(self, stamp: bytes, item: Held) -> None:
        self.newest_epoch = max(self.newest_epoch, item.epoch)
        self.stamps.append((item.epoch, stamp))
        if isinstance(item, CostLine):
            self.costs.setdefault(item.qube, []).append((stamp, item))
        elif isinstance(item, EpochLine):
            self.epochs.append((stamp, item))
        elif isinstance(item, SettingsLine):
            self.settings.append((stamp, item))
        elif isinstance(item, Retire):
            self.retired[item.qube] = (stamp, item)
        elif isinstance(item, Tomb):
            self.deletions[item.qube] = (stamp, item)
        else:
            self.by_qube.setdefault(item.qube, {}).setdefault(item.seq, []).append(item)
            held = self.newest.get(item.qube)
            if held is None or (item.seq, item.lines) >= (held[1].seq, held[1].lines):
                self.newest[item.qube] = (stamp, item)


def check_witness(ctx: VerifyRun, path: Path, qubes: list[str] | None) -> None:
    """Add every problem of the store against the witness's records to the report."""
    export = read_witness_file(path)
    logvm, file_store_id, held = export.logvm, export.store_id, export.held
    if file_store_id != ctx.store_id:
        ctx.add(
            ERROR,
            None,
            f"witness: the witness file of {logvm} is for store {file_store_id}, "
            f"the key for store {ctx.store_id}",
        )
        return
    cap = ctx.key_epoch if ctx.key_epoch is not None else MAX_EPOCH
    heard = _Heard()
    for stamp, item in sorted(held, key=lambda pair: pair[1].epoch):
        if qubes and isinstance(item, Seal | Tomb | CostLine | Retire) and item.qube not in qubes:
            continue
        if _authentic(ctx, stamp, item, cap):
            heard.add(stamp, item)
    for qube in sorted(heard.by_qube):
        _check_qube(ctx, qube, heard.by_qube[qube])
    check_times(ctx, heard.newest)
    if heard.epochs and not qubes:
        _check_store_epochs(ctx, heard.epochs)
    check_deletions(ctx, heard.deletions, heard.newest_epoch)
    _check_registered(ctx, export.epoch_seconds, export.created)
    if export.policy is not None:
        check_policy(ctx, export.policy, export.epoch_seconds, heard.costs, heard.newest_epoch)
    elif heard.deletions or ctx.tomb_lines or ctx.retired:
        ctx.report.limits.append(NO_POLICY)
    report_settings(ctx, heard.settings, export.policy)
    print_epochs(ctx, heard.stamps)
    time_deletions(ctx, heard.stamps)
    ctx.add(INFO, None, f"witness: {len(held)} records of {logvm} checked")


#: Printed when the witness file holds no policy and the store has deletions.
NO_POLICY = (
    "the witness holds no retention policy dom0 deployed for this LogVM (the Salt "
    "formula writes it): deletions are shown, not judged against one"
)


def _check_registered(ctx: VerifyRun, seconds: float | None, created: str | None) -> None:
    """store.json is the LogVM's word; the witness kept what the store registered: the
    epoch length (longer, segments look older) and the creation time (moved back,
    records dated before the store pass)."""
    if ctx.info is None:
        return
    info = ctx.info
    said = (
        (
            f"{seconds or 0:g} s",
            info.epoch_seconds == seconds,
            f"epochs last {info.epoch_seconds:g} s",
        ),
        (created, info.created == created, f"the store was created {info.created}"),
    )
    for (registered, agrees, claim), given in zip(said, (seconds, created), strict=True):
        if given is not None and not agrees:
            ctx.add(
                ERROR,
                None,
                f"witness: store.json says {claim}, the store registered {registered} with "
                "the witness: store.json was edited",
            )


def _authentic(ctx: VerifyRun, stamp: bytes, item: Held, cap: int) -> bool:
    """A record the witness holds: sealed with this key, in an epoch the store reached."""
    if isinstance(item, EpochLine | SettingsLine):
        what = "store-wide epoch seal" if isinstance(item, EpochLine) else "settings note"
        qube, seq = None, None
    elif isinstance(item, Tomb):
        what, qube, seq = "deletion", item.qube, item.last
    elif isinstance(item, CostLine):
        what, qube, seq = "cost note", item.qube, item.seq
    elif isinstance(item, Retire):
        what, qube, seq = "retirement", item.qube, item.tomb.last
    else:
        what, qube, seq = "checkpoint", item.qube, item.seq
    if item.epoch > cap and ctx.key(item.epoch) is None:
        ctx.add(
            ERROR,
            qube,
            f"witness: {what} of {stamp.decode()} claims epoch {item.epoch}, beyond "
            f"the store's epoch {cap}: store rolled back (or the witness file forged)",
            seq,
        )
        return False
    key = ctx.key(item.epoch)
    if key is None or not item.mac_ok(key):
        ctx.add(
            ERROR, qube, f"witness: {what} of {stamp.decode()} is not sealed with this key", seq
        )
        return False
    return True


def _check_store_epochs(ctx: VerifyRun, heard: list[tuple[bytes, EpochLine]]) -> None:
    """Format 2: the store-wide epoch seals the witness heard against state/epochs.seal."""
    store = store_epoch_lines(ctx)
    for stamp, line in heard:
        have = store.get(line.epoch)
        if have is not None and have != line:
            ctx.add(
                ERROR,
                None,
                f"witness: the store-wide seal of epoch {line.epoch} is not the one the witness "
                f"heard at {stamp.decode()} (re-made or replaced)",
            )
    stamp, newest = heard[-1]  # sorted by epoch
    top = max(store, default=None)
    if top is None or top < newest.epoch:
        ctx.add(
            ERROR,
            None,
            f"witness: the witness heard the store-wide seal of epoch {newest.epoch} at "
            f"{stamp.decode()}; state/epochs.seal stops at epoch "
            f"{'none' if top is None else top}: the store (or its epoch seals) rolled back",
        )
    elif newest.epoch not in store and state_matches(ctx, newest, _names(ctx, newest)) is not None:
        ctx.add(
            ERROR,
            None,
            f"witness: the qubes' sealed state at the end of epoch {newest.epoch} is not what "
            f"the witness heard at {stamp.decode()}: records cut back, segments or a qube removed",
        )


def _names(ctx: VerifyRun, line: EpochLine) -> list[str]:
    """The qubes an epoch line holds: the directories, and qubes retired since."""
    return sorted(set(ctx.layout.qubes()) | retired_names(ctx, line.epoch))


def _check_qube(ctx: VerifyRun, qube: str, by_seq: dict[int, list[Seal]]) -> None:
    layout = ctx.layout
    by_seq = since_retirement(ctx, qube, by_seq)
    if not by_seq:
        return
    if not layout.qube_dir(qube).is_dir():
        newest = max(by_seq)
        cp = max(by_seq[newest], key=lambda s: (s.lines, s.epoch))
        ctx.add(
            ERROR,
            qube,
            f"witness: the qube's directory is gone: its logs were deleted (checkpoint at "
            f"record {cp.lines} of segment {newest})",
            newest,
        )
        return
    tombs, compacted_to = _valid_tombs(ctx, qube)
    for seq in sorted(by_seq):
        seal_path = layout.segment_seal(qube, seq)
        try:
            seals: set[Seal] | None = set(read_seal_file(seal_path).seals)
        except (StoreError, OSError):
            seals = None
        for cp in sorted(by_seq[seq], key=lambda s: (s.lines, s.nbytes, s.epoch)):
            if seals is not None and cp in seals:
                continue
            if seals is None and seq <= compacted_to:
                break  # deleted before the tombstones were compacted
            message = _check_segment(ctx, qube, cp, seals, tombs.get(seq))
            if message is not None:
                # The earliest checkpoint the store fails is the position to report.
                ctx.add(ERROR, qube, f"witness: {message} (checkpoint at record {cp.lines})", seq)
                break


def _valid_tombs(ctx: VerifyRun, qube: str) -> tuple[dict[int, Tomb], int]:
    """The qube's valid tombs by segment, and how far compaction summed them up."""
    tombs: dict[int, Tomb] = {}
    compacted_to = 0
    for tomb in ctx.tomb_lines.get(qube, []):
        if tomb.kind == "summary":
            compacted_to = tomb.last
        elif tomb.version == 1 and tomb.prev != ZERO and not tombs:
            compacted_to = tomb.last - 1
            tombs[tomb.last] = tomb
        else:
            tombs[tomb.last] = tomb
    return tombs, compacted_to


def _check_segment(
    ctx: VerifyRun, qube: str, cp: Seal, seals: set[Seal] | None, tomb: Tomb | None
) -> str | None:
    """Why the store does not hold checkpoint ``cp`` (None: a tombstone covers it)."""
    if tomb is not None:
        return _check_tomb(cp, tomb)
    if seals is None:
        newest = max((s.seq for s in ctx.layout.segments(qube)), default=0)
        if newest < cp.seq:
            return (
                f"segment missing: the store's newest segment is {newest:08d} "
                "(rolled back to an older copy, or deleted)"
            )
        return "segment deleted without a tombstone"
    sealed = max((s.lines for s in seals), default=0)
    if sealed < cp.lines:
        return (
            f"truncated: the store seals {sealed} records, the witness saw {cp.lines} "
            f"(checkpoint of epoch {cp.epoch})"
        )
    # The store goes on past the checkpoint without the checkpointed seal:
    # its seals there were re-made, over other bytes or the same ones.
    return "the chain forks from the checkpoint (its seal is not in the store)"


def _check_tomb(cp: Seal, tomb: Tomb) -> str | None:
    if tomb.records < cp.lines or tomb.nbytes < cp.nbytes:
        return f"tombstone claims {tomb.records} records, fewer than checkpointed"
    if tomb.epoch < cp.epoch:
        return "tombstone is older than the checkpoint"
    return None
