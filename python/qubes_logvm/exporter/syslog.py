"""Syslog source: a local listener for rsyslog, syslog-ng and syslog(3) callers.

Role: receives RFC 3164 and RFC 5424 messages on a Unix datagram socket
(like ``/dev/log``) and, optionally, on UDP and TCP ports bound to loopback
only; turns each into a record line. Syslog has no position to resume from:
received messages wait in a bounded queue (and then in the transport's
window); when both are full, datagrams are counted and dropped and a record
says how many, TCP senders are simply not read (backpressure).

Trust side: any local process can write to the socket, exactly as to
``/dev/log``; messages are parsed leniently (anything unparsable is shipped
whole as the message) and every field is escaped by :mod:`.record`.
"""

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import SyslogConfig
from .record import TimeFormatter, format_record, token
from .transport import Transport

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 << 10
QUEUE_LIMIT = 10000
_PRI = re.compile(rb"<([0-9]{1,3})>")
_RFC5424 = re.compile(
    rb"1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (.*))?", re.DOTALL
)
_RFC3164_TIME = re.compile(rb"([A-Z][a-z]{2}) ([ 0-9][0-9]) ([0-9]{2}:[0-9]{2}:[0-9]{2}) ")
_TAG = re.compile(rb"([^\s\[\]:]{1,64})(?:\[([0-9]{1,10})\])?: ?")


def _time_3164(untrusted_stamp: bytes, now: float) -> int | None:
    """Mmm dd hh:mm:ss has no year or zone: the qube's local time, this year."""
    try:
        text = untrusted_stamp.decode("ascii").replace("  ", " ")
        year = time.localtime(now).tm_year
        parsed = time.strptime(f"{year} {text}", "%Y %b %d %H:%M:%S")
        stamp = time.mktime(parsed)
        if stamp > now + 86400:  # December's messages read in January
            parsed = time.strptime(f"{year - 1} {text}", "%Y %b %d %H:%M:%S")
            stamp = time.mktime(parsed)
    except (ValueError, OverflowError):
        return None
    return int(stamp) * 1_000_000


def _time_5424(untrusted_stamp: bytes) -> int | None:
    try:
        moment = datetime.fromisoformat(untrusted_stamp.decode("ascii").replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp() * 1_000_000)


def _nil(value: bytes) -> bytes | None:
    return None if value == b"-" else value


def parse_syslog(
    untrusted: bytes, now: float, local_host: bytes
) -> tuple[int, bytes, int | None, bytes | None, int | None, bytes]:
    """(usec, host, priority, ident, pid, message) of one message; lenient."""
    untrusted = untrusted.rstrip(b"\r\n\0")
    usec = int(now * 1_000_000)
    match = _PRI.match(untrusted)
    if match is None or int(match.group(1)) > 191:
        return usec, local_host, None, None, None, untrusted
    priority = int(match.group(1)) & 7
    rest = untrusted[match.end() :]
    full = _RFC5424.fullmatch(rest)
    if full is not None:
        stamp = _time_5424(full.group(1)) if full.group(1) != b"-" else None
        procid = _nil(full.group(4))
        pid = int(procid) if procid is not None and procid.isdigit() and len(procid) < 10 else None
        message = full.group(7) or b""
        if message.startswith(b"\xef\xbb\xbf"):
            message = message[3:]  # RFC 5424's BOM marks UTF-8, it is not content
        return (
            stamp or usec,
            _nil(full.group(2)) or local_host,
            priority,
            _nil(full.group(3)),
            pid,
            message,
        )
    host = local_host
    stamp_match = _RFC3164_TIME.match(rest)
    if stamp_match is not None:
        usec = _time_3164(rest[: stamp_match.end() - 1], now) or usec
        rest = rest[stamp_match.end() :]
        first = rest.split(b" ", 1)
        # "HOST TAG: msg" (forwarded) versus "TAG[pid]: msg" (local syslog(3)).
        if (
            len(first) == 2
            and _TAG.fullmatch(first[0] + b": ") is not None
            and not first[0].endswith((b":", b"]"))
        ):
            host, rest = first[0], first[1]
    tag = _TAG.match(rest)
    if tag is None:
        return usec, host, priority, None, None, rest
    pid = int(tag.group(2)) if tag.group(2) else None
    return usec, host, priority, tag.group(1), pid, rest[tag.end() :]


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, source: "SyslogSource") -> None:
        self._source = source

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._source.offer(data)


