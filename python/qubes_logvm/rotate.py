"""``logvm-rotate``: compress closed segments as they age (program, floor 3).

Runs as long as the LogVM runs. Every ``--interval`` it tidies what an
earlier kill left behind and compresses each closed plain segment whose
close is older than ``compress.after`` (crash-safe, see
:mod:`qubes_logvm.store.compress`). SIGTERM stops it cleanly (a compression
in progress is abandoned, its temp file removed); SIGHUP reloads the config.

Trust side: runs in the LogVM and holds no key. It deletes nothing but the
plain copy of a segment it has compressed and checked against the seals,
and its own temp files: every deletion of a segment (quota, retention,
global cap) is the collector's, sealed as a tombstone.
"""

import argparse
import fcntl
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from . import __version__
from .config.collector import load_collector_config
from .config.storage_policy import RetentionConfig
from .core.errors import LogvmError, StoreError
from .daemon_support import fatal, setup_logging
from .store.compress import CompressError, Interrupted, candidates, compress_segment, tidy
from .store.layout import StoreLayout, add_store_argument

log = logging.getLogger(__name__)

LOCK_NAME = "rotate.lock"


class _Signals:
    """SIGTERM/SIGINT and SIGHUP turned into flags plus a wake-up for the sleep."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def install(self) -> None:
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop = True

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload = True

    def sleep(self, seconds: float) -> None:
        """Sleep until the time is up or a signal arrives."""
        if self.stop or self.reload:
            return
        ready, _, _ = select.select([self._read], [], [], seconds)
        if ready:
            try:
                while self._read.recv(256):
                    pass
            except BlockingIOError:
                pass


def _single_instance(layout: StoreLayout) -> int:
    """Take the store's rotation lock so two daemons never compress the same segment."""
    path = layout.state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise StoreError(f"{path}: cannot open: {err.strerror}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise StoreError(f"{layout.root}: another logvm-rotate is running") from err
    return fd


def run_pass(
    layout: StoreLayout,
    cfg: RetentionConfig,
    now: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[int, int]:
    """One pass over the store; returns (segments compressed, segments refused)."""
    done = refused = 0
    for qube in layout.qubes():
        tidy(layout, qube)
        for files in candidates(layout, qube, now - cfg.compress_after):
            if should_stop():
                return done, refused
            try:
                size = compress_segment(
                    layout, files, level=cfg.compress_level, should_stop=should_stop
                )
            except (CompressError, OSError) as err:
                log.warning("not compressed: %s", err)
                refused += 1
                continue
            if size is not None:
                log.info("%s: compressed to %d bytes", files.name, size)
                done += 1
    return done, refused


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="logvm-rotate",
        description="Compress closed log segments as they age (no key, no deletion).",
        epilog="Example: logvm-rotate --once -v   (one pass now, each segment logged)",
    )
    add_store_argument(parser)
    parser.add_argument(
        "--config", type=Path, default=None, help="collector.yaml (default: /etc and /rw files)"
    )
    parser.add_argument(
        "--interval", type=float, default=60.0, help="seconds between passes (default 60)"
    )
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each segment")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _loop(
    layout: StoreLayout,
    config_path: Path | None,
    args: argparse.Namespace,
    signals: _Signals,
    clock: Callable[[], float],
) -> int:
    cfg = load_collector_config(*_paths(config_path)).retention
    while True:
        try:
            _, refused = run_pass(layout, cfg, clock(), lambda: signals.stop)
        except Interrupted:
            log.info("stopped during a compression; nothing changed")
            return 0
        except StoreError as err:
            if args.once:
                raise
            log.warning("pass failed: %s", err)
            refused = 1
        if args.once or signals.stop:
            return 1 if refused else 0
        signals.sleep(args.interval)
        if signals.stop:
            return 0
        if signals.reload:
            signals.reload = False
            try:
                cfg = load_collector_config(*_paths(config_path)).retention
                log.info("configuration reloaded")
            except LogvmError as err:
                log.warning("configuration not reloaded, keeping the old one: %s", err)


def _paths(config_path: Path | None) -> tuple[Path, ...]:
    return (config_path,) if config_path is not None else ()


def main(
    argv: Sequence[str] | None = None,
    *,
    clock: Callable[[], float] = time.time,
    install_signals: bool = True,
) -> int:
    """Entry point of ``logvm-rotate``."""
    args = _parse_args(argv)
    setup_logging(
        logging.INFO if args.verbose else logging.WARNING,
        "logvm-rotate: %(levelname)s: %(message)s",
    )
    signals = _Signals()
    if install_signals:
        signals.install()
    layout = StoreLayout(args.store)
    try:
        if not layout.store_json.exists():
            raise StoreError(f"{layout.root}: no store here (run `logvm setup-keys`)")
        lock_fd = _single_instance(layout)
        try:
            return _loop(layout, args.config, args, signals, clock)
        finally:
            os.close(lock_fd)
    except LogvmError as err:
        return fatal("logvm-rotate", str(err))


if __name__ == "__main__":
    sys.exit(main())
