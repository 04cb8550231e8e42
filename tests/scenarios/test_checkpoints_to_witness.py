"""The LogVM side: the checkpoint sender over the qrexec stand-in, witness down and up."""

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from witness.conftest import LOGVM, WITNESS

from qubes_logvm.collector.witness_sender import CheckpointSender, register_key
from qubes_logvm.core.errors import ProtocolError
from qubes_logvm.core.seal import Seal
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.verify import verify_store
from qubes_logvm.store.witness_pending import pending_path, queue_registration
from qubes_logvm.store.writer import Store
from qubes_logvm.witness.state import read_checkpoints, read_key
from support.qrexec import CLIENT_SCRIPT, World
from support.segments import numbered

pytestmark = pytest.mark.timeout(90)


def records(n: int) -> bytes:
    return numbered(n, b"sshd[1]: line %d")


def descendants(pid: int) -> list[int]:
    """Processes started (directly or not) by ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture
def world(tmp_path: Path) -> World:
    """dom0 runs logvm.Witness (only while the flag file exists: 'the witness is up')."""
    world = World(tmp_path / "world")
    world.add_qube(LOGVM)
    script = (
        "#!/bin/sh\n"
        f"test -e {tmp_path / 'witness-up'} || exit 1\n"
        f"exec {WITNESS} --dir {tmp_path / 'witness'} serve\n"
    )
    world.add_executable_service("dom0", "logvm.Witness", script)
    world.save()
    return world


def witness_command(world: World, source: str = LOGVM) -> list[str]:
    """``qrexec-client-vm dom0 logvm.Witness`` run by the stand-in, from ``source``."""
    env = world.client_env(source)
    keep = ("QREXEC_FAKE_WORLD", "QREXEC_FAKE_SOURCE", "PATH")
    return ["env", *(f"{k}={env[k]}" for k in keep), str(CLIENT_SCRIPT), "dom0", "logvm.Witness"]


def test_register_key_now_then_refuse_another(world: World, tmp_path: Path) -> None:
    (tmp_path / "witness-up").touch()
    root = tmp_path / "store"
    vk = setup_keys(StoreLayout(root), epoch_seconds=1)
    assert register_key(root, vk, command=witness_command(world)) == "ok registered"
    assert not pending_path(root).exists()  # no copy of K0 is left in the LogVM
    other = "logvm-vk1:" + "1" * 32 + ":" + "2" * 64
    assert register_key(root, other, command=witness_command(world)) == "err key-mismatch"
    assert pending_path(root).exists()  # kept for the admin to sort out
    assert read_key(tmp_path / "witness" / LOGVM) is not None


def test_other_qube_cannot_reach_the_witness(world: World, tmp_path: Path) -> None:
    (tmp_path / "witness-up").touch()
    world.add_qube("work")
    root = tmp_path / "store"
    vk = setup_keys(StoreLayout(root), epoch_seconds=1)
    with pytest.raises(ProtocolError, match="witness"):
        register_key(root, vk, command=witness_command(world, "work"))
    assert not (tmp_path / "witness").exists()


@pytest.mark.slow
def test_witness_down_ingest_goes_on_checkpoints_arrive_later(
    world: World, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    vk = setup_keys(StoreLayout(root), epoch_seconds=1)
    queue_registration(root, vk)
    sender = CheckpointSender(
        root,
        command=witness_command(world),
        interval=0.05,
        heartbeat=0.2,
        backoff=(0.05, 0.3),
        reply_timeout=10,
    )

    async def scenario() -> Seal:
        sender.start()
        store = Store(root, on_seal=sender.submit)
        chains = [store.chain(q) for q in ("work", "disp7", "sys-net")]
        for chain in chains:
            chain.open_segment(store.keys, session="s1")
        for batch in range(300):  # the witness is down all along
            for chain in chains:
                chain.append(records(20), 20)
                chain.seal(store.keys)
            if batch % 100 == 99:
                store.tick()
            await asyncio.sleep(0)
        assert len(sender.queue) == 3  # bounded: the newest seal per qube
        # It keeps retrying (each try spawns the qrexec stand-in: slow under load).
        for _ in range(600):
            if sender.stats["connects"] > 1:
                break
            await asyncio.sleep(0.05)
        assert sender.stats["stored"] == 0 and sender.stats["connects"] > 1
        assert pending_path(root).exists()
        (tmp_path / "witness-up").touch()
        assert await sender.flush(30)
        # The witness goes away in the middle of the call, then comes back.
        (tmp_path / "witness-up").unlink()
        proc = sender._proc
        assert proc is not None
        for pid in descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)  # the service in "dom0": the call breaks
        for chain in chains:
            chain.append(records(20), 20)
            chain.seal(store.keys)
        stored = sender.stats["stored"]
        await asyncio.sleep(0.3)
        assert len(sender.queue) == 3  # waiting for the witness, never lost
        assert sender.stats["stored"] == stored
        (tmp_path / "witness-up").touch()
        assert await sender.flush(30)
        newest = chains[0].last_seal
        assert newest is not None
        await asyncio.sleep(0.5)  # a few idle intervals: heartbeats, nothing new stored
        await sender.stop()
        store.close()
        return newest

    newest = asyncio.run(scenario())
    assert not pending_path(root).exists()
    state = tmp_path / "witness" / LOGVM
    assert read_key(state) is not None
    held = [seal for _, seal in read_checkpoints(state)]
    assert newest in held
    assert len(held) == 6  # per qube, once per outage: the newest seal queued, sent once
    export = tmp_path / "export"
    subprocess.run(
        [str(WITNESS), "--dir", str(tmp_path / "witness"), "export", LOGVM, "-o", str(export)],
        check=True,
        timeout=30,
    )
    assert verify_store(root, vk, witness=export).errors == []


def test_epoch_jump_retried_later_and_call_limit_reconnects(tmp_path: Path) -> None:
    # The witness caps epochs by its clock (epochs of at least 0.05 s here) and ends
    # each call after 4 messages: the sender keeps what was refused and reconnects.
    world = World(tmp_path / "world")
    world.add_qube(LOGVM)
    script = (
        f"#!/bin/sh\nexec {WITNESS} --dir {tmp_path / 'witness'} serve "
        "--min-epoch-seconds 0.05 --max-call-messages 4\n"
    )
    world.add_executable_service("dom0", "logvm.Witness", script)
    world.save()
    root = tmp_path / "store"
    vk = setup_keys(StoreLayout(root), epoch_seconds=0.05)  # registered: the cap's epoch
    queue_registration(root, vk)
    sender = CheckpointSender(
        root, command=witness_command(world), interval=0.05, backoff=(0.05, 0.3)
    )

    async def scenario() -> Seal | None:
        sender.start()
        store = Store(root, on_seal=sender.submit)
        chain = store.chain("work")
        chain.open_segment(store.keys, session="s1")
        assert await sender.flush(30)  # the first record anchors the witness's cap
        for _ in range(200):  # 200 epochs at once: more than 64 ahead of the witness's clock
            store.tick()
        chain.append(records(5), 5)
        chain.seal(store.keys)
        assert await sender.flush(60)  # refused as too far for now, then taken
        for _ in range(6):
            chain.append(records(5), 5)
            chain.seal(store.keys)
            assert await sender.flush(30)
        newest = chain.last_seal
        await sender.stop()
        store.close()
        return newest

    newest = asyncio.run(scenario())
    assert sender.stats["later"] >= 1
    assert sender.stats["refused"] == 0
    assert sender.stats["connects"] >= 3  # the call ends after every 4 messages
    events = (tmp_path / "witness" / LOGVM / "events").read_text()
    assert "epoch-jump" in events and "call-limit" in events
    assert newest in [seal for _, seal in read_checkpoints(tmp_path / "witness" / LOGVM)]


def test_format2_epoch_seals_reach_the_witness(world: World, tmp_path: Path) -> None:
    (tmp_path / "witness-up").touch()
    root = tmp_path / "store"
    vk = setup_keys(StoreLayout(root), epoch_seconds=1, store_format=2)
    queue_registration(root, vk)
    sender = CheckpointSender(root, command=witness_command(world), interval=0.05)

    async def scenario() -> None:
        sender.start()
        store = Store(root, on_seal=sender.submit, on_epoch=sender.submit)
        chain = store.chain("work")
        chain.open_segment(store.keys, session="s1")
        chain.append(records(3), 3)
        chain.seal(store.keys)
        for _ in range(3):
            store.tick()
            assert await sender.flush(30)
        await sender.stop()
        store.close()

    asyncio.run(scenario())
    held = list(read_checkpoints(tmp_path / "witness" / LOGVM))
    epochs = [line.epoch for _, line in held if not isinstance(line, Seal)]
    assert epochs == [1, 2, 3]  # every epoch line, as the store sealed it, stamped by dom0
    # The registration carried the store's epoch length: the witness's epoch cap uses it.
    assert (tmp_path / "witness" / LOGVM / "epoch-seconds").read_text() == "1\n"
