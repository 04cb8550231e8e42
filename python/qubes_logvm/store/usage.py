"""What a qube costs the disk: the one usage definition (floor 2).

Quotas, the global cap and eviction all judge a qube by the same
:class:`Cost`, so that what is charged is what the disk really spends:

- ``disk``: every file's allocated blocks (at least its size rounded up to
  :data:`BLOCK`), plus :data:`FILE_COST` per file for its inode and directory
  entry. A one-line session (two files) thus costs 32 KiB, not its ~850
  bytes of text, and a qube cannot spend the volume's inodes within a quota
  that fits its blocks: ext4's default ``inode_ratio`` is one inode per
  16 KiB (``mke2fs.conf``), and every file is charged at least that much;
- ``files``: inodes, for the global ``keep_free_inodes`` floor;
- ``plain``: the text's uncompressed bytes (a compressed segment counts what
  its last seal covers), for the plain-bytes cap: a repetitive flood
  compresses hundreds of times and would otherwise keep hundreds of times its
  quota in text to verify, show and open.

The collector keeps these figures as it writes (:mod:`..collector.ledger`);
housekeeping and ``logvm-rotate`` read them from the files
(:func:`qube_usage`, :func:`segment_cost`). Trust side: the store's own files.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from ..config.storage_policy import RetentionConfig, plain_quota_for, quota_for
from ..core.errors import StoreError
from ..core.seal import parse_seal
from .layout import SegmentFiles, StoreLayout

#: The allocation unit assumed for sizes not yet on disk (ext4 and tmpfs: 4 KiB).
BLOCK = 4096
#: What one file costs beyond its blocks: with its smallest block, 16 KiB,
#: ext4's default bytes-per-inode, so quotas bound inodes as well as blocks.
FILE_COST = 3 * BLOCK
#: Bytes read from the end of a seal file to find its last line.
_SEAL_TAIL = 1024


@dataclass(frozen=True)
class Cost:
    """What some files cost: charged bytes, inodes, plain text bytes."""

    disk: int = 0
    files: int = 0
    plain: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.disk + other.disk, self.files + other.files, self.plain + other.plain)

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(self.disk - other.disk, self.files - other.files, self.plain - other.plain)


ZERO_COST = Cost()


def over(cfg: RetentionConfig, qube: str, cost: Cost) -> bool:
    """True when ``cost`` exceeds the qube's quota or its plain-bytes cap."""
    return cost.disk > quota_for(cfg, qube) or cost.plain > plain_quota_for(cfg, qube)


def file_cost(size: int, allocated: int = 0) -> int:
    """Charged bytes of one file of ``size`` bytes (``allocated``: st_blocks * 512)."""
    return max(-(-size // BLOCK) * BLOCK, allocated) + FILE_COST


def written_cost(log_bytes: int, seal_bytes: int) -> Cost:
    """The cost of a plain segment as the writer knows it (no stat)."""
    return Cost(file_cost(log_bytes) + file_cost(seal_bytes), 2, log_bytes)


def _stat_cost(path: Path | None) -> tuple[int, int, int]:
    """(charged bytes, files, apparent size) of one file; zeros when missing."""
    if path is None:
        return 0, 0, 0
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return 0, 0, 0
    return file_cost(st.st_size, st.st_blocks * 512), 1, st.st_size


def last_nbytes(seal_path: Path | None) -> int:
    """The plain bytes the last complete seal line of a seal file covers (0: none)."""
    if seal_path is None:
        return 0
    try:
        with open(seal_path, "rb") as stream:
            stream.seek(max(0, os.fstat(stream.fileno()).st_size - _SEAL_TAIL))
            lines = stream.read(_SEAL_TAIL).split(b"\n")
    except FileNotFoundError:
        return 0
    if len(lines) < 2:
        return 0
    try:
        return parse_seal(lines[-2]).nbytes
    except StoreError:
        return 0


def segment_cost(files: SegmentFiles) -> Cost:
    """What one segment costs now (text file and seal file)."""
    log_disk, log_files, log_size = _stat_cost(files.log)
    seal_disk, seal_files, _ = _stat_cost(files.seal)
    plain = last_nbytes(files.seal) if files.compressed else log_size
    return Cost(log_disk + seal_disk, log_files + seal_files, plain)


def qube_usage(layout: StoreLayout, qube: str) -> Cost:
    """What a qube's directory costs: segments, seals, tombstones, lock, temp files.

    One ``scandir`` and a ``stat`` per file, plus a seal tail per compressed
    segment (for its plain size).
    """
    total = ZERO_COST
    try:
        entries = os.scandir(layout.qube_dir(qube))
    except FileNotFoundError:
        return total
    with entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we looked
            plain = st.st_size if entry.name.endswith(".log") else 0
            if entry.name.endswith(".log.zst"):
                plain = last_nbytes(Path(entry.path[: -len(".log.zst")] + ".seal"))
            total += Cost(file_cost(st.st_size, st.st_blocks * 512), 1, plain)
    return total


def usage(layout: StoreLayout, qube: str) -> int:
    """Charged bytes of a qube (what its quota is compared with)."""
    return qube_usage(layout, qube).disk
