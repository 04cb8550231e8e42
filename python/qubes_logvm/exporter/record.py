"""The exporter's record line (specified in docs/protocol.md, "Exporter record format").

One record is one line of UTF-8::

    <time> <host> <priority> <unit> <ident>[<pid>]: <message>

- time: the source's time as the qube reports it, RFC 3339 with
  microseconds and the qube's UTC offset (``2026-11-28T18:05:26.123456+01:00``);
- host, priority, unit: single tokens, ``-`` when unknown; priority is a
  syslog severity keyword (``emerg`` ... ``debug``);
- ident: the syslog identifier / command / file tag, ``-`` when unknown,
  followed by ``[pid]`` only when a pid is known, then ``": "``;
- message: the rest of the line.

Every field goes through :func:`qubes_logvm.core.escape.escape`, so no
record holds a control character or newline; token fields additionally
escape space, TAB, ``[``, ``]`` and ``:`` as ``\\xHH`` so that splitting is
unambiguous. Trust side: pure formatting of the qube's own (untrusted) log
data; parsing is :func:`qubes_logvm.core.sender_record.parse_sender_record`
(readers use it too).
"""

import re
import time

from ..core.escape import escape, escape_block
from ..core.sender_record import SEVERITIES

_SEVERITY_BYTES = [s.encode("ascii") for s in SEVERITIES]
_TOKEN_EXTRA = re.compile(rb"[ \t\[\]:]")


def severity_name(priority: int | None) -> bytes:
    """The keyword of a syslog severity 0..7 (``-`` when unknown)."""
    if priority is None or not 0 <= priority <= 7:
        return b"-"
    return _SEVERITY_BYTES[priority]


def token(value: bytes | str | None) -> bytes:
    """Escape one token field (no spaces, brackets or colons); ``-`` if empty."""
    if value is None:
        return b"-"
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if not raw:
        return b"-"
    if raw == b"-":
        return b"\\x2d"  # a real "-" must not read as "unknown"
    return _TOKEN_EXTRA.sub(lambda m: b"\\x%02x" % m.group()[0], escape(raw))


class TimeFormatter:
    """Formats Unix times as local RFC 3339 with offset; caches per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""
        self._offset = b""

    def format(self, unix_usec: int) -> bytes:
        """``YYYY-MM-DDTHH:MM:SS.ffffff+HH:MM`` in the qube's local time."""
        second, usec = divmod(unix_usec, 1_000_000)
        if second != self._second:
            local = time.localtime(second)
            offset = local.tm_gmtoff or 0
            sign = "+" if offset >= 0 else "-"
            hours, minutes = divmod(abs(offset) // 60, 60)
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", local).encode("ascii")
            self._offset = f"{sign}{hours:02d}:{minutes:02d}".encode("ascii")
            self._second = second
        return b"%s.%06d%s" % (self._prefix, usec, self._offset)


def format_record(
    stamp: bytes,
    host: bytes,
    priority: int | None,
    unit: bytes | str | None,
    ident: bytes | str | None,
    pid: int | None,
    untrusted_message: bytes,
) -> bytes:
    """One record line, newline included. ``stamp`` and ``host`` are tokens already."""
    head = b"%s %s %s %s %s" % (stamp, host, severity_name(priority), token(unit), token(ident))
    if pid is not None and 0 <= pid < 10**10:
        head += b"[%d]" % pid
    return b"%s: %s\n" % (head, escape(untrusted_message))


def format_records(
    stamp: bytes,
    host: bytes,
    priority: int | None,
    unit: bytes | str | None,
    ident: bytes | str | None,
    pid: int | None,
    untrusted_messages: list[bytes],
) -> bytes:
    """Records sharing every field but the message: the same bytes as joining
    :func:`format_record` of each, with one head and one escaping pass
    (:func:`escape_block`) for them all instead of three per line."""
    joined = b"\n".join(untrusted_messages)
    if not untrusted_messages or joined.count(b"\n") != len(untrusted_messages) - 1:
        # None, or a message holding a newline (escaped, not a separator).
        return b"".join(
            [format_record(stamp, host, priority, unit, ident, pid, m) for m in untrusted_messages]
        )
    head = format_record(stamp, host, priority, unit, ident, pid, b"")[:-1]
    return head + escape_block(joined).replace(b"\n", b"\n" + head) + b"\n"
