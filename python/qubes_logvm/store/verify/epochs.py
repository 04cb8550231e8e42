"""The verifier's check of the store-wide epoch seals of format 2 (floor 2).

Implements "Version 2" of docs/store-format.md: ``state/epochs.seal`` must
be a chain of MAC-valid lines, one per epoch or a gap line saying which were
not sealed; its newest epoch line must be at least the key file's epoch - 1;
and its Merkle root must equal the root of every chain's state as the store
holds it at that epoch (per qube: the newest seal with an epoch up to it, or
the newest tomb). An intruder holding ``K[E]`` cannot re-make the line of
epoch ``E-1``, so cutting back a qube's records sealed before ``E``, removing
its newest closed segments, or removing a whole qube is an error here,
without the witness.

Trust side: every line is authenticated before it counts; the leaves sidecar
(``state/epoch-leaves``) is unauthenticated and used only to name the qube
that differs, and only when its own root equals the authenticated one.
"""

from collections.abc import Iterator
from pathlib import Path

from ...core.epochseal import EpochLine, Leaf, parse_epoch_line, root_of
from ...core.errors import StoreError
from ...core.seal import ZERO, parse_seal
from ..epochfile import MAX_EPOCH_FILE, epochs_path, leaf_of_seal, leaf_of_tomb, leaves_path
from ..files import irregular, read_regular
from ..sealfile import MAX_SEAL_FILE
from ..tombstones import read_tomb_file
from .context import VerifyRun
from .findings import ERROR, WARNING
from .retired import retired_leaf, retired_names

COPY_WITHOUT_EPOCHS = (
    "a forwarded copy has no store-wide epoch seals: removed newest records, segments or "
    "qubes of the LogVM are seen here only with the witness"
)


def gap_limit(first: int, last: int) -> str:
    """The limit a gap line sets (printed by verify)."""
    return (
        f"epochs {first}-{last} were not sealed store-wide (the collector could not write "
        "state/epochs.seal): records cut back inside those epochs are seen only with the witness"
    )


def check_epochs(ctx: VerifyRun, names: list[str], only: list[str] | None = None) -> None:
    """All checks of the epoch file (format-2 stores only).

    ``only``: the qubes asked for (a snapshot may hold no others): the root is
    then checked qube by qube, through the sidecar the root authenticates.
    """
    only = only or None  # no qube named: every qube
    path = epochs_path(ctx.layout)
    kind = _kind(path)
    if kind == "missing":
        if ctx.key_epoch is not None and ctx.key_epoch >= 2:
            ctx.add(
                ERROR,
                None,
                f"{path} is missing: the store-wide epoch seals were removed (newest records, "
                "segments or qubes removed could not be seen)",
            )
        return
    if kind is not None:
        ctx.add(ERROR, None, f"{path} is {kind}, not a regular file (not read)")
        return
    sidecar = _kind(leaves_path(ctx.layout))
    if sidecar not in (None, "missing"):  # unauthenticated: never read, only named
        ctx.add(WARNING, None, f"state/epoch-leaves is {sidecar}, not a regular file (not read)")
    lines = _authenticated(ctx, read_regular(path, MAX_EPOCH_FILE))
    newest = _newest(ctx, lines)
    if newest is not None:
        names = sorted(set(names) | retired_names(ctx, newest.epoch))
        _check_root(ctx, newest, [n for n in names if only is None or n in only], only)


def _kind(path: Path) -> str | None:
    try:
        return irregular(path)
    except FileNotFoundError:
        return "missing"


def _authenticated(ctx: VerifyRun, data: bytes) -> list[EpochLine]:
    """The MAC-valid lines, in order; links and epochs between them checked."""
    body, _, torn = data.rpartition(b"\n")
    if torn:
        ctx.add(WARNING, None, "state/epochs.seal ends in a torn line (crash while sealing)")
    good: list[EpochLine] = []
    for number, raw in enumerate(body.split(b"\n") if body else [], start=1):
        try:
            line = parse_epoch_line(raw)
        except StoreError as err:
            ctx.add(ERROR, None, f"state/epochs.seal line {number}: {err}")
            continue
        key = ctx.key(line.epoch)
        if key is None or not line.mac_ok(key):
            ctx.add(ERROR, None, f"state/epochs.seal line {number}: MAC wrong (forged or re-made)")
            continue
        if number == 1:
            _check_first(ctx, line)
        if good and line.prev != good[-1].mac:
            ctx.add(
                ERROR,
                None,
                f"state/epochs.seal line {number}: does not follow the line before "
                "(lines removed or replaced)",
            )
        _check_step(ctx, good[-1] if good else None, line, number)
        good.append(line)
    return good


