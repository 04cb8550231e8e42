"""The verifier: a store against its verification key (floor 2).

Implements "What a verifier checks" in docs/store-format.md: the store as a
whole (store.json, the key file, which key this is), then every qube
directory and every file in it (:mod:`.tombs` for deletions, :mod:`.segment`
for each segment), then, given the witness's records, :mod:`.witness`.
Returns one :class:`~.findings.Report` instead of printing.

Trust side: runs in the LogVM or on a copy of the store (a DispVM); every
file may have been replaced by an intruder, so each is ``lstat``-ed and read
only when it is a regular file (never a link, FIFO or device), bounded.
The only trusted inputs are ``K[0]`` and the witness's records.
"""

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ...core.errors import InvalidQubeName, StoreError
from ...core.names import validate_qube_name
from ...core.seal import EpochKeys, format2_store_id, genesis, parse_verification_key
from ..files import describe_mode, irregular
from ..keystate import read_store_info
from ..layout import SegmentFiles, StoreLayout
from ..sealfile import read_seal_file
from .context import VerifyRun
from .created import report_created
from .epochs import COPY_WITHOUT_EPOCHS, check_epochs
from .findings import ERROR, INFO, WARNING, Report, WrongKey
from .retired import check_retired
from .segment import verify_segment
from .times import note_epochs, print_epochs
from .tombs import Tombs, check_tombs
from .witness import witness_vouches

_SEGMENT_FILE = re.compile(r"([0-9]{8})\.(log|log\.zst|seal)")
#: Left by a killed rotation (compression temp file) or tombstone compaction.
_REMNANT = re.compile(r"[0-9]{8}\.log\.zst\.tmp|tombstones\.seal\.tmp")
#: Qubes probed for a seal that authenticates under the key.
_PROBE_QUBES = 16
WITHOUT_WITNESS = (
    "without the witness's records (--witness) a qube's newest closed segments, or a "
    "whole qube, can be removed, and the store rolled back, without this check seeing it"
)
#: Format 2: the epoch seals see those; what is left for the witness.
WITHOUT_WITNESS_V2 = (
    "without the witness's records (--witness) records sealed in the current epoch can be "
    "cut back, the whole store (key file, epoch seals and all) rolled back to an older "
    "copy, and, by an intruder who keeps the key for two epochs, the epoch seals re-made "
    "as a compacted file over newest segments or qubes removed, without this check seeing it"
)

COPY_WITHOUT_KEY_FILE = (
    "a forwarded copy has no key file: the epoch the LogVM had reached, and so whether "
    "its newest records were forwarded yet, cannot be seen here"
)


def verify_store(
    root: Path | str,
    verification_key: str,
    qubes: list[str] | None = None,
    witness: Path | str | None = None,
    *,
    copy: bool = False,
) -> Report:
    """Verify the store at ``root`` (all qubes, or the ones named).

    ``witness``: a ``logvm-witness export`` file to check the store against.
    ``copy``: ``root`` is a copy rebuilt from forwarded messages
    (store/forwarded.py), which has no key file by design.
    Raises :class:`WrongKey` when the key authenticates nothing in the store.
    """
    store_id, key0 = parse_verification_key(verification_key)
    layout = StoreLayout(root)
    ctx = VerifyRun(layout, store_id, EpochKeys.for_verifier(key0), Report())
    _check_store_json(ctx)
    names = _store_qubes(ctx)
    _check_key_file(ctx, names, Path(witness) if witness is not None else None, copy)
    if format2(ctx):
        if copy:
            ctx.report.limits.append(COPY_WITHOUT_EPOCHS)
        else:
            check_retired(ctx, names)
            check_epochs(ctx, names, qubes)
    for qube in qubes or names:
        try:
            validate_qube_name(qube)
        except InvalidQubeName as err:
            ctx.add(ERROR, qube, f"not a qube name: {err}")
            continue
        if qube not in names:
            ctx.add(ERROR, qube, "no such qube in the store")
            continue
        ctx.report.qubes += 1
        _verify_qube(ctx, qube)
    conclude(ctx, Path(witness) if witness is not None else None, qubes or None, copy)
    return ctx.report


def format2(ctx: VerifyRun) -> bool:
    """A format-2 store (seal epochs may jump: the store-wide epoch seals check them)."""
    if ctx.info is not None and ctx.info.format >= 2:
        ctx.epoch_jumps = True
    return ctx.epoch_jumps


