"""Clocks injected into the collector's parts (no patching of ``time`` in tests)."""

import asyncio
import itertools
from pathlib import Path

import pytest

from qubes_logvm.collector.ledger import QubeLedger
from qubes_logvm.collector.witness_sender import CheckpointSender
from qubes_logvm.store.writer import Store
from support.segments import new_store, sample_lines

pytestmark = [pytest.mark.inprocess, pytest.mark.timeout(30)]


class StepClock:
    """A wall clock the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_dispvm_grace_is_measured_on_the_injected_clock(tmp_path: Path) -> None:
    new_store(tmp_path / "store")
    store = Store(tmp_path / "store")
    try:
        chain = store.chain("disp1")
        chain.open_segment(store.keys, session="a")
        chain.append(sample_lines(3), 3)
        chain.close(store.keys)
        clock = StepClock(1000.0)
        ledger = QubeLedger("disp1", clock)
        ledger.closed_segment(chain, "a")
        clock.now = 1030.0
        assert not ledger.may_evict("b", grace=60)  # session a ended 30 s ago
        assert ledger.may_evict("a", grace=60)  # its own logs
        clock.now = 1061.0
        assert ledger.may_evict("b", grace=60)
    finally:
        store.close()


def test_checkpoint_sender_flush_deadline_on_the_injected_clock(tmp_path: Path) -> None:
    ticks = itertools.count(0.0, 100.0)  # each reading 100 s later
    sender = CheckpointSender(tmp_path, command=["false"], clock=lambda: next(ticks))
    sender.queue["work"] = b"v1 tick work 1 0 0 0 00 00 00"

    async def flush() -> bool:
        return await sender.flush(150.0)

    # Not started: nothing sends; the 150 s deadline passes on the test's clock at once.
    assert asyncio.run(asyncio.wait_for(flush(), 5)) is False