def _check_first(ctx: VerifyRun, line: EpochLine) -> None:
    """The file's first line: the store's first (epoch 1, or a gap from 1), or one
    compaction kept, which links to the line it dropped (prev not zeros)."""
    start = line.a if line.kind == "gap" else line.epoch
    if line.prev == ZERO and start != 1:
        ctx.add(
            ERROR,
            None,
            f"state/epochs.seal starts at epoch {start} with no line before it (prev zeros: "
            "not compacted), yet a store's epoch seals start at epoch 1: the file was "
            "re-made without the lines of earlier epochs",
        )


def _check_step(ctx: VerifyRun, before: EpochLine | None, line: EpochLine, number: int) -> None:
    if line.kind == "gap":
        ctx.add(WARNING, None, f"store-wide epoch seals missing for epochs {line.a}-{line.b}")
        ctx.report.limits.append(gap_limit(line.a, line.b))
    if before is None:
        return
    expected = before.epoch + 1 if before.kind == "epoch" else before.b + 1
    start = line.a if line.kind == "gap" else line.epoch
    if start != expected:
        ctx.add(
            ERROR,
            None,
            f"state/epochs.seal line {number}: epoch {start} follows epoch {expected - 1} "
            "(epoch lines removed)",
        )


def _newest(ctx: VerifyRun, lines: list[EpochLine]) -> EpochLine | None:
    """The epoch line the root is checked at: the newest below the key file's epoch."""
    limit = ctx.key_epoch - 1 if ctx.key_epoch is not None else None
    epochs = [line for line in lines if line.kind == "epoch"]
    usable = [line for line in epochs if limit is None or line.epoch <= limit]
    top = usable[-1].epoch if usable else None
    if limit is not None and limit >= 1 and (top is None or top < limit):
        ctx.add(
            ERROR,
            None,
            f"state/epochs.seal stops at epoch {top if top is not None else 'none'} while the "
            f"key file is at epoch {ctx.key_epoch}: newer epoch seals were removed (the file "
            "rolled back or cut), or the collector could not write them",
        )
    return usable[-1] if usable else None


def leaf_at(ctx: VerifyRun, qube: str, epoch: int) -> Leaf | None:
    """A qube's state as the store holds it at the end of ``epoch``."""
    for files in reversed(ctx.layout.segments(qube)):
        if files.seal is None:
            continue
        try:
            data = read_regular(files.seal, MAX_SEAL_FILE)
        except (OSError, StoreError):
            continue
        for raw in _lines_newest_first(data):
            try:
                seal = parse_seal(raw)
            except StoreError:
                continue
            if seal.epoch <= epoch and (seal.qube, seal.seq) == (qube, files.seq):
                return leaf_of_seal(seal)
    try:
        tombs = read_tomb_file(ctx.layout.tombstones(qube)).tombs
    except (OSError, StoreError):
        return None
    for _, tomb in reversed(tombs):
        if tomb.close_epoch <= epoch:
            return leaf_of_tomb(tomb)
    return retired_leaf(ctx, qube, epoch)


def _lines_newest_first(data: bytes) -> Iterator[bytes]:
    """The complete lines of ``data``, the last first (no split of the whole file:
    the line looked for is nearly always the last)."""
    stop = data.rfind(b"\n")
    while stop >= 0:
        start = data.rfind(b"\n", 0, stop) + 1
        yield data[start:stop]
        stop = start - 1


def state_matches(ctx: VerifyRun, line: EpochLine, names: list[str]) -> list[Leaf] | None:
    """None when the chains' state at the end of ``line.epoch`` gives its root, else the leaves."""
    leaves = [leaf for qube in names if (leaf := leaf_at(ctx, qube, line.epoch)) is not None]
    if root_of(leaves) == line.root and len(leaves) == line.a:
        return None
    return leaves


