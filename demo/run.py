"""``make demo``: three simulated qubes ship their journal to one LogVM; verify catches a change.

Runs the real programs (systemd-journald in a private namespace,
``logvm-exporter``, ``logvm-collector``, ``logvm``) and the project's shipped
qrexec policy. Only qrexec itself is the test stand-in
(``tests/support/qrexec.py``): no machine here runs Xen. Not product code:
a guided tour that prints what it does and exits non-zero as soon as a step
does not behave as the product promises. Every process it starts is stopped
on the way out, also on failure and Ctrl-C.

Usage (as root, from the repository): ``make demo``, or
``.venv/bin/python -m demo.run [--workdir DIR]`` (default ``./demo-run``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .script import (
    MAX_LINE,
    MESSAGES,
    QUBES,
    TAMPER_FROM,
    TAMPER_TO,
    describe,
    names_damage,
    print_output,
    say,
    sent_count,
    shown,
    step,
)

REPO = Path(__file__).resolve().parent.parent
# The journald and qrexec stand-ins live with the tests; the demo reuses them.
sys.path.insert(0, str(REPO / "tests"))

from support.journald import Journald, unavailable_reason  # noqa: E402
from support.qrexec import World  # noqa: E402

BIN = Path(sys.executable).parent
MARKER = ".logvm-demo"
PROGRAMS = ("logvm", "logvm-collector", "logvm-exporter")


class DemoFailed(Exception):
    """A step did not do what the product promises: the demo exits 1."""


class Interrupted(Exception):
    """SIGTERM/SIGHUP arrived: clean up and exit like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _drain(sock: socket.socket) -> None:
    """Read a notify socket's datagrams until it is closed."""
    with contextlib.suppress(OSError):
        while sock.recv(4096):
            pass


