"""The stored record line (floor 1).

One record is one line of a segment file::

    <receive time> <kind> <payload>\\n

- receive time: the LogVM's clock, UTC, microseconds, fixed width
  (``2026-11-28T17:58:34.123456Z``, 27 bytes);
- kind: ``L`` a line the qube sent, ``P`` its last line at EOF without a
  newline, ``D`` a line dom0 delivered for the qube (its console or dom0's
  per-qube logs: ``logvm.Send+for.<qube>``), ``C`` a note written by the
  collector (session start/end, drops); ``L``, ``P`` and ``D`` take a suffix
  ``t<N>`` when N bytes were cut from the line (``Lt70000``): truncation is
  explicit, never a silent split;
- payload: the escaped line (see :mod:`.escape`); for ``C`` an event word
  followed by ``key=value`` pairs.

Trust side: formatting is applied to sanitised bytes; parsing is applied to
files an intruder may have edited, so it is strict and raises on anything
else.
"""

import re
from datetime import UTC, datetime
from typing import NamedTuple

from .errors import StoreError

TIMESTAMP_LEN = 27
KIND_LINE = b"L"
KIND_PARTIAL = b"P"
KIND_NOTE = b"C"
KIND_DELIVERED = b"D"

_RECORD = re.compile(
    rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) ([LPD])(?:t([1-9][0-9]{0,18}))? (.*)"
    rb"|(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (C) ([a-z][a-z-]*)((?: [a-z][a-z_-]*=\S*)*)",
    re.DOTALL,
)
_NOTE_VALUE = re.compile(rb"[\x21-\x7e]*")
_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def format_timestamp(unix_seconds: float) -> bytes:
    """Format a receive time; microseconds, UTC, fixed width."""
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode("ascii")


def is_timestamp(data: bytes) -> bool:
    """True when ``data`` has the shape of a receive time (:func:`format_timestamp`)."""
    return _STAMP.fullmatch(data) is not None


def parse_timestamp(stamp: bytes) -> float:
    """Inverse of :func:`format_timestamp` (raises ValueError).

    By its fixed columns: ``datetime.strptime`` would load the ``_strptime``
    and ``calendar`` modules, a few ms of every ``logvm show`` (issue 13);
    ``datetime()`` checks the ranges (month, day of that month, 0..59 s).
    """
    if not is_timestamp(stamp):
        raise ValueError(f"not a receive time: {stamp!r}")
    moment = datetime(
        int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]),
        int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19]), int(stamp[20:26]),
        tzinfo=UTC,
    )  # fmt: skip
    return moment.timestamp()


def line_record(
    stamp: bytes, escaped: bytes, *, cut: int = 0, partial: bool = False, delivered: bool = False
) -> bytes:
    """One stored line for an (already escaped) line the qube sent (or dom0 delivered).

    A delivered stream's unfinished last line is stored as ``D`` too: the
    origin is what the kind must say; dom0's exporter only sends whole lines.
    """
    kind = KIND_DELIVERED if delivered else KIND_PARTIAL if partial else KIND_LINE
    if cut:
        kind += b"t%d" % cut
    return b"%s %s %s\n" % (stamp, kind, escaped)


def note_record(stamp: bytes, event: str, **fields: str | int) -> bytes:
    """A collector note, e.g. ``note_record(t, "dropped", count=12, reason="rate-limit")``."""
    parts = [event.encode("ascii")]
    for key, value in fields.items():
        text = str(value).encode("utf-8")
        if not _NOTE_VALUE.fullmatch(text):
            raise ValueError(f"note value for {key} must be printable ASCII without spaces")
        parts.append(b"%s=%s" % (key.encode("ascii"), text))
    return b"%s C %s\n" % (stamp, b" ".join(parts))


class Record(NamedTuple):
    """A parsed stored line."""

    stamp: bytes
    kind: str  # "L", "P", "D" or "C"
    cut: int  # bytes cut from the line (0: not truncated)
    payload: bytes  # escaped line; for "C": b"event key=value ..."

    @property
    def event(self) -> str:
        """For a note: its event word."""
        return self.payload.split(b" ", 1)[0].decode("ascii") if self.kind == "C" else ""

    def fields(self) -> dict[str, str]:
        """For a note: its key=value pairs."""
        if self.kind != "C":
            return {}
        pairs = self.payload.split(b" ")[1:]
        return dict(p.decode("ascii").split("=", 1) for p in pairs)


def parse_record(line: bytes) -> Record:
    """Parse one stored line (without its newline); raise StoreError if malformed."""
    match = _RECORD.fullmatch(line)
    if match is None:
        raise StoreError("malformed record line")
    if match.group(1) is not None:
        cut = int(match.group(3)) if match.group(3) else 0
        return Record(match.group(1), match.group(2).decode(), cut, match.group(4))
    payload = match.group(7) + match.group(8)
    return Record(match.group(5), "C", 0, payload)
