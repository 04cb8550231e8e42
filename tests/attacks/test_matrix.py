"""The attack matrix: an intruder with root in the LogVM, against a collector-made store.

Each case tampers with a private copy of the store the real collector made
(tests/attacks/conftest.py) the way an intruder holding the current key
could, runs the real ``logvm verify`` with and without the witness's
records, and asserts the exit code and the message that names the place.
docs/threat-model.md lists these cases row by row.
"""

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from attacks.conftest import LOGVM, WITNESS, Made
from collector.helpers import Collector, make_store, send

from qubes_logvm.core.epochseal import EpochLine
from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.core.retire import Retire, parse_retire
from qubes_logvm.core.seal import ZERO, ChainHasher, Seal, evolve, genesis
from qubes_logvm.core.tomb import Tomb, parse_tomb
from qubes_logvm.store.epochfile import EpochFile, epochs_path
from qubes_logvm.store.keystate import KeyState
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.retired import retired_path
from qubes_logvm.store.sealfile import read_seal_file
from support.peak import run_with_peak

pytestmark = pytest.mark.timeout(120)


def current_key(made: Made) -> tuple[int, bytes]:
    """What an intruder reads from state/sealkey: (epoch, K[epoch])."""
    fields = (made.root / "state" / "sealkey").read_bytes().split()
    return int(fields[2]), bytes.fromhex(fields[3].decode())


def forged_tomb(made: Made, qube: str, seq: int, prev: bytes, head: bytes) -> bytes:
    """A tomb line MACed with the key the intruder holds."""
    epoch, key = current_key(made)
    return Seal("tomb", qube, seq, epoch, 3, 100, head, prev).signed(key).to_line()


def expect(made: Made, code: int, words: str, *, witness: bool = False) -> str:
    got, out = made.verify(witness=witness)
    assert got == code, out
    assert words in out, out
    return out


def both(made: Made, words: str, witness_words: str | None = None) -> None:
    """An error without the witness, and with it."""
    expect(made, 1, words)
    expect(made, 1, witness_words or words, witness=True)


def test_forged_segment_below_the_oldest_tombstone(made: Made) -> None:
    # No key needed: a made-up oldest segment, as `logvm show` would print it.
    work = made.qube("work")
    (work / "00000001.log").write_bytes(b"2026-01-01T00:00:00.000000Z L forged\n")
    (work / "00000001.seal").write_bytes(b"")
    both(made, "error: work/00000001: a segment file below the newest tombstone")


def test_old_segments_kept_behind_a_forged_newer_tomb(made: Made) -> None:
    # personal 1 (closed), 2 (closed), 3 (open): a tomb for 2 while 1 exists.
    personal = made.qube("personal")
    last = read_seal_file(personal / "00000002.seal").seals[-1]
    (personal / "tombstones.seal").write_bytes(forged_tomb(made, "personal", 2, ZERO, last.head))
    for name in ("00000002.log", "00000002.seal"):
        (personal / name).unlink()
    out = expect(
        made,
        1,
        "personal/00000002: tombstones.seal line 1: the first tombstone is for "
        "segment 2: segments 1-1 are gone without tombstones",
    )
    assert "error: personal/00000001: a segment file below the newest tombstone" in out


def test_one_line_compacted_file_compaction_cannot_make(made: Made) -> None:
    personal = made.qube("personal")
    last = read_seal_file(personal / "00000001.seal").seals[-1]
    tomb = forged_tomb(made, "personal", 1, os.urandom(32), last.head)
    (personal / "tombstones.seal").write_bytes(tomb)
    for name in ("00000001.log", "00000001.seal"):
        (personal / name).unlink()
    both(made, "a compacted tombstone file that compaction could not have made")


def test_tomb_line_edited(made: Made) -> None:
    path = made.qube("work") / "tombstones.seal"
    lines = path.read_bytes().splitlines(keepends=True)
    fields = lines[3].split(b" ")
    fields[6] = b"%d" % (int(fields[6]) + 1)  # v1 tomb <qube> <seq> <epoch> <lines> <nbytes>
    lines[3] = b" ".join(fields)
    path.write_bytes(b"".join(lines))
    both(made, "tombstones.seal line 4: not a tombstone sealed for work with this key")