def store_epoch_lines(ctx: VerifyRun) -> dict[int, EpochLine]:
    """The MAC-valid epoch lines of ``state/epochs.seal`` by epoch (quietly: check_epochs
    reports what is wrong with the file)."""
    try:
        data = read_regular(epochs_path(ctx.layout), MAX_EPOCH_FILE)
    except (OSError, StoreError):
        return {}
    found: dict[int, EpochLine] = {}
    for raw in data.split(b"\n")[:-1]:
        try:
            line = parse_epoch_line(raw)
        except StoreError:
            continue
        key = ctx.key(line.epoch)
        if line.kind == "epoch" and key is not None and line.mac_ok(key):
            found[line.epoch] = line
    return found


def _check_root(ctx: VerifyRun, line: EpochLine, names: list[str], only: list[str] | None) -> None:
    if only is None:
        found = state_matches(ctx, line, names)
        if found is None:
            return
        leaves = found
    else:
        leaves = [leaf for qube in names if (leaf := leaf_at(ctx, qube, line.epoch)) is not None]
    if _named(ctx, line, {leaf.qube: leaf for leaf in leaves}, only):
        return
    if only is not None:
        ctx.add(
            ERROR,
            None,
            f"the qubes named cannot be checked against the store-wide seal of epoch "
            f"{line.epoch}: state/epoch-leaves is missing or not the one it sealed",
        )
        return
    ctx.add(
        ERROR,
        None,
        f"the qubes' sealed state at the end of epoch {line.epoch} does not match the "
        f"store-wide epoch seal ({line.a} qubes sealed, {len(leaves)} found): records cut "
        "back, or segments or a qube removed",
    )


def _deleted_since(ctx: VerifyRun, leaf: Leaf, epoch: int) -> bool:
    """The sealed state lay in a segment deleted after ``epoch`` (a tomb written since says
    so: shown as a deletion), so the store cannot hold it any more. The tomb's own epoch
    counts, not the segment's close epoch: a segment closed in ``epoch`` and deleted in the
    next (a flood under a small quota) is the sealed state and then gone, and a compacted
    summary written since stands for it."""
    try:
        tombs = read_tomb_file(ctx.layout.tombstones(leaf.qube)).tombs
    except (OSError, StoreError):
        return False
    return any(
        tomb.first <= leaf.seq <= tomb.last
        and tomb.epoch > epoch
        and tomb.records >= leaf.lines
        and tomb.nbytes >= leaf.nbytes
        for _, tomb in tombs
    )


def _named(
    ctx: VerifyRun, line: EpochLine, found: dict[str, Leaf], only: list[str] | None
) -> bool:
    """Compare qube by qube with the sidecar, when its root is the sealed one; True if so."""
    try:
        text = read_regular(leaves_path(ctx.layout), MAX_EPOCH_FILE).decode("ascii")
        sealed = [_parse_leaf(row) for row in text.splitlines()]
    except (OSError, StoreError, ValueError):
        return False
    if root_of(sealed) != line.root:
        return False
    for leaf in sealed:
        have = found.get(leaf.qube)
        if have == leaf or (only is not None and leaf.qube not in only):
            continue
        if _deleted_since(ctx, leaf, line.epoch):
            continue
        now = "nothing" if have is None else f"segment {have.seq} with {have.lines} records"
        ctx.add(
            ERROR,
            leaf.qube,
            f"the store-wide seal of epoch {line.epoch} has segment {leaf.seq} with "
            f"{leaf.lines} records ({leaf.nbytes} bytes); the store has {now} sealed by then: "
            + ("the qube was removed" if have is None else "newest records or segments removed"),
            None if have is None else leaf.seq,
        )
    for qube in sorted(set(found) - {leaf.qube for leaf in sealed}):
        ctx.add(ERROR, qube, f"not in the store-wide seal of epoch {line.epoch} (placed here)")
    return True


def _parse_leaf(row: str) -> Leaf:
    qube, seq, lines, nbytes, head = row.split(" ")
    return Leaf(qube, int(seq), int(lines), int(nbytes), bytes.fromhex(head))
