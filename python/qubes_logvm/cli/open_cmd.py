"""``logvm open``: view a segment in a disposable qube (floor 3).

Trust side: the stored segment may hold hostile text; it is never handed
over itself: :func:`qubes_logvm.store.viewcopy.open_in_dispvm` opens a
decompressed, terminal-safe temporary copy with ``qvm-open-in-dvm
--view-only``.
"""

from collections.abc import Iterator, Sequence

from ..core.errors import StoreError
from ..store.layout import SegmentFiles
from ..store.reader import iter_segment
from ..store.viewcopy import OPEN_COMMAND, OpenFailed, open_in_dispvm
from .common import Env, UsageError

__all__ = ["OPEN_COMMAND", "OpenFailed", "run_open"]


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


def _lines(segments: list[SegmentFiles]) -> Iterator[bytes]:
    for files in segments:
        for line in iter_segment(files):
            yield line.data


def run_open(env: Env, qube: str, segment: str | None, command: Sequence[str]) -> int:
    """Write the copy, run the viewer on it, remove it."""
    segments = _chosen(env, qube, segment)
    name = qube if segment is None else f"{qube}-{segments[0].seq:08d}"
    open_in_dispvm(command, name, _lines(segments))
    return 0
