"""The listening socket and one protocol object per connection.

Trust side: the peer is the qrexec agent, as root or as the default user
(see :mod:`.peers`), relaying a source qube. The agent writes the service
descriptor ``logvm.Send <source>\\0``; everything after it is the qube's
untrusted data. A connection from any other user is refused before a byte is
read (otherwise any local process could pose as any qube). The descriptor is
read with a byte limit and a timeout. Only dom0 may add the argument
``for.<qube>`` (``logvm.Send+for.work``): its lines go to that qube's chain
as dom0's deliveries (kind ``D``, :func:`..core.names.delivery_chain`).
"""

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from ..core.errors import LogvmError, ProtocolError
from ..core.names import MAX_DESCRIPTOR_BYTES, delivery_chain, parse_send_call
from .fair import Ingest
from .lines import LineSplitter
from .peers import peer_of, peer_policy
from .qubewriter import FEW_CONNECTIONS, Feed, QubeWriter, StoreAccess

log = logging.getLogger(__name__)

#: Connections still sending their descriptor, beyond max_connections.
DESCRIPTOR_SLACK = 64
#: Seconds a final ack may stay unread (the sender half-closed and stopped
#: reading) before the connection is aborted, so it cannot hold its slot.
FINAL_ACK_GRACE = 10.0
#: Bytes read from a socket at once (the escaping is sliced finer still,
#: :mod:`.fair`); a connection holds at most two reads unescaped.
READ_BYTES = 64 * 1024
#: Bytes read at once, at most, while at most ``FEW_CONNECTIONS`` connections
#: are open (:mod:`.qubewriter`; and at most a sixteenth of the batch bound,
#: ``StoreAccess.batch_bytes``): a qube streaming alone costs a quarter of the
#: reads, ingest turns and batch parts (issue 17: the fixed cost of 64 KiB
#: reads was about a sixth of the one-connection CPU, 0.12 of 0.72 s for
#: 126 MB); the few connections hold at most two such reads each.
FEW_READ_BYTES = 256 * 1024


def bind_socket(path: Path, gid: int | None) -> socket.socket:
    """Bind a listening socket at ``path``: mode 0600 from the start, then
    ``root:GROUP 0660`` as the systemd unit makes it (owner unchanged when not
    run as root)."""
    try:
        if path.is_socket():
            path.unlink()
    except OSError as err:
        raise LogvmError(f"{path}: cannot replace the old socket: {err.strerror}") from err
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as err:
        sock.close()
        raise LogvmError(f"{path}: cannot listen: {err.strerror}") from err
    finally:
        os.umask(old_umask)
    if gid is not None:
        try:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        except OSError as err:
            sock.close()
            raise LogvmError(
                f"{path}: cannot give the socket to gid {gid}: {err.strerror}"
            ) from err
    sock.listen(128)
    return sock


