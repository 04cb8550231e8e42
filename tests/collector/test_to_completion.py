"""Chain work keeps its locks until its thread is done, even when cancelled.

Found by CI (tests/collector/test_faults.py, the 8-day jump, 2 runs in 30
under load): the collector's stop cancelled housekeeping while a chain
thread was deleting a segment; the cancelled coroutine let go of the tick
lock at once, the stop took it exclusively and erased the key, and the
thread signed the tombstone with a zero key: verify said "not a tombstone
sealed for alpha with this key" for ever after.
"""

import asyncio
import threading
from typing import cast

import pytest

from qubes_logvm.collector.qubewriter import StoreAccess, to_completion
from qubes_logvm.config.collector import CollectorConfig
from qubes_logvm.store.writer import Store

pytestmark = [pytest.mark.inprocess, pytest.mark.timeout(30)]


def test_a_cancelled_chain_work_holds_the_tick_lock_until_its_thread_ends() -> None:
    events: list[str] = []
    started, go = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        go.wait(10)
        events.append("work done")
        return "result"

    async def scene() -> None:
        shared = StoreAccess(cast(Store, None), CollectorConfig())
        chain = asyncio.ensure_future(shared.run_on_chain("alpha", work))
        while not started.is_set():
            await asyncio.sleep(0.01)
        chain.cancel()  # as the stop cancels housekeeping

        async def tick() -> None:
            async with shared.tick_lock.exclusive():  # as the stop closes the store
                events.append("exclusive")

        ticking = asyncio.ensure_future(tick())
        await asyncio.sleep(0.2)  # time enough for the lock to be taken, were it free
        events.append("thread released")
        go.set()
        await ticking
        with pytest.raises(asyncio.CancelledError):
            await chain

    asyncio.run(scene())
    assert events == ["thread released", "work done", "exclusive"]


def test_to_completion_returns_and_raises_as_the_work_does() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    async def failing() -> int:
        raise ValueError("boom")

    async def scene() -> None:
        assert await to_completion(value()) == 7
        with pytest.raises(ValueError, match="boom"):
            await to_completion(failing())

    asyncio.run(scene())