def conclude(ctx: VerifyRun, witness: Path | None, qubes: list[str] | None, copy: bool) -> None:
    """After the qubes: the witness's records, or the limit of a check without them."""
    if witness is not None:
        from .witness import check_witness

        check_witness(ctx, witness, qubes)
        return
    print_epochs(ctx, [])
    if ctx.epoch_jumps and not copy:
        ctx.report.limits.append(WITHOUT_WITNESS_V2)
    else:
        ctx.report.limits.append(WITHOUT_WITNESS)


def _check_store_json(ctx: VerifyRun) -> None:
    # The verification key says whether the store was made in format 2
    # (core.seal.format2_store_id): store.json cannot downgrade the checks.
    made2 = format2_store_id(ctx.keys.key(0)) == ctx.store_id
    ctx.epoch_jumps = ctx.epoch_jumps or made2
    try:
        ctx.info = read_store_info(ctx.layout)
    except StoreError as err:
        if not os.path.lexists(ctx.layout.qubes_dir):
            raise  # not a store at all
        ctx.add(ERROR, None, f"{err} (store.json removed or replaced?)")
        return
    if made2 and ctx.info.format < 2:
        ctx.add(
            ERROR,
            None,
            f"store.json says format {ctx.info.format}, the verification key is of a store "
            "made in format 2: store.json was replaced (checked by the rules of format 2)",
        )
    if ctx.info.store_id != ctx.store_id:
        ctx.add(
            ERROR,
            None,
            f"store.json says store id {ctx.info.store_id}, the verification key is for "
            f"{ctx.store_id}: store.json was replaced",
        )


def _store_qubes(ctx: VerifyRun) -> list[str]:
    """The qube directories, each a real directory (not a link) with a valid name."""
    qubes_dir = ctx.layout.qubes_dir
    try:
        mode = os.lstat(qubes_dir).st_mode
        entries = sorted(os.listdir(qubes_dir)) if stat.S_ISDIR(mode) else []
    except FileNotFoundError:
        ctx.add(WARNING, None, "the store has no qubes/ directory")
        return []
    if not stat.S_ISDIR(mode):
        ctx.add(ERROR, None, f"qubes/ is {describe_mode(mode)}, not a directory (not read)")
        return []
    names = []
    for entry in entries:
        mode = os.lstat(qubes_dir / entry).st_mode
        try:
            validate_qube_name(entry)
        except InvalidQubeName:
            ctx.add(ERROR, None, f"qubes/{entry!r} is not a qube directory the collector makes")
            continue
        if not stat.S_ISDIR(mode):
            ctx.add(ERROR, entry, f"qubes/{entry} is {describe_mode(mode)}, not a directory")
            continue
        names.append(entry)
    return names


def _check_key_file(ctx: VerifyRun, names: list[str], witness: Path | None, copy: bool) -> None:
    """Whose key this is, and the epoch the store is at (seals cannot be newer)."""
    path = ctx.layout.sealkey
    try:
        kind = irregular(path)
    except FileNotFoundError:
        kind = "missing"
    found = ctx.read_key_file() if kind is None else None
    if found is not None and ctx.keys.key(found[0]) == found[1]:
        ctx.key_epoch = ctx.max_epoch = found[0]
        return
    has_seals, belongs = _probe_seals(ctx, names)
    foreign = has_seals or ctx.info is None or ctx.info.store_id != ctx.store_id
    if not belongs and foreign and witness is not None and witness_vouches(ctx, witness):
        ctx.add(
            ERROR,
            None,
            "no seal and no key file in the store authenticates under this key, yet the "
            "witness's checkpoints do: the store was replaced by another one",
        )
        return
    if not belongs and foreign:
        raise WrongKey(
            f"this key does not belong to this store (store {ctx.layout.root}: no seal "
            "and no key file authenticates under it; if it is the right key, every seal "
            "was replaced)"
        )
    if kind == "missing" and copy:
        ctx.report.limits.append(COPY_WITHOUT_KEY_FILE)
    elif kind == "missing" and has_seals:
        ctx.add(
            ERROR,
            None,
            f"{path} is missing in a store that has seals: the epoch the store is at "
            "cannot be checked (newest segments cut back could not be seen)",
        )
    elif kind is not None and kind != "missing":
        ctx.add(ERROR, None, f"{path} is {kind}, not a regular file (not read)")
    elif kind is None:
        ctx.add(
            ERROR,
            None,
            f"{path}: the sealing key file is damaged or does not derive from this "
            "verification key (replaced?)",
        )


