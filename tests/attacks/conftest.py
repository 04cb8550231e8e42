"""A store made by the real collector, with a real witness, for the attack matrix.

Built once per module: a ``logvm-collector`` process with a witness command
(``logvm-witness serve`` as qrexec runs it) receives sessions from several
qubes over its socket as the qrexec agent connects; a small quota makes it
delete ``work``'s oldest segments (more than 32, so its tombstones are
compacted); ``personal`` keeps a connection open while the collector is
killed, so its newest segment stays open. Each test tampers with its own
copy and runs the real ``logvm verify``.
"""

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from collector.helpers import Collector, connect, make_store, send, wait_for
from witness.conftest import open_call, witness_dir  # noqa: F401 (test_witness_scene's fixtures)

from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.witness_pending import pending_path, queue_registration
from support.programs import program

WITNESS = program("logvm-witness")
LOGVM = program("logvm")


@dataclass
class Made:
    """A copy of the collector-made store and what verifying it needs."""

    root: Path
    vk_file: Path
    witness_file: Path
    witness_dir: Path

    @property
    def layout(self) -> StoreLayout:
        """The store's paths."""
        return StoreLayout(self.root)

    def qube(self, name: str) -> Path:
        """A qube's directory."""
        return self.layout.qube_dir(name)

    def verify(self, *extra: str, witness: bool = False) -> tuple[int, str]:
        """Run ``logvm verify``; (exit code, stdout + stderr)."""
        argv = [str(LOGVM), "verify", "--store", str(self.root), "--key", str(self.vk_file)]
        if witness:
            argv += ["--witness", str(self.witness_file)]
        done = subprocess.run(
            [*argv, *extra], capture_output=True, text=True, timeout=60, check=False
        )
        return done.returncode, done.stdout + done.stderr

    def vk(self) -> str:
        """The verification key text."""
        return self.vk_file.read_text().strip()


def _lines(tag: str, n: int) -> bytes:
    return b"".join(
        b"%s line %d: sshd[42]: Accepted publickey\n" % (tag.encode(), i) for i in range(n)
    )


def _admin(wdir: Path, *args: str) -> str:
    return subprocess.run(
        [str(WITNESS), "--dir", str(wdir), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def _build(workdir: Path) -> tuple[Path, Path, Path]:
    wdir = workdir / "witness"
    command = ["env", "QREXEC_REMOTE_DOMAIN=sys-log", str(WITNESS), "--dir", str(wdir)]
    retention = {
        "segment": {"max_bytes": "4K"},
        "quota": {"qubes": {"work": "200K"}},
        "global": {"keep_free": 0},
    }
    config = {
        "witness": {"command": [*command, "serve"], "interval_seconds": 0.2},
        "housekeeping_seconds": 0.2,
        "session_linger": 0,  # every call its own segment, as the cases expect
        **retention,
    }
    # What the Salt formula deploys for the witness: the pillar's retention.
    (workdir / "policy").mkdir()
    (workdir / "policy" / "sys-log.json").write_text(json.dumps(retention))
    (workdir / "c").mkdir()
    collector = Collector(workdir / "c", config)
    vk = make_store(collector.store)
    queue_registration(collector.store, vk)
    collector.start()
    try:
        for session in range(60):
            send(collector.socket, "work", _lines(f"work s{session}", 6))
        for qube in ("disp12", "disp13"):
            send(collector.socket, qube, _lines(qube, 20))
        for session in range(2):
            send(collector.socket, "personal", _lines(f"personal s{session}", 10))
        held = connect(collector.socket, "personal")
        held.sendall(_lines("personal open", 5))
        _wait_ack(held, 5)
        assert wait_for(lambda: not pending_path(collector.store).exists(), 20)
        time.sleep(1.5)  # a few epochs: tick seals, checkpoints reach the witness
        collector.kill()  # the LogVM as an intruder finds it: personal still open
        held.close()
    finally:
        collector.kill()
    vk_file = workdir / "vk"
    vk_file.write_text(_admin(wdir, "export-key", "sys-log"))
    assert vk_file.read_text().strip() == vk
    export = workdir / "witness.export"
    _admin(wdir, "--policy-dir", str(workdir / "policy"), "export", "sys-log", "-o", str(export))
    return collector.store, vk_file, export


def _wait_ack(sock: socket.socket, count: int) -> None:
    data = b""
    while f"ack {count}\n".encode() not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("collector closed the held connection")
        data += chunk


@pytest.fixture(scope="module")
def made_once(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """The store as the collector left it (do not tamper with this one)."""
    workdir = tmp_path_factory.mktemp("made")
    root, vk_file, export = _build(workdir)
    return Made(root, vk_file, export, workdir / "witness")


@pytest.fixture
def made(made_once: Made, tmp_path: Path) -> Iterator[Made]:
    """A private copy to tamper with."""
    root = tmp_path / "store"
    shutil.copytree(made_once.root, root, symlinks=True)
    export = tmp_path / "witness.export"
    shutil.copy(made_once.witness_file, export)
    yield Made(root, made_once.vk_file, export, made_once.witness_dir)


def _build_retired(workdir: Path) -> tuple[Path, Path]:
    """A store where DispVMs were retired (no witness: the collector retires only
    without one for now); ``work`` lost its oldest segments to its quota and
    keeps a connection open while the collector is killed."""
    config = {
        "housekeeping_seconds": 0.2,
        "session_linger": 0,
        "segment": {"max_bytes": "4K"},
        "quota": {"qubes": {"work": "24K"}},
        "global": {"keep_free": 0},
        "retention": {"dispvm_delete_after_close": "0", "dispvm_grace": "0"},
    }
    collector = Collector(workdir, config)
    vk = make_store(collector.store, epoch_seconds=0.5)
    layout = StoreLayout(collector.store)
    collector.start()
    try:
        for session in range(12):
            send(collector.socket, "work", _lines(f"work s{session}", 6))
        held = connect(collector.socket, "work")  # work's newest segment stays open
        held.sendall(_lines("work open", 5))
        _wait_ack(held, 5)
        for qube in ("disp1", "disp2", "disp3"):
            send(collector.socket, qube, _lines(qube, 4))
        assert wait_for(lambda: layout.qubes() == ["work"], 30), layout.qubes()
        assert wait_for(lambda: layout.tombstones("work").exists(), 30)
        time.sleep(1.5)  # epochs sealed after the retirements
        collector.kill()
        held.close()
    finally:
        collector.kill()
    vk_file = workdir / "vk"
    vk_file.write_text(vk + "\n")
    return collector.store, vk_file


@pytest.fixture(scope="module")
def retired_once(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """The store with retired qubes as the collector left it (do not tamper)."""
    workdir = tmp_path_factory.mktemp("retired")
    root, vk_file = _build_retired(workdir)
    return Made(root, vk_file, workdir / "no-witness", workdir / "no-witness")


@pytest.fixture
def retired(retired_once: Made, tmp_path: Path) -> Made:
    """A private copy to tamper with."""
    root = tmp_path / "store"
    shutil.copytree(retired_once.root, root, symlinks=True)
    return Made(root, retired_once.vk_file, retired_once.witness_file, retired_once.witness_dir)
