"""The verifier's fast path for one segment that is intact (floor 2).

A segment sealed in small batches has one seal line per few records, so the
per-seal work decides the speed (issue 10: 48 MB/s on 16-line batches with a
Python loop per line). This path has no Python code per seal line: the seal
file is read as bytes once, each piece of it cut at spaces once and its
tokens taken as columns (one field of every line each, by stride), each rule
is one C-level operation over a column (``map``, list comparisons,
``bytes.translate``, strided slices), the HMACs continue copies of SHA-256
states prepared once per epoch for the whole run, the chain hashes and the
line counts (``bytes.replace``, memchr, several times faster than
``bytes.count``) run over slices of one buffer of about 1 MiB of the segment,
read into again and again (larger reads cost page faults, and so did a new
buffer per read: 23% of the time on 16-line batches). Lines are taken in
pieces of about 1 MiB of seal file, so the memory stays bounded whatever the
file holds.

Trust side: it decides nothing on its own. It returns a result only when
every rule of :mod:`.segment` holds (the grammar of :func:`core.seal.parse_seal`,
MACs, links, counts, epochs, the open seal continuing the chain, no data
after the last seal, closed or newest); on anything else it returns None and
the general path checks the segment again from the start and reports what it
finds, so the findings are the general path's in every case.
"""

import binascii
import bisect
import hashlib
import hmac
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from operator import add, le, sub
from typing import cast

from ...core.errors import StoreError
from ...core.seal import CHAIN_DOMAIN, FINAL_KINDS, SEAL_DOMAIN
from ..files import read_regular
from ..layout import SegmentFiles
from ..sealfile import MAX_SEAL_FILE
from .context import VerifyRun
from .created import StampFloor, watched_plain

_Hash = type(hashlib.sha256())
_copy, _update, _digest = _Hash.copy, _Hash.update, _Hash.digest
_LATER = frozenset({b"batch", b"tick", b"close", b"recover"})
_FINAL = frozenset(kind.encode() for kind in FINAL_KINDS)
_FIELDS = 10
_HEX_LEN = 64
_ZERO_HEX = b"0" * _HEX_LEN
_DIGITS = b"0123456789"
_NEXT = b"\nv1"  # a line's end and the next line's version
_JOINT = _HEX_LEN + len(_NEXT)  # "<mac>\nv1"
_BODY = slice(None, -(_HEX_LEN + 1))  # a line without " <mac>": what its MAC covers
#: Upper bounds of epoch, lines, bytes: the grammar's digit counts (core.seal).
_LIMITS = (10**18, 10**18, 10**19)
_READ = 1 << 20
#: Longest span between two seal lines held here (longer: the general path,
#: which hashes it in pieces, so a forged seal over gigabytes costs no memory).
_SPAN = 16 << 20
#: Seal file bytes cut into lines at once (valid lines are a few hundred bytes).
_PIECE = 1 << 20
#: Fewer bytes than any seal line has (three hashes in hex alone are 192).
_SHORTEST = 128
#: Rows of one piece at most (and the previous piece's last line): more are
#: lines shorter than any seal line, never cut into a list.
_MAX_ROWS = _PIECE // _SHORTEST + 1
_CHAIN = hashlib.sha256(CHAIN_DOMAIN)  # copied, never updated
_BLOCK = 64  # SHA-256's block size (HMAC pads the key to it)
_IPAD = bytes(b ^ 0x36 for b in range(256))  # HMAC's inner and outer pads, as tables
_OPAD = bytes(b ^ 0x5C for b in range(256))
#: Epochs whose HMAC states a run keeps (two hash objects each, ~0.5 KiB);
#: more than any piece of :data:`_PIECE` bytes of seal lines can name.
_MAX_STATES = 1 << 14


class _Amiss(Exception):
    """Something is not as an intact segment has it: the general path takes over."""