class Demo:
    """The demo's state: work directory, processes started, the simulated world."""

    def __init__(self, workdir: Path) -> None:
        self.work = workdir
        self.store = workdir / "store"
        self.socket = workdir / "logvm.Send.sock"
        self.config = workdir / "collector.yaml"
        self.keyfile = workdir / "verification.key"
        self._journald: Journald | None = None
        self.collector: subprocess.Popen[bytes] | None = None
        self.exporters: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        self._world: World | None = None
        self._notify: list[socket.socket] = []

    @property
    def journald(self) -> Journald:
        if self._journald is None:
            raise DemoFailed("journald was not started")
        return self._journald

    @property
    def world(self) -> World:
        if self._world is None:
            raise DemoFailed("the simulated world was not built")
        return self._world

    # -- processes ---------------------------------------------------------

    def wait_ready(self, proc: subprocess.Popen[bytes], notify: socket.socket, what: str) -> None:
        """Wait for READY=1 (sd_notify), failing early if the program exits."""
        deadline = time.monotonic() + 20
        notify.settimeout(0.2)
        try:
            while time.monotonic() < deadline:
                try:
                    if notify.recv(256).startswith(b"READY=1"):
                        return
                except TimeoutError:
                    pass
                if proc.poll() is not None:
                    raise DemoFailed(f"{what} exited with {proc.returncode} before it was ready")
            raise DemoFailed(f"{what} did not report READY=1 within 20 s")
        finally:
            # Keep listening: the programs notify systemd later too (STATUS,
            # STOPPING); a vanished socket would make them warn.
            notify.settimeout(None)
            threading.Thread(target=_drain, args=(notify,), daemon=True).start()

    def notify_socket(self, name: str) -> tuple[socket.socket, dict[str, str]]:
        path = self.work / f"notify-{name}.sock"
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        self._notify.append(sock)
        return sock, {"NOTIFY_SOCKET": str(path)}

    def cleanup(self) -> None:
        """Kill whatever is still running (normal stops happen in the steps)."""
        for sock in self._notify:
            with contextlib.suppress(OSError):
                Path(sock.getsockname()).unlink(missing_ok=True)
            sock.close()
        for _qube, (proc, inner) in self.exporters.items():
            if proc.poll() is None:
                if inner:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(inner, signal.SIGKILL)
                proc.kill()
                proc.wait(10)
        if self.collector is not None and self.collector.poll() is None:
            self.collector.kill()
            self.collector.wait(10)
        if self._journald is not None:
            self._journald.stop()

    def run_logvm(self, args: Sequence[str], expect: int = 0) -> str:
        """Run ``logvm ARGS --store --config``, print it and its output, check the exit code."""
        argv = [
            str(BIN / "logvm"),
            *args,
            "--store",
            str(self.store),
            "--config",
            str(self.config),
        ]
        words = ["logvm", *(shown(a) for a in args), "--store", shown(self.store)]
        print("$ " + " ".join(words), flush=True)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        print_output(result.stdout + result.stderr)
        print(f"    (exit code {result.returncode})", flush=True)
        if result.returncode != expect:
            raise DemoFailed(f"logvm {args[0]} exited {result.returncode}, expected {expect}")
        return result.stdout + result.stderr

    # -- step 1 ------------------------------------------------------------

    def start_journald(self) -> None:
        say(
            "Starting a real systemd-journald in a private mount+pid namespace (the host's "
            "journal is not touched)."
        )
        self._journald = Journald(self.work / "journald")
        self._journald.start()
        say(
            f"journald runs; its journal files are under "
            f"/proc/{self.journald.pid1}/root/run/log/journal.",
            gap=False,
        )

    def setup_store(self) -> None:
        say("Creating the LogVM's store with `logvm setup-keys` (key evolves every second):")
        # This machine has no group "qubes" (the LogVM's default user): root only.
        config = {"max_line_bytes": MAX_LINE, "allowed_group": None}
        self.config.write_text(json.dumps(config) + "\n")
        out = self.run_logvm(["setup-keys", "--epoch-seconds", "1"])
        match = re.search(r"logvm-vk1:[0-9a-f]+:[0-9a-f]{64}", out)
        if match is None:
            raise DemoFailed("setup-keys printed no verification key")
        self.keyfile.write_text(match.group(0) + "\n")
        say(
            f"In Qubes this verification key is kept outside the LogVM (a vault qube, paper): "
            f"whoever takes over the LogVM later must not have it. The demo keeps it in "
            f"{shown(self.keyfile)} for the verify step."
        )

    def start_collector(self) -> None:
        say(
            f"Starting the real logvm-collector on the Unix socket {shown(self.socket)}; it "
            f"stands in for sys-log's /etc/qubes-rpc/logvm.Send. Lines longer than {MAX_LINE} "
            f"bytes are cut here (the default cap is 64 KiB) so that the demo shows the "
            f"truncation marker."
        )
        notify, env = self.notify_socket("collector")
        argv = [str(BIN / "logvm-collector"), "--socket", str(self.socket)]
        argv += ["--store", str(self.store), "--config", str(self.config)]
        with (self.work / "collector.log").open("ab") as log:
            self.collector = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stderr=log,
                env={**os.environ, **env}, start_new_session=True,
            )  # fmt: skip
            self.wait_ready(self.collector, notify, "logvm-collector")
        say(f"logvm-collector is ready (pid {self.collector.pid}).", gap=False)

    def build_world(self) -> None:
        world = World(self.work / "world")
        world.add_qube("sys-log")
        for name in ("work", "personal"):
            world.add_qube(name)
        world.add_qube("disp4711", type="DispVM")
        world.link_socket_service("sys-log", "logvm.Send", self.socket)
        world.save()
        self._world = world
        say(
            "Simulated Qubes system: dom0, sys-log (the LogVM), work, personal and disp4711 (a "
            "DispVM). dom0's policy is the project's shipped qubes-rpc-policy/70-logvm.policy; "
            "its logvm.Send rules:"
        )
        policy = (REPO / "qubes-rpc-policy/70-logvm.policy").read_text()
        print_output("\n".join(ln for ln in policy.splitlines() if ln.startswith("logvm.Send")))

    # -- step 2 ------------------------------------------------------------

    def exporter_config(self, qube: str, command: list[str]) -> Path:
        config = {
            "qrexec_command": command,
            "state_dir": str(self.work / "exporter-state" / qube),
            "batch": {"max_lines": 200, "max_delay": "50ms"},
            "backoff": {"initial": "200ms", "max": "2s"},
            "shutdown_drain": "10s",
            "sources": {"journal": {"identifiers": {"include": [f"{qube}-*"]}}},
        }
        path = self.work / f"exporter-{qube}.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    def start_exporters(self) -> None:
        say(
            "In Qubes every qube has its own journal. Here the three simulated qubes share the "
            "one private journald, so each exporter gets a journal filter: it ships only entries "
            "whose syslog identifier starts with its qube's name (work-*, personal-*, "
            "disp4711-*). Each runs the real logvm-exporter inside journald's namespace, with "
            "qrexec_command = the stand-in's `qrexec-client-vm @default logvm.Send` as that qube."
        )
        for qube in QUBES:
            command, env = self.world.client_command(qube)
            config = self.exporter_config(qube, command)
            notify, notify_env = self.notify_socket(f"exporter-{qube}")
            argv = [str(BIN / "logvm-exporter"), "--config", str(config)]
            with (self.work / f"exporter-{qube}.log").open("ab") as log:
                proc = self.journald.popen(
                    argv, stdin=subprocess.DEVNULL, stderr=log,
                    env={**env, **notify_env}, start_new_session=True,
                )  # fmt: skip
                self.exporters[qube] = (proc, 0)  # tracked before anything can interrupt
                self.exporters[qube] = (proc, Journald.inner_pid(proc))
                self.wait_ready(proc, notify, f"logvm-exporter of {qube}")
            say(
                f"  logvm-exporter for {qube} is ready (pid {self.exporters[qube][1]}).", gap=False
            )

    def log_messages(self, qube: str) -> None:
        for tool, tag, priority, message in MESSAGES[qube]:
            if tool == "logger":  # syslog(3)'s socket, which journald serves
                argv = ["logger", "-u", "/run/systemd/journal/dev-log", "-t", tag, "-p", priority]
                self.journald.run([*argv, "--", message])
            else:  # a stdout stream, as services log
                argv = ["systemd-cat", "-t", tag, "-p", priority]
                self.journald.run(argv, input=message.encode() + b"\n")
            print(f"    {qube:8} {tool:11} -t {tag}: {describe(message)}", flush=True)

    def generate(self) -> None:
        say(
            "Writing log lines into the journal with logger(1) and systemd-cat(1). One of work's "
            "lines carries terminal escape sequences (clear screen, green text, set window title:"
            " a hostile qube trying to fool whoever reads the logs); another is 6015 bytes long:"
        )
        for qube in ("work", "personal"):
            self.log_messages(qube)

    def dispvm_poweroff(self) -> None:
        say(
            "disp4711 is a DispVM: its last lines before poweroff must reach the LogVM. It logs "
            "three lines, and right after the last one its exporter gets SIGTERM, as systemd "
            "sends it at poweroff:"
        )
        self.log_messages("disp4711")
        self.journald.run(["journalctl", "--sync"])  # the lines are in the journal now
        code = self.stop_exporter("disp4711")
        stored = sent_count(self.store, "disp4711")
        if stored < len(MESSAGES["disp4711"]):
            raise DemoFailed(f"disp4711's exporter exited with only {stored} lines stored")
        say(
            f"disp4711's exporter sent what was in its journal, waited for the LogVM's "
            f"acknowledgement and exited with {code}: all {stored} lines are stored."
        )

    def stop_exporter(self, qube: str) -> int:
        proc, inner = self.exporters[qube]
        os.kill(inner, signal.SIGTERM)
        code = proc.wait(30)
        if code != 0:
            raise DemoFailed(f"logvm-exporter of {qube} exited {code} on SIGTERM (expected 0)")
        return code

    def denied_calls(self) -> None:
        say(
            "Calls the policy refuses: sys-log sending to itself (denied, notify=no), and work "
            "naming sys-log as target instead of @default (a sender never chooses where its logs "
            "go). The stand-in exits 126, like qrexec-client-vm when dom0 refuses:"
        )
        for source, target in (("sys-log", "@default"), ("work", "sys-log")):
            command, env = self.world.client_command(source, target)
            print(f"$ qrexec-client-vm {target} logvm.Send    (run in {source})", flush=True)
            result = subprocess.run(
                command, input=b"hello\n", env=env, capture_output=True, timeout=30, check=False
            )
            print_output(result.stderr.decode(errors="replace"))
            print(f"    (exit code {result.returncode})", flush=True)
            if result.returncode != 126:
                raise DemoFailed(f"{source} -> {target}: exit {result.returncode}, expected 126")


