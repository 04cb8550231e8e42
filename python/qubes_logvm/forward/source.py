"""What ``logvm-forward`` sends: sealed store content, in order, from per-qube cursors.

Role: walks each qube's segments from where its cursor stands and turns
what the seals already cover into messages (core/syslog5424.py): the record
lines up to the newest seal, then the seal lines, then the next segment once
this one is closed; tomb lines as they appear; a ``gap`` message for
segments rotation deleted before they were forwarded. Nothing unsealed is
ever sent, so the central copy always ends on a seal and verifies.

Trust side: runs in the LogVM and reads the store the collector wrote; it
holds no key. The store itself is the backlog: a cursor is a position in
it, committed only after the server has taken everything before it.
"""

import fnmatch
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

from ..core.errors import StoreError
from ..core.records import TIMESTAMP_LEN
from ..core.seal import parse_seal
from ..core.syslog5424 import DEFAULT_PEN, Message, RecordFramer, encode
from ..core.tomb import parse_tomb
from ..store.layout import SegmentFiles, StoreLayout
from ..store.reader import MAX_LINE, open_plain
from ..store.sealfile import MAX_SEAL_FILE

log = logging.getLogger(__name__)
_BLOCK = 1 << 20  # bytes of a segment read at once
_SEGMENT_START = b"C segment-start "


@dataclass(frozen=True)
class Cursor:
    """Where one qube's forwarding stands (everything before it was sent)."""

    seq: int = 0  # segment being forwarded (0: none seen yet)
    line: int = 0  # its record lines sent
    offset: int = 0  # byte offset after them (plain segments)
    seals: int = 0  # its seal lines sent
    tomb: int = 0  # highest tombstoned segment whose tomb line was sent
    summary: int = 0  # newest segment a forwarded compaction summary covers
    session: str = ""

    def to_json(self) -> dict[str, object]:
        """For the cursor file."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> "Cursor":
        """From the cursor file (written by us; still checked)."""
        if not isinstance(data, dict):
            raise StoreError("cursor entry is not a mapping")
        ints = {k: data.get(k, 0) for k in ("seq", "line", "offset", "seals", "tomb", "summary")}
        if not all(isinstance(v, int) and v >= 0 for v in ints.values()):
            raise StoreError("cursor entry has a bad number")
        session = data.get("session", "")
        return cls(**ints, session=session if isinstance(session, str) else "")


class StoreSource:
    """RFC 5425 frames for the sealed content past a set of cursors."""

    def __init__(
        self,
        layout: StoreLayout,
        patterns: tuple[str, ...],
        store_id: str,
        *,
        hostname: str = "-",
        pen: int = DEFAULT_PEN,
        facility: int = 1,
    ) -> None:
        self.layout = layout
        self.patterns = patterns
        self.store_id = store_id
        self.hostname, self.pen, self.facility = hostname, pen, facility

    def qubes(self) -> list[str]:
        """The qubes configured for forwarding that have a directory."""
        return [
            q for q in self.layout.qubes() if any(fnmatch.fnmatchcase(q, p) for p in self.patterns)
        ]

    def encode(self, message: Message) -> bytes:
        """One message as a frame, with our HOSTNAME and SD-ID."""
        message = replace(message, hostname=self.hostname, pen=self.pen)
        return encode(message, facility=self.facility)

    def store_frame(self) -> bytes:
        """The store's identity, sent first on every connection."""
        raw = self.layout.store_json.read_bytes()[:4096]
        data = json.loads(raw)
        text = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("ascii")
        return self.encode(Message("store", {"store": self.store_id}, text, severity=5))

    def pump(self, qube: str, cursor: Cursor, budget: int) -> tuple[list[bytes], Cursor]:
        """Frames of up to about ``budget`` messages for ``qube`` and the cursor after them."""
        out: list[bytes] = []
        cursor = self._tombs(qube, cursor, out)
        segments = self.layout.segments(qube)
        for files in segments:
            if len(out) >= budget:
                break
            if files.seq < cursor.seq:
                continue
            if cursor.seq == 0 or files.seq > cursor.seq:
                cursor = self._gap(qube, cursor, files.seq, out)
            cursor, finished = self._segment(qube, files, cursor, budget - len(out), out)
            if not finished:
                break
        return out, cursor

    def _fields(self, qube: str, seq: int, **more: str | int) -> dict[str, str]:
        fields = {"store": self.store_id, "qube": qube, "seg": str(seq)}
        fields.update((k, str(v)) for k, v in more.items())
        return fields

    def _gap(self, qube: str, cursor: Cursor, seq: int, out: list[bytes]) -> Cursor:
        """Segments between the cursor and ``seq`` are gone: say so, move on."""
        first = max(cursor.seq, 1)
        if cursor.seq and (seq > cursor.seq + 1 or cursor.line or cursor.seals):
            detail = f"from line {cursor.line + 1}" if cursor.line else "whole"
            text = (
                f"segments {first}..{seq - 1} of {qube} were deleted by rotation before "
                f"they were forwarded ({detail}); their tomb lines say why"
            ).encode("ascii")
            fields = self._fields(qube, first, last=seq - 1, line=cursor.line)
            out.append(self.encode(Message("gap", fields, text, severity=4)))
        elif cursor.seq == 0 and seq > 1:
            text = f"forwarding of {qube} starts at segment {seq}".encode("ascii")
            fields = self._fields(qube, 1, last=seq - 1, line=0)
            out.append(self.encode(Message("gap", fields, text, 5)))
        return Cursor(seq=seq, tomb=cursor.tomb)

    def _tombs(self, qube: str, cursor: Cursor, out: list[bytes]) -> Cursor:
        """Tomb lines past the cursor; a compaction's summary line once per compaction."""
        try:
            data = self.layout.tombstones(qube).read_bytes()[:MAX_SEAL_FILE]
        except FileNotFoundError:
            return cursor
        tomb, summary = cursor.tomb, cursor.summary
        for raw in data.split(b"\n")[:-1]:
            try:
                line = parse_tomb(raw)
            except StoreError:
                continue  # not ours to judge: the verifier reports it
            is_summary = line.kind == "summary"
            if line.last > (summary if is_summary else tomb):
                fields = self._fields(qube, line.first, last=line.last, kind=line.kind)
                out.append(self.encode(Message("tomb", fields, raw, severity=5)))
                if is_summary:
                    summary = line.last
                else:
                    tomb = line.last
        return replace(cursor, tomb=max(tomb, summary), summary=summary)

    def _segment(
        self, qube: str, files: SegmentFiles, cursor: Cursor, budget: int, out: list[bytes]
    ) -> tuple[Cursor, bool]:
        """Forward what the seals of one segment cover; True when it is done."""
        if files.seal is None:
            return cursor, False
        try:
            seal_lines = files.seal.read_bytes()[:MAX_SEAL_FILE].split(b"\n")[:-1]
        except FileNotFoundError:
            return cursor, False
        covered, final = 0, False
        covered_bytes = 0
        for raw in seal_lines:
            try:
                seal = parse_seal(raw)
            except StoreError:
                continue
            covered, covered_bytes = seal.lines, seal.nbytes
            final = seal.is_final
        if cursor.line < covered and files.log is not None:
            framer = RecordFramer(
                self.hostname, self.pen, self.facility, self._fields(qube, files.seq)
            )
            cursor = _records(framer, files, cursor, (covered, covered_bytes), budget, out)
        if cursor.line < covered:
            return cursor, False
        for number, raw in enumerate(seal_lines[cursor.seals :], start=cursor.seals + 1):
            message = Message("seal", self._fields(qube, files.seq, line=number), raw, 5)
            out.append(self.encode(message))
        cursor = replace(cursor, seals=len(seal_lines))
        if final:
            return Cursor(seq=files.seq + 1, tomb=cursor.tomb), True
        return cursor, False


