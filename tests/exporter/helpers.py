"""Helpers for the exporter tests: fake collector control, the real daemon as a process."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from qubes_logvm.core.sender_record import ParsedRecord, parse_sender_record
from support.journald import Journald
from support.programs import program

REPO = Path(__file__).resolve().parents[2]
EXPORTER = program("logvm-exporter")
#: The exporter as an installed package runs it: the distribution's Python,
#: the package on the plain path (the venv's editable-install finder imports
#: importlib.resources, zipfile and more, which a qube never loads). For
#: memory figures.
DEPLOYED = [
    "/usr/bin/env",
    f"PYTHONPATH={REPO / 'python'}",
    "/usr/bin/python3",
    "-c",
    "import sys; from qubes_logvm.exporter.daemon import main; sys.exit(main())",
]
FAKE = Path(__file__).with_name("fake_collector.py")


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy (tests wait on behaviour, never assert time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def memory_kib(pid: int) -> dict[str, int]:
    """A process's memory in KiB, from /proc: the status fields, plus

    - ``Journal``: resident pages of mapped journal files (``*.journal``,
      ``*.journal~``). sd-journal maps the files it reads; those pages are the
      journal itself (page cache, or tmpfs for a volatile journal), resident
      for journald whether or not the exporter maps them, so they cost the
      qube no memory on the exporter's account;
    - ``Counted``: VmRSS without them: what the exporter's 25 MiB bar counts
      (docs/exporter.md, "Memory").
    """
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0])
    journal = 0
    in_journal = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef":
            in_journal = line.endswith((".journal", ".journal~", ".journal (deleted)"))
        elif in_journal and line.startswith("Rss:"):
            journal += int(line.split()[1])
    fields["Journal"] = journal
    fields["Counted"] = fields["VmRSS"] - journal
    return fields


def deployed_program() -> list[str]:
    """:data:`DEPLOYED`, with the package byte-compiled first, as a package install does.

    Without .pyc files every start compiles the sources, which costs memory
    a qube never spends. The .pyc files go to the usual (git-ignored)
    ``__pycache__`` directories.
    """
    subprocess.run(
        ["/usr/bin/python3", "-m", "compileall", "-q", str(REPO / "python/qubes_logvm")],
        check=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""},
    )
    return list(DEPLOYED)


class FakeCollector:
    """The fake collector's control directory and what it received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.command = [sys.executable, str(FAKE), str(path)]

    def lines(self) -> list[bytes]:
        try:
            return (self.path / "received").read_bytes().splitlines()
        except FileNotFoundError:
            return []

    def records(self) -> list[ParsedRecord]:
        return [parse_sender_record(line) for line in self.lines()]

    def messages(self) -> list[str]:
        return [r.message.decode("utf-8", "replace") for r in self.records()]

    def connections(self) -> int:
        try:
            return len((self.path / "connections").read_text().split())
        except FileNotFoundError:
            return 0

    def set(self, flag: str, value: str = "") -> None:
        (self.path / flag).write_text(value)

    def clear(self, flag: str) -> None:
        (self.path / flag).unlink(missing_ok=True)

    def crash_after(self, *lines: int) -> None:
        """The next connections die without acking, each once it stored its
        count of ``lines`` (armed at once, so no timing of the test's decides
        which connection crashes)."""
        fresh = self.path / "crash.tmp"
        fresh.write_text(" ".join(str(n) for n in lines))
        fresh.replace(self.path / "crash")

    def crashes(self) -> int:
        """Connections that died as crash_after asked."""
        path = self.path / "crashes"
        return len(path.read_text().splitlines()) if path.exists() else 0


def write_config(path: Path, command: list[str], state: Path, **extra: Any) -> Path:
    """An exporter.yaml with fast test timings plus ``extra`` keys."""
    doc: dict[str, Any] = {
        "qrexec_command": command,
        "state_dir": str(state),
        "batch": {"max_lines": 200, "max_delay": "20ms"},
        "backoff": {"initial": "100ms", "max": "1s"},
        "shutdown_drain": "10s",
    }
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc))
    return path


class ExporterProcess:
    """The real ``logvm-exporter`` (optionally inside a journald namespace)."""

    def __init__(self, config: Path, workdir: Path, journald: Journald | None) -> None:
        self.config = config
        self.workdir = workdir
        self.journald = journald
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.log = workdir / "exporter.log"
        self.env: dict[str, str] | None = None
        self.program = [str(EXPORTER)]

    def start(self, *extra: str) -> "ExporterProcess":
        notify_path = self.workdir / f"notify-{time.monotonic_ns()}"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = dict(self.env or os.environ, NOTIFY_SOCKET=str(notify_path))
        args = [*self.program, "--config", str(self.config), *extra]
        with self.log.open("ab") as log:
            if self.journald is not None:
                self.proc = self.journald.popen(args, stderr=log, env=env)
                self.pid = Journald.inner_pid(self.proc)
            else:
                self.proc = subprocess.Popen(args, stderr=log, env=env)
                self.pid = self.proc.pid
        notify.settimeout(20)
        try:
            ready = notify.recv(256)
        finally:
            notify.close()
        assert ready == b"READY=1", self.log.read_text()
        return self

    def send_signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Stop (SIGTERM by default: drain and exit) and return the exit status."""
        assert self.proc is not None
        self.send_signal(signum)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def rss_kib(self) -> int:
        """What the 25 MiB bar counts (see :func:`memory_kib`)."""
        return memory_kib(self.pid)["Counted"]

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.send_signal(signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=10)


#: The ``make_exporter`` fixture: an exporter process for a config file.
MakeExporter = Callable[..., ExporterProcess]
