"""The verifier against a real store written by the real writer, and each attack on it."""

import os
import shutil
from pathlib import Path

import pytest

from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.store.verify import ERROR, WARNING, Finding, WrongKey, verify_store
from qubes_logvm.store.writer import Store
from support.storebuilder import Built
from support.tamper import ATTACKS, Expect, open_segment_truncated_seals, other_key

pytestmark = pytest.mark.inprocess


def pointed_at(findings: list[Finding], expect: Expect) -> bool:
    """Some error names the expected qube, segment and a line range holding the line."""
    for finding in findings:
        if finding.severity != ERROR or expect.words not in str(finding):
            continue
        if expect.qube == "store":
            return finding.qube is None
        if (finding.qube, finding.segment) != (expect.qube, expect.seq):
            continue
        if expect.line is None:
            return True
        first, last = finding.first_line, finding.last_line
        if first is not None and first <= expect.line <= (last or first):
            return True
    return False


@pytest.mark.timeout(30)
def test_untouched_store_verifies(store: Built) -> None:
    report = verify_store(store.root, store.key)
    assert [f for f in report.findings if f.severity != "info"] == []
    assert [str(d) for d in report.deletions] == [
        "segment 1 deleted, reason quota, 15 records, 1001 bytes, in epoch 25"
    ]
    assert report.ok
    assert (report.qubes, report.segments) == (3, 7)
    assert report.bytes_hashed > 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_attack_fails_and_names_the_place(any_store: Built, attack: str) -> None:
    expect = ATTACKS[attack](any_store)
    report = verify_store(any_store.root, any_store.key)
    assert not report.ok
    assert pointed_at(report.findings, expect), "\n".join(map(str, report.findings))


@pytest.mark.timeout(30)
def test_wrong_key_is_named_not_taken_for_tampering(store: Built) -> None:
    with pytest.raises(WrongKey, match="this key does not belong to this store"):
        verify_store(store.root, other_key(store))


@pytest.mark.timeout(30)
def test_open_segment_cut_back_while_epochs_went_on(any_store: Built) -> None:
    store = any_store
    writer = Store(store.root)  # the collector goes on ticking (and sealing work/4)
    writer.tick()
    writer.tick()
    writer.keys.close()
    expect = open_segment_truncated_seals(store)
    report = verify_store(store.root, store.key)
    assert pointed_at(report.findings, expect), "\n".join(map(str, report.findings))


def _append_unsealed(store: Built, qube: str, seq: int, n: int) -> None:
    stamp = format_timestamp(1.8e9)
    with store.log(qube, seq).open("ab") as stream:
        stream.write(b"".join(line_record(stamp, b"late %d" % i) for i in range(n)))


@pytest.mark.timeout(30)
def test_unsealed_tail_of_newest_open_segment_is_a_warning(store: Built) -> None:
    _append_unsealed(store, "work", 4, 3)
    report = verify_store(store.root, store.key)
    assert report.ok
    [warning] = report.warnings
    assert warning.severity == WARNING
    assert (warning.qube, warning.segment) == ("work", 4)
    assert "unsealed tail" in warning.message
    assert warning.last_line is not None
    assert warning.first_line is not None
    assert warning.last_line - warning.first_line == 2


@pytest.mark.timeout(30)
def test_unsealed_tail_of_closed_segment_is_an_error(store: Built) -> None:
    _append_unsealed(store, "work", 3, 2)
    report = verify_store(store.root, store.key)
    assert pointed_at(report.findings, Expect("work", 3, 16, "after the final seal"))


@pytest.mark.timeout(30)
def test_crash_tail_then_recover_verifies(store: Built) -> None:
    _append_unsealed(store, "work", 4, 2)
    writer = Store(store.root)
    assert writer.recover_all() == {"work": 2}
    writer.close()
    report = verify_store(store.root, store.key)
    assert report.errors == report.warnings == []


@pytest.mark.timeout(30)
def test_only_named_qubes_and_unknown_qube(store: Built) -> None:
    ATTACKS["changed-byte"](store)  # work is damaged, personal is not
    assert verify_store(store.root, store.key, ["personal"]).ok
    report = verify_store(store.root, store.key, ["nosuch"])
    assert [f.message for f in report.errors] == ["no such qube in the store"]


@pytest.mark.timeout(30)
def test_forged_huge_epoch_is_not_derived(store: Built) -> None:
    path = store.seal("disp12", 1)
    lines = path.read_bytes().splitlines(keepends=True)
    fields = lines[2].split(b" ")
    fields[4] = b"999999999999"
    lines[2] = b" ".join(fields)
    path.write_bytes(b"".join(lines))
    report = verify_store(store.root, store.key)  # returns quickly: the epoch is capped
    assert any("MAC wrong" in f.message and f.segment == 1 for f in report.errors)


@pytest.mark.timeout(30)
def test_tombstoned_segment_still_present_is_a_warning(store: Built, tmp_path: Path) -> None:
    writer = Store(store.root)
    chain = writer.chain("personal")
    victim = store.log("personal", 2)
    saved = tmp_path / "saved"
    shutil.copy(victim, saved)
    shutil.copy(store.seal("personal", 2), tmp_path / "saved.seal")
    assert chain.delete_oldest(writer.keys, keep_newest=0) == 1
    assert chain.delete_oldest(writer.keys, keep_newest=0) == 2
    writer.keys.close()
    assert verify_store(store.root, store.key).ok
    shutil.copy(saved, victim)  # rotation "crashed" between tombstone and unlink
    shutil.copy(tmp_path / "saved.seal", store.seal("personal", 2))
    report = verify_store(store.root, store.key)
    assert report.ok
    assert any("removal interrupted" in f.message for f in report.findings)


@pytest.mark.timeout(30)
def test_removed_qube_is_a_limit_in_format1_and_an_error_in_format2(any_store: Built) -> None:
    shutil.rmtree(any_store.root / "qubes" / "disp12")
    report = verify_store(any_store.root, any_store.key)
    if any_store.format == 1:  # no store-wide seal: verify says what it cannot see
        assert report.ok
        assert any("a whole qube, can be removed" in limit for limit in report.limits)
    else:
        assert pointed_at(report.findings, Expect("disp12", None, None, "the qube was removed"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "huge", "link"])
def test_tombstoned_leftover_with_an_unreadable_seal_file_is_an_error(
    store: Built, tmp_path: Path, kind: str
) -> None:
    # A deletion's leftover (tomb written, files not yet removed) whose seal
    # file an intruder made a FIFO, a 257 MiB sparse file or a link: a
    # finding naming the segment (exit 1), never a hang or exit 2.
    writer = Store(store.root)
    chain = writer.chain("personal")
    victim = store.log("personal", 2)
    shutil.copy(victim, tmp_path / "saved")
    assert chain.delete_oldest(writer.keys, keep_newest=0) == 1
    assert chain.delete_oldest(writer.keys, keep_newest=0) == 2
    writer.keys.close()
    shutil.copy(tmp_path / "saved", victim)
    seal = store.seal("personal", 2)
    if kind == "fifo":
        os.mkfifo(seal)
    elif kind == "huge":
        with seal.open("wb") as out:
            out.truncate(257 << 20)
    else:
        seal.symlink_to("/dev/zero")
    report = verify_store(store.root, store.key)
    assert not report.ok
    expected = "its seal file cannot be read" if kind == "huge" else "not a regular file"
    assert any(
        "00000002.seal" in f.message or f.segment == 2
        for f in report.errors
        if expected in f.message
    ), [f.message for f in report.findings]
