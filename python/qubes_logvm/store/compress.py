"""Crash-safe zstd compression of closed segments (floor 2).

Steps for one segment, each durable before the next, so that a kill at any
moment leaves exactly one good copy that readers use:

1. stream the plain bytes into ``NNNNNNNN.log.zst.tmp`` (one zstd frame,
   bounded memory, then a skippable frame with the last receive time so
   ``logvm list`` need not decompress: :func:`.reader.stamp_trailer`),
   fsync it;
2. decompress the temp file and recompute the hash chain over it with the
   segment's seals: every ``head`` must match, or nothing changes;
3. under the qube's flock (the collector takes it to delete segments):
   rename to ``NNNNNNNN.log.zst``, fsync the directory, unlink the plain
   ``.log``, fsync the directory.

Between 3's rename and unlink both copies exist; readers prefer the plain
one (:meth:`~.layout.StoreLayout.segments`) and :func:`tidy` finishes the job
on the next run, as it removes stale temp files.

Trust side: runs in the LogVM in ``logvm-rotate``, which holds no key. It
never deletes anything but a plain copy whose compressed copy it has just
checked against the seals, and its own temp files.
"""

import logging
import os
from collections.abc import Callable
from pathlib import Path

import zstandard

from ..core.errors import LogvmError, StoreError
from ..core.seal import Seal
from ..daemon_support import fsync_dir
from .files import open_regular
from .layout import SegmentFiles, StoreLayout, qube_locked
from .reader import last_stamp, stamp_trailer
from .sealfile import is_closed, read_seal_file
from .tombstones import read_tomb_file
from .verify.chain import ChainCheck, ChainMismatch

log = logging.getLogger(__name__)

TMP_SUFFIX = ".log.zst.tmp"
CHUNK = 1 << 20


class CompressError(StoreError):
    """A segment cannot be compressed safely (not closed, bytes not as sealed...)."""


class Interrupted(LogvmError):
    """Compression was stopped on request (SIGTERM); nothing was changed."""


def _closed_seals(files: SegmentFiles) -> list[Seal]:
    if files.seal is None:
        raise CompressError(f"{files.name}: no seal file")
    parsed = read_seal_file(files.seal)
    if parsed.bad_lines or parsed.torn_tail or not parsed.seals:
        raise CompressError(f"{files.name}: seal file is damaged; leaving it for verify")
    if not parsed.seals[-1].is_final:
        raise CompressError(f"{files.name}: segment is not closed")
    return parsed.seals


def check_compressed(path: Path, name: str, seals: list[Seal]) -> None:
    """Decompress ``path`` (streaming) and check its bytes against the seals."""
    try:
        check = ChainCheck(name, seals)
        with open_regular(path) as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            while chunk := reader.read(CHUNK):
                check.feed(chunk)
        check.finish()
    except zstandard.ZstdError as err:
        raise CompressError(f"{path}: not a valid zstd frame: {err}") from err
    except ChainMismatch as err:
        raise CompressError(str(err)) from err


def write_frame(
    source: Path,
    tmp: Path,
    nbytes: int,
    level: int,
    should_stop: Callable[[], bool],
    trailer: bytes = b"",
) -> None:
    """Compress ``nbytes`` of ``source`` into ``tmp`` as one zstd frame (+ trailer), fsync."""
    # The pledged size goes into the frame header and tunes the parameters
    # as the zstd CLI does for a file of known size.
    packer = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj(size=nbytes)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    with open(fd, "wb") as out, open(source, "rb") as src:
        left = nbytes
        while left:
            if should_stop():
                raise Interrupted(f"{source}: compression interrupted")
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise CompressError(f"{source}: shorter than its seals say")
            out.write(packer.compress(chunk))
            left -= len(chunk)
        out.write(packer.flush())
        out.write(trailer)
        out.flush()
        os.fsync(out.fileno())