class Connection(asyncio.BufferedProtocol, Feed):
    """One ``logvm.Send`` call: descriptor, then lines in and acks out.

    Received bytes wait (at most two reads) until the server's
    :class:`.fair.Ingest` gives the connection its turn to escape a slice;
    reading pauses while any of these holds it back: its unescaped bytes,
    its qube's pending batch (the writer), the store-wide pending budget,
    shutdown.
    """

    def __init__(self, server: "Server") -> None:
        Feed.__init__(self)
        self.server = server
        self.qube = ""
        self.writer: QubeWriter | None = None
        self.transport: asyncio.Transport | None = None
        self.splitter = LineSplitter(server.shared.config.max_line_bytes)
        self._untrusted_descriptor = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._acked = 0
        self._sent_any = False
        self._write_paused = False
        self._owed: tuple[int, bool] | None = None
        self._in_count = False
        self._untrusted_raw: list[bytes] = []  # reads received, not yet escaped
        self._raw_bytes = 0  # their size
        self._eof_seen = False  # the sender closed; finish once the raw bytes are in
        self._holds: set[str] = set()  # why reading is paused

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 (stream server)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        config = self.server.shared.config
        policy = peer_policy(config.allowed_uids, config.allowed_group)
        peer = peer_of(sock) if sock is not None else None
        if peer is None or not policy.admits(peer):
            who = peer.describe() if peer is not None else "an unknown peer"
            log.warning("refused a connection from %s (only qrexec may connect)", who)
            transport.abort()
            return
        if self.server.count >= self.server.shared.config.max_connections + DESCRIPTOR_SLACK:
            log.warning("refused a connection: too many connections")
            transport.abort()
            return
        self.server.count += 1
        self._in_count = True
        self._timer = asyncio.get_running_loop().call_later(
            self.server.shared.config.descriptor_timeout, self._descriptor_timeout
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_view()

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.server.read_buffer[:nbytes]))

    def data_received(self, untrusted_data: bytes) -> None:
        if self.writer is None:
            self._read_descriptor(untrusted_data)
            return
        behind = bool(self._untrusted_raw)  # the ingest has not escaped the last read
        self._untrusted_raw.append(untrusted_data)
        self._raw_bytes += len(untrusted_data)
        self.server.shared.budget.add(len(untrusted_data))
        self.server.ingest.add(self, self._raw_bytes)
        if behind and self._raw_bytes >= READ_BYTES:
            # Paused only behind the ingest (other busy connections): a
            # connection whose reads are escaped as they come is never
            # paused and resumed (two epoll calls) per read.
            self._hold("ingest", True)
        if self.server.shared.budget.must_pause(self, self.server.count):
            self._hold("budget", True)

    def ingest_slice(self, limit: int) -> bool:
        """Escape and submit up to ``limit`` received bytes (:class:`.fair.Ingest`)."""
        writer = self.writer
        # A read escaped whole is not copied (join and slice return it as is).
        untrusted_all = b"".join(self._untrusted_raw)
        untrusted_part, untrusted_rest = untrusted_all[:limit], untrusted_all[limit:]
        self._untrusted_raw = [untrusted_rest] if untrusted_rest else []
        self._raw_bytes = len(untrusted_rest)
        self.server.shared.budget.release(len(untrusted_part))
        if writer is None:
            return False
        records, nlines = self.splitter.feed(untrusted_part, writer.receive_time())
        if nlines:
            writer.submit(self, records, nlines)
        if self._untrusted_raw:
            return True
        self._hold("ingest", False)
        if self._eof_seen and not self.eof:
            self._finish(writer)
        return False

    def _ingest_all(self) -> None:
        while self._untrusted_raw and self.ingest_slice(self._raw_bytes):
            pass

    def _finish(self, writer: QubeWriter) -> None:
        records, nlines = self.splitter.finish(writer.receive_time())
        if nlines:
            writer.submit(self, records, nlines)
        writer.finish(self)

    def eof_received(self) -> bool:
        if self.writer is None:
            log.warning("connection closed before a complete service descriptor")
            return False
        self._eof_seen = True
        if not self._untrusted_raw:
            self._finish(self.writer)
        return True  # keep our side open for the final ack

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._in_count:
            self._in_count = False
            self.server.count -= 1
        self.transport = None
        self._ingest_all()  # what was received is stored, as if read at once
        self.server.shared.budget.forget(self)
        if self.writer is not None:
            self.writer.lost(self)
            self.writer = None

    # -- fair.PendingBudget --------------------------------------------------

    def held(self) -> int:
        pending = self.writer.pending_bytes if self.writer is not None else 0
        return self._raw_bytes + pending

    def budget_resumed(self) -> None:
        self._hold("budget", False)

    def _hold(self, reason: str, hold: bool) -> None:
        """Pause reading for ``reason`` (or lift it); read while nothing holds."""
        before = bool(self._holds)
        if hold:
            self._holds.add(reason)
        else:
            self._holds.discard(reason)
        if self.transport is None or before == bool(self._holds):
            return
        if self._holds:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._owed is not None:
            handled, final = self._owed
            self._owed = None
            self.send_ack(handled, final=final)

    # -- Feed --------------------------------------------------------------

    def send_ack(self, handled: int, *, final: bool) -> None:
        if self.transport is None:
            return
        if final:
            asyncio.get_running_loop().call_later(FINAL_ACK_GRACE, self._give_up)
        if self._write_paused:
            # A sender that does not read acks fills its socket: keep only
            # the newest count (acks are cumulative).
            self._owed = (handled, final)
            return
        if handled > self._acked or (final and not self._sent_any):
            self.transport.write(b"ack %d\n" % handled)
            self._acked = handled
            self._sent_any = True
        if final:
            self.transport.close()

    def _give_up(self) -> None:
        """The final ack is still unread after the grace: drop the connection."""
        if self.transport is not None:
            log.info("connection aborted: its final ack was not read in %ss", FINAL_ACK_GRACE)
            self.transport.abort()

    def set_reading(self, reading: bool) -> None:
        self._hold("qube", not reading)

    def stop_reading(self) -> bool:
        """At shutdown: read no more; True if the sender's side is still open.

        What was received is escaped and submitted now."""
        self._hold("stopping", True)
        self._ingest_all()
        return not self._eof_seen

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- descriptor ---------------------------------------------------------

    def _descriptor_timeout(self) -> None:
        if self.writer is None and self.transport is not None:
            log.warning("no service descriptor within the timeout; closing")
            self.transport.abort()

    def _read_descriptor(self, untrusted_data: bytes) -> None:
        assert self.transport is not None  # noqa: S101 (set in connection_made)
        end = untrusted_data.find(b"\0")
        room = MAX_DESCRIPTOR_BYTES - len(self._untrusted_descriptor)
        if end < 0:
            if len(untrusted_data) > room:
                log.warning("service descriptor too long; closing")
                self.transport.abort()
                return
            self._untrusted_descriptor += untrusted_data
            return
        if end > room:
            log.warning("service descriptor too long; closing")
            self.transport.abort()
            return
        untrusted_descriptor = bytes(self._untrusted_descriptor) + untrusted_data[:end]
        try:
            source, untrusted_argument = parse_send_call(untrusted_descriptor)
            qube, delivered = delivery_chain(source, untrusted_argument)
        except ProtocolError as err:
            log.warning("bad service descriptor: %s; closing", err)
            self.transport.abort()
            return
        if self._timer is not None:
            self._timer.cancel()
        self.splitter.delivered = delivered
        if not self.server.admit(self, qube):
            self.transport.abort()
            return
        if delivered:
            log.info("%s: dom0 delivers this qube's console and per-qube logs", qube)
        untrusted_rest = untrusted_data[end + 1 :]
        if untrusted_rest:
            self.data_received(untrusted_rest)


