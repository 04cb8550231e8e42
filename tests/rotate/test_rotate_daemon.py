"""The ``logvm-rotate`` daemon as a real process: SIGHUP reloads, SIGTERM stops cleanly."""

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qubes_logvm import rotate
from qubes_logvm.store.compress import TMP_SUFFIX
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.writer import Store
from support.programs import program
from support.segments import (
    as_records,
    check_qube,
    loghub_text,
    new_store,
    product_env,
    write_segment,
)

ROTATE = program("logvm-rotate")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _start(procs: list[subprocess.Popen[bytes]], root: Path, cfg: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(ROTATE), "--store", str(root), "--config", str(cfg), "--interval", "0.2", "-v"],
        stderr=subprocess.PIPE,
        env=product_env(),
    )
    procs.append(proc)
    return proc


def _until(predicate: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sighup_reloads_and_sigterm_stops(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "store"
    key0 = new_store(root)
    store = Store(root)
    write_segment(store, "work", as_records(loghub_text(100_000)[:100_000]))
    store.close()
    layout = StoreLayout(root)
    cfg = tmp_path / "collector.yaml"
    cfg.write_text("compress: {after: 1h}\n")
    proc = _start(procs, root, cfg)
    time.sleep(1.0)  # several passes: the segment is too young
    assert not layout.segments("work")[0].compressed
    cfg.write_text("compress: {after: 0s}\n")
    proc.send_signal(signal.SIGHUP)
    assert _until(lambda: layout.segments("work")[0].compressed)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None
    assert b"configuration reloaded" in proc.stderr.read()
    assert check_qube(root, key0, "work") == [1]


def test_bad_config_on_reload_keeps_the_old_one(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "store"
    new_store(root)
    cfg = tmp_path / "collector.yaml"
    cfg.write_text("compress: {after: 1h}\n")
    proc = _start(procs, root, cfg)
    assert _until(lambda: (root / "state" / rotate.LOCK_NAME).exists())
    time.sleep(0.5)  # the first config is loaded
    cfg.write_text("compress: {level: 99}\n")
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None
    assert b"compress.level" in proc.stderr.read()


def test_sigterm_during_compression_abandons_it(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "store"
    key0 = new_store(root)
    store = Store(root)
    noise = os.urandom(6 << 20).hex().encode()  # no long repeats: level 19 takes seconds
    write_segment(
        store,
        "work",
        as_records(b"\n".join(noise[i : i + 120] for i in range(0, len(noise), 120))),
    )
    store.close()
    cfg = tmp_path / "collector.yaml"
    cfg.write_text("compress: {after: 0s, level: 19}\n")
    proc = _start(procs, root, cfg)
    tmp = StoreLayout(root).qube_dir("work") / f"00000001{TMP_SUFFIX}"
    assert _until(tmp.exists)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
    assert sorted(os.listdir(StoreLayout(root).qube_dir("work"))) == [
        "00000001.log",
        "00000001.seal",
        "lock",
    ]
    assert check_qube(root, key0, "work") == [1]


def test_second_instance_and_missing_store_are_refused(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert rotate.main(["--store", str(tmp_path / "none"), "--once"], install_signals=False) == 1
    assert "no store here" in capsys.readouterr().err
    root = tmp_path / "store"
    new_store(root)
    cfg = tmp_path / "collector.yaml"
    cfg.write_text("{}\n")
    _start(procs, root, cfg)
    assert _until(lambda: (root / "state" / rotate.LOCK_NAME).exists())
    time.sleep(0.3)
    args = ["--store", str(root), "--config", str(cfg), "--once"]
    assert rotate.main(args, install_signals=False) == 1
    assert "another logvm-rotate is running" in capsys.readouterr().err
