"""Resources a sender cannot exhaust, on a small filesystem the test makes (tmpfs).

Bounded in count and time: the big figures (100,000 calls, 200 flooders,
latency percentiles) are measured by ``make bench``.
"""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from collector.helpers import Collector, make_store, send, sent_lines, verify_errors

from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.usage import FILE_COST, qube_usage

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)")

#: tmpfs inodes: without the per-file cost the calls below would use them all.
INODES = 1500
QUOTA = 4 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs with only INODES inodes, unmounted at the end."""
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=64m,nr_inodes={INODES}", "tmpfs", str(mount)],
        check=True,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.timeout(240)
def test_many_one_line_calls_stay_within_inode_and_block_budget(small_fs: Path) -> None:
    collector = Collector(
        small_fs,
        {
            "segment": {"max_bytes": "64K"},
            "quota": {"default": "16M", "qubes": {"calls": QUOTA}},
            "global": {"keep_free": 0, "keep_free_inodes": 100},
            "housekeeping_seconds": 0.5,
        },
    )
    collector.vkey = make_store(collector.store)
    collector.start()
    calls = 1000  # 2,000 files without a per-file cost: more than the tmpfs has
    try:
        for i in range(calls):
            assert send(collector.socket, "calls", b"call %d\n" % i) == [1]
        assert send(collector.socket, "quiet", b"still here\n") == [1]
    finally:
        assert collector.stop() == 0
    cost = qube_usage(StoreLayout(collector.store), "calls")
    assert cost.disk <= QUOTA
    assert cost.files <= QUOTA // (FILE_COST + 4096)  # every file charged 16 KiB at least
    assert os.statvfs(small_fs).f_favail > 100
    stored = [payload for _, payload, _ in sent_lines(collector.store, "calls")]
    assert stored and stored == [b"call %d" % i for i in range(calls - len(stored), calls)]
    assert [p for _, p, _ in sent_lines(collector.store, "quiet")] == [b"still here"]
    assert verify_errors(collector.store, collector.vkey) == []
