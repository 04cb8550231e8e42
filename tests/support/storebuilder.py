"""Builds real stores with the real writer, for the reader, verifier and CLI tests.

The store holds several qubes and segments, closed and open ones, a
tombstone and a compressed segment, written through
:class:`qubes_logvm.store.writer.Store` exactly as the collector writes them.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from qubes_logvm.core.records import format_timestamp, line_record, note_record
from qubes_logvm.store.compress import compress_segment
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.writer import QubeChain, Store


@dataclass
class Built:
    """A built store: its root and the verification key text."""

    root: Path
    key: str

    @property
    def layout(self) -> StoreLayout:
        """The store's paths."""
        return StoreLayout(self.root)

    def log(self, qube: str, seq: int) -> Path:
        """A segment's text file (plain or compressed, as it is on disk)."""
        [files] = [s for s in self.layout.segments(qube) if s.seq == seq]
        assert files.log is not None
        return files.log

    def seal(self, qube: str, seq: int) -> Path:
        """A segment's seal file."""
        return self.layout.segment_seal(qube, seq)

    @property
    def format(self) -> int:
        """The store's format (store.json)."""
        return int(json.loads(self.layout.store_json.read_bytes())["format"])


class Clock:
    """Receive times as the collector makes them (the writer's notes use time.time too)."""

    def __init__(self) -> None:
        self.now = 0.0

    def stamp(self) -> bytes:
        """The next receive time: now, but always after the previous one."""
        self.now = max(time.time(), self.now + 0.000001)
        return format_timestamp(self.now)


def fill_segment(
    store: Store, chain: QubeChain, clock: Clock, *, batches: int, per_batch: int, close: bool
) -> None:
    """One segment: batches of records, each sealed, an epoch tick after each batch."""
    chain.open_segment(store.keys, session=f"s{chain.seq + 1}")
    for batch in range(batches):
        lines = b"".join(
            line_record(
                clock.stamp(),
                b"%s seg %d batch %d rec %d: sshd[42]: ok"
                % (chain.qube.encode(), chain.seq, batch, i),
            )
            for i in range(per_batch)
        )
        chain.append(lines, per_batch)
        chain.seal(store.keys)
        store.tick()
    if close:
        chain.append(note_record(clock.stamp(), "dropped", count=7, reason="rate-limit"), 1)
        chain.close(store.keys)


def build_store(
    root: Path, *, leave_open: bool = True, compress: bool = True, store_format: int = 2
) -> Built:
    """work: 4 segments (1 deleted with a tombstone, 4 open); personal: 3 (1 compressed);
    disp12: 1 closed."""
    key = setup_keys(StoreLayout(root), epoch_seconds=1, store_format=store_format)
    store = Store(root)
    clock = Clock()
    for qube, count in (("work", 4), ("personal", 3), ("disp12", 1)):
        chain = store.chain(qube)
        for index in range(count):
            newest = index == count - 1
            fill_segment(
                store,
                chain,
                clock,
                batches=3,
                per_batch=4,
                close=not (qube == "work" and newest and leave_open),
            )
    store.chain("work").delete_oldest(store.keys)
    if compress:
        layout = StoreLayout(root)
        [first] = [s for s in layout.segments("personal") if s.seq == 1]
        compress_segment(layout, first)
    if leave_open:
        store.keys.close()  # the collector still runs: work/00000004 stays open
    else:
        store.close()
    return Built(root, key)


def wait_for(predicate: "object", timeout: float = 10.0) -> None:
    """Poll a condition (for follow tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not met")
