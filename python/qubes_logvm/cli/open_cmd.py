"""``logvm open``: view a segment in a disposable qube (floor 3).

Trust side: the stored segment may hold hostile text; it is never handed
over itself. A decompressed, terminal-safe copy goes into a private temp
file (mode 0600 in a 0700 directory) that ``qvm-open-in-dvm --view-only``
opens in a DispVM; the copy is removed when the viewer returns.
"""

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import LogvmError, StoreError
from ..core.escape import terminal_safe
from ..store.layout import SegmentFiles
from ..store.reader import iter_segment
from .common import Env, UsageError

OPEN_COMMAND = ("qvm-open-in-dvm", "--view-only")


class OpenFailed(LogvmError):
    """The viewer could not be started or refused the file."""


def _chosen(env: Env, qube: str, segment: str | None) -> list[SegmentFiles]:
    segments = [s for s in env.layout.segments(qube) if s.log is not None]
    if not segments:
        raise StoreError(f"no segments of {qube!r} in {env.layout.root}")
    if segment is None:
        return segments
    if not segment.isdigit():
        raise UsageError(f"segment must be a number like 3 or 00000003, not {segment!r}")
    wanted = [s for s in segments if s.seq == int(segment)]
    if not wanted:
        raise StoreError(f"{qube} has no segment {int(segment):08d}")
    return wanted


def _write_copy(path: Path, segments: list[SegmentFiles]) -> None:
    with path.open("xb") as stream:
        for files in segments:
            for line in iter_segment(files):
                stream.write(terminal_safe(line.data) + b"\n")


def run_open(env: Env, qube: str, segment: str | None, command: Sequence[str]) -> int:
    """Write the copy, run the viewer on it, remove it."""
    segments = _chosen(env, qube, segment)
    name = qube if segment is None else f"{qube}-{segments[0].seq:08d}"
    workdir = Path(tempfile.mkdtemp(prefix="logvm-open-"))
    try:
        copy = workdir / f"{name}.log"
        _write_copy(copy, segments)
        copy.chmod(0o600)
        try:
            result = subprocess.run([*command, str(copy)], check=False)
        except FileNotFoundError as err:
            raise OpenFailed(
                f"{command[0]} not found: `logvm open` needs qubes-core-agent's "
                "qvm-open-in-dvm in this qube"
            ) from err
        if result.returncode != 0:
            raise OpenFailed(
                f"{command[0]} failed (exit {result.returncode}): the call was refused "
                "(check the qubes.OpenInVM policy) or the viewer failed"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
