"""The per-qube chain writer and the store that seals every epoch (floor 2).

Trust side: runs in the LogVM, inside the collector, the only process that
holds the sealing key. It appends bytes that the collector has already
escaped, bounded and formatted as record lines.

Order of writes, so that a crash at any moment loses nothing acknowledged:
records are appended and fdatasync'ed, then a seal line covering them is
appended and fdatasync'ed, and only then may the collector acknowledge
(:meth:`QubeChain.append_sealed` keeps it, writing on a helper thread while
it hashes).
Bytes written but not sealed are sealed as ``recover`` when the collector
starts again (their sender was never told they are stored, so it sends them
again: delivery is at least once).

Concurrency contract: one :class:`QubeChain` per qube, used by one task at a
time; :meth:`Store.tick` must not run while a chain's :meth:`QubeChain.seal`
runs. The per-qube ``lock`` file is flocked around changes that rotation must
not overlap (opening, closing, deleting segments).
"""

import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.epochseal import EpochLine
from ..core.errors import StoreError
from ..core.faults import fail_point
from ..core.records import format_timestamp, note_record
from ..core.retire import Retire
from ..core.seal import FINAL_KINDS, ZERO, ChainHasher, Seal, genesis
from ..core.tomb import Tomb
from ..daemon_support import fsync_dir
from .epochfile import EpochFile, leaf_of_seal
from .keystate import KeyState
from .layout import SegmentFiles, StoreLayout, qube_locked
from .remnant import is_opening_remnant, seal_covers_log
from .retired import RetiredFile, retirable
from .sealfile import read_seal_file
from .tombreserve import TombReserve
from .tombstones import TombstoneFile

log = logging.getLogger(__name__)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


#: Buffers per ``writev`` call at most (Linux's IOV_MAX).
_IOV_MAX = 1024


def _write_parts(fd: int, parts: Sequence[bytes]) -> None:
    """Write all of ``parts`` in order: one ``writev`` for most batches, no join."""
    views = [memoryview(part) for part in parts if part]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + _IOV_MAX])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


def _write_all(fd: int, data: bytes) -> None:
    _write_parts(fd, (data,))


def _write_durable(fd: int, parts: Sequence[bytes]) -> None:
    _write_parts(fd, parts)
    os.fdatasync(fd)


#: Batches written and fdatasynced at once (:meth:`QubeChain.append_sealed`,
#: one per chain thread of the collector); more wait for a thread. Threads
#: start on first use.
HELPER_THREADS = 4
_helpers = concurrent.futures.ThreadPoolExecutor(HELPER_THREADS, thread_name_prefix="durable")