def _swap(layout: StoreLayout, qube: str, seq: int, tmp: Path) -> bool:
    """Under the flock: the checked temp file becomes the segment's only copy."""
    plain = layout.segment_log(qube, seq)
    final = layout.segment_log(qube, seq, compressed=True)
    with qube_locked(layout, qube):
        if not (layout.segment_seal(qube, seq).exists() and plain.exists()):
            log.info("%s/%08d: deleted while being compressed", qube, seq)
            tmp.unlink()
            return False
        stat = os.stat(plain)
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # keeps the segment's age
        os.rename(tmp, final)
        fsync_dir(final.parent)
        plain.unlink()
        fsync_dir(final.parent)
    return True


def compress_segment(
    layout: StoreLayout,
    files: SegmentFiles,
    *,
    level: int = 3,
    should_stop: Callable[[], bool] = lambda: False,
) -> int | None:
    """Compress one closed plain segment; return the compressed size.

    None when the segment went away meanwhile (deleted by the collector).
    Raises :class:`CompressError` (nothing changed) when the segment is not
    closed or its bytes do not match its seals, :class:`Interrupted` when
    ``should_stop`` said so.
    """
    if files.log is None or files.compressed:
        raise CompressError(f"{files.name}: no plain copy to compress")
    seals = _closed_seals(files)
    if os.stat(files.log).st_size != seals[-1].nbytes:
        raise CompressError(f"{files.name}: bytes after the last seal; leaving it for verify")
    tmp = files.log.with_name(f"{files.seq:08d}{TMP_SUFFIX}")
    try:
        stamp = last_stamp(files)
        trailer = stamp_trailer(stamp) if stamp is not None else b""
        write_frame(files.log, tmp, seals[-1].nbytes, level, should_stop, trailer)
        check_compressed(tmp, files.name, seals)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not _swap(layout, files.qube, files.seq, tmp):
        return None
    return os.stat(layout.segment_log(files.qube, files.seq, compressed=True)).st_size


def _finish_half_done(layout: StoreLayout, files: SegmentFiles, zst: Path) -> None:
    """Both copies exist (killed between rename and unlink): keep the good one."""
    plain = layout.segment_log(files.qube, files.seq)
    try:
        check_compressed(zst, files.name, _closed_seals(files))
    except CompressError as err:
        log.warning("%s: dropping a bad compressed copy: %s", files.name, err)
        with qube_locked(layout, files.qube):
            zst.unlink(missing_ok=True)
            fsync_dir(zst.parent)
        return
    with qube_locked(layout, files.qube):
        if plain.exists():
            plain.unlink()
            fsync_dir(zst.parent)
    log.info("%s: finished an interrupted compression", files.name)


def _tombstoned(layout: StoreLayout, qube: str) -> set[int]:
    tombs = read_tomb_file(layout.tombstones(qube)).tombs
    return {seq for _, tomb in tombs for seq in range(tomb.first, tomb.last + 1)}


def tidy(layout: StoreLayout, qube: str) -> None:
    """Clean up after a killed run: temp files, doubled copies, orphans.

    An orphan is a ``.log.zst`` left when the collector deleted its segment
    (which removes the plain copy and the seal) between our rename and
    unlink; it is removed only when a tombstone records that deletion.
    """
    qube_dir = layout.qube_dir(qube)
    try:
        names = os.listdir(qube_dir)
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(TMP_SUFFIX):
            (qube_dir / name).unlink(missing_ok=True)
            log.info("%s/%s: removed a stale temp file", qube, name)
    tombs: set[int] | None = None
    for files in layout.segments(qube):
        zst = layout.segment_log(qube, files.seq, compressed=True)
        if files.compressed or not zst.exists():
            if files.seal is None and files.compressed:
                tombs = _tombstoned(layout, qube) if tombs is None else tombs
                if files.seq in tombs:
                    zst.unlink(missing_ok=True)
                    log.info("%s: removed the copy of a deleted segment", files.name)
            continue
        _finish_half_done(layout, files, zst)


def candidates(layout: StoreLayout, qube: str, older_than: float) -> list[SegmentFiles]:
    """Closed plain segments whose close (seal mtime) is at or before ``older_than``."""
    found = []
    for files in layout.segments(qube):
        if files.log is None or files.compressed or files.seal is None:
            continue
        try:
            closed_at = os.stat(files.seal).st_mtime
        except FileNotFoundError:
            continue
        if closed_at <= older_than and is_closed(files):
            found.append(files)
    return found
