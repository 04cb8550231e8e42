"""The quota ledger: what each qube costs, kept as the collector writes.

Trust side: runs in the collector; figures come from the store's own files
(:mod:`..store.usage`, the one usage definition, shared with eviction
planning) and from what the writer appended, never from a sender.

A :class:`QubeLedger` holds one qube's closed segments' costs (read once
when the writer starts and again after rotation changed files), the cost of
its other files (tombstones, lock), and works out the open segment's cost
from the chain's byte counts, so the hot path never scans a directory.
"""

import logging
import threading
from collections.abc import Callable

from ..config.storage_policy import RetentionConfig, quota_for
from ..store.eviction import EpochClock, start_fields
from ..store.layout import SegmentFiles, StoreLayout
from ..store.usage import ZERO_COST, Cost, file_cost, qube_usage, segment_cost, written_cost
from ..store.writer import QubeChain

log = logging.getLogger(__name__)


class QubeLedger:
    """One qube's usage between scans.

    ``ages`` gives the current :class:`~..store.eviction.EpochClock`: the
    DispVM grace is counted in sealed epochs, like retention ages, so a
    stepped wall clock neither shortens nor stretches it.
    """

    def __init__(self, qube: str, ages: Callable[[], EpochClock]) -> None:
        self.qube = qube
        self.ages = ages
        self.closed: dict[int, Cost] = {}  # closed segments: seq -> cost, oldest first
        self.other = ZERO_COST  # the lock file, leftovers (tombstones: from the chain)
        self.open_seal_bytes = 0  # seal lines of the open segment
        # Closed segments' session token and close time (on the epoch
        # clock), kept for DispVMs only: whose logs a flood may evict
        # (:meth:`may_evict`).
        self.sessions: dict[int, tuple[str, float]] = {}

    def load(self, layout: StoreLayout, chain: QubeChain, *, sessions: bool = False) -> None:
        """Read the costs (and with ``sessions`` who wrote each segment) from disk.

        Worker thread, under the qube's lock.
        """
        closed: dict[int, Cost] = {}
        open_cost = ZERO_COST
        for segment in layout.segments(self.qube):
            cost = segment_cost(segment)
            if chain.is_open and segment.seq == chain.seq:
                open_cost = cost
            else:
                closed[segment.seq] = cost
                if sessions and segment.seq not in self.sessions:
                    self.sessions[segment.seq] = self._session_of(segment)
        self.closed = closed
        self.sessions = {seq: v for seq, v in self.sessions.items() if seq in closed}
        total = qube_usage(layout, self.qube)
        self.other = total - open_cost - sum(closed.values(), _tomb_cost(chain))

    def open_cost(self, chain: QubeChain) -> Cost:
        """The open segment's cost (zero when none is open)."""
        if not chain.is_open:
            return ZERO_COST
        return written_cost(chain.nbytes, self.open_seal_bytes)

    def total(self, chain: QubeChain) -> Cost:
        """Everything the qube costs now."""
        return sum(self.closed.values(), self.other + _tomb_cost(chain)) + self.open_cost(chain)

    def closed_segment(self, chain: QubeChain, session: str) -> None:
        """The open segment (of ``session``) was just closed: keep its cost."""
        self.closed[chain.seq] = written_cost(chain.nbytes, self.open_seal_bytes)
        ages = self.ages()
        closed_at = ages.at(chain.last_seal.epoch) if chain.last_seal else ages.now
        self.sessions[chain.seq] = (session, closed_at)
        self.open_seal_bytes = 0

    def deleted(self, seq: int) -> None:
        """Segment ``seq`` went (its tombstone is counted through the chain)."""
        self.closed.pop(seq, None)
        self.sessions.pop(seq, None)

    def may_evict(self, session: str, grace: float) -> bool:
        """May ``session``'s flood delete the oldest closed segment?

        Only if that segment is the session's own, or its session ended (its
        last segment closed) at least ``grace`` seconds ago, counted in
        sealed epochs: a DispVM that reuses a name never evicts an earlier
        DispVM's fresh logs.
        """
        if not self.closed:
            return False
        owner, _ = self.sessions.get(min(self.closed), ("", 0.0))
        if owner == session:
            return True
        ended = max((t for s, t in self.sessions.values() if s == owner), default=0.0)
        return self.ages().now - ended >= grace

    def _session_of(self, segment: SegmentFiles) -> tuple[str, float]:
        """(session token, close time on the epoch clock) of a closed segment on disk."""
        closed_at = self.ages().closed_at(segment)
        return start_fields(segment).get("session", ""), 0.0 if closed_at is None else closed_at


def _tomb_cost(chain: QubeChain) -> Cost:
    return Cost(file_cost(chain.tomb_bytes), 1, 0) if chain.tomb_bytes else ZERO_COST


class StoreLedger:
    """The whole store's cost as a running total, for the global cap at append time.

    Writers charge what their qube's cost changed by after every write and
    deletion (worker threads, hence the lock); housekeeping resets it from
    its scan (:meth:`resync`), which also corrects what ``logvm-rotate``
    changed (compression only ever lowers a cost, so between scans the total
    errs on the safe side).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = ZERO_COST
        self._quotas: dict[str, int] = {}  # every qube in the store (for fair shares)
        self.quota_sum = 0
        self.over_cap = False  # a writer within its share found the cap exceeded

    def charge(self, delta: Cost) -> None:
        """Add what one qube's cost changed by."""
        with self._lock:
            self.total += delta

    def resync(self, total: Cost, quotas: dict[str, int]) -> None:
        """Reset from a scan of the store (``quotas``: every qube's)."""
        with self._lock:
            self.total, self._quotas = total, quotas
            self.quota_sum = sum(quotas.values())

    def known(self, cfg: RetentionConfig, qube: str) -> None:
        """A qube starts writing (it may be new since the last scan)."""
        with self._lock:
            if qube not in self._quotas:
                self._quotas[qube] = quota_for(cfg, qube)
                self.quota_sum += self._quotas[qube]

    def share(self, cfg: RetentionConfig, qube: str) -> float:
        """The qube's fair share of ``global.max_bytes`` (in proportion to quotas)."""
        quota = quota_for(cfg, qube)
        return cfg.global_max_bytes * quota / max(self.quota_sum, quota)
