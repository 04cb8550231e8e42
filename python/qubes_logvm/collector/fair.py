"""Fair scheduling of the collector's shared work: escaping, chain threads, memory.

Trust side: runs in the collector's event loop. What it schedules comes from
untrusted qubes, so no one connection may take more than its turn:

- :class:`Ingest` escapes the connections' received bytes in slices of
  ``SLICE_BYTES``, one slice of one connection per event-loop callback,
  round-robin, so a busy connection's bytes wait for at most one slice of
  each other busy connection, and the loop polls its sockets between
  slices (a connection alone takes what it has, up to ``ALONE_BYTES``);
  a connection with at most ``SMALL_READ`` bytes waiting (a quiet qube's
  line) goes in a lane served first, one of its turns for each busy one,
  so it waits for no round of the busy ones (fair in bytes: a turn costs
  what it escapes);
- :class:`ChainSlots` runs chain work (append, fsync, seal) on
  ``CHAIN_THREADS`` threads, small batches before big ones, so a quiet qube's
  batch is not queued behind a round of every flooder's;
- :class:`PendingBudget` bounds the bytes held across all connections
  (received and not yet written); past it the connections holding more than
  an equal share stop being read, the quiet ones go on.
"""

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

_T = TypeVar("_T")

#: Bytes escaped per connection per turn.
SLICE_BYTES = 32 * 1024
#: Bytes escaped at once by a connection no other one waits behind.
ALONE_BYTES = 256 * 1024
#: A connection with at most this many bytes waiting takes the quick lane.
SMALL_READ = 4096
#: Slices escaped in one callback, in turn, for at most this long: the
#: sockets are polled between callbacks (a few ms of latency at most).
TURN_SECONDS = 0.002
#: Threads doing chain work (the disk is one; more threads keep more
#: batch-sized buffers resident).
CHAIN_THREADS = 3
#: Batches up to this size go before bigger ones.
SMALL_BATCH = 64 * 1024
#: The least share of the budget a connection may hold before it is paused.
MIN_SHARE = 64 * 1024


class Sliced(Protocol):
    """A connection as the ingest sees it."""

    def ingest_slice(self, limit: int) -> bool:
        """Escape and submit up to ``limit`` received bytes; True if more remain."""


class Ingest:
    """Round-robin over connections with received bytes, one slice per callback;
    connections with little waiting first."""

    def __init__(
        self,
        slice_bytes: int = SLICE_BYTES,
        small_read: int = SMALL_READ,
        turn_seconds: float = TURN_SECONDS,
    ) -> None:
        self.slice_bytes = slice_bytes
        self.small_read = small_read
        self.turn_seconds = turn_seconds
        self._quick: deque[Sliced] = deque()
        self._ready: deque[Sliced] = deque()
        self._queued: set[int] = set()
        self._scheduled = False
        self._quick_turn = True

    def add(self, conn: Sliced, waiting: int) -> None:
        """``conn`` has ``waiting`` bytes to escape: give it a turn."""
        if id(conn) in self._queued:
            return
        self._queued.add(id(conn))
        (self._quick if waiting <= self.small_read else self._ready).append(conn)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and (self._quick or self._ready):
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        until = time.monotonic() + self.turn_seconds
        while self._quick or self._ready:
            # Quick and busy lanes take turns while both have connections waiting.
            quick = bool(self._quick) and (self._quick_turn or not self._ready)
            lane = self._quick if quick else self._ready
            self._quick_turn = lane is not self._quick
            conn = lane.popleft()
            # Alone, a connection takes all it has: slices are for sharing.
            limit = self.slice_bytes if self._quick or self._ready else ALONE_BYTES
            if conn.ingest_slice(limit):
                self._ready.append(conn)
            else:
                self._queued.discard(id(conn))
            if time.monotonic() >= until:
                break
        self._schedule()


class ChainSlots:
    """A few threads for chain work; a waiting small batch goes first."""

    def __init__(self, threads: int = CHAIN_THREADS) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="chain")
        self._free = threads
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, size: int) -> AsyncIterator[None]:
        """Hold one of the threads; ``size``: the bytes the work writes.

        Taken before the epoch tick's lock, so the tick waits only for the
        work running, not for every batch waiting for a thread.
        """
        if self._free and not self._waiting:
            self._free -= 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            big = 0 if size <= SMALL_BATCH else 1
            heapq.heappush(self._waiting, (big, next(self._order), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # handed a slot it will not use
                raise
        try:
            yield
        finally:
            self._release()

    async def execute(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` on the threads (inside :meth:`slot`)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def run(self, size: int, work: Callable[[], _T]) -> _T:
        """Run ``work`` on a chain thread, waiting for a slot."""
        async with self.slot(size):
            return await self.execute(work)

    def _release(self) -> None:
        while self._waiting:
            turn = heapq.heappop(self._waiting)[2]
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1

    def shutdown(self) -> None:
        """Let the threads go once their work is done."""
        self._pool.shutdown(wait=False)


class Budgeted(Protocol):
    """A connection as the budget sees it."""

    def held(self) -> int:
        """Bytes this connection (and its qube's pending batch) holds."""

    def budget_resumed(self) -> None:
        """The budget has room again: read if nothing else holds it back."""


class PendingBudget:
    """Bytes received and not yet written, across all connections."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self._paused: dict[int, Budgeted] = {}
        self._resume_scheduled = False

    def add(self, nbytes: int) -> None:
        """Charge bytes now held (received, or records pending)."""
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    def release(self, nbytes: int) -> None:
        """Bytes no longer held (escaped into records, or written)."""
        self.used -= nbytes
        if self._paused and self.used <= self.total and not self._resume_scheduled:
            self._resume_scheduled = True
            asyncio.get_running_loop().call_soon(self._resume)

    def must_pause(self, conn: Budgeted, connections: int) -> bool:
        """Over the budget and ``conn`` holds at least its share: pause it (and
        remember it, to resume it when there is room)."""
        if self.used <= self.total:
            return False
        share = max(MIN_SHARE, self.total // max(1, connections))
        if conn.held() < share:
            return False
        self._paused[id(conn)] = conn
        return True

    def forget(self, conn: Budgeted) -> None:
        """The connection is gone."""
        self._paused.pop(id(conn), None)

    def _resume(self) -> None:
        self._resume_scheduled = False
        if self.used > self.total:
            return
        paused, self._paused = self._paused, {}
        for conn in paused.values():
            conn.budget_resumed()
