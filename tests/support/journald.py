"""A real systemd-journald in a private mount+pid namespace, for tests and the demo.

``unshare --mount --pid --fork --mount-proc`` starts a small shell as the
namespace's PID 1; it mounts a tmpfs on ``/run`` (and on ``/var/log/journal``
if the host has one), binds the test's own ``journald.conf`` over the host's,
and runs ``/lib/systemd/systemd-journald`` (volatile storage, no kernel
messages, no rate limit). Nothing of the host's journal is touched.

Programs that must reach this journald (``systemd-cat``, ``logger``,
``systemd.journal.send``, the exporter under test) run inside the namespace
through ``nsenter``; the journal files are readable from outside at
``/proc/<pid1>/root/run/log/journal``. Killing the ``unshare`` process kills
the namespace's PID 1 (``--kill-child``) and with it everything inside.

Needs root (namespaces and mounts).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

JOURNALD = Path("/lib/systemd/systemd-journald")
SYSTEM_PYTHON = "/usr/bin/python3"

_INIT = r"""
set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/journal /run/log/journal
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mount --bind "$1" /etc/systemd/journald.conf
/lib/systemd/systemd-journald &
echo $! > /run/journald.pid
set +e
while :; do wait -n 2>/dev/null || sleep 0.5; done
"""

_SENDER = r"""
import json, sys
from systemd import journal
for line in sys.stdin:
    entry = json.loads(line)
    message = entry.pop("MESSAGE")
    journal.send(message, **entry)
"""


def unavailable_reason() -> str | None:
    """Why a live journald cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root: a private mount+pid namespace for a real systemd-journald"
    for tool in ("unshare", "nsenter", "systemd-cat"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not JOURNALD.exists():
        return f"{JOURNALD} is not installed (Debian package systemd)"
    return None


class Journald:
    """One private journald; use as a context manager."""

    def __init__(self, workdir: Path, *, max_file_size: str = "8M") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "journald.conf"
        self.conf.write_text(
            "[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitIntervalSec=0\n"
            "ForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\n"
            f"RuntimeMaxFileSize={max_file_size}\nRuntimeMaxUse=256M\n"
        )
        self._unshare: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def __enter__(self) -> "Journald":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        """Start the namespace and wait for journald's sockets."""
        self._unshare = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
             "--propagation", "private", "bash", "-c", _INIT, "init", str(self.conf)],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                raise RuntimeError(f"unshare exited with {self._unshare.returncode}")
            if not self.pid1:
                self.pid1 = self._child_of(self._unshare.pid)
            if self.pid1 and (self.root / "run/systemd/journal/socket").exists():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("systemd-journald did not come up in its namespace")

    @staticmethod
    def _child_of(pid: int) -> int:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return 0
        return int(children[0]) if children else 0

    @property
    def root(self) -> Path:
        """The namespace's root directory, seen from outside."""
        return Path(f"/proc/{self.pid1}/root")

    @property
    def journal_dir(self) -> Path:
        """Where the namespace's journald writes (readable from outside)."""
        return self.root / "run/log/journal"

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` wrapped to run inside the namespace."""
        return ["nsenter", "-t", str(self.pid1), "-m", "-p", "--", *args]

    def popen(self, args: Sequence[str], **kwargs: Any) -> "subprocess.Popen[bytes]":
        """Start a program inside the namespace."""
        return subprocess.Popen(self.command(args), **kwargs)

    def run(self, args: Sequence[str], **kwargs: Any) -> "subprocess.CompletedProcess[bytes]":
        """Run a program inside the namespace to completion (checked)."""
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.command(args), check=True, **kwargs)

    @staticmethod
    def inner_pid(proc: "subprocess.Popen[bytes]", timeout: float = 5.0) -> int:
        """The host pid of the program an ``nsenter`` process started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child = Journald._child_of(proc.pid)
            if child:
                return child
            time.sleep(0.01)
        raise RuntimeError("nsenter did not start its program")

    def send(self, entries: Sequence[Mapping[str, object]]) -> None:
        """Write entries with ``systemd.journal.send`` from inside (MESSAGE required)."""
        data = "".join(json.dumps(dict(entry)) + "\n" for entry in entries).encode()
        self.run([SYSTEM_PYTHON, "-c", _SENDER], input=data)

    def cat(self, lines: Sequence[str], *, tag: str = "test", priority: str = "info") -> None:
        """Write lines through ``systemd-cat`` (a stdout stream, as services log)."""
        data = "".join(line + "\n" for line in lines).encode()
        self.run(["systemd-cat", "-t", tag, "-p", priority], input=data)

    def journald_pid(self) -> int:
        """journald's pid inside the namespace."""
        return int((self.root / "run/journald.pid").read_text())

    def rotate(self) -> None:
        """Rotate the journal files (SIGUSR2, what ``journalctl --rotate`` asks)."""
        self.run(["kill", "-USR2", str(self.journald_pid())])

    def sync(self) -> None:
        """Ask journald to write everything out (SIGRTMIN+1) and give it a moment."""
        self.run(["kill", f"-{signal.SIGRTMIN + 1}", str(self.journald_pid())])
        time.sleep(0.2)

    def vacuum(self, files: int = 1) -> None:
        """Delete archived journal files, keeping ``files`` of them."""
        self.run(["journalctl", f"--vacuum-files={files}"], capture_output=True)

    def stop(self) -> None:
        """Kill the namespace (and everything in it)."""
        if self._unshare is not None and self._unshare.poll() is None:
            self._unshare.kill()
            self._unshare.wait(timeout=10)
        self._unshare = None


if __name__ == "__main__":
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    with Journald(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/journald-ns")) as jd:
        jd.cat(["hello from the private journal"])
        jd.run(["journalctl", "--no-pager", "-n", "5"])