class QubeChain:
    """One qube's chain: its newest segment and the head of its hash chain."""

    def __init__(
        self,
        layout: StoreLayout,
        store_id: str,
        qube: str,
        on_seal: Callable[[Seal], None] | None = None,
        on_tomb: Callable[[Tomb], None] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.clock = clock  # wall clock for note stamps (tests inject one)
        self.on_seal = on_seal  # e.g. the witness's checkpoint queue
        self._on_tomb = on_tomb  # every deletion, reported to the witness too
        self.qube = qube
        self.dir = layout.qube_dir(qube)
        self.seq = 0
        self.head = genesis(store_id, qube)
        self.lines = 0  # records in the open segment, sealed or not
        self.nbytes = 0
        self.sealed_lines = 0
        self.sealed_nbytes = 0
        self.is_open = False
        self.needs_recovery = False
        self.last_seal: Seal | None = None
        self._prev_mac = ZERO
        self._hasher = ChainHasher(self.head)
        self._log_fd = -1
        self._seal_fd = -1
        self._dirty = False
        self._half_open: SegmentFiles | None = None
        self._torn_seal = 0  # bytes of a seal line a crash cut short
        self._seal_size = 0  # bytes of the open segment's seal file, all whole lines
        self.broken = False  # a write could not be cut back: Store.chain reloads it
        #: Format 2: told every new seal (the store-wide epoch seal's leaves).
        self.on_leaf: Callable[[Seal], None] | None = None
        self._load()

    # -- loading -----------------------------------------------------------

    def _load(self) -> None:
        self.tombstones = TombstoneFile(self.layout, self.qube, self._on_tomb)
        segments = self.layout.segments(self.qube)
        last_tomb = self.tombstones.newest
        if segments and segments[-1].seal is not None:
            parsed = read_seal_file(segments[-1].seal)
            if parsed.seals:
                self._adopt(parsed.seals[-1])
                if parsed.torn_tail and self.needs_recovery:
                    # A seal line a crash cut short never covered anything
                    # acknowledged; recovery cuts it before sealing again.
                    self._torn_seal = len(parsed.torn_tail)
                return
            if not is_opening_remnant(segments[-1], parsed, newest=True):
                raise StoreError(f"{segments[-1].name}: seal file has no complete seal line")
            self._load_half_open(segments, last_tomb)
            return
        if segments:
            raise StoreError(f"{segments[-1].name}: segment without seal file")
        if last_tomb is not None:
            self.seq, self.head = last_tomb.last, last_tomb.head

    def _load_half_open(self, segments: list[SegmentFiles], last_tomb: Tomb | None) -> None:
        """An opening remnant (:mod:`.remnant`): recovery removes it; the chain goes
        on from the segment before, the newest tombstone, or the genesis head."""
        half_open, before = segments[-1], segments[:-1]
        if before:
            previous = read_seal_file(before[-1].seal).seals if before[-1].seal else []
            if not previous or previous[-1].kind not in FINAL_KINDS:
                raise StoreError(f"{half_open.name}: opened while {before[-1].name} is not closed")
            self._adopt(previous[-1])
        elif last_tomb is not None:
            self.seq, self.head = last_tomb.last, last_tomb.head
        if half_open.seq != self.seq + 1:
            raise StoreError(f"{half_open.name}: not the segment after {self.seq:08d}")
        self._half_open = half_open
        self.needs_recovery = True

    def _adopt(self, seal: Seal) -> None:
        self.seq = seal.seq
        self.head = seal.head
        self.last_seal = seal
        self._prev_mac = seal.mac
        self.sealed_lines = self.lines = seal.lines
        self.sealed_nbytes = self.nbytes = seal.nbytes
        self.needs_recovery = seal.kind not in FINAL_KINDS

    # -- writing -----------------------------------------------------------

    def recover(self, keys: KeyState) -> int:
        """Seal what a crash left open (``recover`` seal); return records recovered."""
        if not self.needs_recovery:
            return 0
        if self._half_open is not None:
            for path in (self._half_open.log, self._half_open.seal):
                if path is not None:
                    path.unlink(missing_ok=True)
            fsync_dir(self.dir)
            log.warning("%s: removed a segment whose opening a crash cut", self._half_open.name)
            self._half_open = None
            self.needs_recovery = False
            return 0
        if self._torn_seal:
            seal_path = self.layout.segment_seal(self.qube, self.seq)
            with seal_path.open("r+b") as stream:
                stream.truncate(os.fstat(stream.fileno()).st_size - self._torn_seal)
                os.fsync(stream.fileno())
            log.warning("%s: cut a seal line a crash left torn", seal_path)
            self._torn_seal = 0
        log_path = self.layout.segment_log(self.qube, self.seq)
        fd = os.open(log_path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if not seal_covers_log(self.sealed_nbytes, size):
                raise StoreError(
                    f"{log_path}: {size} bytes, but its seals cover {self.sealed_nbytes} "
                    "(damaged or cut short; never left by a crash)"
                )
            tail = os.pread(fd, size - self.sealed_nbytes, self.sealed_nbytes)
            keep = tail.rfind(b"\n") + 1
            if keep < len(tail):
                # A torn record (killed mid-write) was never acknowledged: its
                # sender sends it again, so cutting it loses nothing.
                log.warning("%s: cutting %d bytes of a torn record", log_path, len(tail) - keep)
                os.ftruncate(fd, self.sealed_nbytes + keep)
                os.fsync(fd)
        finally:
            os.close(fd)
        self._open_fds(create=False)
        self._hasher = ChainHasher(self.head)
        self._hasher.update(tail[:keep])
        recovered = tail[:keep].count(b"\n")
        self.lines += recovered
        self.nbytes += keep
        self._dirty = False
        try:
            self.seal(keys, "recover")
        except BaseException:
            self._close_fds()  # nothing sealed: loading again starts over
            raise
        return recovered

    def open_segment(
        self, keys: KeyState, *, stamp: float | None = None, **session: str | int
    ) -> None:
        """Start a new segment (a session, or a roll-over) and note it (at ``stamp``,
        default now: no later than the first record that follows)."""
        if self.is_open:
            raise StoreError(f"{self.qube}: a segment is open already")
        if self.needs_recovery:
            raise StoreError(f"{self.qube}: recover the last segment first")
        with self.locked():
            if not self.dir.exists():
                self.dir.mkdir(parents=True)
                fsync_dir(self.dir.parent)
            self.seq += 1
            self.lines = self.nbytes = self.sealed_lines = self.sealed_nbytes = 0
            self._prev_mac = ZERO
            try:
                self._open_fds(create=True)
                fsync_dir(self.dir)
                self._hasher = ChainHasher(self.head)
                fail_point("open-segment")
                self.seal(keys, "open")
            except BaseException:
                # What is on disk is an opening remnant (or nothing): loading
                # the chain again removes it (see .remnant).
                self._break()
                raise
        when = format_timestamp(self.clock() if stamp is None else stamp)
        self.append(note_record(when, "segment-start", seq=self.seq, **session), 1)

    def _open_fds(self, *, create: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        self._seal_fd = os.open(self.layout.segment_seal(self.qube, self.seq), flags, 0o640)
        self._log_fd = os.open(self.layout.segment_log(self.qube, self.seq), flags, 0o640)
        self._seal_size = os.fstat(self._seal_fd).st_size
        self.is_open = True

    def _break(self) -> None:
        self._close_fds()
        self.broken = True

    def _rollback(self) -> None:
        """Cut the open segment back to its last seal (all-or-nothing); when even
        that fails the chain is broken, to be loaded again from what is durable."""
        try:
            os.ftruncate(self._log_fd, self.sealed_nbytes)
            os.ftruncate(self._seal_fd, self._seal_size)
        except OSError:
            log.exception("%s: cannot cut segment %d back to its last seal", self.qube, self.seq)
            self._break()
            return
        self.lines, self.nbytes = self.sealed_lines, self.sealed_nbytes
        self._hasher = ChainHasher(self.head)
        self._dirty = False

    def append(self, data: bytes, nlines: int) -> None:
        """Append formatted record lines (``nlines`` of them) to the open segment."""
        self.append_parts((data,), nlines)

    def append_parts(self, parts: Sequence[bytes], nlines: int) -> None:
        """:meth:`append` of the parts joined, without joining them (a batch)."""
        if not self.is_open:
            raise StoreError(f"{self.qube}: no open segment")
        try:
            _write_parts(self._log_fd, parts)
        except BaseException:
            self._rollback()
            raise
        for part in parts:
            self._hasher.update(part)
            self.nbytes += len(part)
        self.lines += nlines
        self._dirty = True

    def append_sealed(self, parts: Sequence[bytes], nlines: int, keys: KeyState) -> Seal:
        """:meth:`append_parts` then :meth:`seal`, the records' write and
        fdatasync (on a helper thread) overlapping their hashing (on this one).

        The order of writes is :meth:`seal`'s: the seal line is written only
        once the records (and anything appended before them) are durable.
        """
        if not self.is_open:
            raise StoreError(f"{self.qube}: no open segment")
        durable = _helpers.submit(_write_durable, self._log_fd, parts)
        try:
            try:
                for part in parts:
                    self._hasher.update(part)
            finally:
                concurrent.futures.wait([durable])
            durable.result()
        except BaseException:
            self._rollback()
            raise
        for part in parts:
            self.nbytes += len(part)
        self.lines += nlines
        self._dirty = False  # the fdatasync covered every byte appended so far
        return self.seal(keys)

    def seal(self, keys: KeyState, kind: str = "batch") -> Seal:
        """Make appended records durable and seal them with the current key."""
        if not self.is_open:
            raise StoreError(f"{self.qube}: no open segment")
        head = self._hasher.digest() if kind != "open" else self.head
        seal = Seal(
            kind, self.qube, self.seq, keys.epoch, self.lines, self.nbytes, head, self._prev_mac
        ).signed(keys.key)
        line = seal.to_line()
        try:
            if self._dirty:
                os.fdatasync(self._log_fd)
                self._dirty = False
            _write_all(self._seal_fd, line)
            os.fdatasync(self._seal_fd)
        except BaseException:
            if kind in ("open", "recover"):
                with contextlib.suppress(OSError):  # no torn line left behind
                    os.ftruncate(self._seal_fd, self._seal_size)
                raise  # open_segment breaks the chain; recover starts over
            self._rollback()
            raise
        self._seal_size += len(line)
        self.head, self._prev_mac, self.last_seal = head, seal.mac, seal
        self.sealed_lines, self.sealed_nbytes = self.lines, self.nbytes
        self._hasher = ChainHasher(head)
        if kind in FINAL_KINDS:
            self._close_fds()
            self.needs_recovery = False
        if self.on_leaf is not None:
            self.on_leaf(seal)
        if self.on_seal is not None:
            self.on_seal(seal)
        return seal

    def close(self, keys: KeyState, *, stamp: float | None = None, **fields: str | int) -> Seal:
        """End the open segment with a note (at ``stamp``, default now) and a ``close`` seal."""
        when = format_timestamp(self.clock() if stamp is None else stamp)
        self.append(note_record(when, "segment-end", seq=self.seq, **fields), 1)
        with self.locked():
            return self.seal(keys, "close")

    def _close_fds(self) -> None:
        for fd in (self._log_fd, self._seal_fd):
            if fd >= 0:
                os.close(fd)
        self._log_fd = self._seal_fd = -1
        self.is_open = False

    @property
    def tomb_bytes(self) -> int:
        """Size of tombstones.seal (counted in the qube's quota)."""
        return self.tombstones.size

    def delete_oldest(
        self, keys: KeyState, *, keep_newest: int = 1, reason: str = "quota"
    ) -> int | None:
        """Delete the qube's oldest closed segment with a sealed tombstone.

        ``reason`` is the rule that chose it (:data:`~..core.tomb.REASONS`).
        Returns the deleted segment's number, or None when nothing may go (the
        open segment and the newest ``keep_newest`` closed ones stay).
        """
        with self.locked():
            segments = self.layout.segments(self.qube)
            closed = [s for s in segments if not (self.is_open and s.seq == self.seq)]
            if len(closed) <= keep_newest:
                return None
            victim = closed[0]
            if victim.seal is None:
                raise StoreError(f"{victim.name}: segment without seal file")
            final = read_seal_file(victim.seal).seals
            if not final or final[-1].kind not in FINAL_KINDS:
                raise StoreError(f"{victim.name}: refusing to delete a segment that is not closed")
            # The seal goes last: until then the chain stays loadable. A
            # compressed copy left by an interrupted rotation goes too.
            zst = self.layout.segment_log(self.qube, victim.seq, compressed=True)
            paths = [p for p in (victim.log, zst, victim.seal) if p is not None]
            if self.tombstones.last_seq != victim.seq:  # else a crash cut this one short
                size = sum(_size(p) for p in dict.fromkeys(paths))
                self.tombstones.append(keys, victim.seq, final[-1], reason, size)
            for path in paths:
                path.unlink(missing_ok=True)
            fsync_dir(self.dir)
            self.tombstones.compact_if_due(keys)
            self.tombstones.reserve.ensure()  # the room the next tombstone may need
            return victim.seq

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the qube's flock (rotation takes it too)."""
        return qube_locked(self.layout, self.qube)


class Store:
    """A store opened for writing: the key state and one chain per qube."""

    def __init__(
        self,
        root: Path | str,
        *,
        on_seal: Callable[[Seal], None] | None = None,
        on_tomb: Callable[[Tomb], None] | None = None,
        on_epoch: Callable[[EpochLine], None] | None = None,
        on_retire: Callable[[Retire], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = StoreLayout(root)
        self.keys = KeyState(self.layout)
        self.chains: dict[str, QubeChain] = {}
        self.on_seal = on_seal  # e.g. the witness's checkpoint queue
        self.on_tomb = on_tomb  # every deletion, as it happens (the witness's queue too)
        self.on_epoch = on_epoch  # format 2: every durable store-wide epoch line (the witness)
        self.on_retire = on_retire  # format 2: every retired qube (the witness)
        self.clock = clock
        #: Qubes whose files could not be loaded, with the reason.
        self.quarantined: dict[str, str] = {}
        #: Format 2: the store-wide epoch seal (None: format 1, a tick seal per chain).
        self.epochs: EpochFile | None = None
        #: Format 2: the sealed retirements of fully deleted qubes (opened on first use).
        self.retired: RetiredFile | None = None
        if self.keys.info.format >= 2:
            self.epochs = EpochFile(self.layout)
            self.epochs.load_leaves()

    def chain(self, qube: str) -> QubeChain:
        """The chain of a qube, loaded (and recovered) on first use.

        A chain a failed write left broken is loaded again from what is
        durable. Raises :class:`StoreError` for a qube that cannot be loaded
        (it stays quarantined, tried again at its next use).
        """
        chain = self.chains.get(qube)
        if chain is None or chain.broken:
            self.chains.pop(qube, None)
            chain, recovered = self._load(qube)
            if recovered:
                log.warning("%s: sealed %d records left unsealed by a crash", qube, recovered)
        return chain

    def _load(self, qube: str) -> tuple[QubeChain, int | None]:
        try:
            chain = QubeChain(
                self.layout, self.keys.store_id, qube, self.on_seal, self.on_tomb, clock=self.clock
            )
            if self.epochs is not None:
                chain.on_leaf = self._sealed
            recovered = chain.recover(self.keys) if chain.needs_recovery else None
        except (StoreError, OSError) as err:
            reason = str(err)
            if self.quarantined.get(qube) != reason:
                log.error(  # noqa: TRY400 (one line, no traceback)
                    "%s: quarantined: its files cannot be recovered (%s); it is not logged "
                    "until they are repaired, every other qube is (see logvm verify)",
                    qube,
                    reason,
                )
            self.quarantined[qube] = reason
            raise StoreError(f"{qube}: quarantined: {reason}") from err
        if self.quarantined.pop(qube, None) is not None:
            log.warning("%s: recovered; logged again", qube)
        self.chains[qube] = chain
        return chain, recovered

    def recover_all(self) -> dict[str, int]:
        """At start: seal every segment a crash left open; return records per qube.

        A qube that cannot be recovered is quarantined (:attr:`quarantined`,
        an error in the journal) and the others are served.
        """
        if not TombReserve(self.layout).ensure():
            log.warning("no room for the tombstone reserve: deleting may wait for free space")
        recovered = {}
        for qube in self.layout.qubes():
            try:
                _, count = self._load(qube)
            except StoreError:
                continue
            if count is not None:
                recovered[qube] = count
            self.release(qube)  # loaded again at its next connection
        return recovered

    def release(self, qube: str) -> None:
        """Forget a qube's chain while its segment is closed (memory: a store may
        have seen many names); it is loaded again at its next use. Call it where
        the chain is not in use (the collector: under the qube's lock)."""
        chain = self.chains.get(qube)
        if chain is not None and not chain.is_open:
            del self.chains[qube]

    def retire(self, qube: str) -> Retire | None:
        """Remove the directory of a qube whose segments are all deleted, with a
        sealed retire line (format 2; store/retired.py). None: not retirable (or
        not yet: its last deletion is of the current epoch, or this epoch's
        retirements are many already).
        Call it where the chain is not in use (the collector: under the qube's
        lock, the tick lock shared: the line's epoch is the one whose seal drops
        the qube's leaf)."""
        if self.epochs is None or not retirable(self.layout, qube):
            return None
        chain = self.chain(qube)
        if chain.is_open:
            return None
        with chain.locked():
            newest = chain.tombstones.newest
            if newest is None or newest.version == 1 or not retirable(self.layout, qube):
                return None
            if newest.epoch >= self.keys.epoch:
                # The deletion must be sealed in an earlier epoch than the
                # retirement (so K[E] alone cannot retire a live qube).
                return None
            if self.retired is None:
                self.retired = RetiredFile(self.layout)
            if self.retired.full(self.keys.epoch):
                return None
            line = self.retired.retire(self.keys, newest)
        self.chains.pop(qube, None)
        self.epochs.forget(qube)
        if self.on_retire is not None:
            self.on_retire(line)
        return line

    def _sealed(self, seal: Seal) -> None:
        if self.epochs is not None:
            self.epochs.update(leaf_of_seal(seal))

    def tick(self) -> list[Seal]:
        """End the epoch and evolve the key.

        Format 1: seal every open segment (even with nothing new). Format 2:
        one store-wide epoch line over every chain's state (store/epochfile.py).
        The key evolves whatever fails: a chain whose seal cannot be written
        is logged and skipped (its next seal shows the epochs it missed); an
        epoch line that cannot be written is recorded as a gap by the next one.
        """
        seals: list[Seal] = []
        try:
            if self.epochs is not None:
                self._seal_epoch(self.epochs)
                return seals
            for chain in list(self.chains.values()):
                if not chain.is_open:
                    continue
                try:
                    seals.append(chain.seal(self.keys, "tick"))
                except (StoreError, OSError) as err:
                    log.error("%s: epoch %d not sealed: %s", chain.qube, self.keys.epoch, err)  # noqa: TRY400 (one line, no traceback)
        finally:
            self.keys.advance()
        return seals

    def _seal_epoch(self, epochs: EpochFile) -> None:
        try:
            line = epochs.seal(self.keys)
        except OSError as err:
            log.error(  # noqa: TRY400 (one line, no traceback)
                "epoch %d not sealed store-wide (recorded as a gap once writing works): %s",
                self.keys.epoch,
                err.strerror or err,
            )
            return
        if self.on_epoch is not None:
            self.on_epoch(line)

    def close(self) -> None:
        """Close every open segment and release the key (whatever fails)."""
        try:
            for chain in self.chains.values():
                if chain.is_open:
                    try:
                        chain.close(self.keys, reason="shutdown")
                    except (StoreError, OSError) as err:
                        log.error("%s: not closed at shutdown: %s", chain.qube, err)  # noqa: TRY400 (one line, no traceback)
        finally:
            self.keys.close()
