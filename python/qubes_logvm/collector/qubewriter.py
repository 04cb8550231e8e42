"""One writer per source qube: batching, sealing, acks, rate limit and quota.

Trust side: runs in the collector (LogVM). It receives record lines already
escaped, capped and stamped by :mod:`.lines`; the only untrusted thing left is
how much and how fast a qube sends, which the rate limit, the quota and the
per-qube pending bound contain.

Group commit: while one batch is written, fsynced and sealed in a worker
thread, the qube's connections keep filling the next one (up to
:meth:`StoreAccess.batch_bytes`); each batch ends with one seal, durable
after its records (:meth:`..store.writer.QubeChain.append_sealed`), then
every connection in it gets ``ack <N>``. Lines of one
connection are submitted whole, so two connections never interleave half
lines. The qube's segment opens with its first connection and closes when
the last one has left (a session); it also rolls at the segment size limit.
"""

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

from ..config.collector import CollectorConfig
from ..config.storage_policy import DISPVM_CLASS, class_of, quota_for
from ..core.errors import LogvmError
from ..core.ratelimit import TokenBucket
from ..core.records import format_timestamp, note_record
from ..core.witness_format import CostLine
from ..store.eviction import EpochClock, ScanCache
from ..store.reader import newest_stamp
from ..store.usage import Cost, over, written_cost
from ..store.writer import QubeChain, Store
from .clock import ReceiveClock
from .fair import ChainSlots, PendingBudget
from .ledger import QubeLedger, StoreLedger
from .lines import first_lines

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Drop and refusal notes are coalesced to at most one per this many seconds.
NOTE_INTERVAL = 1.0
#: The smallest segment a small quota rolls at.
MIN_ROLL_BYTES = 64 * 1024
#: Room kept for one seal line when charging a batch (seal lines are ~230 bytes).
SEAL_LINE = 256
#: While at most this many connections are open, a qube's batch may grow to
#: FEW_BATCH_FACTOR times ``pending_bytes`` (and reads are bigger,
#: :mod:`.server`): a qube streaming alone pays the two fdatasyncs and the
#: fixed cost of a batch a quarter as often (issue 17, make bench: with the
#: bigger reads and append_sealed, 1.13-2.06x rsyslog's one-connection rate
#: became 2.98-3.63x). Past it every bound is as configured.
FEW_CONNECTIONS = 4
FEW_BATCH_FACTOR = 4


class Feed:
    """One connection as its qube's writer sees it (the server subclasses it)."""

    def __init__(self) -> None:
        self.handled = 0  # lines submitted: stored or counted as dropped
        self.eof = False  # the sender closed its side; everything is submitted
        self.paused = False

    def send_ack(self, handled: int, *, final: bool) -> None:
        """Tell the sender ``handled`` lines are durable; close after the final one."""
        raise NotImplementedError

    def set_reading(self, reading: bool) -> None:
        """Pause or resume reading from the sender (backpressure)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Close without a further ack (the writer failed)."""
        raise NotImplementedError


async def to_completion(work: Awaitable[_T]) -> _T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile; the
    cancellation is raised once it has ended.

    Work handed to a thread goes on whatever its awaiter does, so the locks
    held around it must be held until it is done. Without this, a stop that
    cancelled housekeeping during a deletion took the tick lock at once and
    erased the key (KeyState.close zeroes it) while the chain thread was
    signing a tombstone: a tombstone MACed with a zero key, a permanent false
    tamper alarm.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise  # the work itself was cancelled
            cancelled = True  # ours: wait on for the work
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