class Story(Demo):
    """Steps 3 and 4, and the order of everything."""

    def wait_stored(self) -> None:
        say("Waiting until the collector has stored and acknowledged every line...")
        want = {qube: len(MESSAGES[qube]) for qube in QUBES}
        deadline = time.monotonic() + 30
        while True:
            have = {qube: sent_count(self.store, qube) for qube in QUBES}
            if all(have[q] >= want[q] for q in QUBES):
                break
            if time.monotonic() > deadline:
                raise DemoFailed(f"stored lines per qube {have}, expected {want}")
            time.sleep(0.1)
        say("All " + ", ".join(f"{want[q]} of {q}" for q in QUBES) + " are stored.", gap=False)

    def stop_all(self) -> None:
        for qube in ("work", "personal"):
            self.stop_exporter(qube)
        say(
            "The exporters of work and personal got SIGTERM: they drained, saved their journal "
            "cursors for what was acknowledged, and exited 0."
        )
        if self.collector is None:
            raise DemoFailed("the collector is not running")
        self.collector.send_signal(signal.SIGTERM)
        code = self.collector.wait(30)
        if code != 0:
            raise DemoFailed(f"logvm-collector exited {code} on SIGTERM (expected 0)")
        say("logvm-collector got SIGTERM: it sealed and closed every segment and exited 0.")

    def read_store(self) -> None:
        say(
            "What the LogVM holds, one directory per qube; the qube's name comes from the qrexec "
            "service descriptor (dom0 vouches for it), never from what the sender writes:"
        )
        out = self.run_logvm(["list"])
        missing = [q for q in QUBES if not re.search(rf"^\s*{q}:", out, re.M)]
        if missing:
            raise DemoFailed(f"logvm list does not list {', '.join(missing)}")
        say(
            "work's records, as journalctl shows a journal. Each line: the LogVM's receive "
            "time and the qube's name (the LogVM's word), then what the qube claims: the "
            "identifier[pid] and message of the record its exporter sent (its own time, host, "
            "unit and priority are in `-o json` under sender; the priority also colours the "
            "line on a terminal). [logvm] lines are the collector's own notes (a session per "
            "connection)."
        )
        say(
            "The escape sequences arrive as harmless text: the exporter wrote the ESC byte as "
            "\\x1b (a record is always one line of printable text); the store escapes again "
            "whatever a qube sends (its file holds \\\\x1b), and `logvm show` undoes that "
            "layer for reading and escapes anything unprintable on output. The "
            f"long line was cut at {MAX_LINE} bytes and ends with the collector's marker saying "
            "how many bytes were cut:"
        )
        self.run_logvm(["show", "work"])

    def verify_ok(self) -> None:
        say(
            "Verifying every qube's hash chain and forward-secure seals with the verification key:"
        )
        self.run_logvm(["verify", "--key", str(self.keyfile)])

    def tamper(self) -> tuple[Path, int]:
        segments = sorted((self.store / "qubes" / "work").glob("*.log"))
        for segment in segments:
            lines = segment.read_bytes().split(b"\n")
            for index, line in enumerate(lines):
                if TAMPER_FROM in line and b"Accepted publickey" in line:
                    lines[index] = line.replace(TAMPER_FROM, TAMPER_TO, 1)
                    segment.write_bytes(b"\n".join(lines))
                    return segment, index + 1
        raise DemoFailed("found no 'Accepted publickey' line in work's segments")

    def tamper_and_verify(self) -> None:
        segment, line = self.tamper()
        say(
            f"Now an intruder in the LogVM hides where a login came from: in line {line} of "
            f"{shown(segment)} (work's segment {segment.stem}) the address 10.137.0.5 becomes "
            f"10.137.0.9, one byte changed. Verifying again must fail (exit 1) and name the qube,"
            f" the segment and the line:"
        )
        out = self.run_logvm(["verify", "--key", str(self.keyfile)], expect=1)
        if not names_damage(out, "work", segment.stem, line):
            raise DemoFailed(
                f"verify failed but did not name work, {segment.stem} and line {line}"
            )
        say(
            f"verify caught it: the chain hash no longer matches the seal that covers line "
            f"{line}, so it names work, segment {segment.stem} and that seal's range of lines."
        )