def test_tomb_line_dropped(made: Made) -> None:
    path = made.qube("work") / "tombstones.seal"
    lines = path.read_bytes().splitlines(keepends=True)
    del lines[3]
    path.write_bytes(b"".join(lines))
    both(made, "tombstones.seal line 4: does not link to the line before (lines removed)")


def test_tomb_line_duplicated(made: Made) -> None:
    path = made.qube("work") / "tombstones.seal"
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(4, lines[3])
    path.write_bytes(b"".join(lines))
    both(made, "tombstones.seal line 5: does not link to the line before")


def test_open_segment_erased_and_seal_cut_back_to_open(made: Made) -> None:
    personal = made.qube("personal")
    seal = personal / "00000003.seal"
    seal.write_bytes(seal.read_bytes().splitlines(keepends=True)[0])
    (personal / "00000003.log").unlink()
    both(made, "error: personal/00000003: segment file missing")


def test_key_file_removed(made: Made) -> None:
    (made.root / "state" / "sealkey").unlink()
    both(made, "state/sealkey is missing in a store that has seals")


def test_key_file_replaced_by_a_fifo(made: Made) -> None:
    path = made.root / "state" / "sealkey"
    path.unlink()
    os.mkfifo(path)
    both(made, "sealkey is a FIFO, not a regular file (not read)")


def test_store_json_downgraded_to_format_1(made: Made) -> None:
    # Format 1's rules see less (a removed qube is only a limit there); the
    # verification key itself says the store was made in format 2.
    text = made.layout.store_json.read_text()
    made.layout.store_json.write_text(text.replace('"format": 2', '"format": 1'))
    for name in ("epochs.seal", "epoch-leaves"):
        (made.root / "state" / name).unlink()
    shutil.rmtree(made.qube("disp13"))
    both(
        made,
        "error: store: store.json says format 1, the verification key is of a store made "
        "in format 2",
    )
    expect(made, 1, "state/epochs.seal is missing: the store-wide epoch seals were removed")


@pytest.mark.parametrize("name", ["store.json", "state/epochs.seal", "state/epoch-leaves"])
def test_store_file_replaced_by_a_fifo(made: Made, name: str) -> None:
    path = made.root / name
    path.unlink()
    os.mkfifo(path)
    # The leaves sidecar is unauthenticated (it only names a qube): a warning.
    expect(made, 0 if name.endswith("leaves") else 1, "is a FIFO, not a regular file (not read)")


@pytest.mark.parametrize("name", ["store.json", "state/epochs.seal", "qubes/work/tombstones.seal"])
def test_store_file_symlinked_to_dev_zero(made: Made, name: str) -> None:
    path = made.root / name
    path.unlink()
    path.symlink_to("/dev/zero")
    expect(made, 1, "symbolic link")


def test_segment_symlinked_to_dev_zero(made: Made) -> None:
    log = made.qube("personal") / "00000002.log"
    log.unlink()
    log.symlink_to("/dev/zero")
    out = expect(made, 1, "error: personal: 00000002.log is a symbolic link, not a regular file")
    assert "personal/00000002 lines 1-12: segment file missing" in out


def test_unknown_file_in_a_qube_directory(made: Made) -> None:
    (made.qube("work") / "00000099.txt").write_bytes(b"notes\n")
    both(made, "error: work: 00000099.txt: not a file the collector or rotation makes")


def test_witness_export_claims_a_huge_epoch(made: Made) -> None:
    data = made.witness_file.read_bytes().split(b"\n")
    first = next(n for n, line in enumerate(data) if line.startswith(b"cp "))
    fields = data[first].split(b" ")
    fields[6] = b"1000000000000000"  # cp <time> v1 <kind> <qube> <seq> <epoch>
    data[first] = b" ".join(fields)
    made.witness_file.write_bytes(b"\n".join(data))
    expect(made, 1, "claims epoch 1000000000000000, beyond the store's epoch", witness=True)


