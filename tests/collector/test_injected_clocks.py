"""Clocks injected into the collector's parts (no patching of ``time`` in tests)."""

import asyncio
import itertools
from pathlib import Path

import pytest
from collector.helpers import (
    Sink,
    finish_and_wait,
    make_store,
    notes,
    sent_lines,
    submit_text,
    until,
    verify_errors,
)

from qubes_logvm.collector.ledger import QubeLedger
from qubes_logvm.collector.qubewriter import QubeWriter, StoreAccess
from qubes_logvm.collector.witness_sender import CheckpointSender
from qubes_logvm.config.collector import CollectorConfig, RateLimit
from qubes_logvm.store.eviction import EpochClock
from qubes_logvm.store.writer import Store
from support.segments import new_store, sample_lines

pytestmark = [pytest.mark.inprocess, pytest.mark.timeout(30)]


class StepClock:
    """A wall clock the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_dispvm_grace_is_counted_in_sealed_epochs(tmp_path: Path) -> None:
    """The grace runs on the epoch clock: epochs sealed, not the wall clock."""
    new_store(tmp_path / "store")  # 1 s epochs
    store = Store(tmp_path / "store")
    try:
        chain = store.chain("disp1")
        chain.open_segment(store.keys, session="a")
        chain.append(sample_lines(3), 3)
        chain.close(store.keys)
        ledger = QubeLedger("disp1", lambda: EpochClock(store.keys.epoch, 1.0))
        ledger.closed_segment(chain, "a")
        store.tick()
        assert not ledger.may_evict("b", grace=3)  # session a ended one epoch ago
        assert ledger.may_evict("a", grace=3)  # its own logs
        store.tick()
        assert not ledger.may_evict("b", grace=3)
        store.tick()  # three epochs sealed since session a's close
        assert ledger.may_evict("b", grace=3)
        # Read back from disk (a restarted collector) it is the same count.
        again = QubeLedger("disp1", lambda: EpochClock(store.keys.epoch, 1.0))
        again.load(store.layout, store.chain("disp1"), sessions=True)
        assert again.sessions == ledger.sessions
        assert again.may_evict("b", grace=3) and not again.may_evict("b", grace=4)
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


def _writer(store: Store, config: CollectorConfig, mono: StepClock) -> QubeWriter:
    shared = StoreAccess(store, config, clock=StepClock(1_800_000_000.0), monotonic=mono)
    return QubeWriter("work", shared, on_idle=lambda _: None)


def _submit(writer: QubeWriter, feed: Sink, count: int, tag: bytes) -> None:
    submit_text(writer, feed, b"".join(b"%s %d\n" % (tag, i) for i in range(count)))


def test_writer_rate_limit_refills_on_the_injected_monotonic_clock(tmp_path: Path) -> None:
    vkey = make_store(tmp_path / "store")
    store = Store(tmp_path / "store")
    mono = StepClock(500.0)
    config = CollectorConfig(rate_limit=RateLimit(lines_per_second=10, burst=10), session_linger=0)

    async def run() -> list[tuple[int, bool]]:
        writer = _writer(store, config, mono)
        feed = Sink()
        assert writer.attach(feed)
        _submit(writer, feed, 30, b"first")  # the burst: 10 pass
        _submit(writer, feed, 5, b"same")  # no time passed: no token
        mono.now += 0.5  # half a second: 5 tokens
        _submit(writer, feed, 30, b"later")
        return await finish_and_wait(writer, feed)

    try:
        acks = asyncio.run(run())
    finally:
        store.close()
    assert acks[-1] == (65, True)  # every line handled: stored or counted as dropped
    stored = [p for _, p, _ in sent_lines(tmp_path / "store", "work")]
    assert stored == [b"first %d" % i for i in range(10)] + [b"later %d" % i for i in range(5)]
    dropped = notes(tmp_path / "store", "work", "dropped")
    assert [(n.fields()["reason"], n.fields()["count"]) for n in dropped] == [("rate-limit", "50")]
    assert verify_errors(tmp_path / "store", vkey) == []


def test_writer_linger_and_open_age_on_the_injected_monotonic_clock(tmp_path: Path) -> None:
    make_store(tmp_path / "store")
    store = Store(tmp_path / "store")
    mono = StepClock(500.0)
    config = CollectorConfig(session_linger=5.0)

    async def run() -> list[object]:
        writer = _writer(store, config, mono)
        feed = Sink()
        assert writer.attach(feed)
        _submit(writer, feed, 3, b"line")
        await until(lambda: bool(feed.acks))
        mono.now += 100.0  # nothing happens on its own: only the clock moved
        seen: list[object] = [writer.open_age]
        writer.finish(feed)
        await until(lambda: feed.acks[-1][1])
        seen.append(writer.chain is not None and writer.chain.is_open)
        mono.now += 4.0  # 4 s after the last connection left: still within the linger
        writer.wake()
        await asyncio.sleep(0.05)
        seen.append(writer.chain is not None and writer.chain.is_open)
        mono.now += 1.5  # past the linger: the next step closes the session
        writer.wake()
        await until(lambda: writer.idle)
        return seen

    try:
        seen = asyncio.run(run())
    finally:
        store.close()
    # The open segment's age is the injected clock's; it stays open after the
    # last connection left (lingering) and closes once the clock passed the linger.
    assert seen == [100.0, True, True]
    closes = [n for n in notes(tmp_path / "store", "work") if n.event == "segment-end"]
    assert len(closes) == 1
