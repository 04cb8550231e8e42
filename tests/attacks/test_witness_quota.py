"""Quota deletions judged by the sizes the witness heard (issue 10, witness side).

A real ``logvm-collector`` with a real witness (``logvm-witness serve`` as
qrexec runs it) and the policy dom0 deployed (a 200K quota for ``work``).
First the honest case: ``work`` floods far over its quota, the collector
deletes its oldest segments at append time as each next batch would exceed
the quota, and sends a cost note with each: ``logvm verify --witness`` (the
real CLI) passes. Then the intruder lowers ``work``'s quota in the LogVM's
local config and reloads (SIGHUP): the collector deletes "for quota" while
the qube is well within the quota dom0 deployed, which ``verify --witness``
reports as an error; ``verify`` alone shows the deletions only.
"""

import json
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from collector.helpers import Collector, make_store, send, wait_for

from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.sealfile import is_closed
from qubes_logvm.store.tombstones import read_tomb_file
from qubes_logvm.store.witness_pending import pending_path, queue_registration
from support.programs import program

pytestmark = pytest.mark.timeout(180)
WITNESS = program("logvm-witness")
LOGVM_CLI = program("logvm")
RETENTION = {"segment": {"max_bytes": "4K"}, "global": {"keep_free": 0}}
DEPLOYED = {**RETENTION, "quota": {"qubes": {"work": "200K"}}}
LOWERED = {**RETENTION, "quota": {"qubes": {"work": "64K"}}}


@dataclass
class Phase:
    """A copy of the store and the witness's export at one moment."""

    root: Path
    export: Path
    key: Path

    def verify(self, *, witness: bool) -> tuple[int, str]:
        argv = [str(LOGVM_CLI), "verify", "--store", str(self.root), "--key", str(self.key)]
        if witness:
            argv += ["--witness", str(self.export)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
        return done.returncode, done.stdout + done.stderr


def _flood(collector: Collector, tag: str, sessions: int) -> None:
    """``sessions`` calls of 4 KiB each: a segment or more per call."""
    line = b"%s: sshd[42]: Accepted publickey for user from 10.0.0.1 port 22 ssh2 %s\n"
    for _ in range(sessions):
        data = b"".join(line % (tag.encode(), b"x" * (i % 7)) for i in range(50))
        send(collector.socket, "work", data)


def _deleted(root: Path) -> int:
    """How many of work's segments were deleted (oldest first: the newest tomb's)."""
    tombs = read_tomb_file(StoreLayout(root).tombstones("work")).tombs
    return tombs[-1][1].last if tombs else 0


def _cost_notes(wdir: Path) -> int:
    return sum(
        line.startswith("cost ")
        for path in (wdir / "sys-log").glob("checkpoints.*")
        for line in path.read_text().splitlines()
    )


def _snapshot(collector: Collector, wdir: Path, work: Path, name: str, key: Path) -> Phase:
    # One moment for both: the collector stopped (SIGSTOP) while the store
    # is copied and the witness exported. A live copy raced the collector's
    # writes (a seal file copied before the epoch seal that covers it), and
    # an export taken after the copy held epochs the copy had not: each a
    # correct verify error about a store that never existed.
    assert wait_for(lambda: is_closed(StoreLayout(collector.store).segments("work")[-1]))
    root = work / name / "store"
    policies = work / "policy"
    export = work / name / "export"
    collector.signal(signal.SIGSTOP)
    try:
        shutil.copytree(collector.store, root, symlinks=True)
        with export.open("wb") as out:
            subprocess.run(
                [
                    str(WITNESS),
                    "--dir",
                    str(wdir),
                    "--policy-dir",
                    str(policies),
                    "export",
                    "sys-log",
                ],
                stdout=out,
                check=True,
                timeout=30,
            )
    finally:
        collector.signal(signal.SIGCONT)
    return Phase(root, export, key)


@pytest.fixture(scope="module")
def phases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Phase, Phase]:
    """(after honest rotation, after the intruder lowered the quota)."""
    work = tmp_path_factory.mktemp("quota")
    wdir = work / "witness"
    (work / "policy").mkdir()
    (work / "policy" / "sys-log.json").write_text(json.dumps(DEPLOYED))
    serve = ["env", "QREXEC_REMOTE_DOMAIN=sys-log", str(WITNESS), "--dir", str(wdir), "serve"]
    config = {
        "witness": {"command": serve, "interval_seconds": 0.2},
        "housekeeping_seconds": 0.2,
        "session_linger": 0,
    }
    (work / "c").mkdir()
    collector = Collector(work / "c", {**config, **DEPLOYED})
    vk = make_store(collector.store)
    key = work / "vk"
    key.write_text(vk + "\n")
    queue_registration(collector.store, vk)
    collector.start()
    try:
        assert wait_for(lambda: not pending_path(collector.store).exists(), 20)
        _flood(collector, "honest", 90)
        deleted = _deleted(collector.store)
        assert deleted >= 10, deleted  # far over the quota
        assert wait_for(lambda: _cost_notes(wdir) > 0)
        honest = _snapshot(collector, wdir, work, "honest", key)
        # The intruder: a quarter of the deployed quota, then a reload.
        collector.write_config({**config, **LOWERED})
        collector.signal(signal.SIGHUP)
        _flood(collector, "after", 20)
        assert wait_for(lambda: _deleted(collector.store) > deleted)
        notes = _cost_notes(wdir)
        _flood(collector, "later", 5)  # the witness hears a later epoch too
        assert wait_for(lambda: _cost_notes(wdir) > notes)
        lowered = _snapshot(collector, wdir, work, "lowered", key)
    finally:
        collector.kill()
    return honest, lowered


def test_honest_quota_rotation_passes_with_the_witness(phases: tuple[Phase, Phase]) -> None:
    honest, _ = phases
    code, out = honest.verify(witness=True)
    assert code == 0, out
    assert "a deletion dom0's policy would not make" not in out
    assert "deleted, reason quota" in out  # shown, and judged: within the rules


def test_quota_lowered_in_the_local_config(phases: tuple[Phase, Phase]) -> None:
    # The collector deleted "for quota" while work held about 64K, within
    # the 200K dom0 deployed: each such deletion is an error with the witness.
    _, lowered = phases
    code, out = lowered.verify(witness=False)
    assert code == 0, out  # without the witness: shown as deletions only
    code, out = lowered.verify(witness=True)
    assert code == 1, out
    errors = [
        line for line in out.splitlines() if "a deletion dom0's policy would not make" in line
    ]
    assert errors, out
    assert all("work/" in line and "deleted for quota" in line for line in errors), errors
    assert "within the deployed quota of 200.0 KiB" in errors[0], errors[0]
