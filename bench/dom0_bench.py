"""dom0 exporter benchmark: console logs -> dom0's exporter -> qrexec-client stand-in -> collector.

On the first N lines of the shared bench input (N = 200,000; 20,000 with
``--quick``), spread over ten console files ``guest-q0.log`` ... ``guest-q9.log``
written before the exporter starts:

- ``dom0 exporter``: ``logvm-exporter`` with ``dom0: {enabled: true}`` (and
  dom0's journal source open, in a private journald, as in dom0), one
  ``logvm.Send+for.qN`` call per qube through the stand-in of dom0's
  ``qrexec-client``, into a real collector, until every line is a stored
  ``D`` record in its qube's chain;
- baseline, same run: the VM exporter following the same ten files as plain
  ``sources.files`` over one ``qrexec-client-vm`` call (the same file
  follower, one call instead of ten, ``L`` records in one chain).

Rows: CPU time of the exporter process itself (utime + stime from
``/proc/PID/stat``, start-up excluded; the qrexec clients are qrexec's, not
ours) per 10,000 console lines, next to the baseline's; its peak and idle
RSS (what the 25 MiB bar counts: VmRSS without journal-file pages).

Needs root (namespaces). ``run(ctx)`` returns rows for :mod:`bench.run`.
"""

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "python")]

