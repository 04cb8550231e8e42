"""The exporter's transport on its own: the window it shares, what it keeps after acks."""

import asyncio
import weakref
from pathlib import Path
from typing import Any

from exporter.helpers import FakeCollector

from qubes_logvm.exporter.transport import Transport, Window


class Position:
    """A source position the test can watch (weakly) for being freed."""


class Counter:
    """An acker that keeps nothing of what it is told."""

    def __init__(self) -> None:
        self.acks = 0

    def acked(self, position: Any) -> None:
        del position
        self.acks += 1


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_shared_window_holds_the_second_call_until_the_first_has_room() -> None:
    async def go() -> None:
        window = Window(lines=10, size=1 << 20)
        window.add(10, 100)  # the first call's lines fill it
        assert not window.has_room()
        second = asyncio.create_task(window.wait_room())
        await _settle()
        assert not second.done()
        window.release(4, 40)  # the first call's LogVM acknowledged some
        await second
        assert window.has_room()

    asyncio.run(go())


def test_no_chunk_outlives_its_acknowledgement(tmp_path: Path) -> None:
    """Acknowledged lines are freed while the call stays open for more.

    dom0 keeps one call per qube: bytes a call still held after their ack
    (the writer's last batch) cost one window per idle qube.
    """
    collector = FakeCollector(tmp_path / "collector")
    counter = Counter()

    async def go() -> None:
        transport = Transport(collector.command, max_delay=0.001)
        link = asyncio.create_task(transport.run())
        position = Position()
        watched = weakref.ref(position)
        await transport.put(b"one\ntwo\n", 2, counter, position)
        del position
        while counter.acks < 1:
            await asyncio.sleep(0.01)
        await _settle()
        assert transport.pending() == 0
        assert not link.done()  # the call is still open, its writer waiting
        assert watched() is None
        transport.finish()
        await link

    asyncio.run(go())
    assert collector.lines() == [b"one", b"two"]
