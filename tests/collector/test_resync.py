"""The collector's running total after housekeeping (Daemon._resync), in process.

The total must be the scan's, with connected qubes' own figures, whatever
the scan cache holds as quiet; the quotas exactly the current qubes'. The
Python work is per qube that changed (issue 17): the cache keeps the quiet
qubes' sum, so the result must match adding every cost up.
"""

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qubes_logvm.collector.daemon import Daemon
from qubes_logvm.config.storage_policy import quota_for
from qubes_logvm.store.eviction import ScanCache, plan_deletions
from qubes_logvm.store.usage import ZERO_COST, Cost, qube_usage
from qubes_logvm.store.writer import Store
from support.segments import MtimeClock, config, new_store, sample_lines, write_segment

pytestmark = [pytest.mark.inprocess, pytest.mark.timeout(60)]

CFG = config("global: {keep_free: 0}\nquota: {qubes: {big: 8G}}\n")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    new_store(tmp_path / "store")
    opened = Store(tmp_path / "store")
    yield opened
    opened.keys.close()


class _Usage:
    def __init__(self) -> None:
        self.total = ZERO_COST
        self.quotas: dict[str, int] = {}

    def resync(self, total: Cost, quotas: dict[str, int]) -> None:
        self.total, self.quotas = total, quotas


def _daemon(cache: ScanCache, writers: dict[str, Any]) -> Any:
    shared = SimpleNamespace(
        scan_cache=cache, config=SimpleNamespace(retention=CFG), usage=_Usage()
    )
    return SimpleNamespace(
        shared=shared, server=SimpleNamespace(writers=writers), _quotas=(None, {})
    )


def _settle(store: Store) -> None:
    """Qube directories last changed a minute ago (the cache trusts settled ones)."""
    ago = time.time() - 60
    for qube in store.layout.qubes():
        os.utime(store.layout.qube_dir(qube), (ago, ago))


def _pass(store: Store, cache: ScanCache, daemon: Any) -> None:
    _settle(store)
    scanned: dict[str, Cost] = {}
    plan_deletions(store.layout, CFG, MtimeClock(0), {}, usage_out=scanned, cache=cache)
    Daemon._resync(daemon, scanned)


def _expected(store: Store, connected: dict[str, Cost]) -> Cost:
    total = ZERO_COST
    for qube in store.layout.qubes():
        total += connected.get(qube) or qube_usage(store.layout, qube)
    return total


def test_total_and_quotas_match_the_store_whatever_is_quiet(store: Store) -> None:
    lines = sample_lines(50)
    for qube in ("big", "quiet1", "quiet2", "changes", "connected"):
        write_segment(store, qube, lines)
    monotonic = [0.0]
    cache = ScanCache(full_interval=300, monotonic=lambda: monotonic[0])
    reported = Cost(12345, 3, 999)  # the connected writer's own figures
    writers = {"connected": SimpleNamespace(chain=object(), reported=reported)}
    daemon = _daemon(cache, writers)
    usage = daemon.shared.usage

    _pass(store, cache, daemon)  # the first pass reads every qube
    assert set(cache.quiet_costs()) == {"big", "quiet1", "quiet2", "changes", "connected"}
    assert usage.total == _expected(store, {"connected": reported})
    assert set(usage.quotas) == set(store.layout.qubes())
    assert usage.quotas["big"] == quota_for(CFG, "big") != usage.quotas["quiet1"]

    # A qube the collector wrote to, and a new one: read again, the rest
    # remembered; the total is still the store's.
    write_segment(store, "changes", lines)
    cache.touch("changes")
    write_segment(store, "new", lines)
    cache.touch("new")
    _pass(store, cache, daemon)
    assert {"changes", "new"} <= set(cache.quiet_costs())  # read, and quiet again
    assert usage.total == _expected(store, {"connected": reported})
    assert set(usage.quotas) == set(store.layout.qubes())

    # A qube gone (retired) and the connected one gone quiet: after the next
    # full pass neither the total nor the quotas hold what is not there.
    shutil.rmtree(store.layout.qube_dir("quiet2"))
    writers.clear()
    monotonic[0] = 301
    _pass(store, cache, daemon)
    assert "quiet2" not in usage.quotas
    assert set(usage.quotas) == set(store.layout.qubes())
    assert usage.total == _expected(store, {})