class TickLock:
    """Chain work of many qubes may run together; the epoch tick runs alone."""

    def __init__(self) -> None:
        self._active = 0
        self._exclusive = False
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Held around any work on a chain (append, seal, open, close, delete)."""
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive)
            self._active += 1
        try:
            yield
        finally:
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Held around :meth:`Store.tick` (it seals every chain and evolves the key)."""
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            await self._cond.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class StoreAccess:
    """The store as every qube writer reaches it: config, per-qube locks, the tick lock.

    ``clock`` is the wall clock of receive times and notes; ``monotonic`` the
    clock of rate limits, lingering, note coalescing and open segments' ages.
    Tests inject both (no patching of :mod:`time`).
    Chain work runs on :class:`.fair.ChainSlots` (small batches first); the
    bytes held across all connections are counted by ``budget``.
    """

    def __init__(
        self,
        store: Store,
        config: CollectorConfig,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.monotonic = monotonic
        self.tick_lock = TickLock()
        self.locks: dict[str, asyncio.Lock] = {}
        self.stopping = False  # shutting down: segments close without lingering
        self.connections = 0  # past the peer check, not yet closed (the server counts)
        self.usage = StoreLedger()  # the whole store's cost, kept as writes happen
        self.pressure = asyncio.Event()  # wakes housekeeping: the global cap is exceeded
        self.clocks: dict[str, ReceiveClock] = {}  # per qube, kept across sessions
        self.slots = ChainSlots()
        self.budget = PendingBudget(config.pending_bytes_total)
        self.scan_cache = ScanCache()  # housekeeping reads only what changed
        #: Where quota deletions' cost notes go (the witness's queue), after the tombs.
        self.on_cost: Callable[[CostLine], None] | None = None

    def batch_bytes(self) -> int:
        """The most record bytes a qube's next batch may hold before its
        connections are paused: ``pending_bytes``, or FEW_BATCH_FACTOR times that
        while at most FEW_CONNECTIONS connections are open (less for a qube with
        a small segment roll size, ``QubeWriter._batch_full``)."""
        pending = self.config.pending_bytes
        return pending * FEW_BATCH_FACTOR if self.connections <= FEW_CONNECTIONS else pending

    def age_clock(self) -> EpochClock:
        """Ages for retention and the DispVM grace: sealed epochs, never the wall clock."""
        keys = self.store.keys
        return EpochClock(keys.epoch, keys.info.epoch_seconds)

    def receive_clock(self, qube: str) -> ReceiveClock:
        """The qube's receive clock, starting from its newest stored stamp."""
        clock = self.clocks.get(qube)
        if clock is None:
            clock = self.clocks[qube] = ReceiveClock(
                self.clock, newest_stamp(self.store.layout, qube)
            )
        return clock

    def lock(self, qube: str) -> asyncio.Lock:
        """Serialises everything done to one qube's chain."""
        return self.locks.setdefault(qube, asyncio.Lock())

    async def run_on_chain(self, qube: str, work: Callable[[], _T], size: int = 0) -> _T:
        """Run blocking chain work in a thread, under the qube's lock and the tick
        lock; ``size``: the bytes it writes (small work goes first)."""
        async with self.lock(qube), self.slots.slot(size), self.tick_lock.shared():
            return await to_completion(self.slots.execute(work))


class _Batch:
    """What one step of the writer takes from the pending queue."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lines = 0
        self.nbytes = 0
        self.first_stamp: float | None = None  # receive time of the first record


def _parts(batch: _Batch, size: int) -> Iterator[tuple[list[bytes], int]]:
    """The batch's records in parts of at most ``size`` bytes (whole lines; a line
    longer than that alone), each with its line count: each part makes room for
    itself (a roll, deletions), so a batch bigger than a small quota keeps its
    newest lines instead of being dropped whole. One part, uncounted, when the
    batch fits (always, but under a small quota)."""
    if batch.nbytes <= size:
        yield batch.chunks, batch.lines
        return
    part: list[bytes] = []
    room = size
    for chunk in batch.chunks:
        start = 0
        while len(chunk) - start > room:
            cut = chunk.rfind(b"\n", start, start + room) + 1
            if cut <= start:
                if part:  # the next line does not fit what is left: a new part
                    yield part, sum(map(_lines, part))
                    part, room = [], size
                    continue
                end = chunk.find(b"\n", start)  # one line longer than a part
                cut = len(chunk) if end < 0 else end + 1
            part.append(chunk[start:cut])
            yield part, sum(map(_lines, part))
            part, room, start = [], size, cut
        if start < len(chunk):
            piece = chunk[start:] if start else chunk
            part.append(piece)
            room -= len(piece)
    if part:
        yield part, sum(map(_lines, part))


def _lines(records: bytes) -> int:
    return records.count(b"\n")


class QubeWriter:
    """The single writer of one qube's chain while the qube is connected."""

    def __init__(
        self, qube: str, shared: StoreAccess, on_idle: Callable[["QubeWriter"], None]
    ) -> None:
        self.qube = qube
        self.shared = shared
        self.feeds: list[Feed] = []
        self.chain: QubeChain | None = None
        self._on_idle = on_idle
        self._pending = _Batch()
        self.clock = shared.receive_clock(qube)
        self._monotonic = shared.monotonic
        self._stamps = (0.0, 0.0)  # this step's notes: before its records, after them
        limit = shared.config.rate_for(qube)
        self._bucket = TokenBucket(limit.lines_per_second, limit.burst, self._monotonic())
        self._drops = {"rate-limit": 0, "quota": 0, "disk-full": 0}
        self._carried: list[bytes] = []  # notes a failed write could not store
        self._refused = 0
        self._last_note = 0.0
        self.ledger = QubeLedger(qube, shared.age_clock)
        self._reported = Cost()  # this qube's cost as charged to the store's total
        self._open_since = self._monotonic()
        self._roll_requested = False
        self._session = ""
        self._note_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failed = False  # the task ended on an error; the server lets it go
        self._linger_until = 0.0  # monotonic: the open segment waits for a reconnect

    # -- called by connections (event loop) -------------------------------

    def attach(self, feed: Feed) -> bool:
        """Add a connection; False (and a coalesced note) when the qube has too many."""
        if len(self.feeds) >= self.shared.config.max_connections_per_qube:
            self._refused += 1
            self._wake.set()
            return False
        self.feeds.append(feed)
        self.wake()
        return True

    def note_refused(self) -> None:
        """Record a connection refused for this qube by the global limit."""
        self._refused += 1
        self.wake()

    def submit(self, feed: Feed, records: bytes, nlines: int) -> None:
        """Queue whole record lines of one connection (after the rate limit)."""
        allowed = self._bucket.take_up_to(nlines, self._monotonic())
        if allowed < nlines:
            self._drops["rate-limit"] += nlines - allowed
            records = first_lines(records, allowed) if allowed else b""
        feed.handled += nlines
        if self.failed:
            return  # let go by the server; its connections are closing
        if records:
            self.shared.budget.add(len(records))
            if self._pending.first_stamp is None:
                self._pending.first_stamp = self.clock.last  # these records' stamp
            self._pending.chunks.append(records)
            self._pending.lines += allowed
            self._pending.nbytes += len(records)
        if not feed.paused and self._batch_full():
            feed.paused = True
            feed.set_reading(False)
        self._wake.set()

    def finish(self, feed: Feed) -> None:
        """The sender closed its side: ack what is left, then let it go."""
        feed.eof = True
        self._wake.set()

    def lost(self, feed: Feed) -> None:
        """The connection is gone (reset or closed by us)."""
        if feed in self.feeds:
            self.feeds.remove(feed)
            if not self.feeds:
                self._left()
        self._wake.set()

    def _left(self) -> None:
        """The last connection left: linger (keep the segment open) if configured.

        A reconnect within ``session_linger`` continues the same session in
        the same segment, so a qube calling every second costs one segment,
        not two files per call. DispVMs never linger: a new DispVM may take
        the name (docs/rotation.md).
        """
        linger = self.shared.config.session_linger
        if linger <= 0 or self._dispvm:
            self._linger_until = 0.0
            return
        self._linger_until = self._monotonic() + linger
        asyncio.get_running_loop().call_later(linger, self._wake.set)

    @property
    def _dispvm(self) -> bool:
        return class_of(self.shared.config.retention, self.qube) == DISPVM_CLASS

    def _lingers(self) -> bool:
        chain_open = self.chain is not None and self.chain.is_open
        return chain_open and not self.shared.stopping and self._monotonic() < self._linger_until

    def reconfigure(self) -> None:
        """Apply a reloaded configuration (rate limit; quotas are read per batch)."""
        limit = self.shared.config.rate_for(self.qube)
        self._bucket.configure(limit.lines_per_second, limit.burst)

    def request_roll(self) -> None:
        """Start a new segment at the next step (age limit)."""
        self._roll_requested = True
        self._wake.set()

    def wake(self) -> None:
        """Run a step soon (starting the writer task if needed)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.qube)
        self._wake.set()

    @property
    def open_age(self) -> float:
        """Seconds since the open segment started."""
        return self._monotonic() - self._open_since

    @property
    def pending_bytes(self) -> int:
        """Record bytes waiting for the next batch."""
        return self._pending.nbytes

    @property
    def idle(self) -> bool:
        """No connection, nothing pending, segment closed."""
        chain_open = self.chain is not None and self.chain.is_open
        return not self.feeds and not self._pending.chunks and not chain_open

    # -- the writer task --------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._step()
                if self.idle and not self._has_notes():
                    break
        except Exception as err:
            # A failing disk must not kill the daemon silently: say it, drop
            # the qube's connections (nothing unsealed is acknowledged).
            if isinstance(err, LogvmError):
                log.error("%s: writer failed (%s); closing its connections", self.qube, err)  # noqa: TRY400 (one line, no traceback)
            else:
                log.exception("%s: writer failed; closing its connections", self.qube)
            self.failed = True
            for feed in list(self.feeds):
                feed.abort()
            self.feeds.clear()
            self.shared.budget.release(self._pending.nbytes)
            self._pending = _Batch()
        finally:
            self._task = None
            self._on_idle(self)

    def _note_due(self) -> None:
        self._note_timer = None
        self._wake.set()

    def _has_notes(self) -> bool:
        return bool(self._refused or any(self._drops.values()) or self.clock.stepped_back)

    def receive_time(self) -> bytes:
        """The stamp for lines received now (connections call it)."""
        return format_timestamp(self.clock.now())

    async def _step(self) -> None:
        batch, self._pending = self._pending, _Batch()
        acks = [(feed, feed.handled, feed.eof) for feed in self.feeds]
        want_open = bool(self.feeds) or self._lingers()
        end = self.clock.now()
        start = batch.first_stamp if batch.first_stamp is not None else end
        # Notes before the batch's records are stamped no later than the
        # first of them (segment-start too), the segment-end note after.
        self._stamps = (start, end)
        notes = self._take_notes(force=not want_open or any(eof for _, _, eof in acks))
        roll, self._roll_requested = self._roll_requested, False

        def work() -> int:
            return self._write(batch, notes, want_open=want_open, roll=roll)

        try:
            dropped = await self.shared.run_on_chain(self.qube, work, batch.nbytes)
        finally:
            self.shared.budget.release(batch.nbytes)
        self._drops["quota"] += dropped
        for feed, handled, eof in acks:
            if feed not in self.feeds:
                continue  # the peer went away while the batch was written
            if eof:
                self.feeds.remove(feed)
                if not self.feeds:
                    self._left()
            feed.send_ack(handled, final=eof)
        for feed in self.feeds:
            if feed.paused and not self._batch_full():
                feed.paused = False
                feed.set_reading(True)
        if self.shared.usage.over_cap:
            self.shared.usage.over_cap = False
            self.shared.pressure.set()
        chain_open = self.chain is not None and self.chain.is_open
        if self._pending.chunks or (chain_open and not self.feeds and not self._lingers()):
            self._wake.set()

    def _take_notes(self, *, force: bool) -> list[bytes]:
        now = self._monotonic()
        if not self._has_notes() or (not force and now - self._last_note < NOTE_INTERVAL):
            if self._has_notes() and self._note_timer is None:
                # Come back when the note is due even if nothing else arrives.
                self._note_timer = asyncio.get_running_loop().call_later(
                    NOTE_INTERVAL, self._note_due
                )
            return []
        self._last_note = now
        stamp = format_timestamp(self._stamps[0])
        notes = []
        if self.clock.stepped_back:
            back, self.clock.stepped_back = self.clock.stepped_back, 0.0
            # Receive times stay at the last one until the clock catches up.
            notes.append(note_record(stamp, "clock-step", back_ms=round(back * 1000)))
        for reason, count in self._drops.items():
            if count:
                notes.append(note_record(stamp, "dropped", count=count, reason=reason))
                self._drops[reason] = 0
        if self._refused:
            notes.append(
                note_record(stamp, "refused", count=self._refused, reason="too-many-connections")
            )
            self._refused = 0
        return notes

    # -- blocking part (worker thread, under the qube lock and the tick lock) --

    def _write(self, batch: _Batch, notes: list[bytes], *, want_open: bool, roll: bool) -> int:
        """Open/roll/append/seal/close as needed; return lines dropped for the quota."""
        store = self.shared.store
        self.shared.scan_cache.touch(self.qube)
        if self.chain is None or self.chain.broken:
            self.chain = store.chain(self.qube)
            self.ledger.load(store.layout, self.chain, sessions=self._dispvm)
            self._reported = self.ledger.total(self.chain)  # the last scan counted it
            self.shared.usage.known(self.shared.config.retention, self.qube)
        chain = self.chain
        if not chain.is_open and (want_open or batch.chunks or notes):
            self._open(chain, reason="connect")
        elif roll and chain.is_open:
            self._roll(chain)
        # The notes (and any carried ones) go with the first part.
        head, self._carried, dropped = self._carried + notes, [], 0
        for part, count in _parts(batch, self._roll_at()):
            chunks, lines = part, count
            nbytes = sum(map(len, chunks))
            if nbytes and not self._make_room(chain, nbytes):
                chunks, lines, dropped = [], 0, dropped + count
            # Written as they are, not joined: batches can be megabytes.
            payload = [piece for piece in head + chunks if piece]
            with_notes, nlines, head = bool(head), len(head) + lines, []
            if payload:
                try:
                    seal = chain.append_sealed(payload, nlines, store.keys)
                    self.ledger.open_seal_bytes += len(seal.to_line())
                except OSError as err:
                    if chain.broken or not chain.is_open:
                        raise
                    # Cut back to the last seal (all-or-nothing): the lines are
                    # dropped and noted, the notes wait for the next batch.
                    log.error("%s: %d lines dropped: %s", self.qube, lines, err)  # noqa: TRY400 (one line)
                    if with_notes:  # (only the part that held them: never written twice)
                        self._carried = notes
                    self._drops["disk-full"] += lines
            del payload, chunks, part
        batch.chunks = []
        if not want_open and chain.is_open:
            self._close(chain, reason="disconnect")
        self._report()
        if not chain.is_open:
            store.release(self.qube)  # idle chains are not kept (many DispVM names)
            self.chain = None
        return dropped

    @property
    def reported(self) -> Cost:
        """This qube's cost as last charged to the store's running total."""
        return self._reported

    def _report(self) -> None:
        """Charge the store's running total with what this qube's cost changed by."""
        if self.chain is not None:
            now = self.ledger.total(self.chain)
            self.shared.usage.charge(now - self._reported)
            self._reported = now

    def _open(self, chain: QubeChain, reason: str) -> None:
        if reason != "roll":
            self._session = secrets.token_hex(8)
        chain.open_segment(
            self.shared.store.keys, stamp=self._stamps[0], session=self._session, reason=reason
        )
        self._open_since = self._monotonic()
        self.ledger.open_seal_bytes = len(chain.last_seal.to_line()) if chain.last_seal else 0

    def _close(self, chain: QubeChain, reason: str) -> None:
        stamp = self._stamps[0] if reason == "roll" else self._stamps[1]
        seal = chain.close(self.shared.store.keys, stamp=stamp, reason=reason)
        self.ledger.open_seal_bytes += len(seal.to_line())
        self.ledger.closed_segment(chain, self._session)

    def _roll(self, chain: QubeChain) -> None:
        self._close(chain, reason="roll")
        self._open(chain, reason="roll")

    def usage(self) -> Cost:
        """What the qube costs the disk now (:mod:`..store.usage`)."""
        return self.ledger.total(self.chain) if self.chain is not None else Cost()

    def refresh_sizes(self) -> None:
        """Re-read the costs from disk (rotation compresses segments); worker thread."""
        if self.chain is not None:
            self.ledger.load(self.shared.store.layout, self.chain, sessions=self._dispvm)
            self._report()

    def _make_room(self, chain: QubeChain, incoming: int) -> bool:
        """Roll and delete the qube's oldest segments so ``incoming`` bytes fit its quota.

        Both limits count: the cost on disk (blocks and files) and the plain
        text bytes (:func:`.ledger.over`).
        """
        config = self.shared.config.retention
        roll_at = self._roll_at()
        if self._held_back(chain, incoming):
            return False  # dropped as it is: a roll would only add files of notes
        if chain.nbytes + incoming > roll_at and chain.lines > 1:
            self._roll(chain)
        keys = self.shared.store.keys
        added = self._added(chain, incoming)
        demand, last = self.usage() + added, 0
        while self._must_free(added) and self.ledger.closed:
            if self._dispvm and not self.ledger.may_evict(self._session, config.dispvm_grace):
                break  # an earlier DispVM's logs: the flood's lines are dropped instead
            # Over its own quota, or only over its share of the global cap.
            reason = "quota" if over(config, self.qube, self.usage() + added) else "global"
            seq = chain.delete_oldest(keys, keep_newest=0, reason=reason)
            if seq is None:
                break
            self.ledger.deleted(seq)
            self._report()
            last = seq if reason == "quota" else last
            log.info("%s: deleted segment %d to stay within its %s", self.qube, seq, reason)
        if last and self.shared.on_cost is not None:
            # For the witness: the cost that made it delete (the verifier judges
            # quota deletions by it against the quota dom0 deployed).
            note = CostLine(self.qube, keys.epoch, last, demand.disk, demand.plain)
            self.shared.on_cost(note.signed(keys.key))
        if self._over_cap(added):
            self.shared.usage.over_cap = True  # within its share: housekeeping evicts others
        return not over(config, self.qube, self.usage() + added)

    def _roll_at(self) -> int:
        """Bytes the qube's segment rolls at: ``segment.max_bytes``, less under a
        small quota (or a small share of the global cap), so that a flooding
        qube holds at most that plus one segment."""
        config = self.shared.config.retention
        quota = quota_for(config, self.qube)
        if config.global_max_bytes:
            quota = min(quota, int(self.shared.usage.share(config, self.qube)))
        return min(config.segment_max_bytes, max(quota // 4, MIN_ROLL_BYTES))

    def _batch_full(self) -> bool:
        """The pending batch holds its bound: ``pending_bytes``; while at most
        FEW_CONNECTIONS connections are open, FEW_BATCH_FACTOR times that but no
        more than the qube's segment roll size (a batch bigger than the quota
        allows would be dropped whole, not make room)."""
        nbytes, pending = self._pending.nbytes, self.shared.config.pending_bytes
        if nbytes <= pending:
            return False
        if self.shared.connections > FEW_CONNECTIONS:
            return True
        return nbytes > min(FEW_BATCH_FACTOR * pending, self._roll_at())

    def _added(self, chain: QubeChain, incoming: int) -> Cost:
        """What a batch adds: its text, its seal line, the blocks they start."""
        grown = written_cost(chain.nbytes + incoming, self.ledger.open_seal_bytes + SEAL_LINE)
        return grown - self.ledger.open_cost(chain)

    def _held_back(self, chain: QubeChain, incoming: int) -> bool:
        """A DispVM whose batch does not fit while an earlier DispVM's session
        (within the grace) is the oldest: nothing may be deleted for it."""
        grace = self.shared.config.retention.dispvm_grace
        if (
            not self._dispvm
            or not self.ledger.closed
            or self.ledger.may_evict(self._session, grace)
        ):
            return False
        return over(
            self.shared.config.retention, self.qube, self.usage() + self._added(chain, incoming)
        )

    def _must_free(self, added: Cost) -> bool:
        """Over its quota, or the store over its cap while this qube is over its share."""
        config = self.shared.config.retention
        if over(config, self.qube, self.usage() + added):
            return True
        share = self.shared.usage.share(config, self.qube)
        return self._over_cap(added) and self.usage().disk + added.disk > share

    def _over_cap(self, added: Cost) -> bool:
        cap = self.shared.config.retention.global_max_bytes
        return bool(cap) and self.shared.usage.total.disk + added.disk > cap
