"""Journal source: follows the local journal through systemd-python.

Role: reads entries with ``systemd.journal.Reader``, waits on the reader's
file descriptor in the event loop (no polling), filters by priority, unit and
identifier, turns entries into record lines, and saves the cursor of the last
*acknowledged* entry so that a restart resumes there. The backlog stays in
the journal: the reader simply stops reading while the transport's window is
full. Rotation and vacuum are handled by sd-journal (INVALIDATE); a saved
cursor whose entry was vacuumed resumes at the next entry that still exists.

Trust side: entries are this qube's own logs; every field is escaped by
:mod:`.record`.
"""

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Callable
from typing import Any

from ..config.exporter import JournalConfig
from .record import TimeFormatter, format_record, token
from .state import StateDir
from .transport import Item, Transport

log = logging.getLogger(__name__)

STATE_NAME = "journal"
CHUNK = 256
#: A safety net for file systems where inotify misses changes (sd_journal_get_timeout).
WAKE_SECONDS = 5.0
#: sd-journal keeps the journal files' pages it touched mapped until it is
#: closed; reopening now and then keeps those mappings (counted in our RSS) small.
REOPEN_ENTRIES = 20000

ReaderFactory = Callable[[], Any]


def _default_reader() -> Any:
    from systemd import journal  # type: ignore[attr-defined]

    return journal.Reader()


def _text(value: object) -> bytes | None:
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
    if value is None:
        return False
    name = value.decode("utf-8", "replace")
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


class JournalSource:
    """The local journal, resumable from an acknowledged cursor."""

    name = "journal"

    def __init__(
        self, config: JournalConfig, state: StateDir, reader: ReaderFactory = _default_reader
    ) -> None:
        self._config = config
        self._state = state
        self._factory = reader
        self._reader = reader()
        self._since_open = 0
        self._last_read: str | None = None
        self._times = TimeFormatter()
        self._acked_cursor: str | None = None
        self._saved_cursor: str | None = None
        self._hosts: dict[bytes, bytes] = {}
        self.skipped = 0
        self._position()

    def _position(self) -> None:
        """Seek to just after the saved cursor, or to the start of this boot."""
        cursor = self._state.load(STATE_NAME).get("cursor")
        reader = self._reader
        if isinstance(cursor, str) and cursor:
            self._acked_cursor = self._saved_cursor = cursor
            reader.seek_cursor(cursor)
            if reader._next() and not reader.test_cursor(cursor):
                log.warning("journal: saved entry is gone (vacuumed); resuming after it")
                reader._previous()
            log.info("journal: resuming after the saved cursor")
            return
        # First start: everything of the current boot, not of older boots.
        reader.this_boot()
        reader.seek_head()
        first = reader._get_cursor() if reader._next() else None
        reader.flush_matches()
        if first is None:
            reader.seek_tail()
            reader._previous()
        else:
            reader.seek_cursor(first)
        log.info("journal: no saved cursor; starting at this boot's first entry")

    def _wanted(self, fields: dict[str, Any]) -> bool:
        config = self._config
        priority = _number(fields.get("PRIORITY"))
        if priority is not None and priority > config.min_priority:
            return False
        unit = _text(fields.get("_SYSTEMD_UNIT")) or _text(fields.get("_SYSTEMD_USER_UNIT"))
        ident = _text(fields.get("SYSLOG_IDENTIFIER")) or _text(fields.get("_COMM"))
        units, idents = config.units, config.identifiers
        if _matches(unit, units.exclude) or _matches(ident, idents.exclude):
            return False
        if units.include or idents.include:
            return _matches(unit, units.include) or _matches(ident, idents.include)
        return True

    def _format(self, fields: dict[str, Any], usec: int) -> bytes:
        host = _text(fields.get("_HOSTNAME")) or b""
        host_token = self._hosts.get(host)
        if host_token is None:
            host_token = self._hosts.setdefault(host, token(host))
        unit = _text(fields.get("_SYSTEMD_UNIT")) or _text(fields.get("_SYSTEMD_USER_UNIT"))
        ident = _text(fields.get("SYSLOG_IDENTIFIER")) or _text(fields.get("_COMM"))
        pid = _number(fields.get("SYSLOG_PID")) or _number(fields.get("_PID"))
        message = _text(fields.get("MESSAGE")) or b""
        priority = _number(fields.get("PRIORITY"))
        return format_record(
            self._times.format(usec), host_token, priority, unit, ident, pid, message
        )

    def read_chunk(self) -> list[Item]:
        """Up to :data:`CHUNK` wanted entries that are available now."""
        reader = self._reader
        items: list[Item] = []
        for _ in range(CHUNK):
            if not reader._next():
                break
            self._since_open += 1
            fields = reader._get_all()
            if not self._wanted(fields):
                self.skipped += 1
                continue
            line = self._format(fields, reader._get_realtime())
            items.append((line, self, reader._get_cursor()))
        if items:
            self._last_read = items[-1][2]
        if self._since_open >= REOPEN_ENTRIES and self._last_read is not None:
            self._reopen(self._last_read)
        return items

    def _reopen(self, cursor: str) -> None:
        """A fresh reader positioned after ``cursor`` (the last entry read)."""
        self._reader.close()
        self._reader = self._factory()
        self._reader.seek_cursor(cursor)
        if self._reader._next() and not self._reader.test_cursor(cursor):
            self._reader._previous()  # that entry was vacuumed meanwhile
        self._since_open = 0

    async def run(self, transport: Transport, stop: asyncio.Event) -> None:
        """Ship entries until ``stop`` is set and the journal's end is reached."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = self._reader.fileno()
        loop.add_reader(fd, ready.set)
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                items = self.read_chunk()
                if self._reader.fileno() != fd:
                    loop.remove_reader(fd)
                    fd = self._reader.fileno()
                    loop.add_reader(fd, ready.set)
                if items:
                    await transport.put(items)
                    continue
                if stop.is_set():
                    return
                waiter = asyncio.create_task(ready.wait())
                await asyncio.wait(
                    {waiter, stopper}, timeout=WAKE_SECONDS, return_when="FIRST_COMPLETED"
                )
                waiter.cancel()
                ready.clear()
                self._reader.process()
        finally:
            loop.remove_reader(fd)
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper

    def acked(self, position: Any) -> None:
        """The LogVM has stored everything up to this cursor."""
        self._acked_cursor = position

    def flush(self) -> None:
        """Save the acknowledged cursor if it moved."""
        if self._acked_cursor is not None and self._acked_cursor != self._saved_cursor:
            self._state.save(STATE_NAME, {"cursor": self._acked_cursor})
            self._saved_cursor = self._acked_cursor

    def close(self) -> None:
        """Release the journal."""
        self._reader.close()
