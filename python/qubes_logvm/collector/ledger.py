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

from ..config.storage_policy import RetentionConfig, plain_quota_for, quota_for
from ..store.layout import StoreLayout
from ..store.usage import ZERO_COST, Cost, file_cost, qube_usage, segment_cost, written_cost
from ..store.writer import QubeChain

log = logging.getLogger(__name__)


class QubeLedger:
    """One qube's usage between scans."""

    def __init__(self, qube: str) -> None:
        self.qube = qube
        self.closed: dict[int, Cost] = {}  # closed segments: seq -> cost, oldest first
        self.other = ZERO_COST  # the lock file, leftovers (tombstones: from the chain)
        self.open_seal_bytes = 0  # seal lines of the open segment

    def load(self, layout: StoreLayout, chain: QubeChain) -> None:
        """Read the costs from disk (worker thread, under the qube's lock)."""
        closed: dict[int, Cost] = {}
        open_cost = ZERO_COST
        for segment in layout.segments(self.qube):
            cost = segment_cost(segment)
            if chain.is_open and segment.seq == chain.seq:
                open_cost = cost
            else:
                closed[segment.seq] = cost
        self.closed = closed
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

    def closed_segment(self, chain: QubeChain) -> None:
        """The open segment was just closed: keep its cost as a closed one."""
        self.closed[chain.seq] = written_cost(chain.nbytes, self.open_seal_bytes)
        self.open_seal_bytes = 0

    def deleted(self, seq: int) -> None:
        """Segment ``seq`` went (its tombstone is counted through the chain)."""
        self.closed.pop(seq, None)


def _tomb_cost(chain: QubeChain) -> Cost:
    return Cost(file_cost(chain.tomb_bytes), 1, 0) if chain.tomb_bytes else ZERO_COST


def over(cfg: RetentionConfig, qube: str, cost: Cost) -> bool:
    """True when ``cost`` exceeds the qube's quota or its plain-bytes cap."""
    return cost.disk > quota_for(cfg, qube) or cost.plain > plain_quota_for(cfg, qube)