def fast_segment(
    ctx: VerifyRun, files: SegmentFiles, head: bytes | None, min_epoch: int, newest: bool
) -> tuple[bytes, int] | None:
    """(final head, last epoch) of an intact segment; None: use the general path."""
    if files.seal is None or files.log is None:
        return None
    try:
        raw = read_regular(files.seal, MAX_SEAL_FILE)
        with watched_plain(ctx, files) as stream:
            last = _walk(ctx, raw, _Data(stream), files, head, min_epoch)
    except (_Amiss, OSError, StoreError, ValueError):
        return None
    final = last.kinds[-1] in _FINAL
    if not final and not newest:
        return None
    last_epoch = last.epochs[-1]
    stale = ctx.key_epoch is not None and last_epoch + 1 < ctx.key_epoch
    if not final and stale and not ctx.epoch_jumps:
        return None
    ctx.report.bytes_hashed += last.nbytes[-1]
    return last.heads[-1], last_epoch


@dataclass(frozen=True)
class _Seals:
    """Consecutive seal lines as columns, every field as the grammar has it."""

    rows: list[bytes]
    kinds: list[bytes]
    epochs: tuple[int, ...]
    lines: tuple[int, ...]
    nbytes: tuple[int, ...]
    heads: tuple[bytes, ...]  # binary
    hex_heads: list[bytes]  # as written
    prevs: list[bytes]  # hex, as written
    macs: bytes  # hex, as written, every line's one after the other


def _walk(
    ctx: VerifyRun,
    raw: bytes,
    data: "_Data",
    files: SegmentFiles,
    head: bytes | None,
    min_epoch: int,
) -> _Seals:
    """Every seal line and the bytes between them; the last piece of seal lines."""
    keys = _Keys(ctx)
    done: _Seals | None = None
    for text in _pieces(raw):
        # Each piece after the first starts with the previous piece's last
        # line, so every rule between neighbours sees every pair.
        seals = _parse(text if done is None else b"%s\n%s" % (done.rows[-1], text), files)
        if done is None:
            _check_open(seals, head, min_epoch)
        _check_rules(seals, ctx.epoch_jumps)
        _check_macs(keys, seals, 0 if done is None else 1)
        _check_data(data, seals)
        done = seals
    if done is None or not data.at_end(done.nbytes[-1]):
        raise _Amiss  # no line, or data after the last seal: the general path judges it
    return done


def _pieces(raw: bytes) -> Iterator[bytes]:
    """The seal file's lines, in pieces of about :data:`_PIECE` bytes (whole lines,
    without the last newline)."""
    if not raw.endswith(b"\n"):
        raise _Amiss  # a torn last line
    start = 0
    while start < len(raw):
        end = raw.rfind(b"\n", start, start + _PIECE) + 1
        if end <= start:
            raise _Amiss  # a line longer than any seal line
        yield raw[start : end - 1]
        start = end


def _parse(text: bytes, files: SegmentFiles) -> _Seals:
    """Columns of the lines of ``text``, each exactly core.seal's grammar, for this
    segment."""
    rows = text.split(b"\n", _MAX_ROWS)
    count = len(rows)
    if count > _MAX_ROWS:
        raise _Amiss  # lines shorter than any seal line (a file of newlines)
    # Cut at spaces only, a line's last field and the next line's first are
    # one token (a joint). Every line has _FIELDS fields exactly when there
    # are (_FIELDS - 1) tokens a line and one more, and every (_FIELDS - 1)th
    # token is a joint "<mac>\nv1" with its newline in place: those are all
    # of the count - 1 newlines, so no other token holds one.
    tokens = text.split(b" ")
    step = _FIELDS - 1
    if len(tokens) != step * count + 1 or tokens[0] != b"v1":
        raise _Amiss
    kinds, names, segs = tokens[1::step], tokens[2::step], tokens[3::step]
    heads, prevs = tokens[7::step], tokens[8::step]
    if set(map(len, heads + prevs)) != {_HEX_LEN}:
        raise _Amiss
    # Each joint is a line's MAC, "\n" and the next line's "v1"; the next line's
    # prev is that MAC (the link between them). So, each of fixed length, the
    # joints are exactly the prevs after the first, each followed by "\nv1":
    # the links hold, and the MACs written are those prevs and the last token.
    joints = tokens[step:-1:step]
    if count > 1 and (
        set(map(len, joints)) != {_JOINT} or b"".join(joints) != _NEXT.join(prevs[1:]) + _NEXT
    ):
        raise _Amiss
    macs = b"".join(prevs[1:]) + tokens[-1]
    name, seq = files.qube.encode("ascii"), b"%d" % files.seq
    if (names.count(name), segs.count(seq)) != (count, count) or len(macs) != _HEX_LEN * count:
        raise _Amiss
    # binascii takes hex in either case; the grammar has it in lower case: the
    # heads and the MACs are compared as hex with what hexlify makes of the
    # hashes (_check_window, _check_macs), the prevs are the MACs, and the
    # first prev is the open seal's zeros (_check_open).
    return _Seals(
        rows,
        kinds,
        _numbers(tokens[4::step], _LIMITS[0]),
        _numbers(tokens[5::step], _LIMITS[1]),
        _numbers(tokens[6::step], _LIMITS[2]),
        tuple(map(binascii.a2b_hex, heads)),
        heads,
        prevs,
        macs,
    )


