"""A stored line understood for display: note, record, plain line (floor 1).

:func:`classify` is the one place that decides what a stored line is:

- ``note``: written by the collector (``C`` kind: ``segment-start``,
  ``segment-end``, ``dropped``...): the LogVM's own word;
- ``record``: a line the qube sent in the exporter's record format
  (docs/protocol.md): its time, host, unit, identifier, pid and priority are
  the *sender's claims*, shown as such;
- ``line``: any other line the qube sent, a plain message; a leading syslog
  ``<PRI>`` gives it a priority (also a claim);
- either of the two with ``delivered`` set: a ``D`` line, which dom0
  delivered for the qube (its console, dom0's per-qube logs): the record's
  time, host and identifier (``console``, ``qrexec``...) are dom0's word,
  its message is the qube's text (docs/store-format.md);
- ``malformed``: not a line the collector writes (the disk was edited, or it
  is damaged: ``logvm verify`` says which).

The receive time and the qube name are the LogVM's word; nothing a sender
wrote can make a line classify as a note. Trust side: pure parsing of
untrusted bytes; messages come back unescaped (raw sender bytes), so every
display must pass them through :func:`qubes_logvm.core.escape.terminal_safe`.
"""

import re
from typing import NamedTuple

from .errors import StoreError
from .escape import unescape
from .records import parse_record
from .sender_record import SEVERITIES, ParsedRecord, parse_sender_record

KINDS = ("note", "record", "line", "malformed")
#: Priorities of the collector's notes (what a reader filters them by).
NOTE_SEVERITY = {"dropped": 4, "refused": 4}
NOTE_DEFAULT_SEVERITY = 5
_SYSLOG_PRI = re.compile(rb"<([0-9]{1,3})>")


class Understood(NamedTuple):
    """What one stored line says, independent of where it was found."""

    kind: str  # one of KINDS
    stamp: bytes  # receive time as stored (b"" for a malformed line)
    message: bytes  # unescaped message (note: b"event key=value ...")
    sender: ParsedRecord | None = None  # kind "record": the sender's fields
    severity: int | None = None  # 0..7, None when unknown
    cut: int = 0  # bytes the collector cut from the line
    partial: bool = False  # the sender's stream ended without a newline
    delivered: bool = False  # dom0 delivered this line for the qube (kind D)

    @property
    def origin(self) -> str:
        """Who wrote the line: ``logvm`` (a note), ``dom0`` (a delivery) or ``qube``."""
        if self.is_note:
            return "logvm"
        return "dom0" if self.delivered else "qube"

    @property
    def priority(self) -> str | None:
        """The severity keyword (``err``), None when unknown."""
        return SEVERITIES[self.severity] if self.severity is not None else None

    @property
    def event(self) -> str:
        """For a note: its event word (``segment-start``)."""
        return self.message.split(b" ", 1)[0].decode("ascii", "replace") if self.is_note else ""

    @property
    def is_note(self) -> bool:
        """True for the collector's own notes."""
        return self.kind == "note"

    def note_fields(self) -> dict[str, str]:
        """For a note: its ``key=value`` pairs."""
        if not self.is_note:
            return {}
        pairs = (p.decode("ascii", "replace") for p in self.message.split(b" ")[1:])
        return dict(p.split("=", 1) for p in pairs if "=" in p)


def classify(stored: bytes) -> Understood:
    """Understand one stored line (without its newline)."""
    try:
        record = parse_record(stored)
    except StoreError:
        return Understood("malformed", b"", stored)
    if record.kind == "C":
        severity = NOTE_SEVERITY.get(record.event, NOTE_DEFAULT_SEVERITY)
        return Understood("note", record.stamp, record.payload, severity=severity)
    text = unescape(record.payload)
    partial = record.kind == "P"
    delivered = record.kind == "D"
    try:
        sender = parse_sender_record(text)
    except ValueError:
        claimed = _syslog_severity(text)
        return Understood(
            "line", record.stamp, text, None, claimed, record.cut, partial, delivered
        )
    return Understood(
        "record",
        record.stamp,
        sender.message,
        sender,
        sender.severity,
        record.cut,
        partial,
        delivered,
    )


def _syslog_severity(text: bytes) -> int | None:
    match = _SYSLOG_PRI.match(text)
    if match is None or int(match.group(1)) > 191:
        return None
    return int(match.group(1)) & 7
