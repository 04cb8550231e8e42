"""The verifier's fast path for one segment that is intact (floor 2).

A segment sealed in small batches has one seal line per few records, so the
per-seal work decides the speed (issue 10: 48 MB/s on 16-line batches with
the general path). This path does only what an intact segment needs: one
bytes regex per seal line (the same grammar as :func:`core.seal.parse_seal`),
a one-shot ``hmac.digest`` with the epoch's key looked up once per epoch,
hashes over slices of one buffer (no copies, no per-line objects), and
``bytes.count`` for the line counts.

Trust side: it decides nothing on its own. It returns a result only when
every rule of :mod:`.segment` holds (MACs, links, counts, epochs, the open
seal continuing the chain, no data after the last seal, closed or newest);
on anything else it returns None and the general path checks the segment
again from the start and reports what it finds, so the findings are the
general path's in every case.
"""

import hashlib
import hmac
import re
from typing import BinaryIO

from ...core.errors import StoreError
from ...core.seal import CHAIN_DOMAIN, FINAL_KINDS, SEAL_DOMAIN
from ..files import read_regular
from ..layout import SegmentFiles
from ..reader import open_plain
from ..sealfile import MAX_SEAL_FILE
from .context import VerifyRun

_LINE = re.compile(
    r"v1 (open|batch|tick|close|recover) ([A-Za-z][A-Za-z0-9_.-]{0,30}) "
    r"(0|[1-9][0-9]{0,17}) (0|[1-9][0-9]{0,17}) (0|[1-9][0-9]{0,17}) (0|[1-9][0-9]{0,18}) "
    r"([0-9a-f]{64}) ([0-9a-f]{64}) ([0-9a-f]{64})",
    re.ASCII,
)
_LATER = frozenset({"batch", "tick", "close", "recover"})
_FIELDS = 10
_ZERO_HEX = "0" * 64
_READ = 16 << 20
_SEAL = SEAL_DOMAIN
_BLOCK = 64  # SHA-256's block size (HMAC pads the key to it)
_IPAD = bytes(b ^ 0x36 for b in range(256))  # HMAC's inner and outer pads, as tables
_OPAD = bytes(b ^ 0x5C for b in range(256))
_MAX = (10**18, 10**18, 10**19)  # epoch, lines, bytes: the grammar's digit counts


class _Amiss(Exception):
    """Something is not as an intact segment has it: the general path takes over."""


def fast_segment(
    ctx: VerifyRun, files: SegmentFiles, head: bytes | None, min_epoch: int, newest: bool
) -> tuple[bytes, int] | None:
    """(final head, last epoch) of an intact segment; None: use the general path."""
    if files.seal is None or files.log is None:
        return None
    try:
        text = read_regular(files.seal, MAX_SEAL_FILE).decode("ascii")
        with open_plain(files.log) as stream:
            last_head, last_epoch, final, hashed = _walk(ctx, text, stream, files, head, min_epoch)
    except (_Amiss, OSError, StoreError, UnicodeDecodeError, ValueError):
        return None
    if not final and not newest:
        return None
    stale = ctx.key_epoch is not None and last_epoch + 1 < ctx.key_epoch
    if not final and stale and not ctx.epoch_jumps:
        return None
    ctx.report.bytes_hashed += hashed
    return bytes.fromhex(last_head), last_epoch


