"""Format 2: the store-wide epoch seal instead of per-qube tick seals (issue 17/10).

Each attack is one an intruder holding only the current key ``K[E]`` makes;
each is an error without the witness (the epoch line of ``E-1`` commits to
every chain's state).
"""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.store.epochfile import MAX_LINES, epochs_path, leaves_path
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.verify import ERROR, Report, verify_store
from qubes_logvm.store.writer import Store
from support.tmpfs import fill, mounted_tmpfs

inprocess = pytest.mark.inprocess


def _batch(store: Store, qube: str, n: int, tag: str) -> None:
    stamp = format_timestamp(1.8e9)
    data = b"".join(line_record(stamp, b"%s %d" % (tag.encode(), i)) for i in range(n))
    chain = store.chain(qube)
    chain.append(data, n)
    chain.seal(store.keys)


def build(root: Path) -> str:
    """work: two closed segments and an open one; idle: one batch then idle; sys-net."""
    key = setup_keys(StoreLayout(root), store_format=2)
    store = Store(root)
    for qube in ("work", "idle", "sys-net"):
        store.chain(qube).open_segment(store.keys)
    _batch(store, "idle", 3, "idle")
    for round_ in range(3):
        _batch(store, "work", 4, f"r{round_}")
        _batch(store, "sys-net", 2, f"n{round_}")
        store.tick()
        if round_ < 2:
            store.chain("work").close(store.keys)
            store.chain("work").open_segment(store.keys)
    _batch(store, "work", 2, "late")
    store.tick()
    store.tick()  # idle epochs: no seal line in any qube
    store.keys.close()
    return key


@pytest.fixture
def v2(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "store"
    return root, build(root)


def errors(report: Report) -> list[str]:
    return [str(f) for f in report.findings if f.severity == ERROR]


@inprocess
def test_format2_store_verifies_and_has_no_tick_seals(v2: tuple[Path, str]) -> None:
    root, key = v2
    assert json.loads((root / "store.json").read_text())["format"] == 2
    seals = b"".join(p.read_bytes() for p in root.glob("qubes/*/*.seal"))
    assert b" tick " not in seals
    report = verify_store(root, key)
    assert errors(report) == []
    assert report.ok
    assert epochs_path(StoreLayout(root)).read_bytes().count(b"\n") == 5


def _cut_last_seal(seal: Path) -> None:
    lines = seal.read_bytes().splitlines(keepends=True)
    seal.write_bytes(b"".join(lines[:-1]))


@inprocess
def test_cut_back_newest_batch_of_idle_qube(v2: tuple[Path, str]) -> None:
    root, key = v2
    seal = root / "qubes/idle/00000001.seal"
    log = root / "qubes/idle/00000001.log"
    _cut_last_seal(seal)
    log.write_bytes(b"")
    report = verify_store(root, key)
    assert any("idle" in e and "newest records or segments removed" in e for e in errors(report))


@inprocess
def test_remove_newest_closed_segment(v2: tuple[Path, str]) -> None:
    root, key = v2
    # work: 1, 2 closed, 3 open; remove 3 (open) and 2 so 1 looks newest
    for seq in (2, 3):
        for suffix in (".log", ".seal"):
            (root / f"qubes/work/{seq:08d}{suffix}").unlink()
    report = verify_store(root, key)
    assert any("work/00000003:" in e and "store-wide seal of epoch" in e for e in errors(report))


@inprocess
def test_remove_whole_qube(v2: tuple[Path, str]) -> None:
    root, key = v2
    shutil.rmtree(root / "qubes/sys-net")
    report = verify_store(root, key)
    assert any("sys-net" in e and "the qube was removed" in e for e in errors(report))


@inprocess
def test_remove_whole_qube_and_sidecar_still_an_error(v2: tuple[Path, str]) -> None:
    root, key = v2
    shutil.rmtree(root / "qubes/sys-net")
    leaves_path(StoreLayout(root)).unlink()
    report = verify_store(root, key)
    assert any("does not match the store-wide epoch seal" in e for e in errors(report))


@inprocess
def test_remove_epoch_file(v2: tuple[Path, str]) -> None:
    root, key = v2
    epochs_path(StoreLayout(root)).unlink()
    assert any("epochs.seal is missing" in e for e in errors(verify_store(root, key)))


@inprocess
def test_rewrite_epoch_file(v2: tuple[Path, str]) -> None:
    root, key = v2
    path = epochs_path(StoreLayout(root))
    lines = path.read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1][:-2] + (b"0" if lines[-1][-2:-1] != b"0" else b"1") + b"\n"
    path.write_bytes(b"".join(lines))
    found = errors(verify_store(root, key))
    assert any("MAC wrong" in e for e in found)
    assert any("stops at epoch" in e for e in found)


@inprocess
def test_roll_back_epoch_file(v2: tuple[Path, str]) -> None:
    root, key = v2
    path = epochs_path(StoreLayout(root))
    _cut_last_seal(path)
    assert any("stops at epoch" in e for e in errors(verify_store(root, key)))


