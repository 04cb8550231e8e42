"""Checking a store against the witness's checkpoints (floor 2).

Interface for ``logvm verify --witness FILE --key FILE``::

    problems = check_witness(store_root, witness_file, verification_key)

- ``store_root``: the store directory (``/var/lib/qubes-logvm``);
- ``witness_file``: what ``logvm-witness export LOGVM`` wrote (first line
  ``logvm-witness-export-v1 <logvm> <store id>``, then ``cp <time> <seal>``);
- ``verification_key``: the ``logvm-vk1:<store id>:<K0>`` text (from the
  admin's copy or ``logvm-witness export-key LOGVM``);
- returns a list of :class:`WitnessProblem` (empty: every checkpoint is
  accounted for). Each names the qube, the segment and the checkpointed
  record count; ``str()`` gives the line to print. Raises StoreError only
  when the witness file or key cannot be read at all.

Rules: every checkpoint must carry a correct MAC under the key; for each
qube and segment the witness checkpointed, the store must hold that exact
seal line in the segment's ``.seal`` file, or a valid ``tomb`` for that
segment that covers it (no fewer records and bytes, the same head when the
counts are equal, deleted no earlier than checkpointed). A qube the witness
knows but the store lacks was deleted. What this catches: truncation and
re-sealing (the checkpointed seal is gone), forks (same position, other
head), rollback to an older copy (newest checkpoints missing), deletion.
The store's own consistency (hashes, chain links, MACs of every seal) is
:mod:`.verify`'s part; both must pass.

Trust side: runs wherever verification runs; the store and the witness file
may both have been tampered with on the way, so both are parsed strictly.
"""

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StoreError
from ..core.seal import Seal, parse_verification_key
from ..core.witness_format import EpochKeys, parse_cp_line, parse_export_header
from .keystate import read_store_info
from .layout import StoreLayout
from .sealfile import read_seal_file

#: The witness keeps at most two generations of 16 MiB by default.
MAX_WITNESS_FILE = 256 << 20


@dataclass(frozen=True)
class WitnessProblem:
    """One checkpoint the store does not account for."""

    qube: str
    segment: int | None
    lines: int | None  # records the witness saw in that segment
    message: str

    def __str__(self) -> str:
        where = self.qube
        if self.segment is not None:
            where += f" segment {self.segment:08d}"
        if self.lines is not None:
            where += f" (checkpoint at record {self.lines})"
        return f"{where}: {self.message}"


def read_witness_file(path: Path | str) -> tuple[str, str, list[tuple[bytes, Seal]]]:
    """(LogVM name, store id, checkpoints) from an export; StoreError if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_WITNESS_FILE + 1)
    except OSError as err:
        raise StoreError(f"{path}: cannot read the witness file: {err.strerror}") from err
    if len(data) > MAX_WITNESS_FILE:
        raise StoreError(f"{path}: witness file larger than {MAX_WITNESS_FILE} bytes")
    lines = data.split(b"\n")
    logvm, store_id = parse_export_header(lines[0])
    checkpoints = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        try:
            checkpoints.append(parse_cp_line(line))
        except StoreError as err:
            raise StoreError(f"{path}: line {number}: {err}") from err
    return logvm, store_id, checkpoints


def check_witness(
    store_root: Path | str, witness_file: Path | str, verification_key: str
) -> list[WitnessProblem]:
    """Every problem of the store against the witness's checkpoints."""
    key_store_id, key0 = parse_verification_key(verification_key)
    logvm, file_store_id, checkpoints = read_witness_file(witness_file)
    layout = StoreLayout(store_root)
    problems = []
    if file_store_id != key_store_id:
        problems.append(
            WitnessProblem(
                "-",
                None,
                None,
                f"the witness file of {logvm} is for store {file_store_id}, "
                f"the key for store {key_store_id}",
            )
        )
    store_id = read_store_info(layout).store_id
    if store_id != key_store_id:
        problems.append(
            WitnessProblem("-", None, None, f"store {store_id} is not the key's {key_store_id}")
        )
    keys = EpochKeys(key0)
    by_qube: dict[str, dict[int, list[Seal]]] = {}
    for stamp, seal in sorted(checkpoints, key=lambda item: item[1].epoch):
        if not seal.mac_ok(keys.key(seal.epoch)):
            problems.append(
                WitnessProblem(
                    seal.qube,
                    seal.seq,
                    seal.lines,
                    f"checkpoint of {stamp.decode()} is not sealed with this key",
                )
            )
            continue
        by_qube.setdefault(seal.qube, {}).setdefault(seal.seq, []).append(seal)
    for qube in sorted(by_qube):
        problems.extend(_check_qube(layout, keys, qube, by_qube[qube]))
    return problems


