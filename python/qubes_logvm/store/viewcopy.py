"""A terminal-safe copy of stored lines, opened read-only in a DispVM (floor 2).

Shared by ``logvm open`` and ``logvm-browser``. Trust side: the stored text
may be hostile; it is never handed over itself. A decompressed copy, each
line through :func:`qubes_logvm.core.escape.terminal_safe`, goes into a
private temp file (mode 0600 in a 0700 directory) that
``qvm-open-in-dvm --view-only`` opens in a DispVM (qubes-core-agent-linux
``qubes-rpc/qopen-in-vm.c``, ``main``: ``--view-only`` sends the file and
discards what comes back); the copy is removed when the viewer returns.
"""

import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..core.errors import LogvmError
from ..core.escape import terminal_safe

OPEN_COMMAND = ("qvm-open-in-dvm", "--view-only")


class OpenFailed(LogvmError):
    """The viewer could not be started or refused the file."""


def write_view_copy(path: Path, lines: Iterable[bytes]) -> None:
    """Write stored lines (without newlines) terminal-safe to a new file."""
    with path.open("xb") as stream:
        for line in lines:
            stream.write(terminal_safe(line) + b"\n")
    path.chmod(0o600)


def open_in_dispvm(command: Sequence[str], name: str, lines: Iterable[bytes]) -> None:
    """Write the copy as ``NAME.log``, run the viewer on it, remove it."""
    workdir = Path(tempfile.mkdtemp(prefix="logvm-open-"))
    try:
        copy = workdir / f"{name}.log"
        write_view_copy(copy, lines)
        try:
            result = subprocess.run([*command, str(copy)], check=False)
        except FileNotFoundError as err:
            raise OpenFailed(
                f"{command[0]} not found: opening in a DispVM needs qubes-core-agent's "
                "qvm-open-in-dvm in this qube"
            ) from err
        if result.returncode != 0:
            raise OpenFailed(
                f"{command[0]} failed (exit {result.returncode}): the call was refused "
                "(check the qubes.OpenInVM policy) or the viewer failed"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
