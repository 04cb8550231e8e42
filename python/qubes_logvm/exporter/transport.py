"""The one long-lived ``qrexec-client-vm @default logvm.Send`` stream.

Role: multiplexes the sources' record lines into one stream, in batches with a
short flush delay; maps the collector's ``ack <N>`` lines back to source
positions (only acknowledged positions are ever committed); keeps a bounded
window of unacknowledged lines, resent in order on the next connection;
reconnects with exponential backoff and jitter, slowly when dom0's policy
denies the call (exit 126). A call that owes acks and neither acks nor ends
within ``ack_timeout`` (the LogVM paused, the collector stuck, qrexec hung)
is abandoned: killed, and its unacknowledged lines go again on the next one.

Trust side: what comes back on the stream's stdout is from the LogVM (or
whatever dom0 connected us to): read with a byte limit and parsed strictly;
anything else ends the connection.
"""

import asyncio
import contextlib
import fcntl
import logging
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..daemon_support import end_process

log = logging.getLogger(__name__)

EXIT_DENIED = 126
MAX_ACK_LINE = 64
_ACK = re.compile(rb"ack (0|[1-9][0-9]{0,18})\n")


class Acker(Protocol):
    """A source that learns which of its positions the LogVM has stored."""

    def acked(self, position: Any) -> None:
        """Everything up to and including ``position`` is acknowledged."""


class Chunk:
    """Record lines of one source, sent and acknowledged together.

    ``data`` is whole lines (each ends with ``\\n``); ``position`` is where
    the source stands after the last of them. The position is committed only
    when every line of the chunk is acknowledged; a partly acknowledged chunk
    keeps its unacknowledged tail, to be sent again on a new connection.
    One object per chunk (not per line) keeps the window cheap in CPU and memory.
    """

    __slots__ = ("data", "lines", "position", "source")

    def __init__(self, data: bytes, lines: int, source: Acker | None, position: Any) -> None:
        self.data = data
        self.lines = lines
        self.source = source
        self.position = position

    def drop_head(self, count: int) -> None:
        """Forget the first ``count`` lines (acknowledged), keep the rest."""
        end = -1
        for _ in range(count):
            end = self.data.index(b"\n", end + 1)
        self.data = self.data[end + 1 :]
        self.lines -= count


Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]
#: Asked of the kernel for the pipe into qrexec-client-vm: fewer, larger
#: writes and wake-ups (1 MiB is what an unprivileged process may ask).
PIPE_BYTES = 1 << 20
# After the acks end: how long qrexec-client-vm may take to exit by itself
# (its stdin closed) before it is killed (daemon_support.end_process).
END_GRACE = 2.0


#: A window's default bound: lines and bytes queued or sent, not yet acknowledged.
WINDOW_LINES = 20000
WINDOW_BYTES = 512 << 10


class Window:
    """The bound on lines queued or sent but not yet acknowledged.

    One per transport by default; dom0's per-qube delivery calls share one
    per LogVM, so memory stays within one window (plus one round of chunks)
    per LogVM however many qubes have a backlog, and a LogVM that never acks
    fills only its own window.
    """

    def __init__(self, lines: int = WINDOW_LINES, size: int = WINDOW_BYTES) -> None:
        self._max_lines = lines
        self._max_bytes = size
        self._lines = 0
        self._bytes = 0
        self._room = asyncio.Event()
        self._room.set()

    def has_room(self) -> bool:
        """True while there is room for another chunk."""
        return self._lines < self._max_lines and self._bytes < self._max_bytes

    async def wait_room(self) -> None:
        """Return once there is room for another chunk."""
        while not self.has_room():
            self._room.clear()
            await self._room.wait()

    def add(self, lines: int, size: int) -> None:
        """Count ``lines`` lines of ``size`` bytes in (room or not)."""
        self._lines += lines
        self._bytes += size

    def release(self, lines: int, size: int) -> None:
        """``lines`` lines of ``size`` bytes are acknowledged (or dropped)."""
        self._lines -= lines
        self._bytes -= size
        if self.has_room():
            self._room.set()


