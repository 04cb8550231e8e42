"""From one connection's byte stream to stored record lines (the hot path).

Trust side: the input is untrusted bytes from a source qube, read in bounded
chunks. The output is record lines (``<time> L <escaped>``) ready to append:
split at ``\\n``, capped at ``max_line_bytes`` with an explicit ``t<N>``
marker, escaped, stamped with the LogVM's receive time.

Memory is bounded: an unfinished line keeps at most ``max_line_bytes``; the
rest of an overlong line is counted and discarded until its newline.

Speed: a chunk of complete lines is escaped and stamped as one block (a few
C-level passes: escape, replace; no object per line), with per-line
Python work only when a line in the chunk is overlong.
"""

from ..core.escape import cap, escape, escape_block
from ..core.records import line_record

#: Non-ASCII blocks are escaped in slices of about this size: their escaping
#: holds several copies of the slice at once (mask, lanes: about ten times
#: its size), and smaller slices keep the peak memory (RSS) low.
ESCAPE_SLICE = 32 * 1024


def _slices(block: bytes) -> list[bytes]:
    """Cut a block at newlines (kept) into pieces of about ESCAPE_SLICE bytes."""
    parts = []
    start = 0
    while len(block) - start > ESCAPE_SLICE:
        cut = block.find(b"\n", start + ESCAPE_SLICE)
        if cut < 0:
            break
        parts.append(block[start : cut + 1])
        start = cut + 1
    parts.append(block[start:])
    return parts


def _has_longer_line(block: bytes, limit: int) -> bool:
    """Whether a ``\\n``-separated line of ``block`` is longer than ``limit``.

    Looks for the last newline within ``limit`` bytes of each line start, so
    a block of short lines costs one C-level search per ``limit`` bytes, not
    a split into line objects.
    """
    start = 0
    while len(block) - start > limit:
        end = block.rfind(b"\n", start, start + limit + 1)
        if end < 0:
            return True
        start = end + 1
    return False


def first_lines(records: bytes, count: int) -> bytes:
    """The first ``count`` lines of a block of ``\\n``-terminated records."""
    end = -1
    for _ in range(count):
        end = records.find(b"\n", end + 1)
    return records[: end + 1]


class LineSplitter:
    """Splits one connection's stream into records; keeps the unfinished line."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.delivered = False  # dom0's delivery for another qube: kind ``D``
        self._carry = bytearray()  # start of the unfinished line, at most the cap
        self._cut = 0  # bytes of the unfinished line discarded beyond the cap

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self._carry)

    def feed(self, untrusted_data: bytes, stamp: bytes) -> tuple[bytes, int]:
        """Records for the lines that ``untrusted_data`` completes, and their count."""
        end = untrusted_data.rfind(b"\n")
        if end < 0:
            self._hold(untrusted_data)
            return b"", 0
        first_cut = self._cut
        if self._carry:  # one copy of both (a read mostly ends inside a line)
            untrusted_block = b"".join((self._carry, memoryview(untrusted_data)[:end]))
        else:
            untrusted_block = untrusted_data[:end]
        self._carry = bytearray()
        self._cut = 0
        self._hold(untrusted_data[end + 1 :])
        if first_cut or _has_longer_line(untrusted_block, self.max_line_bytes):
            untrusted_lines = untrusted_block.split(b"\n")
            return self._slow(untrusted_lines, first_cut, stamp), len(untrusted_lines)
        prefix = stamp + (b" D " if self.delivered else b" L ")
        if len(untrusted_block) > ESCAPE_SLICE and not untrusted_block.isascii():
            escaped = b"".join(escape_block(part) for part in _slices(untrusted_block))
        else:
            escaped = escape_block(untrusted_block)
        stamped = escaped.replace(b"\n", b"\n" + prefix)
        # Escaping keeps every newline and adds none, so the replace counted
        # the lines (bytes.count is slower than this memchr-driven replace).
        nlines = (len(stamped) - len(escaped)) // len(prefix) + 1
        return b"".join((prefix, stamped, b"\n")), nlines

    def finish(self, stamp: bytes) -> tuple[bytes, int]:
        """At end of stream: the last line without newline as a ``P`` (or ``D``) record."""
        if not self._carry and not self._cut:
            return b"", 0
        record = line_record(
            stamp,
            escape(bytes(self._carry)),
            cut=self._cut,
            partial=True,
            delivered=self.delivered,
        )
        self._carry = bytearray()
        self._cut = 0
        return record, 1

    def _hold(self, untrusted_rest: bytes) -> None:
        room = self.max_line_bytes - len(self._carry)
        if len(untrusted_rest) <= room:
            self._carry += untrusted_rest
        else:
            self._carry += untrusted_rest[:room]
            self._cut += len(untrusted_rest) - room

    def _slow(self, untrusted_lines: list[bytes], first_cut: int, stamp: bytes) -> bytes:
        out = []
        for index, untrusted_line in enumerate(untrusted_lines):
            kept, cut = cap(untrusted_line, self.max_line_bytes)
            if index == 0:
                cut += first_cut
            out.append(line_record(stamp, escape(kept), cut=cut, delivered=self.delivered))
        return b"".join(out)
