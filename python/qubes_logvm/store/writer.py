"""The per-qube chain writer and the store that seals every epoch (floor 2).

Trust side: runs in the LogVM, inside the collector, the only process that
holds the sealing key. It appends bytes that the collector has already
escaped, bounded and formatted as record lines.

Order of writes, so that a crash at any moment loses nothing acknowledged:
records are appended and fdatasync'ed, then a seal line covering them is
appended and fdatasync'ed, and only then may the collector acknowledge.
Bytes written but not sealed are sealed as ``recover`` when the collector
starts again (their sender was never told they are stored, so it sends them
again: delivery is at least once).

Concurrency contract: one :class:`QubeChain` per qube, used by one task at a
time; :meth:`Store.tick` must not run while a chain's :meth:`QubeChain.seal`
runs. The per-qube ``lock`` file is flocked around changes that rotation must
not overlap (opening, closing, deleting segments).
"""

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..core.errors import StoreError
from ..core.records import format_timestamp, note_record
from ..core.seal import ZERO, ChainHasher, Seal, genesis
from .keystate import KeyState
from .layout import SegmentFiles, StoreLayout, fsync_dir, qube_locked
from .sealfile import read_seal_file

log = logging.getLogger(__name__)

FINAL_KINDS = ("close", "recover")

#: Deletions always take a qube's oldest segments, so only the newest
#: tombstone is needed to link the chain to the oldest segment left. Past
#: this many lines the file is compacted to that newest line, so a flooding
#: qube's evictions cannot grow it without bound (docs/store-format.md).
TOMB_COMPACT_LINES = 32


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class QubeChain:
    """One qube's chain: its newest segment and the head of its hash chain."""

    def __init__(
        self,
        layout: StoreLayout,
        store_id: str,
        qube: str,
        on_seal: Callable[[Seal], None] | None = None,
    ) -> None:
        self.layout = layout
        self.on_seal = on_seal  # e.g. the witness's checkpoint queue
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
        self._tomb_prev = ZERO
        self._tomb_seq = 0  # seq of the newest tombstone (0: none)
        self._tomb_lines = 0
        self.tomb_bytes = 0  # size of tombstones.seal (counted in the qube's quota)
        self._hasher = ChainHasher(self.head)
        self._log_fd = -1
        self._seal_fd = -1
        self._dirty = False
        self._half_open: SegmentFiles | None = None
        self._torn_seal = 0  # bytes of a seal line a crash cut short
        self._load()

    # -- loading -----------------------------------------------------------

    def _load(self) -> None:
        tomb_path = self.layout.tombstones(self.qube)
        # A compaction a crash cut short: the old file is still whole.
        tomb_path.with_name(tomb_path.name + ".tmp").unlink(missing_ok=True)
        tombs = read_seal_file(tomb_path).seals if tomb_path.exists() else []
        if tombs:
            self._tomb_prev, self._tomb_seq = tombs[-1].mac, tombs[-1].seq
            self._tomb_lines = len(tombs)
            self.tomb_bytes = tomb_path.stat().st_size
        segments = self.layout.segments(self.qube)
        last_tomb = tombs[-1] if tombs else None
        if segments and segments[-1].seal is not None:
            parsed = read_seal_file(segments[-1].seal)
            if parsed.seals:
                self._adopt(parsed.seals[-1])
                if parsed.torn_tail and self.needs_recovery:
                    # A seal line a crash cut short never covered anything
                    # acknowledged; recovery cuts it before sealing again.
                    self._torn_seal = len(parsed.torn_tail)
                return
            if parsed.bad_lines or len(segments) < 2 or segments[-2].seal is None:
                raise StoreError(f"{segments[-1].name}: seal file has no complete seal line")
            # A crash inside open_segment, before its ``open`` seal was
            # durable: nothing of it was sealed or acknowledged, so recovery
            # removes it and the chain continues from the segment before.
            self._half_open = segments[-1]
            self.needs_recovery = True
            previous = read_seal_file(segments[-2].seal).seals
            if not previous:
                raise StoreError(f"{segments[-2].name}: seal file has no complete seal line")
            self._adopt(previous[-1])
            self.needs_recovery = True
            return
        if segments:
            raise StoreError(f"{segments[-1].name}: segment without seal file")
        if last_tomb is not None:
            self.seq, self.head = last_tomb.seq, last_tomb.head

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
        self.seal(keys, "recover")
        return recovered

    def open_segment(self, keys: KeyState, **session: str | int) -> None:
        """Start a new segment (a session, or a roll-over) and note it."""
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
            self._open_fds(create=True)
            fsync_dir(self.dir)
            self._hasher = ChainHasher(self.head)
            self.seal(keys, "open")
        stamp = format_timestamp(time.time())
        self.append(note_record(stamp, "segment-start", seq=self.seq, **session), 1)

    def _open_fds(self, *, create: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        self._seal_fd = os.open(self.layout.segment_seal(self.qube, self.seq), flags, 0o640)
        self._log_fd = os.open(self.layout.segment_log(self.qube, self.seq), flags, 0o640)
        self.is_open = True

    def append(self, data: bytes, nlines: int) -> None:
        """Append formatted record lines (``nlines`` of them) to the open segment."""
        if not self.is_open:
            raise StoreError(f"{self.qube}: no open segment")
        _write_all(self._log_fd, data)
        self._hasher.update(data)
        self.lines += nlines
        self.nbytes += len(data)
        self._dirty = True

    def seal(self, keys: KeyState, kind: str = "batch") -> Seal:
        """Make appended records durable and seal them with the current key."""
        if not self.is_open:
            raise StoreError(f"{self.qube}: no open segment")
        if self._dirty:
            os.fdatasync(self._log_fd)
            self._dirty = False
        head = self._hasher.digest() if kind != "open" else self.head
        seal = Seal(
            kind, self.qube, self.seq, keys.epoch, self.lines, self.nbytes, head, self._prev_mac
        ).signed(keys.key)
        _write_all(self._seal_fd, seal.to_line())
        os.fdatasync(self._seal_fd)
        self.head, self._prev_mac, self.last_seal = head, seal.mac, seal
        self.sealed_lines, self.sealed_nbytes = self.lines, self.nbytes
        self._hasher = ChainHasher(head)
        if kind in FINAL_KINDS:
            self._close_fds()
            self.needs_recovery = False
        if self.on_seal is not None:
            self.on_seal(seal)
        return seal

    def close(self, keys: KeyState, **fields: str | int) -> Seal:
        """End the open segment with a note and a ``close`` seal."""
        stamp = format_timestamp(time.time())
        self.append(note_record(stamp, "segment-end", seq=self.seq, **fields), 1)
        with self.locked():
            return self.seal(keys, "close")

    def _close_fds(self) -> None:
        for fd in (self._log_fd, self._seal_fd):
            if fd >= 0:
                os.close(fd)
        self._log_fd = self._seal_fd = -1
        self.is_open = False

    def delete_oldest(self, keys: KeyState, *, keep_newest: int = 1) -> int | None:
        """Delete the qube's oldest closed segment with a sealed tombstone.

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
            if self._tomb_seq != victim.seq:  # else a crash cut this deletion short
                self._write_tomb(keys, victim.seq, final[-1])
            # The seal goes last: until then the chain stays loadable. A
            # compressed copy left by an interrupted rotation goes too.
            zst = self.layout.segment_log(self.qube, victim.seq, compressed=True)
            for path in (victim.log, zst, victim.seal):
                if path is not None:
                    path.unlink(missing_ok=True)
            fsync_dir(self.dir)
            if self._tomb_lines >= TOMB_COMPACT_LINES:
                self._compact_tombs()
            return victim.seq

    def _write_tomb(self, keys: KeyState, seq: int, last: Seal) -> None:
        tomb = Seal(
            "tomb",
            self.qube,
            seq,
            keys.epoch,
            last.lines,
            last.nbytes,
            last.head,
            self._tomb_prev,
        ).signed(keys.key)
        fd = os.open(
            self.layout.tombstones(self.qube),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o640,
        )
        try:
            _write_all(fd, tomb.to_line())
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._tomb_prev, self._tomb_seq = tomb.mac, seq
        self._tomb_lines += 1
        self.tomb_bytes += len(tomb.to_line())

    def _compact_tombs(self) -> None:
        # Called after the segments the tombstones stand for are gone: keep
        # the newest line (which links the chain on), replace atomically.
        path = self.layout.tombstones(self.qube)
        newest = read_seal_file(path).seals[-1].to_line()
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, newest)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.rename(path)
        fsync_dir(self.dir)
        self._tomb_lines, self.tomb_bytes = 1, len(newest)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the qube's flock (rotation takes it too)."""
        return qube_locked(self.layout, self.qube)


class Store:
    """A store opened for writing: the key state and one chain per qube."""

    def __init__(self, root: Path | str, *, on_seal: Callable[[Seal], None] | None = None) -> None:
        self.layout = StoreLayout(root)
        self.keys = KeyState(self.layout)
        self.chains: dict[str, QubeChain] = {}
        self.on_seal = on_seal  # e.g. the witness's checkpoint queue

    def chain(self, qube: str) -> QubeChain:
        """The chain of a qube, loaded (and recovered) on first use."""
        chain = self.chains.get(qube)
        if chain is None:
            chain = QubeChain(self.layout, self.keys.store_id, qube, self.on_seal)
            if chain.recover(self.keys):
                log.warning("%s: sealed records left unsealed by a crash", qube)
            self.chains[qube] = chain
        return chain

    def recover_all(self) -> dict[str, int]:
        """At start: seal every segment a crash left open; return records per qube."""
        recovered = {}
        for qube in self.layout.qubes():
            chain = QubeChain(self.layout, self.keys.store_id, qube, self.on_seal)
            if chain.needs_recovery:
                recovered[qube] = chain.recover(self.keys)
            self.chains[qube] = chain
        return recovered

    def tick(self) -> list[Seal]:
        """End the epoch: seal every open segment (even with nothing new), evolve the key."""
        seals = [chain.seal(self.keys, "tick") for chain in self.chains.values() if chain.is_open]
        self.keys.advance()
        return seals

    def close(self) -> None:
        """Close every open segment and release the key."""
        for chain in self.chains.values():
            if chain.is_open:
                chain.close(self.keys, reason="shutdown")
        self.keys.close()
