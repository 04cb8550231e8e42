"""Retired qubes: the real collector removes the directories of fully deleted
DispVMs with a sealed retire line, and the store verifies (issue 17)."""

import subprocess
import time
from pathlib import Path

import pytest
from attacks.conftest import LOGVM, WITNESS, _admin
from collector.helpers import Collector, make_store, send, wait_for

from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.retired import read_retired
from qubes_logvm.store.verify import verify_store
from qubes_logvm.store.witness_pending import pending_path, queue_registration

pytestmark = pytest.mark.timeout(300)

#: Short-lived DispVM names (10,000 in the bench; bounded here).
NAMES = 120
CONFIG = {
    "retention": {"dispvm_delete_after_close": "0", "dispvm_grace": "0"},
    "housekeeping_seconds": 0.2,
    "session_linger": 0,
}


def _logvm(*args: str) -> str:
    done = subprocess.run([str(LOGVM), *args], capture_output=True, text=True, check=True)
    return done.stdout


def _disps(layout: StoreLayout) -> list[str]:
    return [q for q in layout.qubes() if q.startswith("disp")]


def _retired(layout: StoreLayout) -> set[str]:
    return {line.qube for _, line in read_retired(layout).lines}


def test_short_lived_dispvms_are_retired_and_the_store_verifies(tmp_path: Path) -> None:
    collector = Collector(tmp_path, CONFIG)
    collector.vkey = make_store(collector.store, epoch_seconds=0.5)
    layout = StoreLayout(collector.store)
    collector.start()
    try:
        assert send(collector.socket, "work", b"stays\n") == [1]
        for index in range(NAMES):
            assert send(collector.socket, f"disp{index}", b"one session %d\n" % index) == [1]
        assert wait_for(lambda: not _disps(layout), timeout=120), _disps(layout)[:5]
        assert _retired(layout) == {f"disp{i}" for i in range(NAMES)}
        assert layout.qubes() == ["work"]
        time.sleep(1.2)  # two epochs: the epoch seal no longer holds the retired leaves
        listed = _logvm("list", "--store", str(collector.store))
        assert f"{NAMES} qubes retired" in listed and "work: 1 segments" in listed
        assert "disp5: retired in epoch" in _logvm(
            "list", "--store", str(collector.store), "disp5"
        )
        report = verify_store(collector.store, collector.vkey)
        assert report.errors == [], report.errors
        infos = [f.message for f in report.findings if f.severity == "info"]
        assert any("retired in epoch" in m for m in infos), infos
        assert any(m.endswith("more qubes retired") or "more qubes retired" in m for m in infos)
        # A name reused after retirement starts a fresh chain that verifies.
        assert send(collector.socket, "disp7", b"second life\n") == [1]
        assert wait_for(lambda: "disp7" in layout.qubes())
        report = verify_store(collector.store, collector.vkey)
        assert report.errors == [], report.errors
    finally:
        assert collector.stop() == 0
    # After a restart (retirements read back, reused name retired again).
    collector.start()
    try:
        assert wait_for(lambda: not _disps(layout), timeout=60)
        time.sleep(1.2)
        report = verify_store(collector.store, collector.vkey)
        assert report.errors == [], report.errors
    finally:
        assert collector.stop() == 0
    report = verify_store(collector.store, collector.vkey)
    assert report.errors == [], report.errors


def test_a_connected_or_kept_qube_is_not_retired(tmp_path: Path) -> None:
    # Without dispvm_delete_after_close nothing is deleted, so nothing retires.
    collector = Collector(tmp_path, {"housekeeping_seconds": 0.2, "session_linger": 0})
    collector.vkey = make_store(collector.store, epoch_seconds=0.5)
    layout = StoreLayout(collector.store)
    collector.start()
    try:
        assert send(collector.socket, "disp3", b"kept\n") == [1]
        time.sleep(1.5)
        assert layout.qubes() == ["disp3"]
        assert not _retired(layout)
    finally:
        assert collector.stop() == 0


def test_retired_with_the_witness_and_a_reused_name(tmp_path: Path) -> None:
    """With a witness: each DispVM's last deletion reaches it before the retirement;
    verify --witness accepts the directories gone and a reused name's new chain."""
    wdir = tmp_path / "witness"
    serve = ["env", "QREXEC_REMOTE_DOMAIN=sys-log", str(WITNESS), "--dir", str(wdir), "serve"]
    config = {**CONFIG, "witness": {"command": serve, "interval_seconds": 0.2}}
    collector = Collector(tmp_path, config)
    collector.vkey = make_store(collector.store, epoch_seconds=0.5)
    queue_registration(collector.store, collector.vkey)
    layout = StoreLayout(collector.store)
    collector.start()
    try:
        assert send(collector.socket, "work", b"stays\n") == [1]
        for index in range(20):
            assert send(collector.socket, f"disp{index}", b"one session %d\n" % index) == [1]
        assert wait_for(lambda: not _disps(layout), timeout=60), _disps(layout)[:5]
        assert send(collector.socket, "disp3", b"second life\n") == [1]
        assert wait_for(lambda: not pending_path(collector.store).exists(), 20)
        time.sleep(1.5)  # epochs and checkpoints reach the witness
    finally:
        assert collector.stop() == 0
    assert len(_retired(layout)) >= 20
    export = tmp_path / "witness.export"
    _admin(wdir, "export", "sys-log", "-o", str(export))
    assert export.read_bytes().count(b"\nret ") >= 20  # each retirement reached the witness
    report = verify_store(collector.store, collector.vkey, witness=export)
    assert report.errors == [], report.errors
