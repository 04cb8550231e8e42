"""``logvm.Export`` and ``logvm.VerifySnapshot`` as processes: consistency, locks, framing."""

import fcntl
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.core.snapshot_format import input_prefix, parse_verdict
from qubes_logvm.snapshot import check
from qubes_logvm.store.writer import Store
from support.storebuilder import Built, build_store


def export(root: Path, *, argument: str = "", caller: str = "dom0") -> subprocess.Popen[bytes]:
    env = dict(os.environ, QREXEC_REMOTE_DOMAIN=caller, LOGVM_STORE=str(root))
    if argument:
        env["QREXEC_SERVICE_ARGUMENT"] = argument
    cmd = [sys.executable, "-m", "qubes_logvm.snapshot.export"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def verdict_of(snapshot: bytes, key: str, tmp: Path, qubes: list[str] | None = None) -> str:
    data = input_prefix(key, b"", 1 << 40) + snapshot
    workdir = tmp / f"dispvm-{time.monotonic_ns()}"
    workdir.mkdir()
    found = check.check_input(io.BytesIO(data), workdir, qubes)
    verdict = parse_verdict(found.to_bytes())
    assert verdict.status == "ok", verdict.findings
    return verdict.status


def test_snapshot_holds_no_key_material_and_verifies(store: Built, tmp_path: Path) -> None:
    proc = export(store.root)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    key_file = store.layout.sealkey.read_bytes().split()[3]
    assert key_file not in out and b"sealkey" not in out
    assert out.startswith(b"logvm-snapshot-v1\nstore ")
    # The epoch before any file, then (format 2) the epoch seals, then the qubes.
    assert re.search(rb"\}\nepoch [0-9]+\nstate epochs\.seal [0-9]+\n", out)
    assert out.index(b"\nstate epochs.seal ") < out.index(b"\nqube disp12\n")
    assert re.search(rb"\nend 3 [0-9]+ [0-9]+\n\Z", out)
    assert verdict_of(out, store.key, tmp_path) == "ok"


def test_only_dom0_may_call(store: Built) -> None:
    proc = export(store.root, caller="work")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == b""
    assert b"only dom0" in err


def test_named_qubes_and_bad_argument(store: Built) -> None:
    out, _ = export(store.root, argument="personal").communicate(timeout=60)
    assert b"qube personal\n" in out and b"qube work\n" not in out
    proc = export(store.root, argument="../etc")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and b"bad argument" in err


def test_lock_is_free_while_bytes_are_streamed(store: Built) -> None:
    big = store.log("work", 4)
    with big.open("ab") as f:  # an unsealed tail: big enough to fill the pipe
        f.write(line_record(format_timestamp(time.time()), b"x" * 1000) * 4000)
    proc = export(store.root, argument="work")  # nobody reads: it blocks writing
    time.sleep(1.0)
    assert proc.poll() is None
    fd = os.open(store.layout.lock("work"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the collector would get it at once
    finally:
        os.close(fd)
    proc.kill()
    proc.communicate()


@pytest.mark.timeout(120)
def test_consistent_while_the_collector_writes(tmp_path: Path) -> None:
    store = build_store(tmp_path / "store", leave_open=False)  # every segment closed
    writer = Store(store.root)
    chain = writer.chain("live")
    chain.open_segment(writer.keys)
    stop = threading.Event()
    rounds: list[int] = []

    def collect() -> None:
        n = 0
        while not stop.is_set():
            rounds.append(n)
            n += 1
            stamp = format_timestamp(time.time())
            chain.append(b"".join(line_record(stamp, b"live %d" % i) for i in range(50)), 50)
            chain.seal(writer.keys)
            time.sleep(0.005)  # epochs of ~25 ms: far faster than a real store's
            if n % 5 == 0:
                writer.tick()
            if n % 20 == 0:
                chain.close(writer.keys)
                chain.open_segment(writer.keys)

    thread = threading.Thread(target=collect)
    thread.start()
    try:
        for _ in range(5):
            out, err = export(store.root).communicate(timeout=60)
            assert err == b""
            assert verdict_of(out, store.key, tmp_path) == "ok"
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert len(rounds) > 20  # the collector really wrote during the exports


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda s: s[: len(s) // 2], "ends"),
        (lambda s: s + b"junk", "after the end"),
        (lambda s: s.replace(b"qube personal\n", b"qube ../x\n", 1), "malformed qube"),
        (lambda s: s.replace(b"file 00000002.log ", b"file ../../x.log ", 1), "malformed file"),
        (lambda s: s.replace(b"end 3 ", b"end 4 ", 1), "disagrees"),
        (lambda s: s.replace(b"qube personal\n", b"qube work\n", 1), "sent twice"),
    ],
    ids=["truncated", "trailing", "bad-qube", "bad-name", "bad-end", "twice"],
)
def test_malformed_snapshots_are_errors(
    store: Built, tmp_path: Path, mangle: object, words: str
) -> None:
    out, _ = export(store.root).communicate(timeout=60)
    data = input_prefix(store.key, b"", 1 << 40) + mangle(out)  # type: ignore[operator]
    workdir = tmp_path / "dispvm"
    workdir.mkdir()
    verdict = check.check_input(io.BytesIO(data), workdir, None)
    assert verdict.status == "error"
    assert words in verdict.findings[0], verdict.findings
    assert not (tmp_path / "x.log").exists()


def test_a_key_the_verifier_cannot_read_is_an_error_verdict(store: Built, tmp_path: Path) -> None:
    # The key is read by the verify thread while the input arrives: its
    # refusal still ends the input and becomes the verdict.
    out, _ = export(store.root).communicate(timeout=60)
    data = input_prefix("logvm-vk-nonsense", b"", 1 << 40) + out
    workdir = tmp_path / "dispvm"
    workdir.mkdir()
    verdict = check.check_input(io.BytesIO(data), workdir, None)
    assert verdict.status == "error"
    assert verdict.findings[0].startswith("cannot verify: "), verdict.findings
