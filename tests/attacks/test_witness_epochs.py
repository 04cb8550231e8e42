"""Format 2: the store-wide epoch seals the witness heard (issue 10, witness item 3).

A real format-2 store written by the store writer sends every durable epoch
line (``Store(on_epoch=...)``) and its newest seals to a real witness; the
attacker then acts in the LogVM; ``logvm verify --witness`` (the real CLI)
must say what it found, with its exit code.
"""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from witness.conftest import LOGVM, WITNESS, WitnessCall

from qubes_logvm.core.epochseal import EpochLine, Leaf, parse_epoch_line, root_of
from qubes_logvm.core.seal import Seal, parse_verification_key
from qubes_logvm.store.epochfile import epochs_path, leaves_path
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.writer import Store
from support.programs import program
from support.segments import numbered

pytestmark = pytest.mark.timeout(90)
Open = Callable[..., WitnessCall]
LOGVM_CLI = program("logvm")


def records(n: int) -> bytes:
    return numbered(n, b"record %d")


class EpochScene:
    """A format-2 store, its witness, and an attacker in the LogVM."""

    def __init__(self, tmp_path: Path, open_call: Open) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "store"
        self.witness_dir = tmp_path / "witness"
        self.vk = setup_keys(StoreLayout(self.root), epoch_seconds=1, store_format=2)
        self.sent: dict[str, bytes] = {}
        self.open_call = open_call
        self.store = self.open_store()
        store_id, key0 = parse_verification_key(self.vk)
        call = open_call()
        assert call.send(f"register {store_id} {key0.hex()}".encode()) == "ok registered"
        call.close()

    def open_store(self) -> Store:
        return Store(self.root, on_seal=self.queue, on_tomb=self.queue, on_epoch=self.queue)

    def queue(self, line: Seal | EpochLine | object) -> None:
        """What the sender's queue keeps: the newest line per qube, the newest epoch line."""
        if isinstance(line, EpochLine):
            self.sent[" epoch"] = line.to_line().rstrip(b"\n")
        elif isinstance(line, Seal):
            self.sent[line.qube] = line.to_line().rstrip(b"\n")

    def write(self, qube: str, n: int) -> None:
        chain = self.store.chain(qube)
        if not chain.is_open:
            chain.open_segment(self.store.keys, session="s")
        chain.append(records(n), n)
        chain.seal(self.store.keys)

    def send(self) -> None:
        call = self.open_call()
        for line in self.sent.values():
            assert call.send(line) in ("ok stored", "ok seen")
        call.close()

    def admin(self, *args: str) -> str:
        done = subprocess.run(
            [str(WITNESS), "--dir", str(self.witness_dir), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    def verify(self, *, witness: bool = True) -> tuple[int, str]:
        key_file = self.tmp / "vk"
        key_file.write_text(self.vk + "\n")
        args = [str(LOGVM_CLI), "verify", "--store", str(self.root), "--key", str(key_file)]
        if witness:
            export = self.tmp / "witness.export"
            self.admin("export", LOGVM, "-o", str(export))
            args += ["--witness", str(export)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        return done.returncode, done.stdout + done.stderr


@pytest.fixture
def scene(tmp_path: Path, open_call: Open) -> EpochScene:
    scene = EpochScene(tmp_path, open_call)
    scene.write("work", 3)
    scene.write("mail", 2)
    for _ in range(3):
        scene.store.tick()
    scene.send()
    return scene


def test_witness_holds_the_epoch_seals_and_an_honest_store_passes(scene: EpochScene) -> None:
    export = scene.admin("export", LOGVM)
    held = [line for line in export.splitlines() if line.startswith("ep ")]
    assert len(held) == 1 and " v2 epoch 3 2 " in held[0]  # the newest, stamped by dom0
    scene.write("work", 1)
    scene.store.tick()
    scene.send()
    scene.store.close()
    code, out = scene.verify()
    assert code == 0, out


def test_idle_store_rolled_back_to_an_older_copy(scene: EpochScene) -> None:
    # Only epochs pass after the copy (idle qubes seal nothing in format 2): the
    # qubes' checkpoints are the same, the witness's epoch seals are newer.
    scene.store.close()
    copy = scene.tmp / "old-copy"
    shutil.copytree(scene.root, copy)
    scene.store = scene.open_store()
    for _ in range(4):
        scene.store.tick()
    scene.send()
    scene.store.close()
    shutil.rmtree(scene.root)
    shutil.copytree(copy, scene.root)
    code, out = scene.verify(witness=False)
    assert code == 0, out  # self-consistent: a limit only
    code, out = scene.verify()
    assert code == 1, out
    # The epoch it heard is beyond the copy's key file: no key is derived for it.
    assert "witness: store-wide epoch seal of " in out
    assert "claims epoch 7, beyond the store's epoch 4: store rolled back" in out


def test_qube_removed_and_current_epoch_seal_re_made_with_a_kept_key(
    scene: EpochScene,
) -> None:
    # The intruder copied K[E] during epoch E; the collector then sealed epoch E
    # store-wide and the witness heard it. Later the intruder removes a qube and
    # re-makes that epoch's line (and the sidecar) over what is left.
    keys = scene.store.keys
    epoch, kept_key = keys.epoch, keys.key
    scene.store.tick()
    scene.send()
    scene.store.close()
    layout = StoreLayout(scene.root)
    shutil.rmtree(layout.qube_dir("mail"))
    path = epochs_path(layout)
    lines = path.read_bytes().splitlines(keepends=True)
    old = parse_epoch_line(lines[-1].rstrip(b"\n"))
    assert old.epoch == epoch
    work = [row for row in leaves_path(layout).read_text().splitlines() if row.startswith("work ")]
    qube, seq, count, nbytes, head = work[0].split(" ")
    leaf = Leaf(qube, int(seq), int(count), int(nbytes), bytes.fromhex(head))
    forged = EpochLine("epoch", epoch, 1, 0, root_of([leaf]), old.prev).signed(kept_key)
    path.write_bytes(b"".join(lines[:-1]) + forged.to_line())
    leaves_path(layout).write_text(leaf.to_line() + "\n")
    code, out = scene.verify(witness=False)
    assert code == 0, out  # the re-made line holds under K[E]: records after the break-in
    code, out = scene.verify()
    assert code == 1, out
    assert f"witness: the store-wide seal of epoch {epoch} is not the one the witness heard" in out


def test_epoch_seals_refused_out_of_order(scene: EpochScene, open_call: Open) -> None:
    newest = scene.sent[" epoch"]
    line = parse_epoch_line(newest)
    call = open_call()
    assert call.send(newest) == "ok seen"
    assert call.send(newest.replace(b"v2 epoch 3 2", b"v2 epoch 3 1")) == "err fork"
    older = EpochLine("epoch", 2, 2, 0, line.root, line.prev, line.mac)
    assert call.send(older.to_line().rstrip(b"\n")) == "err stale"
    bad = EpochLine("epoch", 4, 2, 0, line.root, line.mac, line.mac)
    assert call.send(bad.to_line().rstrip(b"\n")) == "err bad-mac"
    gap = EpochLine("gap", 5, 4, 4, bytes(32), line.mac, line.mac)
    assert call.send(gap.to_line().rstrip(b"\n")) == "err kind"
    assert call.close() == 0