def _records(
    framer: RecordFramer,
    files: SegmentFiles,
    cursor: Cursor,
    cover: tuple[int, int],
    budget: int,
    out: list[bytes],
) -> Cursor:
    """Frames of the record lines past the cursor that the seals cover (``cover``:
    lines and bytes), at most ``budget`` of them."""
    assert files.log is not None  # checked by the caller  # noqa: S101
    line, offset = cursor.line, cursor.offset
    framer.set_session(cursor.session)
    frame, append = framer.frame, out.append
    with open_plain(files.log) as stream:
        if files.compressed:
            for _ in _lines(stream, 0, line):
                pass
        else:
            stream.seek(offset)
        count = min(cover[0], line + budget) - line
        for block in _blocks(stream, count, cover[1] - offset):
            for raw in block:
                line += 1
                offset += len(raw) + 1
                if raw.startswith(_SEGMENT_START, TIMESTAMP_LEN + 1):
                    framer.set_session(_session(raw[TIMESTAMP_LEN + 3 :]) or framer.session)
                append(frame(raw, line))
    return replace(cursor, line=line, offset=offset, session=framer.session)


def _blocks(stream: BinaryIO, count: int, limit: int) -> Iterator[list[bytes]]:
    """``count`` lines (without newline) from the stream's position, in lists
    read a block at a time, all within the next ``limit`` bytes."""
    rest = b""
    while count > 0:
        data = stream.read(min(_BLOCK, limit)) if limit > 0 else b""
        if not data:
            raise StoreError("sealed record lines are cut short or run past their seals")
        limit -= len(data)
        lines = (rest + data if rest else data).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE * 4:
            raise StoreError("a sealed record line is too long")
        if len(lines) > count:
            del lines[count:]
        count -= len(lines)
        yield lines


def _lines(stream: BinaryIO, start: int, stop: int) -> Iterator[bytes]:
    """Lines ``start+1..stop`` (without newline) from the stream's position."""
    for _ in range(stop - start):
        raw = stream.readline(MAX_LINE * 4 + 1)
        if not raw.endswith(b"\n"):
            raise StoreError("a sealed record line is cut short or too long")
        yield raw[:-1]


def _session(note: bytes) -> str:
    for pair in note.split(b" ")[1:]:
        key, _, value = pair.partition(b"=")
        if key == b"session":
            return value.decode("ascii", "replace")
    return ""


def load_cursors(path: Path, store_id: str) -> dict[str, Cursor]:
    """The committed cursors (empty for a new or a different store)."""
    try:
        data = json.loads(path.read_bytes()[: 64 << 20])
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: unreadable cursor file: {err}") from err
    if not isinstance(data, dict) or data.get("store") != store_id:
        log.warning("%s: cursors are for another store: forwarding starts again", path)
        return {}
    qubes = data.get("qubes", {})
    if not isinstance(qubes, dict):
        raise StoreError(f"{path}: bad cursor file")
    return {str(q): Cursor.from_json(c) for q, c in qubes.items()}