FULL_LINES = 200_000
QUICK_LINES = 20_000
QUBES = [f"q{n}" for n in range(10)]
RSS_BAR_KIB = 25 * 1024
PER = 10_000


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class KindWatch:
    """Counts stored records of one kind over some qubes' chains, incrementally."""

    def __init__(self, store: Path, qubes: list[str], kind: str) -> None:
        self.dirs = [store / "qubes" / q for q in qubes]
        self.pattern = re.compile(rb"^\S+ " + kind.encode() + rb" ", re.MULTILINE)
        self.offsets: dict[Path, int] = {}
        self.count = 0

    def poll(self) -> int:
        for directory in self.dirs:
            for path in sorted(directory.glob("*.log")):
                with path.open("rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
                cut = data.rfind(b"\n") + 1
                self.offsets[path] = self.offsets.get(path, 0) + cut
                self.count += len(self.pattern.findall(data, 0, cut))
        return self.count


def _consoles(ctx: Any, directory: Path, count: int) -> int:
    """Spread the first ``count`` input lines over the ten console files."""
    directory.mkdir(parents=True)
    files = [(directory / f"guest-{q}.log").open("wb") for q in QUBES]
    written = 0
    with Path(ctx.input_path).open("rb") as f:
        for line in f:
            files[written % len(files)].write(line)
            written += 1
            if written >= count:
                break
    for out in files:
        out.close()
    return written


def _world(work: Path, logvm: Any) -> Any:
    from support.qrexec import World

    world = World(work / "world")
    world.add_qube("sys-log")
    world.add_qube("work")
    world.link_socket_service("sys-log", "logvm.Send", logvm.socket)
    return world


def _exporter(jd: Any, work: Path, consoles: Path, world: Any, dom0: bool) -> Any:
    from exporter.helpers import ExporterProcess, deployed_program, write_config

    from support.qrexec import DOM0_CLIENT_SCRIPT

    journal = {"identifiers": {"include": ["dom0-bench-none"]}}  # open, nothing to send
    batch = {"max_lines": 1000, "max_delay": "50ms"}
    if dom0:
        runs = {"console_dir": str(consoles), "qubes_log_dir": str(work / "none"),
                "qrexec_socket_dir": str(work / "none"), "idle_close": "600s"}  # fmt: skip
        settings = {"enabled": True, "logvm": "sys-log", "qrexec_client": str(DOM0_CLIENT_SCRIPT)}
        config = write_config(work / "dom0.yaml", ["/nonexistent/unused"], work / "state",
                              batch=batch, sources={"journal": journal},
                              dom0={**settings, **runs})  # fmt: skip
        env = world.client_env("dom0")
    else:
        command, env = world.client_command("work")
        files = [{"path": str(consoles / "guest-*.log"), "tag": "console"}]
        config = write_config(work / "vm.yaml", command, work / "state", batch=batch,
                              sources={"journal": journal, "files": files})  # fmt: skip
    # As the formula renders exporter-dom0.yaml and a template's exporter.yaml:
    # JSON (read without PyYAML).
    config.write_text(json.dumps(yaml.safe_load(config.read_text())))
    exporter = ExporterProcess(config, work, jd)
    exporter.env = env
    exporter.program = deployed_program()  # as installed: compiled, no editable finder
    return exporter


def _drain(work: Path, jd: Any, ctx: Any, dom0: bool) -> dict[str, Any]:
    """One exporter on the pre-written consoles: CPU, seconds, peak and idle memory."""
    from collector.helpers import Collector, make_store
    from exporter.helpers import memory_kib

    make_store(work / "logvm/store", epoch_seconds=10)
    logvm = Collector(work / "logvm", {"rate_limit": {"lines_per_second": 0}})
    logvm.start()
    try:
        consoles = work / "console"
        total = _consoles(ctx, consoles, QUICK_LINES if ctx.quick else FULL_LINES)
        exporter = _exporter(jd, work, consoles, _world(work, logvm), dom0)
        watch = KindWatch(logvm.store, QUBES if dom0 else ["work"], "D" if dom0 else "L")
        start = time.perf_counter()
        exporter.start()
        cpu0, peak = _cpu_seconds(exporter.pid), 0
        while watch.poll() < total:
            peak = max(peak, memory_kib(exporter.pid)["Counted"])
            if time.perf_counter() - start > 600:
                raise RuntimeError(f"{watch.count} of {total} lines stored")
            time.sleep(0.05)
        cpu = _cpu_seconds(exporter.pid) - cpu0
        seconds = time.perf_counter() - start
        result = {"lines": total, "seconds": seconds, "cpu": cpu, "startup": cpu0, "peak": peak}
        time.sleep(2)
        result["idle"] = memory_kib(exporter.pid)["Counted"]
        exporter.stop()
        return result
    finally:
        logvm.kill()


def _bare_python_kib() -> int:
    """RSS of the interpreter doing nothing (``python3 -c pass``, kept alive to be measured)."""
    import subprocess

    from exporter.helpers import memory_kib

    proc = subprocess.Popen(["/usr/bin/python3", "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE, env={})  # fmt: skip
    try:
        time.sleep(0.5)  # past start-up
        return memory_kib(proc.pid)["Counted"]
    finally:
        proc.communicate(b"", timeout=10)


def _rows(ours: dict[str, Any], base: dict[str, Any], bare: int) -> list[dict[str, Any]]:
    per = ours["cpu"] * 1000 * PER / ours["lines"]
    base_per = base["cpu"] * 1000 * PER / base["lines"]
    baseline = "VM exporter, same files as sources.files, one call"
    return [
        {"name": "dom0 exporter CPU per 10,000 console lines", "value": per, "unit": "ms",
         "ratio": per / base_per if base_per else float("nan"), "baseline": baseline,
         "lines_per_s": ours["lines"] / ours["seconds"],
         "notes": f"{ours['lines']} lines in 10 guest-*.log, one logvm.Send+for.qN call "
                  f"each; start-up {ours['startup'] * 1000:.0f} ms CPU not counted"},
        {"name": "VM exporter CPU per 10,000 file lines (baseline)", "value": base_per,
         "unit": "ms", "lines_per_s": base["lines"] / base["seconds"],
         "notes": f"start-up {base['startup'] * 1000:.0f} ms CPU not counted"},
        {"name": "dom0 exporter RSS under load (peak)", "value": ours["peak"] / 1024,
         "unit": "MiB", "bar": "<= 25 MiB", "ok": ours["peak"] <= RSS_BAR_KIB,
         "notes": f"VmRSS without journal-file pages; VM exporter {base['peak'] / 1024:.1f} "
                  f"MiB, python3 -c pass {bare / 1024:.1f} MiB"},
        {"name": "dom0 exporter RSS idle", "value": ours["idle"] / 1024, "unit": "MiB",
         "bar": "<= 25 MiB", "ok": ours["idle"] <= RSS_BAR_KIB,
         "notes": f"VM exporter {base['idle'] / 1024:.1f} MiB"},
        {"name": "python3 -c pass RSS (baseline)", "value": bare / 1024, "unit": "MiB",
         "notes": "the interpreter alone, /usr/bin/python3, same run"},
    ]  # fmt: skip


def run(ctx: Any) -> list[dict[str, Any]]:
    """The dom0 exporter and the VM exporter on the same console lines."""
    from support.journald import Journald

    work = Path(ctx.workdir)
    with Journald(work / "journald", max_file_size="16M") as jd:
        ours = _drain(work / "dom0", jd, ctx, dom0=True)
        base = _drain(work / "vm", jd, ctx, dom0=False)
    return _rows(ours, base, _bare_python_kib())


if __name__ == "__main__":
    import tempfile

    from bench.run import BenchContext, build_input, table

    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp)
        quick = "--quick" in sys.argv
        nlines, nbytes, source = build_input(
            base_dir / "input.log", 8 << 20 if quick else 120 << 20
        )
        (base_dir / "w").mkdir()
        ctx = BenchContext(base_dir / "input.log", nlines, nbytes, source, base_dir / "w", REPO,
                           Path(sys.executable).parent, quick)  # fmt: skip
        print(table(run(ctx)))
