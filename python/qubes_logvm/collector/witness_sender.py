"""Sending checkpoints from the LogVM to the witness (floor 3, the collector).

Trust side: runs in the LogVM, inside the collector. It sends the newest seal
line of each qube to the ``logvm.Witness`` service over one long-lived
qrexec call; the witness (dom0) is trusted, but its answers are still
checked against the reply grammar.

Seams (what the collector and ``logvm setup-keys`` call):

- ``sender = CheckpointSender(store_root)``; ``sender.start()`` inside the
  collector's event loop; ``Store(root, on_seal=sender.submit)`` so every
  seal (``open``/``batch``/``tick``/``close``/``recover``) is offered; at
  shutdown ``await sender.flush(timeout)`` then ``await sender.stop()``.
  :meth:`CheckpointSender.submit` is synchronous, O(1), does no I/O and never
  blocks: the newest seal per qube wins, at most ``max_qubes`` qubes are
  held, so if the witness is unreachable checkpoints wait (bounded) and
  ingest goes on. Call it only after the seal line is durable (the writer
  fdatasyncs before ``on_seal``): the witness must never hold a seal the
  store could lose in a crash.
- ``logvm setup-keys`` queues the key registration in the store
  (:mod:`qubes_logvm.store.witness_pending`). The sender sends it first on
  every connection until the witness answers ``ok registered``/``ok known``,
  then overwrites and deletes it: from then on ``K[0]`` exists nowhere in
  the LogVM. :func:`register_key` does the same at once (one qrexec call)
  for a CLI that wants to report the outcome; on failure the queued file
  stays for the collector to send.

The wire format and replies are in :mod:`qubes_logvm.core.witness_format`
and docs/witness.md.
"""

import asyncio
import contextlib
import logging
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.epochseal import EpochLine
from ..core.errors import ProtocolError, SealError
from ..core.names import WITNESS_SERVICE
from ..core.retire import Retire
from ..core.seal import Seal
from ..core.tomb import Tomb
from ..core.warnings import RepeatedWarning
from ..core.witness_format import CostLine, SettingsLine
from ..daemon_support import end_process
from ..store.witness_pending import (
    erase_registration,
    pending_path,
    queue_registration,
    read_registration,
)

log = logging.getLogger(__name__)
#: A witness that keeps refusing or stays unreachable: once per interval.
_REFUSED = RepeatedWarning(log)
_UNREACHABLE = RepeatedWarning(log)

DEFAULT_COMMAND = ("qrexec-client-vm", "dom0", WITNESS_SERVICE)
_REPLY = re.compile(rb"(ok|err) [a-z-]{1,32}\n")
#: Not processed now, send again later (the epoch cap grows with dom0's clock).
_RETRY_LATER = (b"err rate-limit", b"err busy", b"err epoch-jump")
#: The witness ends the call (call-limit: after its last answer, the rest unanswered).
_CALL_LIMIT = b"err call-limit"
_RECONNECT = (b"err reset", b"err locked", _CALL_LIMIT)
_MAX_REPLY = 64
#: Per qube, a queue slot of their own for deletions and cost notes (a space
#: is never in a qube name); checkpoints take the qube's name.
_SLOTS = {b"t1 tomb": " deletion", b"k1 cost": " cost"}


def _slot(version: bytes, kind: bytes) -> str | None:
    """The queue slot suffix of a per-qube line, None for lines never sent
    (v1 tomb lines, compaction summaries)."""
    if version == b"v1":
        return None if kind == b"tomb" else ""
    return _SLOTS.get(version + b" " + kind)


class _CallEnded(ProtocolError):
    """The witness ended the call at its limit: reconnect at once, quietly."""


def _check_reply(raw: bytes) -> bytes:
    if not _REPLY.fullmatch(raw):
        raise ProtocolError(f"unexpected answer from the witness: {raw[:_MAX_REPLY]!r}")
    return raw[:-1]


