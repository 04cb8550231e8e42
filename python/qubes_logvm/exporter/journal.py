"""Journal source: follows the local journal through systemd-python.

Role: reads entries with python-systemd's C-level reader, waits on the
reader's file descriptor in the event loop (no polling), filters by priority,
unit and identifier, turns entries into record lines (in chunks, through
:mod:`.journalfmt`), and saves the cursor of the last
*acknowledged* entry so that a restart resumes there. The backlog stays in
the journal: the reader simply stops reading while the transport's window is
full. Rotation and vacuum are handled by sd-journal (INVALIDATE); a saved
cursor whose entry was vacuumed resumes at the next entry that still exists.

Trust side: entries are this qube's own logs; every field is escaped by
:mod:`.journalfmt`.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import JournalConfig
from .journalfmt import DROP, EntryFormatter, join_records, message_of
from .record import TimeFormatter
from .state import StateDir
from .transport import Transport

log = logging.getLogger(__name__)

STATE_NAME = "journal"
#: Entries read per step, and the bytes of message after which a step ends:
#: big enough to amortise the per-chunk work, small next to the window.
CHUNK_ENTRIES = 512
CHUNK_BYTES = 32 << 10
#: A safety net for file systems where inotify misses changes (sd_journal_get_timeout).
WAKE_SECONDS = 5.0
#: journald tells readers about new entries only every 250 ms, and its event
#: loop's timer slack makes that 250-500 ms: the wait that dominated latency.
#: While entries keep coming (the last one less than ACTIVE_SECONDS ago) the
#: journal is also looked at every ACTIVE_POLL_SECONDS (a cheap ``_next()``);
#: an idle qube only waits on the descriptor.
ACTIVE_POLL_SECONDS = 0.025
ACTIVE_SECONDS = 2.0
#: sd-journal keeps the journal files' pages it touched mapped until it is
#: closed (they count in our RSS); so the journal is reopened after this many
#: bytes of messages (a reopen costs well under a millisecond), and whenever
#: the exporter goes idle after reading anything.
REOPEN_BYTES = 1 << 20
ENTRY_OVERHEAD = 256
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
#: sd_journal_process(): journal files were added or removed.
INVALIDATE = 2

ReaderFactory = Callable[[], Any]


def _default_reader() -> Any:
    """The local journal through the C-level reader of python-systemd.

    Not ``systemd.journal.Reader``: its converters and imports (uuid,
    datetime) cost time per entry and memory in every qube.
    """
    from systemd import _reader  # type: ignore[attr-defined]

    return _reader._Reader(_reader.LOCAL_ONLY)


class JournalSource:
    """The local journal, resumable from an acknowledged cursor."""

    name = "journal"

    def __init__(
        self, config: JournalConfig, state: StateDir, reader: ReaderFactory = _default_reader
    ) -> None:
        self._state = state
        self._factory = reader
        # Two readers. The watcher only provides the wake-up descriptor
        # (inotify) and is never read, so it maps next to nothing and is
        # never reopened. Entries are read from a reader without inotify:
        # reopening that one (to drop its mappings, or to see a new file
        # after rotation) costs well under a millisecond, while closing an
        # inotify descriptor on the live journal takes ~15 ms (the kernel
        # waits for a grace period), which halved the throughput.
        self._watch = reader()
        self._watch.fileno()  # before anything is read: no wake-up is missed
        self._reader = reader()
        self._since_open = 0
        self._last_read: str | None = None
        self._times = TimeFormatter()
        self._formatter = EntryFormatter(config)
        self._acked_cursor: str | None = None
        self._saved_cursor: str | None = None
        self.skipped = 0
        self._position()

    def _position(self) -> None:
        """Seek to just after the saved cursor, or to the start of this boot."""
        cursor = self._state.load(STATE_NAME).get("cursor")
        reader = self._reader
        if isinstance(cursor, str) and cursor:
            self._acked_cursor = self._saved_cursor = self._last_read = cursor
            reader.seek_cursor(cursor)
            if reader._next() and not reader.test_cursor(cursor):
                log.warning("journal: saved entry is gone (vacuumed); resuming after it")
                reader._previous()
            log.info("journal: resuming after the saved cursor")
            return
        # First start: everything of the current boot, not of older boots.
        boot = BOOT_ID.read_text().strip().replace("-", "")
        reader.add_match(f"_BOOT_ID={boot}")
        reader.seek_head()
        first = reader._get_cursor() if reader._next() else None
        reader.flush_matches()
        if first is None:
            reader.seek_tail()
            reader._previous()
        else:
            reader.seek_cursor(first)
        log.info("journal: no saved cursor; starting at this boot's first entry")

    def read_chunk(self) -> tuple[bytes, int, int]:
        """Record lines of the wanted entries available now, how many, and entries read.

        Reads up to :data:`CHUNK_ENTRIES` entries or :data:`CHUNK_BYTES` of
        messages; the last entry read (wanted or not) is the position.
        """
        reader = self._reader
        next_entry, get_all, realtime = reader._next, reader._get_all, reader._get_realtime
        head_of, stamp = self._formatter.head, self._times.format
        prefixes: list[bytes] = []
        messages: list[bytes] = []
        size = read = 0
        while read < CHUNK_ENTRIES and size < CHUNK_BYTES and next_entry():
            read += 1
            fields = get_all()
            message = message_of(fields)
            size += len(message)
            head = head_of(fields)
            if head is DROP:
                continue
            prefixes.append(stamp(realtime()) + head)
            messages.append(message)
        if not read:
            return b"", 0, 0
        # Roughly the journal bytes walked: messages plus per-entry objects.
        self._since_open += size + ENTRY_OVERHEAD * read
        self.skipped += read - len(messages)
        self._last_read = reader._get_cursor()
        if not messages:
            return b"", 0, read
        return join_records(prefixes, messages), len(messages), read

    def _reopen(self) -> None:
        """A fresh reader positioned after the last entry read."""
        cursor = self._last_read
        self._reader.close()
        self._reader = self._factory()
        self._since_open = 0
        if cursor is None:
            self._position()
            return
        self._reader.seek_cursor(cursor)
        if self._reader._next() and not self._reader.test_cursor(cursor):
            self._reader._previous()  # that entry was vacuumed meanwhile

    async def run(self, transport: Transport, stop: asyncio.Event) -> None:
        """Ship entries until ``stop`` is set and the journal's end is reached."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = self._watch.fileno()
        loop.add_reader(fd, ready.set)
        stopper = asyncio.create_task(stop.wait())
        active_until = 0.0
        try:
            while True:
                if self._since_open >= REOPEN_BYTES:
                    self._reopen()
                data, lines, read = self.read_chunk()
                if lines:
                    await transport.put(data, lines, self, self._last_read)
                if read:
                    active_until = loop.time() + ACTIVE_SECONDS
                    continue
                if stop.is_set():
                    return
                active = loop.time() < active_until
                if not active and self._since_open:
                    self._since_open = REOPEN_BYTES  # going idle: drop the mappings
                    continue
                waiter = asyncio.create_task(ready.wait())
                await asyncio.wait(
                    {waiter, stopper},
                    timeout=ACTIVE_POLL_SECONDS if active else WAKE_SECONDS,
                    return_when="FIRST_COMPLETED",
                )
                waiter.cancel()
                ready.clear()
                if self._watch.process() == INVALIDATE:
                    # Files were added or removed (rotation, vacuum): only
                    # a fresh reader sees a new file.
                    self._since_open = REOPEN_BYTES
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
        self._watch.close()