class Server:
    """Accepts connections and hands each to its qube's writer."""

    def __init__(self, shared: StoreAccess) -> None:
        self.shared = shared
        self.writers: dict[str, QubeWriter] = {}
        self.attached = 0
        self.ingest = Ingest()
        # One read buffer for all connections: a read is copied out at once.
        self.read_buffer = memoryview(bytearray(FEW_READ_BYTES))
        self._many_view = self.read_buffer[:READ_BYTES]
        self._server: asyncio.AbstractServer | None = None

    @property
    def count(self) -> int:
        """Connections past the peer check, not yet closed."""
        return self.shared.connections

    @count.setter
    def count(self, value: int) -> None:
        self.shared.connections = value

    def read_view(self) -> memoryview:
        """Where the next read goes: up to :data:`FEW_READ_BYTES` (a sixteenth of
        the batch bound, at least :data:`READ_BYTES`) while at most
        ``FEW_CONNECTIONS`` connections are open, else :data:`READ_BYTES`."""
        if self.count > FEW_CONNECTIONS:
            return self._many_view
        size = min(FEW_READ_BYTES, self.shared.batch_bytes() // 16)
        return self.read_buffer[: max(READ_BYTES, size)]

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already listening socket."""
        factory: Callable[[], asyncio.BaseProtocol] = lambda: Connection(self)  # noqa: E731
        self._server = await asyncio.get_running_loop().create_unix_server(factory, sock=sock)

    def stop_accepting(self) -> None:
        """Close the listening socket (connections stay)."""
        if self._server is not None:
            self._server.close()

    def writer(self, qube: str) -> QubeWriter:
        """The qube's writer, created on first use."""
        writer = self.writers.get(qube)
        if writer is None:
            writer = self.writers[qube] = QubeWriter(qube, self.shared, self._writer_idle)
        return writer

    def admit(self, conn: Connection, qube: str) -> bool:
        """Attach a connection to its qube's writer, within the connection limits."""
        attached = sum(len(w.feeds) for w in self.writers.values())
        if attached >= self.shared.config.max_connections:
            log.warning("%s: connection refused: %d connections open", qube, attached)
            current = self.writers.get(qube)
            if current is not None and current.feeds:
                # Noted in the qube's chain only while its segment is open.
                current.note_refused()
            return False
        writer = self.writer(qube)
        if not writer.attach(conn):
            log.warning("%s: connection refused: too many connections from this qube", qube)
            return False
        conn.qube, conn.writer = qube, writer
        log.info("%s: connected", qube)
        return True

    def _writer_idle(self, writer: QubeWriter) -> None:
        if (writer.idle or writer.failed) and self.writers.get(writer.qube) is writer:
            del self.writers[writer.qube]

    async def drain(self) -> None:
        """At shutdown: stop reading, store and ack what was received, close."""
        self.shared.stopping = True
        for writer in list(self.writers.values()):
            writer.wake()  # a lingering segment closes now
        for writer in list(self.writers.values()):
            for feed in list(writer.feeds):
                if isinstance(feed, Connection) and feed.transport is not None:
                    if feed.stop_reading() and not feed.eof:
                        records, nlines = feed.splitter.finish(writer.receive_time())
                        if nlines:
                            # Stored, but not counted: the sender never
                            # finished that line and sends it again.
                            writer.submit(feed, records, nlines)
                            feed.handled -= nlines
                    writer.finish(feed)
        while self.writers:
            await asyncio.sleep(0.02)