def register_key(
    store_root: Path | str,
    verification_key: str,
    *,
    command: Sequence[str] = DEFAULT_COMMAND,
    timeout: float = 60.0,
) -> str:
    """Queue the key, then register it now; return the witness's answer.

    On ``ok ...`` the queued copy is erased; otherwise it stays and the
    collector's sender delivers it later. Raises ProtocolError when the
    witness cannot be reached.
    """
    path = queue_registration(store_root, verification_key)
    line = read_registration(path) or b""
    try:
        done = subprocess.run(
            list(command), input=line + b"\n", capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ProtocolError(f"cannot reach the witness: {err}") from err
    reply = _check_reply(done.stdout[:_MAX_REPLY].split(b"\n", 1)[0] + b"\n")
    if reply.startswith(b"ok "):
        erase_registration(path)
    return reply.decode("ascii")


class CheckpointSender:
    """Keeps one qrexec call to the witness open and feeds it checkpoints."""

    def __init__(
        self,
        store_root: Path | str,
        *,
        command: Sequence[str] = DEFAULT_COMMAND,
        interval: float = 5.0,
        heartbeat: float = 60.0,
        max_qubes: int = 4096,
        backoff: tuple[float, float] = (1.0, 60.0),
        reply_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = list(command)
        self.clock = clock  # heartbeat and flush deadlines (tests inject one)
        self.pending = pending_path(store_root)
        self.interval = interval
        self.heartbeat = heartbeat
        self.max_qubes = max_qubes
        self.backoff = backoff
        self.reply_timeout = reply_timeout
        self.queue: dict[str, bytes] = {}  # qube -> newest seal line not yet answered
        self.stats = {
            "submitted": 0,
            "stored": 0,
            "refused": 0,
            "later": 0,  # not processed now (rate, budget, epoch cap): sent again
            "dropped": 0,
            "connects": 0,
        }
        self.connected = False
        self._last_line: bytes | None = None
        self._last_send = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._proc: asyncio.subprocess.Process | None = None

    def submit(
        self, seal: Seal | Tomb | EpochLine | SettingsLine | CostLine | Retire | bytes
    ) -> None:
        """Offer the newest seal, or the newest deletion, of a qube (never blocks, no I/O).

        Deletions take a qube's oldest segment first, so the newest tomb
        stands for all before it: one queued per qube, like checkpoints; so
        does the newest cost note (what the qube counted when deleted for its
        quota: the verifier judges each quota deletion by the first note at
        or after it).
        Format 2's store-wide epoch lines take one slot of their own (the
        newest stands for the epochs before it).
        """
        line = seal if isinstance(seal, bytes) else seal.to_line()
        line = line.rstrip(b"\n")
        if line.startswith(b"s1 settings "):
            self.queue[" settings"] = line  # the newest settings note stands for the rest
            self.stats["submitted"] += 1
            return
        if line.startswith(b"v2 "):
            if line.startswith(b"v2 epoch "):  # gap lines are the store's own business
                self.queue[" epoch"] = line  # a space is never in a qube name
                self.stats["submitted"] += 1
            return
        if line.startswith(b"r1 retire "):  # r1 retire <epoch> t1 <kind> <qube> ...
            parts = line.split(b" ", 6)
            if len(parts) == 7:
                self._enqueue(parts[5].decode("ascii", "replace") + " retire", line)
            return
        parts = line.split(b" ", 3)
        slot = _slot(parts[0], parts[1]) if len(parts) == 4 else None
        if slot is None:
            return  # v1 tomb lines and compaction summaries are not sent
        self._enqueue(parts[2].decode("ascii", "replace") + slot, line)

    def _enqueue(self, slot: str, line: bytes) -> None:
        if slot not in self.queue and len(self.queue) >= 2 * self.max_qubes:
            self.stats["dropped"] += 1
            return
        self.queue[slot] = line
        self.stats["submitted"] += 1

    def start(self) -> None:
        """Start the sending task in the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="witness-sender")

    async def flush(self, timeout: float) -> bool:
        """Send what is queued now; True if the queue emptied within ``timeout``."""
        deadline = self.clock() + timeout
        while (self.queue or self.pending.exists()) and self.clock() < deadline:
            if self._wake is not None:
                self._wake.set()
            await asyncio.sleep(0.05)
        return not self.queue

    async def stop(self) -> None:
        """Stop sending and end the qrexec call."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._end_call()

    async def run(self) -> None:
        """Connect, send, reconnect with backoff; forever."""
        if self._wake is None:
            self._wake = asyncio.Event()
        delay = self.backoff[0]
        while True:
            try:
                await self._session()
                delay = self.backoff[0]
            except _CallEnded:
                # Not a fault (a call lasts at most an hour): no warning.
                log.debug("witness: the call reached its limit; reconnecting")
                delay = self.backoff[0]
            except (OSError, ProtocolError, TimeoutError, SealError) as err:
                _UNREACHABLE.warn("", "witness: %s; retrying in %.1fs", err, delay)
            finally:
                self.connected = False
                await self._end_call()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _session(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self._proc = proc
        self.stats["connects"] += 1
        await self._register()
        self.connected = True
        wake = self._wake or asyncio.Event()
        while True:
            await self._send_batch()
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval)

    async def _exchange(self, lines: list[bytes]) -> list[bytes]:
        """Write lines (pipelined), read one answer per line."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise ProtocolError("no call to the witness")
        proc.stdin.write(b"".join(line + b"\n" for line in lines))
        await proc.stdin.drain()
        self._last_send = self.clock()
        replies: list[bytes] = []
        while len(replies) < len(lines):
            raw = await asyncio.wait_for(proc.stdout.readline(), self.reply_timeout)
            if not raw:
                raise ProtocolError("the witness ended the call")
            replies.append(_check_reply(raw))
            if replies[-1] == _CALL_LIMIT:  # the call ends: nothing after it was read
                replies += [_CALL_LIMIT] * (len(lines) - len(replies))
        return replies

    async def _register(self) -> None:
        line = read_registration(self.pending)
        if line is None:
            return
        (reply,) = await self._exchange([line])
        if reply.startswith(b"ok "):
            erase_registration(self.pending)
            log.info("witness: verification key registered (%s)", reply.decode())
        elif reply in _RETRY_LATER or reply in _RECONNECT:
            raise ProtocolError(f"witness answered {reply.decode()} to the registration")
        else:
            log.error(
                "witness refused the verification key (%s): if the store was re-keyed on "
                "purpose, run `logvm-witness reset-key` in the witness qube",
                reply.decode(),
            )

    async def _send_batch(self) -> None:
        # Entries stay queued until answered, so a broken call loses nothing
        # and a newer submit() meanwhile simply replaces the line in flight.
        batch = list(self.queue.items())
        if not batch:
            if self._last_line is None or self.clock() - self._last_send < self.heartbeat:
                return
            batch = [("", self._last_line)]  # heartbeat: the witness answers "ok seen"
        replies = await self._exchange([line for _, line in batch])
        retry = False
        for (qube, line), reply in zip(batch, replies, strict=True):
            if self._judge(qube, line, reply):
                retry = True
            elif qube and self.queue.get(qube) == line:
                del self.queue[qube]
        if _CALL_LIMIT in replies:
            raise _CallEnded
        if any(reply in _RECONNECT for reply in replies):
            raise ProtocolError("the witness asked to reconnect")
        if retry:
            await asyncio.sleep(self.backoff[0])

    def _judge(self, qube: str, line: bytes, reply: bytes) -> bool:
        """Count an answer; True when the checkpoint should be sent again."""
        if reply in _RETRY_LATER or reply in _RECONNECT:
            self.stats["later"] += reply in _RETRY_LATER
            return True
        if reply.startswith(b"ok "):
            self.stats["stored"] += reply == b"ok stored"
            self._last_line = line
            return False
        self.stats["refused"] += 1
        _REFUSED.warn(
            qube, "witness refused the checkpoint of %s: %s", qube or "-", reply.decode()
        )
        return False

    async def _end_call(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        await end_process(proc, 2.0)
