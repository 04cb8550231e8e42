"""The one long-lived ``qrexec-client-vm @default logvm.Send`` stream.

Role: multiplexes the sources' record lines into one stream, in batches with a
short flush delay; maps the collector's ``ack <N>`` lines back to source
positions (only acknowledged positions are ever committed); keeps a bounded
window of unacknowledged lines, resent in order on the next connection;
reconnects with exponential backoff and jitter, slowly when dom0's policy
denies the call (exit 126).

Trust side: what comes back on the stream's stdout is from the LogVM (or
whatever dom0 connected us to): read with a byte limit and parsed strictly;
anything else ends the connection.
"""

import asyncio
import contextlib
import logging
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

EXIT_DENIED = 126
MAX_ACK_LINE = 64
_ACK = re.compile(rb"ack (0|[1-9][0-9]{0,18})\n")


class Acker(Protocol):
    """A source that learns which of its positions the LogVM has stored."""

    def acked(self, position: Any) -> None:
        """Everything up to and including ``position`` is acknowledged."""


#: One queued line: the bytes, who to tell when acked, and its position there.
Item = tuple[bytes, Acker | None, Any]
Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


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
        window_lines: int = 5000,
        window_bytes: int = 1 << 20,
        spawn: Spawn = asyncio.create_subprocess_exec,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._command = list(command)
        self._max_lines = max_lines
        self._max_delay = max_delay
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._window_lines = window_lines
        self._window_bytes = window_bytes
        self._spawn = spawn
        self._rng = rng
        self._unsent: deque[Item] = deque()
        self._unacked: deque[Item] = deque()
        self._bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = False
        self._failures = 0
        self.stats = TransportStats()

    # -- producer side -------------------------------------------------

    def pending(self) -> int:
        """Lines queued or sent but not yet acknowledged."""
        return len(self._unsent) + len(self._unacked)

    def has_room(self) -> bool:
        """True while the window of unacknowledged lines has room."""
        return self.pending() < self._window_lines and self._bytes < self._window_bytes

    async def put(self, items: Sequence[Item]) -> None:
        """Queue lines; waits while the window is full (backpressure)."""
        while not self.has_room():
            self._room.clear()
            await self._room.wait()
        self._unsent.extend(items)
        self._bytes += sum(len(item[0]) for item in items)
        self.stats.queued += len(items)
        if len(self._unsent) >= self._max_lines:
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
        writer = asyncio.create_task(self._write_loop(proc))
        got_ack = False
        try:
            got_ack = await self._read_acks(proc)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            code = await asyncio.shield(proc.wait())
        return got_ack, code

    async def _write_loop(self, proc: asyncio.subprocess.Process) -> None:
        stdin = proc.stdin
        if stdin is None:
            return
        try:
            while True:
                if not self._unsent:
                    if self._stopping and not self._unacked:
                        stdin.close()
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if len(self._unsent) < self._max_lines and not self._stopping:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._max_delay)
                batch = [
                    self._unsent.popleft() for _ in range(min(len(self._unsent), self._max_lines))
                ]
                self._unacked.extend(batch)
                stdin.write(b"".join(item[0] for item in batch))
                self.stats.written += len(batch)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            log.debug("stream closed while writing")

    async def _read_acks(self, proc: asyncio.subprocess.Process) -> bool:
        """Read ``ack N`` lines; return whether any arrived."""
        stdout = proc.stdout
        if stdout is None:
            return False
        acked_here = 0
        got_ack = False
        while True:
            try:
                untrusted_line = await stdout.readline()
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
            if count < 0 or count > len(self._unacked):
                log.error("the LogVM acknowledged lines never sent; reconnecting")
                return got_ack
            acked_here += count
            got_ack = True
            self._release(count)

    def _release(self, count: int) -> None:
        """The first ``count`` sent lines are stored: tell their sources."""
        last: dict[int, tuple[Acker, Any]] = {}
        released = 0
        for _ in range(count):
            line, source, position = self._unacked.popleft()
            released += len(line)
            if source is not None:
                last[id(source)] = (source, position)
        self._bytes -= released
        self.stats.acked += count
        for source, position in last.values():
            source.acked(position)
        if self.has_room():
            self._room.set()
        if self._stopping and self.pending() == 0:
            self._wake.set()