def test_wrong_key_is_exit_2_not_tampering(made: Made, tmp_path: Path) -> None:
    store_id = made.vk().split(":")[1]
    made.vk_file = tmp_path / "other.vk"
    made.vk_file.write_text(f"logvm-vk1:{store_id}:{os.urandom(32).hex()}\n")
    got, out = made.verify()
    assert got == 2, out
    assert "this key does not belong to this store" in out
    assert "forged" not in out


def test_qube_directory_renamed(made: Made) -> None:
    os.rename(made.qube("disp12"), made.qube("disp99"))
    out = expect(made, 1, "disp99/00000001: seal file of another segment (moved?)")
    assert "disp12" in out
    expect(made, 1, "error: disp12/00000001: witness: the qube's directory is gone", witness=True)


def test_dispvm_sessions_swapped(made: Made) -> None:
    a, b = made.qube("disp12"), made.qube("disp13")
    for name in ("00000001.log", "00000001.seal"):
        shutil.move(a / name, a / "x")
        shutil.move(b / name, a / name)
        shutil.move(a / "x", b / name)
    both(
        made,
        "disp12/00000001: seal file of another segment (moved?): seal line 1 is for "
        "disp13/00000001",
        "disp12/00000001: witness:",
    )


def test_whole_qube_removed(made: Made) -> None:
    # Format 2 (the default): the store-wide seal of epoch E-1 names the qube
    # (format 1 prints a limit: tests/store/test_verify.py).
    shutil.rmtree(made.qube("disp13"))
    expect(made, 1, "error: disp13: the store-wide seal of epoch")
    expect(made, 1, "the qube was removed")
    expect(made, 1, "error: disp13/00000001: witness: the qube's directory is gone", witness=True)


def test_epoch_file_re_made_from_the_current_epoch(made: Made) -> None:
    # With K[E] the intruder removes a qube and writes a fresh epoch file: one
    # line for E over what is left, with no line before it (prev zeros, as
    # only a store's very first line has), then moves the key on so that this
    # line is the newest one verify asks for. A store's first epoch line is
    # epoch 1 (or a gap from 1); only compaction drops lines, and its first
    # line links to the one it dropped.
    _re_make_epoch_file(made, [ZERO])
    both(made, "error: store: state/epochs.seal starts at epoch")


def test_epoch_file_re_made_as_a_compacted_one_is_seen_by_the_witness(made: Made) -> None:
    # The same, two epochs later, the first line linking to one that is not
    # there, as a compacted file's does: nothing in the store tells it from a
    # compaction (which keeps only lines of the last two epochs), so verify
    # alone passes and says so in its limit line; the witness heard the real
    # epoch seals.
    _re_make_epoch_file(made, [os.urandom(32), None])
    out = expect(made, 0, "the epoch seals re-made as a compacted file")
    assert "error" not in out, out
    expect(made, 1, "error: disp13/00000001: witness: the qube's directory is gone", witness=True)


def _re_make_epoch_file(made: Made, prevs: list[bytes | None]) -> None:
    """Remove disp13 and write one epoch line per ``prevs`` (None: link to the line
    before) over what is left, each epoch with its key, then move the key on."""
    shutil.rmtree(made.qube("disp13"))
    keys = KeyState(made.layout)
    keys.advance()  # epoch 2 at least (the intruder may wait for later epochs)
    epochs = EpochFile(made.layout)
    epochs.load_leaves()
    lines: list[EpochLine] = []
    for prev in prevs:
        link = prev if prev is not None else lines[-1].mac
        line = EpochLine("epoch", keys.epoch, len(epochs.leaves), 0, epochs.root(), link)
        lines.append(line.signed(keys.key))
        keys.advance()
    epochs_path(made.layout).write_bytes(b"".join(line.to_line() for line in lines))
    keys.close()


def test_newest_closed_segment_removed(made: Made) -> None:
    # disp12 has one closed segment: its removal with its seals leaves nothing.
    for name in ("00000001.log", "00000001.seal"):
        (made.qube("disp12") / name).unlink()
    expect(made, 1, "error: disp12: the store-wide seal of epoch")
    expect(made, 1, "disp12/00000001: witness: segment missing", witness=True)


