"""``logvm-forward``: sealed logs to a central server over RFC 5425 (program, floor 3).

Role: in the LogVM, where ``/run/qubes-service/logvm-forward`` exists.
Window by window: open a qrexec call to the forwarder qube, TLS through it
(forward/stream.py), send the store's identity and then the sealed content
past the committed cursors (forward/source.py), round-robin over qubes so a
busy qube never starves the others; close the window when it holds
``window.records`` or ``window.bytes`` or is ``window.seconds`` old; commit
the cursors only once the server confirmed the window. Any failure: back off
and send the window again from the committed cursors. The store is the
backlog; nothing is buffered twice, and a slow server never slows the
collector (this reads files the collector already wrote).

Trust side: holds no key; reads the store; the network path is untrusted
(TLS with a pinned CA and mutual authentication).
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from .. import __version__
from ..config.forward import ForwardConfig, load_forward_config
from ..core.errors import LogvmError, StoreError
from ..daemon_support import EXIT_OK, fatal, fsync_dir, setup_logging
from ..store.keystate import read_store_info
from ..store.layout import StoreLayout, add_store_argument
from .source import Cursor, StoreSource, load_cursors
from .stream import StreamError, TlsStream, tls_context

log = logging.getLogger(__name__)
CURSOR_FILE = "cursors.json"
_PUMP = 20000  # messages per qube per turn: fairness between qubes
_CHUNK = 1 << 18  # bytes handed to TLS at once


class Window:
    """The messages of one TLS session, and the cursors they lead to."""

    def __init__(self, cursors: dict[str, Cursor]) -> None:
        self.cursors = dict(cursors)
        self.records = 0
        self.bytes = 0
        self.buffer: list[bytes] = []
        self.buffered = 0

    def add(self, frame: bytes) -> None:
        """One message's frame."""
        self.extend([frame])

    def extend(self, frames: list[bytes]) -> None:
        """Frames of messages, in order."""
        size = sum(map(len, frames))
        self.buffer += frames
        self.buffered += size
        self.records += len(frames)
        self.bytes += size


class Forwarder:
    """The forwarding loop, with its edges injectable for tests."""

    def __init__(
        self,
        config: ForwardConfig,
        layout: StoreLayout,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.layout = layout
        self.stop = stop or threading.Event()
        self.clock = clock
        store_id = read_store_info(layout).store_id
        self.source = StoreSource(
            layout,
            config.qubes,
            store_id,
            hostname=config.hostname,
            pen=config.pen,
            facility=config.facility,
        )
        self.cursor_path = config.state_dir / CURSOR_FILE
        self.cursors = load_cursors(self.cursor_path, store_id)
        self.context = tls_context(config.ca_file, config.cert_file, config.key_file)
        self.windows_confirmed = 0

    def run(self) -> None:
        """Until stopped: forward, confirm, commit; back off after failures."""
        backoff = 1.0
        while not self.stop.is_set():
            if not self._pending():
                self.stop.wait(self.config.poll_seconds)
                continue
            try:
                self._one_window()
                backoff = 1.0
            except (StreamError, StoreError, OSError) as err:
                log.warning("window not confirmed, sent again after %.0f s: %s", backoff, err)
                self.stop.wait(min(backoff, self.config.retry_max))
                backoff = min(backoff * 2, self.config.retry_max)

    def _pending(self) -> bool:
        """Is there sealed content past the committed cursors?"""
        for qube in self.source.qubes():
            messages, _ = self.source.pump(qube, self.cursors.get(qube, Cursor()), 1)
            if messages:
                return True
        return False

    def _one_window(self) -> None:
        stream = TlsStream(
            self.config.command,
            self.context,
            self.config.server_name,
            timeout=self.config.connect_timeout,
            clock=self.clock,
        )
        try:
            stream.handshake(self.config.server_name)
            window = Window(self.cursors)
            window.add(self.source.store_frame())
            started = self.clock()
            while not self._full(window, started) and not self.stop.is_set():
                if self._fill(window):
                    self._drain(stream, window, final=False)
                else:  # nothing new: send what we have, keep the session a while
                    self._drain(stream, window, final=True)
                    self.stop.wait(self.config.poll_seconds)
            self._drain(stream, window, final=True)
            stream.confirm()
        finally:
            stream.close()
        self.cursors = window.cursors
        self._save()
        self.windows_confirmed += 1
        log.info("window confirmed: %d messages, %d bytes", window.records, window.bytes)

    def _full(self, window: Window, started: float) -> bool:
        cfg = self.config
        return (
            window.records >= cfg.window_records
            or window.bytes >= cfg.window_bytes
            or self.clock() - started >= cfg.window_seconds
        )

    def _fill(self, window: Window) -> bool:
        """One round over the qubes; False when none had anything new."""
        found = False
        for qube in self.source.qubes():
            room = min(_PUMP, self.config.window_records - window.records)
            if room <= 0:
                break
            frames, cursor = self.source.pump(qube, window.cursors.get(qube, Cursor()), room)
            window.cursors[qube] = cursor
            window.extend(frames)
            found = found or bool(frames)
        return found

    @staticmethod
    def _drain(stream: TlsStream, window: Window, *, final: bool) -> None:
        if window.buffered >= _CHUNK or (final and window.buffer):
            stream.send(b"".join(window.buffer))
            window.buffer.clear()
            window.buffered = 0

    def _save(self) -> None:
        """Commit the cursors (write, fsync, rename, fsync the directory)."""
        directory = self.cursor_path.parent
        directory.mkdir(parents=True, exist_ok=True)
        data = {
            "store": self.source.store_id,
            "qubes": {q: c.to_json() for q, c in sorted(self.cursors.items())},
        }
        temp = directory / (CURSOR_FILE + ".tmp")
        with temp.open("w", encoding="ascii") as stream:
            json.dump(data, stream, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, self.cursor_path)
        fsync_dir(directory)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="logvm-forward",
        description="Forward sealed logs to a central syslog server (RFC 5424 over "
        "mutual TLS, RFC 5425), through a forwarder qube.",
        epilog="Example: logvm-forward --config /etc/qubes-logvm/forward.yaml -v",
    )
    add_store_argument(parser)
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        help="forward.yaml, repeatable, merged in order (default: /etc/qubes-logvm/forward.yaml "
        "and /rw/config/qubes-logvm/forward.yaml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every window")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, install_signals: bool = True) -> int:
    """Entry point of ``logvm-forward``."""
    args = _parse_args(argv)
    setup_logging(
        logging.INFO if args.verbose else logging.WARNING,
        "logvm-forward: %(levelname)s: %(message)s",
    )
    stop = threading.Event()
    if install_signals:

        def on_stop(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
    try:
        config = load_forward_config(*(args.config or ()))
        Forwarder(config, StoreLayout(args.store), stop=stop).run()
    except LogvmError as err:
        return fatal("logvm-forward", str(err))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