@inprocess
def test_epoch_file_stays_bounded(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key = setup_keys(StoreLayout(root), store_format=2)
    store = Store(root)
    store.chain("work").open_segment(store.keys)
    for _ in range(MAX_LINES + 5):
        store.tick()
    store.keys.close()
    assert epochs_path(StoreLayout(root)).read_bytes().count(b"\n") <= MAX_LINES
    assert verify_store(root, key).ok


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs made for the test (root only)."""
    with mounted_tmpfs(tmp_path, "size=4m") as mount:
        yield mount


@pytest.mark.timeout(30)
def test_disk_full_epochs_become_a_gap_not_tampering(small_fs: Path) -> None:
    root = small_fs / "store"
    key = setup_keys(StoreLayout(root), store_format=2)
    store = Store(root)
    store.chain("work").open_segment(store.keys)
    _batch(store, "work", 3, "a")
    store.tick()
    filler = small_fs / "filler"
    fill(filler)
    # tmpfs gives a file whole pages: appends fail once the epoch file needs a new one
    assert store.epochs is not None
    start = None
    for _ in range(40):
        epoch = store.keys.epoch
        store.tick()
        if store.epochs.last_epoch != epoch:
            start = epoch
            break
    assert start is not None, "the epoch file never ran out of room"
    store.tick()
    store.tick()
    assert store.keys.epoch == start + 3  # the key evolved all the same
    filler.unlink()
    store.tick()
    store.keys.close()
    report = verify_store(root, key)
    assert errors(report) == []
    assert any(
        f"epochs {start}-{start + 2} were not sealed store-wide" in x for x in report.limits
    )


@pytest.mark.timeout(30)
def test_disk_full_from_the_first_epoch_is_a_gap_too(small_fs: Path) -> None:
    """No epoch line could ever be written: the first one written records the gap."""
    root = small_fs / "store"
    key = setup_keys(StoreLayout(root), store_format=2)
    store = Store(root)
    store.chain("work").open_segment(store.keys)
    _batch(store, "work", 3, "a")
    filler = small_fs / "filler"
    fill(filler)
    for _ in range(3):
        store.tick()  # epochs 1-3: the epoch file cannot be made
    assert store.epochs is not None and store.epochs.last_epoch is None
    filler.unlink()
    store.tick()
    store.keys.close()
    report = verify_store(root, key)
    assert errors(report) == []
    assert any("epochs 1-3 were not sealed store-wide" in x for x in report.limits), report.limits


@inprocess
def test_seal_epochs_may_jump_on_the_slow_path_too(tmp_path: Path) -> None:
    # A changed byte sends the segment to the slow path, whose rules must be
    # format 2's: epochs between data seals jump (no tick seals); only the damage is named.
    root = tmp_path / "store"
    key = setup_keys(StoreLayout(root), store_format=2)
    store = Store(root)
    store.chain("work").open_segment(store.keys)
    _batch(store, "work", 3, "a")
    store.tick()
    store.tick()
    _batch(store, "work", 3, "b")
    store.close()
    log = root / "qubes/work/00000001.log"
    log.write_bytes(log.read_bytes().replace(b"a 1", b"a 7"))
    found = errors(verify_store(root, key))
    assert any("lines changed or reordered" in e for e in found), found
    assert [e for e in found if "epoch jumps" in e] == []


@inprocess
def test_named_qubes_are_checked_one_by_one_against_the_epoch_seal(v2: tuple[Path, str]) -> None:
    # A snapshot of some qubes holds no others: only the named ones are judged
    # (through the sidecar the sealed root authenticates); [] names none: all.
    root, key = v2
    shutil.rmtree(root / "qubes/sys-net")
    assert errors(verify_store(root, key, ["work"])) == []
    assert any("the qube was removed" in e for e in errors(verify_store(root, key, [])))
    for seq in (2, 3):
        for suffix in (".log", ".seal"):
            (root / f"qubes/work/{seq:08d}{suffix}").unlink()
    assert any("work/00000003:" in e for e in errors(verify_store(root, key, ["work"])))
    leaves_path(StoreLayout(root)).unlink()
    assert any(
        "the qubes named cannot be checked" in e for e in errors(verify_store(root, key, ["work"]))
    )


@pytest.mark.parametrize("data", [b"", b"torn", b"a\n", b"a\nb\n", b"\n\nx\ny", b"a\nb\ntorn"])
def test_seal_lines_newest_first_are_the_split_reversed(data: bytes) -> None:
    from qubes_logvm.store.verify.epochs import _lines_newest_first

    assert list(_lines_newest_first(data)) == data.split(b"\n")[:-1][::-1]


@inprocess
def test_head_segment_deleted_in_the_next_epoch_is_not_tampering(tmp_path: Path) -> None:
    # A flooding qube's segment is its sealed state at the end of epoch 1 and
    # is deleted for quota in epoch 2, before epoch 2's seal: the tombs,
    # compacted meanwhile into a summary, stand for it. Judged by the epoch
    # of the deletion (not by the segment's close epoch, which is 1): the
    # collector doing this at full speed under load failed as "newest records
    # or segments removed" in CI.
    root = tmp_path / "store"
    key = setup_keys(StoreLayout(root), store_format=2)
    store = Store(root)
    chain = store.chain("work")
    for round_ in range(32):  # the 32nd deletion compacts
        chain.open_segment(store.keys)
        _batch(store, "work", 3, f"s{round_}")
        chain.close(store.keys)
    store.tick()  # epoch 1 ends: work's state is segment 32, closed
    chain.open_segment(store.keys)
    _batch(store, "work", 2, "new")
    while chain.delete_oldest(store.keys, keep_newest=0) is not None:
        pass
    tombs = (root / "qubes/work/tombstones.seal").read_bytes().splitlines()
    assert len(tombs) == 1 and b" summary " in tombs[0], tombs  # compacted, the newest too
    store.keys.close()
    assert errors(verify_store(root, key)) == []