class _Data:
    """The segment's plain bytes, read in big pieces; slices hashed in place."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.buf = stream.read(_READ)
        self.base = 0

    def cover(self, start: int, end: int) -> None:
        """Make ``[start, end)`` part of the buffer (_Amiss past the end of the file)."""
        if end <= self.base + len(self.buf):
            return
        self.buf = self.buf[start - self.base :] + self.stream.read(max(_READ, end - start))
        self.base = start
        if end > start + len(self.buf):
            raise _Amiss  # truncated: the general path says how

    def at_end(self, end: int) -> bool:
        """True when the segment ends exactly at ``end``."""
        return self.base + len(self.buf) <= end and not self.stream.read(1)


class _Keys(dict[str, tuple["hashlib._Hash", "hashlib._Hash"]]):
    """Per epoch of a segment (by the epoch's text): the HMAC-SHA256 (RFC 2104) inner
    state under ``K[epoch]`` fed the seal domain, and the outer state; each line's MAC
    continues copies of both (C objects: no Python frame per line)."""

    def __init__(self, ctx: VerifyRun) -> None:
        super().__init__()
        self.ctx = ctx

    def __missing__(self, epoch: str) -> tuple["hashlib._Hash", "hashlib._Hash"]:
        found = self.ctx.key(int(epoch))
        if found is None:
            raise _Amiss
        if len(found) > _BLOCK:
            raise _Amiss  # epoch keys are 32 bytes: a longer one HMAC would hash first
        key = found.ljust(_BLOCK, b"\0")
        inner = hashlib.sha256(key.translate(_IPAD) + _SEAL)
        outer = hashlib.sha256(key.translate(_OPAD))
        prepared = self[epoch] = (inner, outer)
        return prepared

    def mac_hex(self, epoch: str, body: bytes) -> str:
        """HMAC-SHA256(K[epoch], seal domain || body), in hex (equal to core.seal.seal_mac);
        _walk's loop has these lines inline (a call per seal line costs ~10%)."""
        inner, outer = self[epoch]
        step = inner.copy()
        step.update(body)
        done = outer.copy()
        done.update(step.digest())
        return done.hexdigest()


def _open_line(
    keys: _Keys, line: str, files: SegmentFiles, head: bytes | None, min_epoch: int
) -> tuple[str, str, int]:
    """(head, MAC, epoch) of the open seal, when it is right."""
    match = _LINE.fullmatch(line)
    if match is None:
        raise _Amiss
    kind, name, seg, epoch_s, lines_s, nbytes_s, head_h, prev_h, mac_h = match.groups()
    if (kind, name, seg, lines_s, nbytes_s, prev_h) != (
        "open",
        files.qube,
        str(files.seq),
        "0",
        "0",
        _ZERO_HEX,
    ):
        raise _Amiss
    if int(epoch_s) < min_epoch or (head is not None and head_h != head.hex()):
        raise _Amiss
    if not hmac.compare_digest(keys.mac_hex(epoch_s, line[:-65].encode("ascii")), mac_h):
        raise _Amiss
    return head_h, mac_h, int(epoch_s)


def _walk(
    ctx: VerifyRun,
    text: str,
    stream: BinaryIO,
    files: SegmentFiles,
    head: bytes | None,
    min_epoch: int,
) -> tuple[str, int, bool, int]:
    """Every seal line and the bytes between them: (head, epoch, closed, bytes hashed)."""
    if not text.endswith("\n"):
        raise _Amiss
    lines_of = text[:-1].split("\n")
    keys = _Keys(ctx)
    head_h, mac_h, epoch = _open_line(keys, lines_of[0], files, head, min_epoch)
    qube, seq, data = files.qube, str(files.seq), _Data(stream)
    jumps, final, pos, count = ctx.epoch_jumps, False, 0, 0
    sha256, same, fromhex = hashlib.sha256, hmac.compare_digest, bytes.fromhex
    keyed, (inner, outer) = str(epoch), keys[str(epoch)]
    buf = data.buf
    end, view = data.base + len(buf), memoryview(buf)
    max_e, max_n, max_b = _MAX
    prefix = f"v1 batch {qube} {seq} "
    for line in lines_of[1:]:
        fields = line.split(" ")
        if len(fields) != _FIELDS or final:
            raise _Amiss
        v1, kind, name, seg, epoch_s, lines_s, nbytes_s, head1, prev_h, mac1 = fields
        if (
            not line.startswith(prefix)  # the common case in one test
            and (v1 != "v1" or kind not in _LATER or name != qube or seg != seq)
        ) or prev_h != mac_h:
            raise _Amiss
        # int() alone would take "+1", "0_1", " 1" or other digits: the text must be
        # exactly what str() makes of the number (no sign, no leading zero, ASCII).
        e1, n1, b1 = int(epoch_s), int(lines_s), int(nbytes_s)
        if (
            str(e1) != epoch_s
            or str(n1) != lines_s
            or str(b1) != nbytes_s
            or e1 >= max_e
            or n1 >= max_n
            or b1 >= max_b
            or n1 < count
            or b1 < pos
            or e1 < epoch
            or (e1 > epoch + 1 and not jumps)
        ):
            raise _Amiss
        if epoch_s != keyed:
            inner, outer = keys[epoch_s]
            keyed = epoch_s
        step = inner.copy()
        step.update(line[:-65].encode())
        done = outer.copy()
        done.update(step.digest())
        if not same(done.hexdigest(), mac1):
            raise _Amiss
        if b1 > end:
            data.cover(pos, b1)
            buf = data.buf
            end, view = data.base + len(buf), memoryview(buf)
        lo, hi = pos - data.base, b1 - data.base
        hasher = sha256(CHAIN_DOMAIN + fromhex(head_h))
        hasher.update(view[lo:hi])
        if buf.count(b"\n", lo, hi) != n1 - count or hasher.hexdigest() != head1:
            raise _Amiss
        final = kind in FINAL_KINDS
        head_h, mac_h, epoch, count, pos = head1, mac1, e1, n1, b1
    if not data.at_end(pos):
        raise _Amiss  # data after the last seal: the general path judges it
    return head_h, epoch, final, pos