@dataclass
class TransportStats:
    """Counters for logs and the benchmark."""

    queued: int = 0
    written: int = 0
    acked: int = 0
    connections: int = 0
    denied: int = 0


class Transport:
    """Bounded, acknowledged, reconnecting line stream to the LogVM."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        max_lines: int = 1000,
        max_delay: float = 0.05,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        window: Window | None = None,
        ack_timeout: float = 60.0,
        spawn: Spawn = asyncio.create_subprocess_exec,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._command = list(command)
        self._max_lines = max_lines
        self._max_delay = max_delay
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._window = Window() if window is None else window
        self._ack_timeout = ack_timeout
        self._spawn = spawn
        self._rng = rng
        self._unsent: deque[Chunk] = deque()
        self._unacked: deque[Chunk] = deque()
        self._unsent_lines = 0
        self._lines = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = False
        self._failures = 0
        self.stats = TransportStats()

    # -- producer side -------------------------------------------------

    def pending(self) -> int:
        """Lines queued or sent but not yet acknowledged."""
        return self._lines

    def has_room(self) -> bool:
        """True while this transport's window has room for another chunk."""
        return self._window.has_room()

    async def put(
        self, data: bytes, lines: int, source: Acker | None = None, position: Any = None
    ) -> None:
        """Queue ``lines`` whole record lines; waits while the window is full.

        One chunk may overshoot the window (sources bound their chunks), so
        memory stays within the window plus one chunk.
        """
        await self._window.wait_room()
        self.queue(data, lines, source, position)

    def queue(
        self, data: bytes, lines: int, source: Acker | None = None, position: Any = None
    ) -> None:
        """Queue whole record lines now, even past the window: for a caller
        that checked :meth:`has_room` before reading them (and bounds what
        it reads), so it never waits on one stuck stream."""
        if not lines:
            return
        self._window.add(lines, len(data))
        self._unsent.append(Chunk(data, lines, source, position))
        self._unsent_lines += lines
        self._lines += lines
        self.stats.queued += lines
        if self._unsent_lines >= self._max_lines:
            self._full.set()
        self._wake.set()

    def finish(self) -> None:
        """No more lines will come: send the rest, then close the stream."""
        self._stopping = True
        self._wake.set()
        self._full.set()

    # -- connection loop -----------------------------------------------

    async def run(self) -> None:
        """Keep a connection up until :meth:`finish` and everything is acked."""
        while not (self._stopping and self.pending() == 0):
            got_ack, code = await self._connection()
            if self._stopping and self.pending() == 0:
                return
            await asyncio.sleep(self._next_delay(got_ack, code))

    def _next_delay(self, got_ack: bool, code: int | None) -> float:
        if code == EXIT_DENIED:
            self.stats.denied += 1
            self._failures = 0
            delay = self._backoff_max
            log.error(
                "logvm.Send was denied by dom0's qrexec policy (exit 126): check the "
                "policy for this qube; %d lines waiting, retrying in about %.0fs",
                self.pending(),
                delay,
            )
        else:
            self._failures = 0 if got_ack else self._failures + 1
            delay = min(self._backoff_max, self._backoff_initial * 2 ** min(self._failures, 30))
            log.warning(
                "stream to the LogVM ended (exit %s); %d lines waiting, reconnecting in %.1fs",
                code,
                self.pending(),
                delay,
            )
        return delay * (0.5 + self._rng() / 2)

    async def _connection(self) -> tuple[bool, int | None]:
        """One qrexec call: write lines, read acks, until it ends."""
        # Whatever was sent but not acked goes again, first, in order.
        self._unacked.extend(self._unsent)
        self._unsent, self._unacked = self._unacked, deque()
        self._unsent_lines = self._lines
        try:
            proc = await self._spawn(
                *self._command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=MAX_ACK_LINE,
            )
        except OSError as err:
            log.error("cannot run %s: %s", self._command[0], err.strerror)  # noqa: TRY400
            return False, None
        self.stats.connections += 1
        _grow_pipe(proc)
        writer = asyncio.create_task(self._write_loop(proc))
        got_ack = False
        try:
            got_ack = await self._read_acks(proc)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            code = await end_process(proc, END_GRACE)
        return got_ack, code

    async def _next_batch(self) -> list[Chunk] | None:
        """The chunks to write next (None: the stream is finished)."""
        while not self._unsent:
            if self._stopping and not self._unacked:
                return None
            self._wake.clear()
            await self._wake.wait()
        if self._unsent_lines < self._max_lines and not self._stopping:
            # Low rate: wait a little for more, so a batch is not one line.
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._max_delay)
        batch = list(self._unsent)
        self._unsent.clear()
        self._unsent_lines = 0
        return batch

    async def _write_loop(self, proc: asyncio.subprocess.Process) -> None:
        stdin = proc.stdin
        if stdin is None:
            return
        try:
            while await self._write_batch(stdin):
                pass
            stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            log.debug("stream closed while writing")

    async def _write_batch(self, stdin: asyncio.StreamWriter) -> bool:
        """Write the next batch; False once the stream is finished.

        A function of its own so that no reference to the batch outlives it:
        a chunk's bytes are freed as soon as it is acknowledged, not held by
        the writer while it waits for the next batch (one window per call).
        """
        batch = await self._next_batch()
        if batch is None:
            return False
        self._unacked.extend(batch)
        for chunk in batch:
            # Chunk by chunk, not joined: no second copy of the window
            # in memory; the (enlarged) pipe takes most of it at once.
            stdin.write(chunk.data)
            self.stats.written += chunk.lines
            await stdin.drain()
        return True

    async def _read_acks(self, proc: asyncio.subprocess.Process) -> bool:
        """Read ``ack N`` lines; return whether any arrived."""
        stdout = proc.stdout
        if stdout is None:
            return False
        acked_here = 0
        got_ack = False
        loop = asyncio.get_running_loop()
        since = loop.time()  # the last ack, or a moment nothing was owed
        while True:
            try:
                untrusted_line = await asyncio.wait_for(stdout.readline(), self._ack_timeout)
            except TimeoutError:
                # readline is cancel-safe: a partial line stays buffered.
                if not self._sent_lines():
                    since = loop.time()
                    continue
                if loop.time() - since < self._ack_timeout:
                    continue
                log.error(  # noqa: TRY400 (one line)
                    "no ack for %d lines within %.0fs (ack_timeout): abandoning the call, "
                    "they are sent again",
                    self._sent_lines(),
                    self._ack_timeout,
                )
                return got_ack
            except ValueError:
                log.error("the LogVM sent an overlong reply line; reconnecting")  # noqa: TRY400
                return got_ack
            if not untrusted_line:
                return got_ack
            match = _ACK.fullmatch(untrusted_line)
            if match is None:
                log.error("the LogVM sent a malformed reply %r; reconnecting", untrusted_line)
                return got_ack
            count = int(match.group(1)) - acked_here
            if count < 0 or count > self._sent_lines():
                log.error("the LogVM acknowledged lines never sent; reconnecting")
                return got_ack
            acked_here += count
            got_ack = True
            since = loop.time()
            self._release(count)

    def _sent_lines(self) -> int:
        return self._lines - self._unsent_lines

    def _release(self, count: int) -> None:
        """The first ``count`` sent lines are stored: tell their sources."""
        self._lines -= count
        self.stats.acked += count
        unacked = self._unacked
        lines, size = count, 0
        while count:
            chunk = unacked[0]
            if chunk.lines > count:
                size += len(chunk.data)
                chunk.drop_head(count)
                size -= len(chunk.data)
                break
            unacked.popleft()
            count -= chunk.lines
            size += len(chunk.data)
            if chunk.source is not None:
                chunk.source.acked(chunk.position)
        self._window.release(lines, size)
        if self._stopping and self._lines == 0:
            self._wake.set()


def _grow_pipe(proc: asyncio.subprocess.Process) -> None:
    """Ask for a larger pipe into qrexec-client-vm (best effort)."""
    pipe = proc.stdin.get_extra_info("pipe") if proc.stdin is not None else None
    if pipe is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