def append_sealed(made: Made, qube: str, record: bytes) -> int:
    """Append a record to the qube's newest segment, sealed with the intruder's key;
    return its line number."""
    epoch, key = current_key(made)
    files = made.layout.segments(qube)[-1]
    assert files.seal is not None and files.log is not None
    last = read_seal_file(files.seal).seals[-1]
    hasher = ChainHasher(last.head)
    hasher.update(record)
    seal = Seal(
        "batch",
        qube,
        last.seq,
        epoch,
        last.lines + 1,
        last.nbytes + len(record),
        hasher.digest(),
        last.mac,
    ).signed(key)
    with open(files.log, "ab") as stream:
        stream.write(record)
    with open(files.seal, "ab") as stream:
        stream.write(seal.to_line())
    return last.lines + 1


def test_record_dated_before_the_store_was_created(made: Made) -> None:
    # With the key it holds, the intruder adds to personal's open segment a
    # record "received" a year before store.json's creation time.
    stamp = format_timestamp(time.time() - 365 * 86400)
    line = append_sealed(made, "personal", line_record(stamp, b"sshd[1]: Accepted for root"))
    files = made.layout.segments("personal")[-1]
    words = f"error: {files.name} line {line}: received at {stamp.decode()}, before the store"
    both(made, words)


def test_creation_time_moved_back_in_store_json(made: Made) -> None:
    # The intruder moves store.json's creation time back two years, then adds
    # a record dated a year before the real creation: without the witness that
    # passes (store.json is the LogVM's word); the witness kept the time the
    # store registered.
    info = json.loads(made.layout.store_json.read_text())
    info["created"] = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2 * 365 * 86400)
    )
    made.layout.store_json.write_text(json.dumps(info))
    stamp = format_timestamp(time.time() - 365 * 86400)
    append_sealed(made, "personal", line_record(stamp, b"sshd[1]: Accepted for root"))
    out = expect(made, 0, "OK")
    assert "before the store was created" not in out
    expect(made, 1, "store.json was edited", witness=True)


def test_genesis_forged_for_a_new_qube_is_only_post_compromise(made: Made) -> None:
    # A qube the intruder invents with the current key verifies by itself
    # (records after the compromise prove nothing): the witness never saw it.
    epoch, key = current_key(made)
    store_id = made.vk().split(":")[1]
    qube = made.qube("fake")
    qube.mkdir()
    head = genesis(store_id, "fake")
    seal = Seal("open", "fake", 1, epoch, 0, 0, head, ZERO).signed(key)
    (qube / "00000001.seal").write_bytes(seal.to_line())
    (qube / "00000001.log").write_bytes(b"")
    code, out = made.verify(witness=True)
    assert code == 0, out


def _witness_copy(made: Made, tmp_path: Path) -> Path:
    wdir = tmp_path / "witness"
    shutil.copytree(made.witness_dir, wdir)
    return wdir


def _witness_hears(wdir: Path, line: bytes) -> str:
    """One message to the witness, as the LogVM sends it over qrexec."""
    env = dict(os.environ, QREXEC_REMOTE_DOMAIN="sys-log")
    done = subprocess.run(
        [str(WITNESS), "--dir", str(wdir), "serve"],
        input=line.rstrip(b"\n") + b"\n",
        capture_output=True,
        env=env,
        timeout=30,
        check=True,
    )
    return done.stdout.decode().strip()


def _export(made: Made, wdir: Path) -> None:
    subprocess.run(
        [str(WITNESS), "--dir", str(wdir), "export", "sys-log", "-o", str(made.witness_file)],
        check=True,
        timeout=30,
    )


def _forge_deletion(made: Made, qube: str, seq: int) -> Tomb:
    """Delete a qube's oldest segment behind a tomb made with the intruder's key."""
    epoch, key = current_key(made)
    final = read_seal_file(made.qube(qube) / f"{seq:08d}.seal").seals[-1]
    tomb = Tomb(
        "tomb",
        qube,
        seq,
        seq,
        epoch,
        final.epoch,
        final.lines,
        final.nbytes,
        999,
        "quota",
        final.head,
        ZERO,
    ).signed(key)
    (made.qube(qube) / "tombstones.seal").write_bytes(tomb.to_line())
    for name in (f"{seq:08d}.log", f"{seq:08d}.seal"):
        (made.qube(qube) / name).unlink()
    return tomb