class SyslogSource:
    """Listens on the configured syslog sockets while the exporter runs."""

    name = "syslog"

    def __init__(self, config: SyslogConfig) -> None:
        self._config = config
        self._queue: deque[bytes] = deque()
        self._arrived = asyncio.Event()
        self._dropped = 0
        self._times = TimeFormatter()
        self._host = socket.gethostname().encode("utf-8", "replace")
        self._closers: list[Any] = []

    def offer(self, untrusted: bytes) -> None:
        """Queue one received message (drop and count when the queue is full)."""
        if len(self._queue) >= QUEUE_LIMIT:
            self._dropped += 1
            return
        self._queue.append(untrusted[:MAX_MESSAGE])
        self._arrived.set()

    async def start(self) -> None:
        """Bind the sockets (before readiness is reported)."""
        loop = asyncio.get_running_loop()
        path = Path(self._config.socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        os.chmod(path, 0o666)  # noqa: S103 - like /dev/log: every local program may log
        transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=sock)
        self._closers.append(transport)
        if self._config.udp:
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=("127.0.0.1", self._config.udp)
            )
            self._closers.append(udp)
        if self._config.tcp:
            server = await asyncio.start_server(
                self._tcp_client, "127.0.0.1", self._config.tcp, limit=MAX_MESSAGE
            )
            self._closers.append(server)
        log.info("syslog: listening on %s", path)

    async def _tcp_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Newline-framed or octet-counted (RFC 6587) messages."""
        try:
            while True:
                head = await reader.readline()
                if not head:
                    return
                count = head.split(b" ", 1)[0]
                if count.isdigit() and len(count) < 7 and b"<" not in count:
                    need = int(count) - (len(head) - len(count) - 1)
                    body = head[len(count) + 1 :]
                    if need > 0:
                        body += await reader.readexactly(min(need, MAX_MESSAGE))
                    head = body
                while len(self._queue) >= QUEUE_LIMIT:
                    await asyncio.sleep(0.05)
                self.offer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            return
        finally:
            writer.close()

    def _items(self) -> list[bytes]:
        items: list[bytes] = []
        now = time.time()
        if self._dropped:
            note = b"%d syslog messages dropped: queue full" % self._dropped
            items.append(self._record(b"<4>logvm-exporter: " + note, now))
            self._dropped = 0
        while self._queue and len(items) < 512:
            items.append(self._record(self._queue.popleft(), now))
        return items

    def _record(self, untrusted: bytes, now: float) -> bytes:
        usec, host, priority, ident, pid, message = parse_syslog(untrusted, now, self._host)
        return format_record(
            self._times.format(usec), token(host), priority, None, ident, pid, message
        )

    async def run(self, transport: Transport, stop: asyncio.Event) -> None:
        """Move received messages to the transport until ``stop``."""
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                items = self._items()
                if items:
                    await transport.put(b"".join(items), len(items))
                    continue
                if stop.is_set():
                    return
                self._arrived.clear()
                waiter = asyncio.create_task(self._arrived.wait())
                await asyncio.wait({waiter, stopper}, return_when="FIRST_COMPLETED")
                waiter.cancel()
        finally:
            stopper.cancel()

    def flush(self) -> None:
        """Nothing to save: syslog has no position."""

    def close(self) -> None:
        """Stop listening."""
        for closer in self._closers:
            closer.close()
        with contextlib.suppress(FileNotFoundError):
            Path(self._config.socket).unlink()
