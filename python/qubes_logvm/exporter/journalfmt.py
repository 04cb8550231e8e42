"""Journal entries to record lines, in bulk (the exporter's hot path).

Role: turns the raw field dictionaries of ``_Reader._get_all()`` into record
lines (format in docs/protocol.md) and applies the journal source's filters.
It is built for throughput, because every entry of the qube passes here:

- everything before the message (host, priority, unit, ident, pid) depends
  on a handful of fields that repeat from entry to entry, so that part is
  escaped and filtered once per distinct combination and cached (bounded);
- messages are escaped a whole chunk at a time (:func:`escape_block`), not
  one regex call per entry;
- the result is one ``bytes`` per chunk, not one object per line.

Trust side: entries are this qube's own logs, untrusted as far as escaping
goes: every field goes through :mod:`qubes_logvm.core.escape`.
"""

import fnmatch
from typing import Any

from ..core.escape import escape, escape_block
from .config import JournalConfig
from .record import severity_name, token

#: The fields a record needs, besides MESSAGE (the cache key of a head).
HEAD_FIELDS = (
    "_HOSTNAME",
    "PRIORITY",
    "_SYSTEMD_UNIT",
    "_SYSTEMD_USER_UNIT",
    "SYSLOG_IDENTIFIER",
    "_COMM",
    "SYSLOG_PID",
    "_PID",
)
#: Distinct heads kept (pids make them many on a busy qube); then start over.
MAX_HEADS = 4096
#: A filtered-out combination (cached like a head).
DROP = b""


def _text(value: object) -> bytes | None:
    """A field's value as bytes (the first one if the field repeats)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def _number(value: object) -> int | None:
    raw = _text(value)
    if raw is None or not raw.isdigit() or len(raw) > 10:
        return None
    return int(raw)


def _matches(value: bytes | None, patterns: tuple[str, ...]) -> bool:
    if value is None or not patterns:
        return False
    name = value.decode("utf-8", "replace")
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


class EntryFormatter:
    """Filters and formats journal entries; one instance per journal source."""

    def __init__(self, config: JournalConfig) -> None:
        self._config = config
        self._heads: dict[tuple[Any, ...], bytes] = {}

    def head(self, fields: dict[str, Any]) -> bytes:
        """`` host priority unit ident[pid]: `` for an entry, or :data:`DROP`."""
        key = tuple(map(fields.get, HEAD_FIELDS))
        try:
            return self._heads[key]
        except KeyError:
            pass
        except TypeError:  # a repeated field (a list): rare, not cached
            return self._make_head(key)
        if len(self._heads) >= MAX_HEADS:
            self._heads.clear()
        head = self._heads[key] = self._make_head(key)
        return head

    def _make_head(self, key: tuple[Any, ...]) -> bytes:
        host, priority_raw, unit, user_unit, ident, comm, syslog_pid, pid_raw = key
        priority = _number(priority_raw)
        unit_text = _text(unit) or _text(user_unit)
        ident_text = _text(ident) or _text(comm)
        if not self._wanted(priority, unit_text, ident_text):
            return DROP
        pid = _number(syslog_pid) or _number(pid_raw)
        head = b" %s %s %s %s" % (
            token(_text(host) or b""),
            severity_name(priority),
            token(unit_text),
            token(ident_text),
        )
        if pid is not None:
            head += b"[%d]" % pid
        return head + b": "

    def _wanted(self, priority: int | None, unit: bytes | None, ident: bytes | None) -> bool:
        config = self._config
        if priority is not None and priority > config.min_priority:
            return False
        units, idents = config.units, config.identifiers
        if _matches(unit, units.exclude) or _matches(ident, idents.exclude):
            return False
        if units.include or idents.include:
            return _matches(unit, units.include) or _matches(ident, idents.include)
        return True


def message_of(fields: dict[str, Any]) -> bytes:
    """The entry's MESSAGE as bytes (empty when missing)."""
    message = fields.get("MESSAGE", b"")
    if type(message) is bytes:
        return message
    return _text(message) or b""


def join_records(prefixes: list[bytes], untrusted_messages: list[bytes]) -> bytes:
    """Record lines from escaped prefixes (time and head) and raw messages.

    Messages are escaped as one block when none holds a newline (the block
    escaper treats newlines as separators); otherwise one by one.
    """
    block = b"\n".join(untrusted_messages)
    if block.count(b"\n") == len(untrusted_messages) - 1:
        messages = escape_block(block).split(b"\n")
    else:
        messages = [escape(message) for message in untrusted_messages]
    return b"\n".join(map(bytes.__add__, prefixes, messages)) + b"\n"