def test_deletion_never_reported_to_the_witness(made: Made, tmp_path: Path) -> None:
    _forge_deletion(made, "personal", 1)
    # Verify alone sees a deletion like any other: shown, not an error.
    expect(made, 0, "info: personal/00000001: segment 1 deleted, reason quota")
    # The witness has heard nothing since: not reported *yet* (a warning).
    expect(made, 0, "warning: personal/00000001: witness: the deletion of segment 1", witness=True)
    # The LogVM goes on (its key moves on) and talks to the witness in a later
    # epoch: the report would have come first, so now it is an error.
    epoch, key = current_key(made)
    keys = KeyState(made.layout)
    keys.advance()
    keys.close()
    later = evolve(key)
    store_id = made.vk().split(":")[1]
    seal = Seal("open", "newqube", 1, epoch + 1, 0, 0, genesis(store_id, "newqube"), ZERO)
    wdir = _witness_copy(made, tmp_path)
    assert _witness_hears(wdir, seal.signed(later).to_line()) == "ok stored"
    _export(made, wdir)
    expect(
        made,
        1,
        "personal/00000001: witness: the deletion of segment 1 (quota, epoch "
        f"{epoch}) was never reported to the witness",
        witness=True,
    )


def test_reported_deletion_whose_tombstones_were_removed(made: Made) -> None:
    path = made.qube("work") / "tombstones.seal"
    lines = path.read_bytes().splitlines(keepends=True)
    n = parse_tomb(lines[-1].rstrip(b"\n")).last
    path.write_bytes(b"".join(lines[:-1]))  # the newest tomb goes
    expect(made, 1, f"error: work/{n:08d}: segment missing, and no tombstone")
    stop = f"that segment {n} was deleted (quota), the store's tombstones stop at segment {n - 1}"
    expect(made, 1, stop, witness=True)


def test_deletion_reported_with_another_tombstone_line(made: Made) -> None:
    # The intruder re-makes the newest tomb (say, with fewer records) with its key.
    path = made.qube("work") / "tombstones.seal"
    lines = path.read_bytes().splitlines(keepends=True)
    old = parse_tomb(lines[-1].rstrip(b"\n"))
    epoch, key = current_key(made)
    remade = Tomb(
        old.kind,
        old.qube,
        old.first,
        old.last,
        epoch,
        old.close_epoch,
        1,
        10,
        old.size,
        "age",
        old.head,
        old.prev,
    ).signed(key)
    path.write_bytes(b"".join(lines[:-1]) + remade.to_line())
    expect(made, 0, f"segment {old.last} deleted, reason age, 1 records")
    expect(
        made,
        1,
        f"work/{old.last:08d}: witness: this tombstone is not the one the witness heard",
        witness=True,
    )