def _check_qube(
    layout: StoreLayout, keys: EpochKeys, qube: str, by_seq: dict[int, list[Seal]]
) -> list[WitnessProblem]:
    newest = max(by_seq)
    if not layout.qube_dir(qube).is_dir():
        cp = max(by_seq[newest], key=lambda s: (s.lines, s.epoch))
        return [
            WitnessProblem(
                qube, newest, cp.lines, "the qube's directory is gone: its logs were deleted"
            )
        ]
    tombs = _valid_tombs(layout, keys, qube)
    problems = []
    for seq in sorted(by_seq):
        seal_path = layout.segment_seal(qube, seq)
        seals = set(read_seal_file(seal_path).seals) if seal_path.exists() else None
        for cp in sorted(by_seq[seq], key=lambda s: (s.lines, s.nbytes, s.epoch)):
            if seals is not None and cp in seals:
                continue
            if seals is None and tombs and seq < min(tombs):
                break  # deleted in order before the oldest tombstone kept (compacted)
            message = _check_segment(layout, qube, cp, seals, tombs.get(seq))
            if message is not None:
                # The earliest checkpoint the store fails is the position to report.
                problems.append(WitnessProblem(qube, seq, cp.lines, message))
                break
    return problems


def _valid_tombs(layout: StoreLayout, keys: EpochKeys, qube: str) -> dict[int, Seal]:
    path = layout.tombstones(qube)
    if not path.exists():
        return {}
    return {
        tomb.seq: tomb
        for tomb in read_seal_file(path).seals
        if tomb.kind == "tomb" and tomb.qube == qube and tomb.mac_ok(keys.key(tomb.epoch))
    }


def _check_segment(
    layout: StoreLayout, qube: str, cp: Seal, seals: set[Seal] | None, tomb: Seal | None
) -> str | None:
    """Why the store does not hold checkpoint ``cp`` (None: a tombstone covers it)."""
    if tomb is not None:
        return _check_tomb(cp, tomb)
    if seals is None:
        return _missing_segment(layout, qube, cp)
    sealed = max((s.lines for s in seals), default=0)
    if sealed < cp.lines:
        return (
            f"truncated: the store seals {sealed} records, the witness saw {cp.lines} "
            f"(checkpoint of epoch {cp.epoch})"
        )
    # The store goes on past the checkpoint without the checkpointed seal:
    # its seals there were re-made, over other bytes or the same ones.
    return "the chain forks from the checkpoint (its seal is not in the store)"


def _missing_segment(layout: StoreLayout, qube: str, cp: Seal) -> str:
    newest = max((s.seq for s in layout.segments(qube)), default=0)
    if newest < cp.seq:
        return (
            f"segment missing: the store's newest segment is {newest:08d} "
            "(rolled back to an older copy, or deleted)"
        )
    return "segment deleted without a tombstone"


def _check_tomb(cp: Seal, tomb: Seal) -> str | None:
    if tomb.lines < cp.lines or tomb.nbytes < cp.nbytes:
        return f"tombstone claims {tomb.lines} records, fewer than checkpointed"
    if tomb.epoch < cp.epoch:
        return "tombstone is older than the checkpoint"
    return None
