"""The chain writer on a real filesystem: seals, epochs, recovery, tombstones."""

import os
from pathlib import Path

import pytest

from qubes_logvm.core.errors import SealError
from qubes_logvm.core.seal import chain_step, genesis, parse_verification_key
from qubes_logvm.store.keystate import KeyState, setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.sealfile import last_good_seal, read_seal_file
from qubes_logvm.store.tombstones import read_tomb_file
from qubes_logvm.store.writer import Store
from support.keys import key_for_epoch
from support.segments import numbered

pytestmark = pytest.mark.inprocess


def _lines(n: int, tag: str = "x") -> bytes:
    return numbered(n, tag.encode() + b" %d")


@pytest.fixture
def store_root(tmp_path: Path) -> tuple[Path, bytes]:
    root = tmp_path / "store"
    _, key0 = parse_verification_key(setup_keys(StoreLayout(root), epoch_seconds=1))
    return root, key0


@pytest.fixture(params=[1, 2])
def any_format_root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bytes, int]:
    """A store of each format (2 is the default, 1 is still written on request)."""
    root = tmp_path / "store"
    layout = StoreLayout(root)
    key = setup_keys(layout, epoch_seconds=1, store_format=request.param)
    return root, parse_verification_key(key)[1], request.param


def test_setup_keys_never_stores_key0_and_refuses_twice(store_root: tuple[Path, bytes]) -> None:
    root, key0 = store_root
    assert key0.hex().encode() not in (root / "state" / "sealkey").read_bytes()
    with pytest.raises(SealError):
        setup_keys(StoreLayout(root))


def test_second_writer_is_refused(store_root: tuple[Path, bytes]) -> None:
    root, _ = store_root
    store = Store(root)
    with pytest.raises(SealError, match="another process"):
        Store(root)
    store.close()


def test_segment_seals_cover_exact_bytes(any_format_root: tuple[Path, bytes, int]) -> None:
    root, key0, store_format = any_format_root
    store = Store(root)
    chain = store.chain("work")
    chain.open_segment(store.keys, session="s1")
    chain.append(_lines(3), 3)
    chain.seal(store.keys)
    store.tick()  # an epoch with nothing new is sealed too
    chain.append(_lines(2, "y"), 2)
    chain.close(store.keys)
    store.close()

    layout = StoreLayout(root)
    [segment] = layout.segments("work")
    assert segment.log is not None
    assert segment.seal is not None
    data = segment.log.read_bytes()
    seals = read_seal_file(segment.seal).seals
    # Format 1 seals an epoch with nothing new by a tick in the segment;
    # format 2 by the store-wide epoch line in state/epochs.seal.
    ticks = ["tick"] if store_format == 1 else []
    assert [s.kind for s in seals] == ["open", "batch", *ticks, "close"]
    epochs = root / "state" / "epochs.seal"
    if store_format == 1:
        assert not epochs.exists()
    else:
        assert epochs.read_bytes().startswith(b"v2 epoch 1 1 ")
    head = genesis(KeyState(layout).store_id, "work")
    assert seals[0].head == head
    offset = 0
    for seal in seals[1:]:
        head = chain_step(head, data[offset : seal.nbytes])
        offset = seal.nbytes
        assert seal.head == head
        assert seal.mac_ok(key_for_epoch(key0, seal.epoch))
    assert seals[-1].lines == data.count(b"\n") == 1 + 3 + 2 + 1  # start and end notes
    assert seals[-2].epoch == seals[1].epoch and seals[-1].epoch == seals[-2].epoch + 1


@pytest.mark.parametrize(
    "tail",
    [
        b"",  # as written
        b"v1 batch torn",  # a crash mid-write: no newline yet
        b"not a seal\n",  # an edited last line: the one before counts
        b"not a seal\nneither\npartial",
    ],
)
def test_last_good_seal_is_the_last_parsed_seal(
    store_root: tuple[Path, bytes], tail: bytes
) -> None:
    # segment_records (logvm list, the browser's counts) reads only the last seal.
    root, _ = store_root
    store = Store(root)
    chain = store.chain("work")
    chain.open_segment(store.keys, session="s1")
    chain.append(_lines(3), 3)
    chain.seal(store.keys)
    store.close()
    [segment] = StoreLayout(root).segments("work")
    assert segment.seal is not None
    with segment.seal.open("ab") as stream:
        stream.write(tail)
    assert last_good_seal(segment.seal) == read_seal_file(segment.seal).seals[-1]
    segment.seal.write_bytes(b"garbage\n" + tail)
    assert last_good_seal(segment.seal) is None and not read_seal_file(segment.seal).seals