@pytest.mark.parametrize(("old", "new"), [(b" D ", b" L "), (b" L ", b" D ")])
def test_dom0_delivery_and_own_line_relabelled(tmp_path: Path, old: bytes, new: bytes) -> None:
    # A console line dom0 delivered for work turned into work's own words
    # (D -> L), or work's own line passed off as dom0's (L -> D): the kind is
    # written by the collector and sealed with the line.
    (tmp_path / "c").mkdir()
    collector = Collector(tmp_path / "c", {"session_linger": 0})
    vk = make_store(collector.store)
    collector.start()
    try:
        send(collector.socket, "work", b"work's own line\n")
        delivery = b"logvm.Send+for.work dom0\0"
        console = b"2026-12-02T12:00:00.000000+00:00 dom0 - - console: panic\n"
        send(collector.socket, "", console, descriptor=delivery)
    finally:
        collector.kill()
    work = StoreLayout(collector.store).qube_dir("work")
    (segment,) = (p for p in sorted(work.glob("*.log")) if old in p.read_bytes())
    segment.write_bytes(segment.read_bytes().replace(old, new, 1))
    (tmp_path / "vk").write_text(vk)
    argv = [str(LOGVM), "verify", "--store", str(collector.store), "--key", str(tmp_path / "vk")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: work/{segment.stem} lines 1-2: lines changed or reordered" in done.stdout


# Retired qubes (docs/store-format.md, "Retired qubes"): the collector removed
# the directories of disp1-3 after deleting all their segments.


def _retire_lines(made: Made) -> list[bytes]:
    return retired_path(made.layout).read_bytes().splitlines(keepends=True)


def _retire_work(made: Made, tomb: Tomb, *, keyless: bool = False) -> None:
    """Append a retire line for work over ``tomb``, MACed with K[E] (or garbage)."""
    epoch, key = current_key(made)
    prev = parse_retire(_retire_lines(made)[-1].rstrip(b"\n")).mac
    line = Retire(epoch, tomb, prev).signed(key)
    if keyless:
        line = Retire(epoch, tomb, prev, os.urandom(32))
    with retired_path(made.layout).open("ab") as out:
        out.write(line.to_line())


def _work_tomb(made: Made) -> Tomb:
    return parse_tomb(made.layout.tombstones("work").read_bytes().splitlines()[-1])


def test_retired_qubes_verify(retired: Made) -> None:
    out = expect(retired, 0, "info: disp2: retired in epoch")
    assert "directory removed" in out


def test_qube_directory_removed_without_a_retire_line(retired: Made) -> None:
    shutil.rmtree(retired.qube("work"))
    expect(retired, 1, "error: work: the store-wide seal of epoch")


def test_retire_line_without_the_key(retired: Made) -> None:
    _retire_work(retired, _work_tomb(retired), keyless=True)
    shutil.rmtree(retired.qube("work"))
    out = expect(retired, 1, "error: work: state/retired.seal line 4: MAC wrong")
    assert "the store-wide seal of epoch" in out


def test_retire_line_made_with_the_current_key_and_its_deletion(retired: Made) -> None:
    # With K[E] the intruder deletes work's segments (tombs of epoch E), retires it
    # and removes its directory: the retirement's tomb must be of an earlier epoch.
    epoch, key = current_key(retired)
    seal_path = retired.layout.segments("work")[-1].seal
    assert seal_path is not None
    newest = read_seal_file(seal_path).seals[-1]
    tomb = Tomb(
        "tomb", "work", newest.seq, newest.seq, epoch, newest.epoch, newest.lines,
        newest.nbytes, 100, "quota", newest.head, ZERO,
    ).signed(key)  # fmt: skip
    _retire_work(retired, tomb)
    shutil.rmtree(retired.qube("work"))
    expect(retired, 1, "is not a tombstone sealed before the retirement")


def test_retire_line_for_a_qube_whose_directory_still_has_segments(retired: Made) -> None:
    # work's own honest newest tomb (an earlier epoch), retired with K[E]:
    # work's directory still holds segments sealed before that.
    _retire_work(retired, _work_tomb(retired))
    expect(retired, 1, "a retire line for a qube that still has segments")


def test_live_qube_retired_over_an_old_tomb_and_removed(retired: Made) -> None:
    _retire_work(retired, _work_tomb(retired))
    shutil.rmtree(retired.qube("work"))
    expect(retired, 1, "error: work/00000013: the store-wide seal of epoch")


def test_retire_line_replayed(retired: Made) -> None:
    lines = _retire_lines(retired)
    retired_path(retired.layout).write_bytes(b"".join([*lines, lines[0]]))
    expect(retired, 1, "state/retired.seal line 4: does not follow the line before")


# -- Bounded memory: huge, sparse and growing files (issue 10, "Bounded everything").
# Sparse files keep these cheap on disk; the verifier's peak RSS is the
# kernel's high-water mark of the process (what /proc/<pid>/status shows as
# VmHWM), taken when it exits, so no sample can miss the peak; measured from a
# fresh process (support/peak.py), not counting this one's size at the fork.

#: Well below every file these cases make, well above what verify needs.
PEAK_BOUND = 256 << 20
GIB = 1 << 30


def verify_peak(made: Made) -> tuple[int, str, int]:
    """Run ``logvm verify``; (exit code, stdout + stderr, peak RSS in bytes)."""
    argv = [str(LOGVM), "verify", "--store", str(made.root), "--key", str(made.vk_file)]
    return run_with_peak(argv, made.root.parent / "peak-rss")


def expect_bounded(made: Made, words: str) -> str:
    code, out, peak = verify_peak(made)
    assert code == 1, out
    assert words in out, out
    assert peak < PEAK_BOUND, f"peak RSS {peak >> 20} MiB"
    return out


def test_segment_extended_to_a_huge_sparse_file(made: Made) -> None:
    log = made.qube("personal") / "00000002.log"
    sealed = log.stat().st_size
    os.truncate(log, 20 * GIB)  # 20 GiB of NUL bytes after the sealed ones, no disk used
    expect_bounded(
        made,
        f"error: personal/00000002: the file holds {20 * GIB} bytes, its seals cover "
        f"{sealed} (seal line 3): more than 64.0 MiB after the last seal, more than the "
        "collector ever leaves unsealed (not read further)",
    )


def test_segment_replaced_by_a_huge_sparse_file(made: Made) -> None:
    log = made.qube("personal") / "00000002.log"
    log.unlink()
    with log.open("wb") as stream:
        stream.truncate(20 * GIB)
    out = expect_bounded(
        made, "error: personal/00000002 line 1 onwards: from here on the file does not match"
    )
    assert "more than 64.0 MiB after the last seal" in out


def test_seal_line_covering_a_huge_sparse_span(made: Made) -> None:
    # With the current key: one batch seal line over 1 GiB the file holds
    # (sparse), its head made up (hashing it right would take the intruder
    # as long as it takes verify): verify hashes it piece by piece.
    personal = made.qube("personal")
    seal_path, log = personal / "00000003.seal", personal / "00000003.log"
    last = read_seal_file(seal_path).seals[-1]
    epoch, key = current_key(made)
    span = GIB  # 4x the peak bound; hashing it takes seconds
    forged = Seal(
        "batch", "personal", 3, epoch, last.lines + 1, last.nbytes + span, os.urandom(32), last.mac
    ).signed(key)
    with seal_path.open("ab") as stream:
        stream.write(forged.to_line())
    number = len(seal_path.read_bytes().splitlines())
    os.truncate(log, last.nbytes + span)
    expect_bounded(
        made,
        f"error: personal/00000003 line {last.lines + 1}: seal line {number} "
        f"seals 1 lines in {span} bytes here, and the file's bytes do not match it",
    )


def test_seal_file_of_one_huge_line(made: Made) -> None:
    seal = made.qube("personal") / "00000002.seal"
    seal.write_bytes(b"v1 batch personal 2 ")
    os.truncate(seal, GIB)  # one line of 1 GiB, no newline
    expect_bounded(
        made,
        f"error: personal/00000002: the seal file holds {GIB} bytes, more than a seal file "
        "can be (256.0 MiB): not read, nothing in this segment can be checked",
    )


def test_segment_growing_while_verified(made: Made) -> None:
    log = made.qube("personal") / "00000003.log"
    stop = threading.Event()

    def grow() -> None:  # 64 MiB more every few milliseconds, sparse
        size = log.stat().st_size
        while not stop.wait(0.002) and size < 1 << 40:
            size += 64 << 20
            os.truncate(log, size)

    grower = threading.Thread(target=grow)
    grower.start()
    try:
        expect_bounded(made, "error: personal/00000003: the file holds ")
    finally:
        stop.set()
        grower.join()


def test_huge_sparse_segment_without_its_seal_file(made: Made) -> None:
    personal = made.qube("personal")
    (personal / "00000002.seal").unlink()
    os.truncate(personal / "00000002.log", 20 * GIB)
    expect_bounded(
        made,
        "error: personal/00000002 lines 1-12: no seal file: lines 1-12 and more (not read "
        "past 64.0 MiB) are not sealed",
    )


def test_seal_file_of_64_mib_of_newlines(made: Made) -> None:
    # No key needed: 67 million empty "seal lines" (one list entry each, before).
    (made.qube("personal") / "00000002.seal").write_bytes(b"\n" * (64 << 20))
    out = expect_bounded(
        made,
        "error: personal/00000002: seal line 1001: not read: more than 1000 lines before it "
        "are not seal lines",
    )
    assert "error: personal/00000002: seal line 1000: malformed seal line" in out
