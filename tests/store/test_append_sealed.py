"""``QubeChain.append_sealed``: a batch written and fdatasynced on a helper thread
while it is hashed, sealed only once durable (issue 17: the collector's
one-connection throughput)."""

import errno
import os
import threading
from pathlib import Path

import pytest

from qubes_logvm.core.seal import chain_step
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.sealfile import read_seal_file
from qubes_logvm.store.verify import verify_store
from qubes_logvm.store.writer import Store
from support.segments import numbered

pytestmark = pytest.mark.inprocess


def _lines(n: int, tag: str = "x") -> bytes:
    return numbered(n, tag.encode() + b" %d")


@pytest.fixture
def root(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "store"
    return path, setup_keys(StoreLayout(path), epoch_seconds=60)


def _kind(fd: int) -> str:
    """Which file of a segment ``fd`` is (``log``, ``seal``) or another one."""
    target = os.readlink(f"/proc/self/fd/{fd}")
    return target.rsplit(".", 1)[-1] if target.endswith((".log", ".seal")) else "other"


def test_a_batch_is_stored_and_sealed_as_its_join_also_when_writes_are_cut_short(
    root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # More parts than one writev takes, empty ones, and writes cut short.
    real_writev = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, views: real_writev(fd, [b"".join(views)[:700]]))
    parts = [_lines(1, "p%d" % i) if i % 7 else b"" for i in range(2500)]
    store = Store(root[0])
    chain = store.chain("work")
    chain.open_segment(store.keys, session="s1")
    lines = sum(1 for part in parts if part)
    sealed = chain.append_sealed(parts, lines, store.keys)
    again = chain.append_sealed([_lines(3, "next")], 3, store.keys)
    store.close()
    [segment] = StoreLayout(root[0]).segments("work")
    assert segment.log is not None and segment.seal is not None
    data = segment.log.read_bytes()
    assert data[: sealed.nbytes].split(b"\n", 1)[1] == b"".join(parts)  # after segment-start
    opened = read_seal_file(segment.seal).seals[0]
    assert sealed.head == chain_step(opened.head, data[: sealed.nbytes])
    assert (sealed.lines, again.lines) == (lines + 1, lines + 4)
    assert again.head == chain_step(sealed.head, data[sealed.nbytes : again.nbytes])
    assert verify_store(root[0], root[1]).ok


def test_the_seal_is_written_only_after_the_records_are_durable(
    root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes an ack safe: records written, their fdatasync, then the seal
    line and its fdatasync, all before append_sealed returns (whichever thread)."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_writev, real_fdatasync = os.writev, os.fdatasync

    def writev(fd: int, views: list[memoryview]) -> int:
        with lock:
            events.append(("write", _kind(fd)))
        return real_writev(fd, views)

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        with lock:
            events.append(("durable", _kind(fd)))

    store = Store(root[0])
    chain = store.chain("work")
    chain.open_segment(store.keys, session="s1")
    chain.append(_lines(1, "unsealed"), 1)  # appended before, covered by this batch
    monkeypatch.setattr(os, "writev", writev)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    chain.append_sealed([_lines(50, "a"), _lines(50, "b")], 100, store.keys)
    returned = len(events)
    monkeypatch.undo()
    store.close()
    assert events[:returned] == [
        ("write", "log"),
        ("durable", "log"),
        ("write", "seal"),
        ("durable", "seal"),
    ]
    assert verify_store(root[0], root[1]).ok


def test_a_failed_fdatasync_cuts_the_batch_back_and_the_next_one_is_sealed(
    root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(root[0])
    chain = store.chain("work")
    chain.open_segment(store.keys, session="s1")
    first = chain.append_sealed([_lines(5, "kept")], 5, store.keys)
    real_fdatasync = os.fdatasync

    def failing(fd: int) -> None:
        if _kind(fd) == "log":
            raise OSError(errno.EIO, "injected")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="injected"):
        chain.append_sealed([_lines(7, "lost")], 7, store.keys)
    monkeypatch.undo()
    layout = StoreLayout(root[0])
    log_path, seal_path = layout.segment_log("work", 1), layout.segment_seal("work", 1)
    assert log_path.stat().st_size == first.nbytes  # cut back to the last seal
    assert read_seal_file(seal_path).seals[-1] == first
    after = chain.append_sealed([_lines(2, "after")], 2, store.keys)
    store.close()
    assert after.lines == first.lines + 2
    assert b"lost" not in log_path.read_bytes()
    assert verify_store(root[0], root[1]).ok
