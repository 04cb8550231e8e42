"""The engine's streaming entry (``QubeStream``): the findings ``verify_store`` gives.

``logvm.VerifySnapshot`` verifies each qube while the next one arrives; these
tests hold that this never changes a finding, in the honest order and in a
hostile one (which falls back to verifying the finished copy whole).
"""

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.core.snapshot_format import input_prefix, parse_verdict
from qubes_logvm.snapshot import check
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.verify import Report, verify_store
from qubes_logvm.store.verify.stream import QubeStream
from qubes_logvm.store.writer import Store
from support import tamper
from support.storebuilder import Built


def _lines(report: Report) -> list[str]:
    return [str(f) for f in report.findings] + list(report.limits)


def _streamed(b: Built, order: list[str], qubes: list[str] | None = None) -> QubeStream:
    stream = QubeStream(b.root, b.key, qubes)
    for name in order:
        stream.qube(name)
    return stream


ATTACKS: list[Callable[[Built], object]] = [
    lambda b: None,
    tamper.changed_byte,
    tamper.changed_byte_compressed,
    tamper.removed_middle_segment,
    tamper.removed_tombstones,
    tamper.truncated_tail,
    tamper.seal_files_swapped,
    tamper.store_id_changed,
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: getattr(a, "__name__", "intact"))
def test_arrival_order_gives_verify_stores_findings(store: Built, attack: object) -> None:
    attack(store)  # type: ignore[operator]
    stream = _streamed(store, store.layout.qubes())
    assert stream.streaming
    streamed = stream.finish()
    whole = verify_store(store.root, store.key)
    assert _lines(streamed) == _lines(whole)
    assert (streamed.qubes, streamed.segments, streamed.bytes_hashed) == (
        whole.qubes,
        whole.segments,
        whole.bytes_hashed,
    )


def test_named_qubes_missing_and_unasked(store: Built) -> None:
    asked = ["work", "nosuch", "personal", "later"]
    stream = _streamed(store, ["work", "disp12", "personal"], asked)
    assert stream.streaming
    assert _lines(stream.finish()) == _lines(verify_store(store.root, store.key, asked))


@pytest.mark.parametrize(
    ("order", "asked"),
    [
        (["work", "personal", "disp12"], None),  # not ascending
        (["disp12", "personal", "disp12"], None),  # twice
        (["disp12", "personal"], None),  # one never announced
        (["personal", "work"], ["work", "personal"]),  # not the order asked
    ],
)
def test_any_other_order_verifies_the_whole_copy(
    store: Built, order: list[str], asked: list[str] | None
) -> None:
    tamper.changed_byte(store)
    got = _streamed(store, order, asked).finish()
    assert _lines(got) == _lines(verify_store(store.root, store.key, asked))


def test_without_a_good_key_file_the_engine_decides(store: Built) -> None:
    store.layout.sealkey.unlink()
    stream = _streamed(store, store.layout.qubes())
    assert not stream.streaming
    assert _lines(stream.finish()) == _lines(verify_store(store.root, store.key))


def test_a_refused_input_stops_the_verifier_thread(store: Built, tmp_path: Path) -> None:
    data = input_prefix(store.key, b"", 1 << 40) + b"logvm-snapshot-v1\nstore 0\nepoch 1\n"
    data += b"qube work\nqube zz\nfile 00000001.log 9\nshort"
    workdir = tmp_path / "dispvm"
    workdir.mkdir()
    verdict = parse_verdict(check.check_input(io.BytesIO(data), workdir, None).to_bytes())
    assert verdict.status == "error"
    assert "ends inside zz/00000001.log" in verdict.findings[0]


def _format2_store(root: Path) -> str:
    """Three qubes of a format-2 store (epoch seals in state/, no tick seals)."""
    key = setup_keys(StoreLayout(root), store_format=2)
    store = Store(root)
    stamp = format_timestamp(1.8e9)
    for round_ in range(3):
        for qube in ("work", "idle", "sys-net"):
            if round_ == 0:
                store.chain(qube).open_segment(store.keys)
            if qube != "idle" or round_ == 0:
                chain = store.chain(qube)
                chain.append(b"".join(line_record(stamp, b"%d" % i) for i in range(3)), 3)
                chain.seal(store.keys)
        store.tick()
    store.tick()
    store.keys.close()
    return key


def test_format2_store_verified_from_its_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key = _format2_store(root)
    env = dict(os.environ, QREXEC_REMOTE_DOMAIN="dom0", LOGVM_STORE=str(root))
    cmd = [sys.executable, "-m", "qubes_logvm.snapshot.export"]
    snapshot = subprocess.run(cmd, env=env, capture_output=True, check=True).stdout
    assert b"\nstate epochs.seal " in snapshot and b"\nstate epoch-leaves " in snapshot
    whole = verify_store(root, key)
    assert whole.ok

    def verdict(data: bytes, name: str) -> list[str]:
        workdir = tmp_path / name
        workdir.mkdir()
        found = check.check_input(
            io.BytesIO(input_prefix(key, b"", 1 << 40) + data), workdir, None
        )
        got = parse_verdict(found.to_bytes())
        return [got.status, *got.findings]

    expected = parse_verdict(check.verify_copy(lambda: whole).to_bytes())
    assert verdict(snapshot, "intact") == [expected.status, *expected.findings]
    assert expected.status == "ok"
    # The epoch seals are what a v2 copy is checked against: without them, an error.
    start = snapshot.index(b"state epochs.seal ")
    size = int(snapshot[start:].split(b"\n", 1)[0].split()[-1])
    header_end = snapshot.index(b"\n", start) + 1
    cut = snapshot[:start] + snapshot[header_end + size :]
    end = cut.rindex(b"end ")
    qubes, files, nbytes = map(int, cut[end + 4 :].split())
    cut = cut[:end] + b"end %d %d %d\n" % (qubes, files - 1, nbytes - size)
    status, *findings = verdict(cut, "no-epochs")
    assert status == "failed"
    assert any("epochs.seal is missing" in line for line in findings), findings
