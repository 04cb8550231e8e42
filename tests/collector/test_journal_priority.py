"""The collector under a real journald: its warnings and errors land at their priority.

systemd connects a service's stderr to a journald stream and sets
``JOURNAL_STREAM=<device>:<inode>`` of that stream (systemd.exec(5)); here
``systemd-cat`` opens the stream and a shell sets the variable the same way
before it execs the collector.
"""

import json
import time
from pathlib import Path

import pytest
from collector.helpers import COLLECTOR, Collector

from support.journald import Journald

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

# What systemd does for a service: JOURNAL_STREAM names stderr's device:inode.
_AS_SERVICE = 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$@"'


def _entries(journald: Journald, tag: str) -> list[dict[str, str]]:
    journald.sync()
    out = journald.run(
        ["journalctl", "--no-pager", "-o", "json", "-t", tag], capture_output=True
    ).stdout
    return [json.loads(line) for line in out.decode().splitlines() if line]


def _run_as_service(journald: Journald, collector: Collector, tag: str) -> None:
    argv = [str(COLLECTOR), "--socket", str(collector.socket), "--store", str(collector.store)]
    argv += ["--config", str(collector.config_path)]
    collector.proc = journald.popen(
        ["systemd-cat", "-t", tag, "sh", "-c", _AS_SERVICE, "sh", *argv]
    )


def _wait_for(journald: Journald, tag: str, text: str) -> dict[str, str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [e for e in _entries(journald, tag) if text in e.get("MESSAGE", "")]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no journal entry with {text!r}: {_entries(journald, tag)}")


def test_warning_has_priority_4(journald: Journald, tmp_path: Path) -> None:
    # A first start with a witness configured creates the sealing state and
    # says so as a warning (the key must be exported at the witness).
    collector = Collector(tmp_path, {"witness": {"target": "dom0"}})
    _run_as_service(journald, collector, "logvm-collector")
    try:
        entry = _wait_for(journald, "logvm-collector", "created the sealing state")
    finally:
        collector.kill()
    assert entry["PRIORITY"] == "4"
    assert not entry["MESSAGE"].startswith("<")


def test_fatal_error_has_priority_3(journald: Journald, tmp_path: Path) -> None:
    collector = Collector(tmp_path, {"no_such_key": 1})
    _run_as_service(journald, collector, "logvm-collector-bad")
    assert collector.proc is not None
    assert collector.proc.wait(timeout=30) == 1
    entry = _wait_for(journald, "logvm-collector-bad", "no_such_key")
    assert entry["PRIORITY"] == "3"
    assert entry["MESSAGE"].startswith("logvm-collector: error:")
