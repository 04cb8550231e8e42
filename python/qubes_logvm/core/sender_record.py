"""The exporter's record line, as a reader parses it (floor 1).

Specified in docs/protocol.md, "Exporter record format"; written by
:func:`qubes_logvm.exporter.record.format_record`::

    <time> <host> <priority> <unit> <ident>[<pid>]: <message>

Every field is the sender's claim: the LogVM never checks a qube's clock,
hostname, unit or pid. Trust side: parses untrusted text strictly; a line
that does not match is not a record (callers show it as a plain message).
"""

import re
from typing import NamedTuple

from .escape import unescape

SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_RECORD = re.compile(
    rb"(\S+) (\S+) (emerg|alert|crit|err|warning|notice|info|debug|-) (\S+) "
    rb"([^ \[\]:]+)(?:\[([0-9]{1,10})\])?: (.*)",
    re.DOTALL,
)


class ParsedRecord(NamedTuple):
    """A record split into its fields (values unescaped)."""

    time: str
    host: str
    priority: str
    unit: str
    ident: str
    pid: int | None
    message: bytes

    @property
    def severity(self) -> int | None:
        """The priority as a number 0..7 (None: ``-``, unknown)."""
        return SEVERITIES.index(self.priority) if self.priority in SEVERITIES else None


def _untoken(value: bytes) -> str:
    return "" if value == b"-" else unescape(value).decode("utf-8", "replace")


def parse_sender_record(line: bytes) -> ParsedRecord:
    """Split a record line (without newline); raise ValueError if malformed."""
    match = _RECORD.fullmatch(line)
    if match is None:
        raise ValueError("not an exporter record")
    stamp, host, priority, unit, ident, pid, message = match.groups()
    return ParsedRecord(
        stamp.decode("ascii", "replace"),
        _untoken(host),
        priority.decode("ascii"),
        _untoken(unit),
        _untoken(ident),
        int(pid) if pid is not None else None,
        unescape(message),
    )
