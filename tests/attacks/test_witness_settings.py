"""The collector's settings notes at the witness (issue 10, witness item 5).

A real ``logvm-collector`` with a real witness: at start and after SIGHUP it
seals a note of the retention settings it runs with; the intruder lowers
``retention.max_age`` in the local config and reloads; ``logvm verify
--witness`` (the real CLI) lists both notes with dom0's time and says which
one is not the policy dom0 deployed.
"""

import json
import signal
import subprocess
from pathlib import Path

import pytest
from collector.helpers import Collector, make_store, send, wait_for

from qubes_logvm.core.records import line_record
from qubes_logvm.store.witness_pending import queue_registration
from support.programs import program
from support.segments import STAMP

pytestmark = pytest.mark.timeout(90)
WITNESS = program("logvm-witness")
LOGVM_CLI = program("logvm")
DEPLOYED = {"retention": {"max_age": {"default": "30d"}}}


def _settings_notes(wdir: Path) -> int:
    """Settings notes the witness holds."""
    held = wdir / "sys-log" / "checkpoints.1"
    if not held.exists():
        return 0
    return sum(line.startswith("set ") for line in held.read_text().splitlines())


def test_settings_changes_are_witnessed_and_listed(tmp_path: Path) -> None:
    wdir = tmp_path / "witness"
    serve = ["env", "QREXEC_REMOTE_DOMAIN=sys-log", str(WITNESS), "--dir", str(wdir), "serve"]
    config = {"witness": {"command": serve, "interval_seconds": 0.2}, **DEPLOYED}
    (tmp_path / "c").mkdir()
    collector = Collector(tmp_path / "c", config)
    vk = make_store(collector.store)
    queue_registration(collector.store, vk)
    collector.start()
    try:
        send(collector.socket, "work", line_record(STAMP, b"one") + line_record(STAMP, b"two"))
        assert wait_for(lambda: _settings_notes(wdir) == 1)
        # The intruder lowers max_age in the LogVM's local config and reloads.
        collector.write_config({**config, "retention": {"max_age": {"default": "1h"}}})
        collector.signal(signal.SIGHUP)
        assert wait_for(lambda: _settings_notes(wdir) == 2)
    finally:
        collector.kill()
    policies = tmp_path / "policy"
    policies.mkdir()
    (policies / "sys-log.json").write_text(json.dumps(DEPLOYED))
    export = tmp_path / "export"
    subprocess.run(
        [str(WITNESS), "--dir", str(wdir), "--policy-dir", str(policies), "export", "sys-log"],
        stdout=export.open("wb"),
        check=True,
        timeout=30,
    )
    key = tmp_path / "vk"
    key.write_text(vk + "\n")
    done = subprocess.run(
        [
            str(LOGVM_CLI),
            "verify",
            "--store",
            str(collector.store),
            "--key",
            str(key),
            "--witness",
            str(export),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    notes = [line for line in done.stdout.splitlines() if "retention settings from" in line]
    assert len(notes) == 2, done.stdout
    assert notes[0].endswith(", as dom0 deployed")
    assert notes[1].endswith(", NOT the policy dom0 deployed")