def _numbers(column: list[bytes], limit: int) -> tuple[int, ...]:
    """The numbers of a column, each spelled as the grammar has it."""
    # int() alone would take "+1", "0_1", " 1" or "01": the text must be
    # exactly what "%d" makes of the number (no sign, no leading zero, ASCII
    # digits only), and short enough to be below ``limit``.
    sizes = set(map(len, column))
    if min(sizes) == 0 or max(sizes) > len(b"%d" % (limit - 1)):
        raise _Amiss  # an empty field, or too many digits
    spaced = b" " + b" ".join(column)
    if spaced.translate(None, _DIGITS) != b" " * len(column):
        raise _Amiss  # a byte other than a digit
    if spaced.count(b" 0") != column.count(b"0"):
        raise _Amiss  # a leading zero
    return tuple(map(int, column))


def _check_open(seals: _Seals, head: bytes | None, min_epoch: int) -> None:
    """The first line: an open seal at zero that continues the chain before it."""
    first = (seals.kinds[0], seals.lines[0], seals.nbytes[0], seals.prevs[0])
    if first != (b"open", 0, 0, _ZERO_HEX) or seals.epochs[0] < min_epoch:
        raise _Amiss
    if binascii.b2a_hex(seals.heads[0]) != seals.hex_heads[0]:
        raise _Amiss  # in upper case (the others are compared as hex in _check_window)
    if head is not None and seals.heads[0] != head:
        raise _Amiss


def _rising(values: tuple[int, ...]) -> bool:
    return all(map(le, values, values[1:]))


def _check_rules(seals: _Seals, jumps: bool) -> None:
    """Kinds, links, counts and epochs between neighbours (``jumps``: format 2)."""
    kinds = seals.kinds
    if not _LATER.issuperset(kinds[1:]) or not _FINAL.isdisjoint(kinds[:-1]):
        raise _Amiss  # a second open seal, or a line after the segment was closed
    # (The links, each prev the MAC of the line before, hold by _parse.)
    if not (_rising(seals.lines) and _rising(seals.nbytes) and _rising(seals.epochs)):
        raise _Amiss
    if not jumps and max(map(sub, seals.epochs[1:], seals.epochs), default=0) > 1:
        raise _Amiss  # epochs without a seal


class _Keys:
    """Per epoch: the HMAC-SHA256 (RFC 2104) inner state under ``K[epoch]`` fed the
    seal domain, and the outer state; each line's MAC continues copies of both.
    The states live in the run (:class:`.context.VerifyRun`), for every segment."""

    def __init__(self, ctx: VerifyRun) -> None:
        self.ctx = ctx
        self.inner = ctx.mac_inner
        self.outer = ctx.mac_outer

    def prepare(self, epochs: Iterable[int]) -> None:
        """States for ``epochs`` (looked up in ascending order: the key walk goes on)."""
        missing = sorted(set(epochs).difference(self.inner))
        if len(self.inner) + len(missing) > _MAX_STATES:
            self.inner.clear()  # bounded: a piece has fewer epochs than this
            self.outer.clear()
        found = list(map(self.ctx.key, missing))
        if None in found:
            raise _Amiss  # an epoch beyond what the key file allows
        keys = cast(list[bytes], found)
        if keys and max(map(len, keys)) > _BLOCK:
            raise _Amiss  # epoch keys are 32 bytes: a longer one HMAC would hash first
        padded = list(map(bytes.ljust, keys, repeat(_BLOCK), repeat(b"\0")))
        inner = map(add, map(bytes.translate, padded, repeat(_IPAD)), repeat(SEAL_DOMAIN))
        self.inner.update(zip(missing, map(hashlib.sha256, inner), strict=True))
        outer = map(bytes.translate, padded, repeat(_OPAD))
        self.outer.update(zip(missing, map(hashlib.sha256, outer), strict=True))

    def macs(self, epochs: tuple[int, ...], bodies: Iterable[bytes]) -> Iterator[bytes]:
        """HMAC-SHA256(K[epoch], seal domain || body) of each line (core.seal.seal_mac)."""
        self.prepare(epochs)
        inner = list(map(_copy, map(self.inner.__getitem__, epochs)))
        deque(map(_update, inner, bodies), 0)
        outer = list(map(_copy, map(self.outer.__getitem__, epochs)))
        deque(map(_update, outer, map(_digest, inner)), 0)
        return map(_digest, outer)