def test_new_session_starts_new_segment_continuing_chain(store_root: tuple[Path, bytes]) -> None:
    root, _ = store_root
    store = Store(root)
    chain = store.chain("disp12")
    chain.open_segment(store.keys)
    chain.append(_lines(1), 1)
    first_close = chain.close(store.keys)
    chain.open_segment(store.keys)
    second_open = chain.last_seal
    store.close()
    assert second_open is not None
    assert (second_open.seq, second_open.head) == (2, first_close.head)
    assert len(StoreLayout(root).segments("disp12")) == 2


def test_crash_leaves_unsealed_tail_that_restart_seals(store_root: tuple[Path, bytes]) -> None:
    root, _ = store_root
    store = Store(root)
    chain = store.chain("work")
    chain.open_segment(store.keys)
    chain.append(_lines(2), 2)
    chain.seal(store.keys)
    chain.append(_lines(3, "unsealed"), 3)  # written, never sealed: the "crash"
    log_path = StoreLayout(root).segment_log("work", 1)
    with log_path.open("ab") as stream:
        stream.write(b"2027-01-15T08:00:00.000000Z L torn rec")  # killed mid-write
    store.keys.close()  # the process dies: no close seal

    restarted = Store(root)
    assert restarted.recover_all() == {"work": 3}
    seals = read_seal_file(StoreLayout(root).segment_seal("work", 1)).seals
    assert seals[-1].kind == "recover"
    assert log_path.read_bytes().endswith(b"unsealed 2\n")  # torn, unacknowledged record cut
    chain = restarted.chain("work")
    chain.open_segment(restarted.keys)
    restarted.close()
    assert len(StoreLayout(root).segments("work")) == 2


def test_delete_oldest_writes_tombstone_first(store_root: tuple[Path, bytes]) -> None:
    root, key0 = store_root
    store = Store(root)
    chain = store.chain("work")
    for _ in range(3):
        chain.open_segment(store.keys)
        chain.append(_lines(4), 4)
        chain.close(store.keys)
    final_of_first = read_seal_file(StoreLayout(root).segment_seal("work", 1)).seals[-1]
    assert chain.delete_oldest(store.keys) == 1
    assert chain.delete_oldest(store.keys) == 2
    assert chain.delete_oldest(store.keys) is None  # the newest closed segment stays
    store.close()
    layout = StoreLayout(root)
    assert [s.seq for s in layout.segments("work")] == [3]
    tombs = [t for _, t in read_tomb_file(layout.tombstones("work")).tombs]
    assert [(t.kind, t.last, t.reason) for t in tombs] == [
        ("tomb", 1, "quota"),
        ("tomb", 2, "quota"),
    ]
    assert tombs[0].head == final_of_first.head
    assert (tombs[0].records, tombs[0].nbytes) == (final_of_first.lines, final_of_first.nbytes)
    assert tombs[0].close_epoch == final_of_first.epoch <= tombs[0].epoch
    assert tombs[0].size > final_of_first.nbytes  # text and seal file
    assert tombs[1].prev == tombs[0].mac
    assert all(t.mac_ok(key_for_epoch(key0, t.epoch)) for t in tombs)


def test_key_file_is_overwritten_in_place(store_root: tuple[Path, bytes]) -> None:
    root, key0 = store_root
    sealkey = root / "state" / "sealkey"
    inode = os.stat(sealkey).st_ino
    store = Store(root)
    for _ in range(3):
        store.tick()
    assert store.keys.epoch == 4
    assert store.keys.key == key_for_epoch(key0, 4)
    store.close()
    assert os.stat(sealkey).st_ino == inode
    assert key_for_epoch(key0, 3).hex().encode() not in sealkey.read_bytes()


