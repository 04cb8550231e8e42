"""Outside verification benchmark: ``logvm-witness verify`` MB/s next to in-place verify.

The store is the one ``verify_bench`` builds (loghub samples, 512-line
batches). Baseline: ``verify_store`` on the store in place (what ``logvm
verify`` does), best of two warm runs. Measured: the whole ``logvm-witness
verify`` command, best of two: ``logvm.Export`` in the stand-in LogVM, dom0's
copy loop, ``logvm.VerifySnapshot`` writing the copy into a fresh stand-in
DispVM root and verifying it, the verdict back. The qvm-run stand-in is
tests/support's, run by this interpreter (as dom0 runs qvm-run directly: no
version-manager shim resolving ``python3`` on each start); the Xen vchan and
the DispVM's start (seconds on real hardware) are not in it.

Bar (issue 11): the pipe costs at most 25% against in-place ``logvm verify``,
the command (``logvm --store S verify --key K``, best of two: a process
start, as the outside run has). ``verify_store`` in process is shown too.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.verify_bench import _build, _timed_verify

REPO = Path(__file__).resolve().parents[1]
BAR_RATIO = 0.75


def _world(base: Path, store: Path, key: str) -> tuple[Any, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from support.qrexec import World  # the test stand-in, only for this benchmark

    world = World(base / "world")
    world.add_qube("sys-log", env={"LOGVM_STORE": str(store)})
    world.add_qube("sys-log-dvm", template_for_dispvms=True)
    for qube, service in (("sys-log", "logvm.Export"), ("sys-log-dvm", "logvm.VerifySnapshot")):
        text = (REPO / "qubes-rpc" / service).read_text(encoding="utf-8")
        world.add_executable_service(
            qube, service, text.replace("/usr/bin/python3", sys.executable)
        )
    witness = base / "witness"
    (witness / "sys-log").mkdir(parents=True)
    (witness / "sys-log" / "key").write_text(key + "\n", encoding="ascii")
    return world, witness


def _timed_outside(world: Any, witness: Path) -> float:
    cmd = [
        str(Path(sys.executable).with_name("logvm-witness")),
        "--dir",
        str(witness),
        "verify",
        "sys-log",
        "--dispvm-template",
        "sys-log-dvm",
    ]
    env = world.client_env("dom0")
    stand_ins = str(world.bin_dir())
    here = str(Path(sys.executable).parent)  # `python3` there: the stand-ins' interpreter
    env["PATH"] = env["PATH"].replace(stand_ins, stand_ins + os.pathsep + here, 1)
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"outside verification failed: {result.stdout[-500:]!r}")
    return elapsed


def _timed_command(store: Path, key_file: Path) -> float:
    cmd = [str(Path(sys.executable).with_name("logvm")), "--store", str(store), "verify"]
    start = time.perf_counter()
    result = subprocess.run([*cmd, "--key", str(key_file)], capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"logvm verify failed: {result.stdout[-500:]!r}")
    return elapsed


def run(ctx: Any = None) -> list[dict[str, Any]]:
    """Build the store, verify it in place and from outside, return the rows."""
    quick = bool(getattr(ctx, "quick", False))
    workdir = Path(tempfile.mkdtemp(prefix="outside-bench-", dir=getattr(ctx, "workdir", None)))
    try:
        store = workdir / "store"
        key, _ = _build(store, 24 if quick else 160, batch=512)
        _timed_verify(store, key)  # warm the page cache
        in_process, nbytes = min(_timed_verify(store, key) for _ in range(2))
        world, witness = _world(workdir, store, key)
        os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        inplace = min(_timed_command(store, witness / "sys-log" / "key") for _ in range(2))
        outside = min(_timed_outside(world, witness) for _ in range(2))
        rate_in, rate_out = nbytes / inplace / 1e6, nbytes / outside / 1e6
        return [
            {
                "name": "outside verification (logvm-witness verify, stand-in DispVM)",
                "value": round(rate_out, 1),
                "unit": "MB/s",
                "baseline": round(rate_in, 1),
                "bar": f">= {BAR_RATIO:g} x in-place verify",
                "ok": rate_out >= BAR_RATIO * rate_in,
            },
            {
                "name": "in-place logvm verify, same store",
                "value": round(rate_in, 1),
                "unit": "MB/s",
            },
            {
                "name": "in-place verify_store (in process), same store",
                "value": round(nbytes / in_process / 1e6, 1),
                "unit": "MB/s",
            },
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    for result in run():
        print(result)