def _check_macs(keys: _Keys, seals: _Seals, first: int) -> None:
    """The MAC of every line from ``first`` on."""
    bodies = map(bytes.__getitem__, seals.rows[first:], repeat(_BODY))
    made = binascii.b2a_hex(b"".join(keys.macs(seals.epochs[first:], bodies)))
    if not hmac.compare_digest(made, seals.macs[first * _HEX_LEN :]):
        raise _Amiss  # (in hex: a MAC written in upper case differs too)


class _Data:
    """The segment's plain bytes, read in big pieces into one buffer kept for the
    whole segment (a new 1 MiB object per read costs page faults); slices
    hashed in place. Bytes of the buffer past :attr:`size` are stale."""

    def __init__(self, stream: StampFloor) -> None:
        self.stream = stream
        self.buf = bytearray(_READ)
        self.size = stream.read_into(self.buf, 0)
        self.base = 0

    @property
    def end(self) -> int:
        """Offset in the segment just past the buffer."""
        return self.base + self.size

    def cover(self, start: int, end: int) -> None:
        """Make ``[start, end)`` part of the buffer (_Amiss past the end of the file)."""
        if end <= self.end:
            return
        if end - start > _SPAN:
            raise _Amiss  # the general path hashes it in pieces (memory stays bounded)
        keep = self.buf[start - self.base : self.size]
        if end - start > len(self.buf):
            self.buf = bytearray(end - start)
        self.buf[: len(keep)] = keep
        self.size = len(keep) + self.stream.read_into(self.buf, len(keep))
        self.base = start
        if end > self.end:
            raise _Amiss  # truncated: the general path says how

    def at_end(self, end: int) -> bool:
        """True when the segment ends exactly at ``end``."""
        return self.end <= end and not self.stream.read(1)


def _check_data(data: _Data, seals: _Seals) -> None:
    """The bytes between each pair of neighbours: chain hash and line count."""
    nbytes = seals.nbytes
    first = 1
    while first < len(nbytes):
        data.cover(nbytes[first - 1], nbytes[first])
        last = bisect.bisect_right(nbytes, data.end, first)  # the intervals in the buffer
        _check_window(data, seals, first, last)
        first = last


def _check_window(data: _Data, seals: _Seals, first: int, last: int) -> None:
    """Intervals ``first`` to ``last - 1`` (each ends at its line's nbytes), in the buffer."""
    buf, base = data.buf, data.base
    starts = map(sub, seals.nbytes[first - 1 : last - 1], repeat(base))
    spans = list(map(slice, starts, map(sub, seals.nbytes[first:last], repeat(base))))
    pieces = list(map(buf.__getitem__, spans))  # about _READ bytes in all
    hashers = list(map(_copy, repeat(_CHAIN, last - first)))
    deque(map(_update, hashers, seals.heads[first - 1 : last - 1]), 0)
    deque(map(_update, hashers, pieces), 0)
    if binascii.b2a_hex(b"".join(map(_digest, hashers))) != b"".join(seals.hex_heads[first:last]):
        raise _Amiss  # (in hex: a head written in upper case differs too)
    # Bytes that are not newlines, per interval: what the seals say, and what is there.
    plain = tuple(map(sub, seals.nbytes[first - 1 : last], seals.lines[first - 1 : last]))
    kept = map(len, map(bytearray.replace, pieces, repeat(b"\n"), repeat(b"")))
    if list(kept) != list(map(sub, plain[1:], plain)):
        raise _Amiss
