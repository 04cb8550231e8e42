"""What every daemon needs from systemd and the disk (stdlib only, no project imports).

Used by ``logvm-collector``, ``logvm-exporter``, ``logvm-rotate`` and ``logvm-forward`` (and
the store, for :func:`fsync_dir`). The witness keeps its own small copy of
:func:`fsync_dir` (``witness/state.py``) because it imports only the core.

- Logging (:func:`setup_logging`): when stderr is the journal's stream
  (systemd sets ``JOURNAL_STREAM`` to its ``<device>:<inode>``, see
  systemd.exec(5)), every line starts with ``<N>``, the syslog priority
  that journald's stream reader strips and records as ``PRIORITY=``
  (sd-daemon(3), ``SD_WARNING`` etc.); so ``journalctl -p warning`` shows
  the daemon's warnings. Elsewhere (a terminal, a test) lines are unchanged.
- Readiness (:func:`sd_notify`): ``READY=1``/``STOPPING=1`` datagrams to
  ``NOTIFY_SOCKET`` (sd_notify(3); ``@`` is the abstract namespace).
- Socket activation (:func:`listen_fds`): the descriptors from 3 on that
  ``LISTEN_FDS``/``LISTEN_PID`` announce (sd_listen_fds(3)).
- :func:`fsync_dir`, and the exit codes every entry point returns.
"""

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import asyncio.subprocess

EXIT_OK = 0
#: Configuration, store or run-time error (one line on stderr says which).
EXIT_FAILURE = 1
#: Bad command line (what argparse returns).
EXIT_USAGE = 2

SD_LISTEN_FDS_START = 3

#: Python's levels as syslog priorities (sd-daemon(3)'s ``<N>`` prefixes).
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (ERROR -> 3, WARNING -> 4, ...)."""
    return next((prio for level, prio in _PRIORITY if levelno >= level), _DEBUG_PRIORITY)


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``JOURNAL_STREAM``)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat(stream.fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


class JournalFormatter(logging.Formatter):
    """Puts ``<N>`` (the record's syslog priority) before every line of a record."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def setup_logging(
    level: int,
    fmt: str,
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Log to stderr in ``fmt``, with priority prefixes when stderr is the journal."""
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    journal = is_journal_stream(out, environ)
    handler.setFormatter(JournalFormatter(fmt) if journal else logging.Formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def fatal(program: str, message: str, *, stream: TextIO | None = None) -> int:
    """Print the one line an entry point ends with (priority 3 in the journal)."""
    out = sys.stderr if stream is None else stream
    prefix = "<3>" if is_journal_stream(out) else ""
    out.write(f"{prefix}{program}: {message}\n")
    out.flush()
    return EXIT_FAILURE


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> None:
    """Tell systemd our state (``READY=1``...) when it asked (``NOTIFY_SOCKET``)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode("ascii"), target)
        except OSError as err:
            logging.getLogger(__name__).warning(
                "cannot notify systemd at %s: %s", address, err.strerror
            )


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[int]:
    """Descriptors passed by socket activation; the variables are removed (not inherited)."""
    env = os.environ if environ is None else environ
    try:
        pid = int(env.get("LISTEN_PID", "0"))
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if pid != os.getpid() or count < 1:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))


def fsync_dir(path: Path) -> None:
    """Make a directory entry change (create, rename, unlink) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def end_process(proc: "asyncio.subprocess.Process", grace: float) -> int:
    """Wait up to ``grace`` seconds for a child to exit, then kill it; its exit code.

    Never ``proc.kill()`` a child that may have exited already: CPython's
    ``Popen.send_signal`` first polls (``waitpid(WNOHANG)``, bpo-38630) and so
    can reap the child under asyncio's child watcher, whose own ``waitpid``
    then fails and reports 255 ("Unknown child process"), losing the real
    status (qrexec's 126 for a call dom0's policy denied). Waiting first makes
    a kill reach only a child that is still running.
    """
    import asyncio

    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    try:
        return await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
    except TimeoutError:
        pass
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return await asyncio.shield(proc.wait())
