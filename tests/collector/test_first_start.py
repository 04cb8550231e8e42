"""First start in a new LogVM: sealing state created, K[0] handed to the witness only."""

import subprocess
from pathlib import Path

import pytest
from collector.helpers import Collector, send, verify_errors, wait_for

from qubes_logvm.store.witness_pending import pending_path
from support.programs import program

WITNESS = program("logvm-witness")


def _witness_config(tmp_path: Path) -> dict[str, object]:
    # What qrexec would run in dom0 for logvm.Witness, called by sys-log.
    command = ["env", "QREXEC_REMOTE_DOMAIN=sys-log", str(WITNESS)]
    command += ["--dir", str(tmp_path / "witness"), "serve"]
    return {"witness": {"command": command, "interval_seconds": 0.2}}


@pytest.mark.timeout(60)
def test_first_start_registers_key_with_witness_and_erases_it(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    collector = Collector(tmp_path / "c", _witness_config(tmp_path))
    try:
        collector.start()  # no `logvm setup-keys` was run
        assert send(collector.socket, "work", b"hello\nworld\n")[-1] == 2
        # The sender delivers the registration first, then erases the local copy.
        assert wait_for(lambda: not pending_path(collector.store).exists(), 20)
        assert collector.stop() == 0
    finally:
        collector.kill()
    exported = subprocess.run(
        [str(WITNESS), "--dir", str(tmp_path / "witness"), "export-key", "sys-log"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert exported.startswith("logvm-vk1:")
    # No copy of K[0] is left anywhere in the store.
    key_hex = exported.rsplit(":", 1)[1].encode()
    for path in collector.store.rglob("*"):
        if path.is_file():
            assert key_hex not in path.read_bytes(), path
    assert verify_errors(collector.store, exported) == []


@pytest.mark.timeout(30)
def test_first_start_without_witness_refuses(tmp_path: Path) -> None:
    # Without a witness the key would be lost: the admin must run setup-keys.
    (tmp_path / "c").mkdir()
    collector = Collector(tmp_path / "c", {})
    with pytest.raises(RuntimeError, match="setup-keys"):
        collector.start()
    assert not (collector.store / "store.json").exists()