def prepare_workdir(workdir: Path) -> None:
    """Start from an empty work directory (only ever wiping one the demo made)."""
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise DemoFailed(f"{workdir} exists, is not empty and was not made by the demo")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `make demo`; removed by the next run\n")


def play(demo: Story) -> None:
    step(1, "The LogVM: store, keys, collector; the simulated qubes and dom0's policy")
    demo.start_journald()
    demo.setup_store()
    demo.start_collector()
    demo.build_world()
    step(2, "Three qubes ship their journal through qrexec and the policy")
    demo.start_exporters()
    demo.generate()
    demo.dispvm_poweroff()
    demo.denied_calls()
    step(3, "Everything acknowledged; exporters and collector stop cleanly")
    demo.wait_stored()
    demo.stop_all()
    step(4, "Reading and verifying the store, then tampering with it")
    demo.read_store()
    demo.verify_ok()
    demo.tamper_and_verify()


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("demo-run"))
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    missing = [p for p in PROGRAMS if not (BIN / p).exists()]
    if missing:
        reason = f"{', '.join(missing)} not in {BIN} (run it as .venv/bin/python after make venv)"
    if reason:
        print(f"make demo: cannot run here: {reason}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    started = time.monotonic()
    workdir = args.workdir.resolve()
    demo = Story(workdir)
    try:
        prepare_workdir(workdir)
        play(demo)
    except DemoFailed as err:
        print(f"\nDEMO FAILED: {err}\n(logs of every program are in {shown(workdir)})", flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted) as err:
        print("\nInterrupted: stopping every process the demo started.", flush=True)
        return 128 + (err.signum if isinstance(err, Interrupted) else signal.SIGINT)
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        demo.cleanup()
    print(f"\nDemo finished in {time.monotonic() - started:.1f} s.")
    say(
        f"Everything is left in {shown(workdir)}/ (store, configs, each program's log) "
        "until the next run; for example:"
    )
    print(f"    .venv/bin/logvm show personal --store {shown(workdir / 'store')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