def _probe_seals(ctx: VerifyRun, names: list[str]) -> tuple[bool, bool]:
    """(the store has seal lines, one of them authenticates under the key)."""
    has_seals = False
    for qube in names[:_PROBE_QUBES]:
        qube_dir = ctx.layout.qube_dir(qube)
        try:
            seals = sorted(e for e in os.listdir(qube_dir) if e.endswith(".seal"))
        except OSError:
            continue
        for name in seals[:2]:
            try:
                parsed = read_seal_file(qube_dir / name)
            except StoreError:
                continue
            for seal in parsed.seals[:1]:
                has_seals = True
                key = ctx.key(seal.epoch)
                if key is not None and seal.mac_ok(key):
                    return True, True
    return has_seals, False


@dataclass
class QubeFiles:
    """What a qube directory holds, every entry accounted for."""

    segments: dict[int, SegmentFiles] = field(default_factory=dict)
    doubled: dict[int, Path] = field(default_factory=dict)  # .log.zst next to .log
    tombstones: bool = False


def _list_qube(ctx: VerifyRun, qube: str) -> QubeFiles:
    """Every entry of a qube directory: regular files of known names, or a finding."""
    qube_dir = ctx.layout.qube_dir(qube)
    found: dict[int, dict[str, Path]] = {}
    listing = QubeFiles()
    for entry in sorted(os.listdir(qube_dir)):
        kind = irregular(qube_dir / entry)
        if kind is not None:
            ctx.add(ERROR, qube, f"{entry} is {kind}, not a regular file (not read)")
            continue
        match = _SEGMENT_FILE.fullmatch(entry)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = qube_dir / entry
        elif entry == "tombstones.seal":
            listing.tombstones = True
        elif _REMNANT.fullmatch(entry):
            ctx.add(WARNING, qube, f"{entry}: a temporary file a killed rotation left")
        elif entry != "lock":
            ctx.add(ERROR, qube, f"{entry}: not a file the collector or rotation makes")
    for seq, files in sorted(found.items()):
        log = files.get("log") or files.get("log.zst")
        if "log" in files and "log.zst" in files:
            listing.doubled[seq] = files["log.zst"]
        listing.segments[seq] = SegmentFiles(qube, seq, log, files.get("seal"))
    return listing


def _verify_qube(ctx: VerifyRun, qube: str) -> None:
    listing = _list_qube(ctx, qube)
    segments = listing.segments
    tombs = check_tombs(ctx, qube) if listing.tombstones else Tombs()
    newest = max(segments, default=0)
    ctx.tomb_lines[qube], ctx.newest_segment[qube] = tombs.lines, newest
    head: bytes | None = tombs.head if tombs.last else genesis(ctx.store_id, qube)
    _below_tombs(ctx, qube, segments, tombs)
    epoch = tombs.close_epoch
    for seq in range(tombs.last + 1, newest + 1):
        files = segments.get(seq)
        if files is None:
            ctx.add(ERROR, qube, "segment missing, and no tombstone: deleted", seq)
            head = None
            continue
        ctx.report.segments += 1
        end_head, end_epoch = verify_segment(
            ctx, files, head, epoch, seq == newest, listing.doubled.get(seq)
        )
        head, epoch = end_head, max(epoch, end_epoch)
        note_epochs(ctx, files, end_epoch)
        report_created(ctx, files)
    if not segments and not tombs.last:
        ctx.add(INFO, qube, "no segments")


def _below_tombs(
    ctx: VerifyRun, qube: str, segments: dict[int, SegmentFiles], tombs: Tombs
) -> None:
    """Files of segments that tombstones say are gone.

    Deletion always takes the oldest segment and writes its tomb before it
    removes the files, so only the newest tomb's segment may still be there
    (a deletion a crash interrupted); every older one is an error.
    """
    for seq, files in sorted(segments.items()):
        if seq > tombs.last:
            break
        if seq < tombs.last:
            ctx.add(
                ERROR,
                qube,
                f"a segment file below the newest tombstone (segment {tombs.last}): rotation "
                "deletes the oldest segment first, so this file was not left by it "
                "(placed or kept here; not covered by any seal chain)",
                seq,
            )
            continue
        ctx.add(WARNING, qube, "tombstoned, removal interrupted (files left)", seq)
        if files.seal is not None:
            try:
                parsed = read_seal_file(files.seal)
            except (StoreError, OSError) as err:  # a FIFO, a link, 256 MiB: named, not exit 2
                ctx.add(ERROR, qube, f"its seal file cannot be read: {err}", seq)
                continue
            if parsed.seals and parsed.seals[-1].head != tombs.head:
                ctx.add(ERROR, qube, "its tombstone names another final chain head", seq)