def test_torn_seal_line_is_cut_before_recovery(store_root: tuple[Path, bytes]) -> None:
    root, key0 = store_root
    store = Store(root)
    chain = store.chain("work")
    chain.open_segment(store.keys)
    chain.append(_lines(2), 2)
    chain.seal(store.keys)
    seal_path = StoreLayout(root).segment_seal("work", 1)
    with seal_path.open("ab") as stream:
        stream.write(b"v1 batch work 1 1 3 ")  # a crash in the middle of a seal line
    store.keys.close()

    restarted = Store(root)
    assert restarted.recover_all() == {"work": 0}
    parsed = read_seal_file(seal_path)
    assert parsed.torn_tail == b""
    assert not parsed.bad_lines
    assert [s.kind for s in parsed.seals] == ["open", "batch", "recover"]
    assert all(s.mac_ok(key_for_epoch(key0, s.epoch)) for s in parsed.seals)
    restarted.close()


def test_tombstones_are_compacted_and_still_verify(store_root: tuple[Path, bytes]) -> None:
    from qubes_logvm.core.seal import format_verification_key
    from qubes_logvm.store.tombstones import TOMB_COMPACT_LINES, read_tomb_file
    from qubes_logvm.store.verify import ERROR, verify_store

    root, key0 = store_root
    store = Store(root)
    chain = store.chain("flood")
    rounds = TOMB_COMPACT_LINES * 2 + 5
    for _ in range(rounds):
        chain.open_segment(store.keys)
        chain.append(_lines(2), 2)
        chain.close(store.keys)
        chain.delete_oldest(store.keys)
    chain.open_segment(store.keys)  # the writer reloads its state from disk fine
    store.close()
    layout = StoreLayout(root)
    tombs = [tomb for _, tomb in read_tomb_file(layout.tombstones("flood")).tombs]
    assert 1 <= len(tombs) < TOMB_COMPACT_LINES  # bounded, whatever the evictions
    assert tombs[0].kind == "summary" and tombs[0].first == 1
    assert tombs[-1].last == rounds - 1
    assert {t.reason for t in tombs[1:]} == {"quota"}
    assert chain.tomb_bytes == layout.tombstones("flood").stat().st_size
    vkey = format_verification_key(KeyState(layout).store_id, key0)
    report = verify_store(root, vkey)
    assert [f for f in report.findings if f.severity == ERROR] == []
    # Removing the newest kept tombstone unlinks the chain: detected.
    layout.tombstones("flood").write_bytes(b"".join(t.to_line() for t in tombs[:-1]))
    assert not verify_store(root, vkey).ok


def test_closed_chains_are_released_and_load_again_where_they_were(
    store_root: tuple[Path, bytes],
) -> None:
    root, _ = store_root
    store = Store(root)
    for qube in ("alpha", "beta"):
        chain = store.chain(qube)
        chain.open_segment(store.keys, session="s", reason="connect")
        chain.append(_lines(3, qube), 3)
        chain.seal(store.keys)
    store.chain("alpha").close(store.keys, reason="disconnect")
    head = store.chain("alpha").last_seal
    store.release("alpha")
    store.release("beta")  # open: kept
    assert set(store.chains) == {"beta"}
    again = store.chain("alpha")  # loaded from disk, continuing the chain
    assert again.last_seal == head and not again.is_open
    store.close()
    restarted = Store(root)
    assert restarted.recover_all() == {}
    assert restarted.chains == {}  # every segment closed: nothing kept after recovery
    restarted.close()


def test_parts_are_stored_and_sealed_as_their_join(
    store_root: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # More parts than one writev takes, empty ones, and writes cut short
    # (a regular file may take fewer bytes than asked) anywhere in a part.
    real_writev = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, views: real_writev(fd, [b"".join(views)[:700]]))
    parts = [_lines(1, "p%d" % i) if i % 7 else b"" for i in range(2500)]
    root, _ = store_root
    store = Store(root)
    chain = store.chain("work")
    chain.open_segment(store.keys, session="s1")
    lines = sum(1 for part in parts if part)
    chain.append_parts(parts, lines)
    parted = chain.seal(store.keys)
    store.close()
    [segment] = StoreLayout(root).segments("work")
    assert segment.log is not None and segment.seal is not None
    sealed = segment.log.read_bytes()[: parted.nbytes]
    assert sealed.split(b"\n", 1)[1] == b"".join(parts)  # after the segment-start note
    assert parted.head == chain_step(read_seal_file(segment.seal).seals[0].head, sealed)
    assert parted.lines == lines + 1
