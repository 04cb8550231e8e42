"""A stalled central server never slows the collector (issue 16, back-pressure).

The server here completes the mutual-TLS handshake and then never reads:
the forwarder's writes fill the socket buffers and block, as they do when a
real server hangs or its network is congested. Meanwhile qubes keep
logging through the real collector on the same store: every line is acked
and stored, the forwarder confirms nothing (no cursor moves), and the store
verifies. The forwarder only reads the store's files; it takes no lock the
collector waits for.
"""

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from collector.helpers import Collector, make_store, send, sent_lines, verify_errors
from forward.conftest import forward_world
from forward.test_forward import Forward, _config, _wait

pytestmark = [pytest.mark.timeout(180)]

CALLS = 40
LINES = 200


class StalledServer:
    """TLS on loopback: handshakes, counts what it got in the first moment, then reads nothing."""

    def __init__(self, pki: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki / "server.pem", pki / "server.key")
        self.context.load_verify_locations(pki / "ca.pem")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        self.held: list[ssl.SSLSocket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                tls = self.context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()
                continue
            self.handshakes += 1
            self.held.append(tls)  # kept open, never read

    def close(self) -> None:
        self.listener.close()
        for tls in self.held:
            tls.close()


@pytest.fixture
def stalled(pki: Path) -> Iterator[StalledServer]:
    server = StalledServer(pki)
    yield server
    server.close()


def test_a_stalled_server_never_slows_the_collector(
    tmp_path: Path, pki: Path, stalled: StalledServer
) -> None:
    collector = Collector(tmp_path)
    collector.vkey = make_store(collector.store)
    collector.start()
    world = forward_world(tmp_path / "world", stalled.port)
    config = _config(tmp_path / "forward.yaml", pki, tmp_path / "state", records=100000)
    forward = Forward(tmp_path, collector.store, world, config)
    try:
        # Something to forward first, so the forwarder is writing when the server stalls.
        filler = b"".join(b"filler line %06d %s\n" % (i, b"x" * 200) for i in range(10000))
        assert send(collector.socket, "busy", filler)
        forward.start()
        _wait(lambda: stalled.handshakes >= 1, "the forwarder's TLS handshake")
        for call in range(CALLS):
            lines = b"".join(b"call %d line %d\n" % (call, i) for i in range(LINES))
            acks = send(collector.socket, "work", lines)
            assert acks and acks[-1] == LINES, f"call {call}: acks {acks[-3:]}"
        assert forward.proc is not None and forward.proc.poll() is None, forward.log()
        assert len(sent_lines(collector.store, "work")) == CALLS * LINES
        assert not (tmp_path / "state/cursors.json").exists()  # nothing was confirmed
    finally:
        forward.stop()
        assert collector.stop() == 0, collector.stderr()
    assert verify_errors(collector.store, collector.vkey) == []
