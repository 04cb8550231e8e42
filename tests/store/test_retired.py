"""store/retired.py: retirements per epoch are bounded, the file stays small."""

import time
from pathlib import Path

from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.retired import KEEP, MAX_LINES, read_retired, retired_path
from qubes_logvm.store.verify import verify_store
from qubes_logvm.store.writer import Store


def test_retirements_per_epoch_bounded_and_file_compacted(tmp_path: Path) -> None:
    vkey = setup_keys(StoreLayout(tmp_path), epoch_seconds=10)
    store = Store(tmp_path)
    names = [f"disp{i}" for i in range(KEEP + MAX_LINES // 2)]
    for name in names:
        chain = store.chain(name)
        chain.open_segment(store.keys, session=name, reason="connect")
        chain.append(line_record(format_timestamp(time.time()), b"hello"), 1)
        chain.seal(store.keys)
        chain.close(store.keys, reason="disconnect")
        chain.delete_oldest(store.keys, keep_newest=0, reason="dispvm")
        store.release(name)
    assert store.retire(names[0]) is None  # deleted in this epoch: not yet
    passes = 0
    while store.layout.qubes():
        store.tick()
        retired = [q for q in store.layout.qubes() if store.retire(q) is not None]
        assert len(retired) <= KEEP
        passes += 1
    store.tick()
    store.close()
    assert passes == 2
    lines = read_retired(StoreLayout(tmp_path)).lines
    assert len(lines) <= MAX_LINES
    assert retired_path(StoreLayout(tmp_path)).stat().st_size < 1 << 20
    assert verify_store(tmp_path, vkey).errors == []
