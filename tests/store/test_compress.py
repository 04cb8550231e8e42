"""Compression of closed segments: round trip, refusals, and SIGKILL at random moments."""

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import zstandard

from qubes_logvm.core.seal import format_verification_key
from qubes_logvm.store import reader
from qubes_logvm.store.compress import (
    TMP_SUFFIX,
    CompressError,
    Interrupted,
    candidates,
    compress_segment,
    tidy,
)
from qubes_logvm.store.eviction import qube_report
from qubes_logvm.store.keystate import read_store_info
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.verify import verify_store
from qubes_logvm.store.writer import Store
from support.programs import program
from support.segments import (
    as_records,
    check_qube,
    config,
    loghub_text,
    new_store,
    product_env,
    sample_lines,
    segment_bytes,
    set_closed_at,
    write_segment,
)

ROTATE = program("logvm-rotate")


def _store_with(root: Path, segments: list[bytes], qube: str = "work") -> bytes:
    key0 = new_store(root)
    store = Store(root)
    for data in segments:
        write_segment(store, qube, data, batches=5)
    store.close()
    return key0


def _segment(root: Path, seq: int, qube: str = "work"):  # type: ignore[no-untyped-def]
    return next(s for s in StoreLayout(root).segments(qube) if s.seq == seq)


@pytest.mark.timeout(60)
def test_round_trip_keeps_bytes_seals_and_age(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key0 = _store_with(root, [as_records(loghub_text(300_000)[:300_000])])
    layout = StoreLayout(root)
    plain = _segment(root, 1)
    assert plain.log is not None
    original = plain.log.read_bytes()
    set_closed_at(layout, "work", 1, time.time() - 7200)
    os.utime(plain.log, (1_000_000, 1_000_000))
    size = compress_segment(layout, plain, level=3)
    packed = _segment(root, 1)
    assert packed.compressed and packed.log is not None and size == packed.log.stat().st_size
    assert not layout.segment_log("work", 1).exists()
    assert segment_bytes(packed.log) == original
    assert packed.log.stat().st_mtime == 1_000_000  # the segment keeps its age
    frame = zstandard.get_frame_parameters(packed.log.read_bytes()[:18])
    assert frame.content_size == len(original) and frame.has_checksum
    assert check_qube(root, key0, "work") == [1]
    report = qube_report(layout, config("{}"), "work")
    assert report["segments_compressed"] == 1 and report["segments_plain"] == 0
    assert report["compressed_plain_bytes"] == len(original)
    assert isinstance(report["compression_ratio"], float) and report["compression_ratio"] > 3


@pytest.mark.timeout(60)
def test_reader_reads_compressed_segments(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with(root, [sample_lines(500)])
    layout = StoreLayout(root)
    before = _segment(root, 1)
    assert before.log is not None
    with reader.open_plain(before.log) as stream:
        plain_lines = [line.data for line in reader.read_lines(stream)]
    compress_segment(layout, before)
    after = _segment(root, 1)
    assert after.compressed and after.log is not None
    with reader.open_plain(after.log) as stream:
        assert [line.data for line in reader.read_lines(stream)] == plain_lines


@pytest.mark.timeout(60)
def test_refuses_open_tampered_or_unsealed_segments(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with(root, [sample_lines(50), sample_lines(50)])
    layout = StoreLayout(root)
    store = Store(root)
    chain = store.chain("work")
    chain.open_segment(store.keys)
    chain.append(sample_lines(5), 5)
    chain.seal(store.keys)
    with pytest.raises(CompressError, match="not closed"):
        compress_segment(layout, _segment(root, 3))
    store.keys.close()
    # A changed byte: the chain no longer matches, nothing is replaced.
    path = layout.segment_log("work", 1)
    data = bytearray(path.read_bytes())
    data[200] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CompressError, match="do not match"):
        compress_segment(layout, _segment(root, 1))
    # Bytes after the close seal.
    with layout.segment_log("work", 2).open("ab") as stream:
        stream.write(b"2027-01-15T08:00:00.000000Z L appended later\n")
    with pytest.raises(CompressError, match="after the last seal"):
        compress_segment(layout, _segment(root, 2))
    assert sorted(os.listdir(layout.qube_dir("work"))) == [
        "00000001.log",
        "00000001.seal",
        "00000002.log",
        "00000002.seal",
        "00000003.log",
        "00000003.seal",
        "lock",
    ]


@pytest.mark.timeout(60)
def test_stop_request_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with(root, [sample_lines(40000)])
    layout = StoreLayout(root)
    with pytest.raises(Interrupted):
        compress_segment(layout, _segment(root, 1), should_stop=lambda: True)
    assert sorted(os.listdir(layout.qube_dir("work"))) == ["00000001.log", "00000001.seal", "lock"]


@pytest.mark.timeout(60)
def test_tidy_finishes_or_undoes_interrupted_work(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key0 = _store_with(root, [sample_lines(300), sample_lines(300), sample_lines(300)])
    layout = StoreLayout(root)
    qdir = layout.qube_dir("work")
    originals = {seq: layout.segment_log("work", seq).read_bytes() for seq in (1, 2, 3)}
    level = zstandard.ZstdCompressor(level=3)
    # 1: killed between rename and unlink -> both copies, the zst good.
    (qdir / "00000001.log.zst").write_bytes(level.compress(originals[1]))
    # 2: both copies, the zst bad (cannot come from us, but must not win).
    (qdir / "00000002.log.zst").write_bytes(level.compress(originals[2][:-10]))
    # 3: a stale temp file.
    (qdir / f"00000003{TMP_SUFFIX}").write_bytes(b"partial")
    tidy(layout, "work")
    names = sorted(os.listdir(qdir))
    assert names == [
        "00000001.log.zst",
        "00000001.seal",
        "00000002.log",
        "00000002.seal",
        "00000003.log",
        "00000003.seal",
        "lock",
    ]
    assert segment_bytes(qdir / "00000001.log.zst") == originals[1]
    assert check_qube(root, key0, "work") == [1, 2, 3]


@pytest.mark.timeout(60)
def test_tidy_removes_copy_of_a_segment_the_collector_deleted(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with(root, [sample_lines(300), sample_lines(300)])
    layout = StoreLayout(root)
    data = layout.segment_log("work", 1).read_bytes()
    zst = layout.segment_log("work", 1, compressed=True)
    zst.write_bytes(zstandard.ZstdCompressor().compress(data))  # rotate killed before unlink
    store = Store(root)
    assert store.chain("work").delete_oldest(store.keys, keep_newest=0) == 1  # plain + seal go
    store.close()
    assert not zst.exists()  # the collector removes both copies
    zst.write_bytes(zstandard.ZstdCompressor().compress(data))  # as an older writer left it
    tidy(layout, "work")
    assert not zst.exists()
    assert layout.segment_log("work", 2).exists()


@pytest.mark.timeout(60)
def test_candidates_wait_for_compress_after(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store_with(root, [sample_lines(10), sample_lines(10)])
    layout = StoreLayout(root)
    now = time.time()
    set_closed_at(layout, "work", 1, now - 7200)
    set_closed_at(layout, "work", 2, now - 60)
    assert [s.seq for s in candidates(layout, "work", now - 3600)] == [1]


def _rotate(root: Path, cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROTATE), "--store", str(root), "--config", str(cfg), "--once", *extra],
        capture_output=True,
        text=True,
        env=product_env(),
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(60)
def test_rotate_once_compresses_old_segments_only(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key0 = _store_with(root, [sample_lines(1000), sample_lines(1000), sample_lines(1000)])
    layout = StoreLayout(root)
    now = time.time()
    for seq, age in ((1, 7200), (2, 7200), (3, 10)):
        set_closed_at(layout, "work", seq, now - age)
    cfg = tmp_path / "collector.yaml"
    cfg.write_text("compress: {after: 1h, level: 3}\n")
    result = _rotate(root, cfg)
    assert result.returncode == 0, result.stderr
    assert [s.compressed for s in layout.segments("work")] == [True, True, False]
    assert check_qube(root, key0, "work") == [1, 2, 3]
    cfg.write_text("compress: {afterr: 1h}\n")
    result = _rotate(root, cfg)
    assert result.returncode == 1 and "compress.afterr: unknown key" in result.stderr


def _wait_for(path: Path, deadline: float) -> None:
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.001)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_during_compression_leaves_one_good_copy(tmp_path: Path) -> None:
    """Kill the real ``logvm-rotate --once`` at random moments, 12 times, then let it finish."""
    pristine = tmp_path / "pristine"
    text = loghub_text(24 << 20)
    segments = [as_records(text[i << 23 : (i + 1) << 23]) for i in range(3)]  # 3 x ~8.5 MB
    key0 = _store_with(pristine, segments)
    layout = StoreLayout(pristine)
    originals = {s.seq: s.log.read_bytes() for s in layout.segments("work") if s.log}
    for seq in originals:
        set_closed_at(layout, "work", seq, time.time() - 86400)
    cfg = tmp_path / "collector.yaml"
    cfg.write_text("compress: {after: 1h}\nglobal: {keep_free: 0}\n")
    start = time.monotonic()
    calibrate = tmp_path / "calibrate"
    shutil.copytree(pristine, calibrate)
    assert _rotate(calibrate, cfg).returncode == 0
    full = time.monotonic() - start
    rng = random.Random(4)
    outcomes = set()
    for attempt in range(12):
        root = tmp_path / f"run{attempt}"
        shutil.copytree(pristine, root)
        proc = subprocess.Popen(
            [str(ROTATE), "--store", str(root), "--config", str(cfg), "--once"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=product_env(),
        )
        try:
            if attempt % 2:
                # Aim at the write/verify/rename window of a random segment.
                seq = rng.choice(sorted(originals))
                tmp = StoreLayout(root).qube_dir("work") / f"{seq:08d}{TMP_SUFFIX}"
                _wait_for(tmp, time.monotonic() + 30)
                time.sleep(rng.uniform(0, 0.15))
            else:
                time.sleep(rng.uniform(0, full))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        outcomes.add(_check_after_kill(root, key0, originals))
        assert _rotate(root, cfg).returncode == 0
        names = sorted(os.listdir(StoreLayout(root).qube_dir("work")))
        assert names == [
            f"{s:08d}.{e}" for s in sorted(originals) for e in ("log.zst", "seal")
        ] + ["lock"]
        _check_after_kill(root, key0, originals)
        shutil.rmtree(root)
    print("kill outcomes:", sorted(outcomes))
    assert len(outcomes) > 1, outcomes  # the kills did land at different stages


def _check_after_kill(root: Path, key0: bytes, originals: dict[int, bytes]) -> str:
    """Every segment has at least one good copy; readers see the right bytes."""
    layout = StoreLayout(root)
    assert check_qube(root, key0, "work") == sorted(originals)
    vkey = format_verification_key(read_store_info(layout).store_id, key0)
    assert [str(f) for f in verify_store(root, vkey).errors] == []  # `logvm verify`
    states = []
    for files in layout.segments("work"):
        assert files.log is not None
        assert segment_bytes(files.log) == originals[files.seq]  # nothing lost or doubled
        zst = layout.segment_log("work", files.seq, compressed=True)
        plain = layout.segment_log("work", files.seq)
        if zst.exists() and plain.exists():
            # Killed between rename and unlink: the extra copy is whole, too.
            assert segment_bytes(zst) == originals[files.seq]
            states.append("both")
        else:
            states.append("zst" if zst.exists() else "plain")
    tmps = [n for n in os.listdir(layout.qube_dir("work")) if n.endswith(TMP_SUFFIX)]
    return ",".join(states) + (" +tmp" if tmps else "")
