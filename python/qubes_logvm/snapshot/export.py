"""``logvm.Export``: a consistent, read-only snapshot of the store (programs floor).

The qrexec service dom0 calls in the LogVM (``qubes-rpc/logvm.Export``; the
policy lets nothing but dom0 reach it, and this program refuses any other
caller too). It writes the snapshot framing of docs/snapshot-format.md to
stdout: store identity, then per qube its segments as stored (plain or
compressed), their seal files and the tombstones, after the key state's epoch
number and a format-2 store's epoch seal files. Key material is never read
into the stream.

Consistency without stalling the collector: per qube, the qube's lock is
held only while its files are opened and their sizes taken (seal files
before segment files, so every seal line captured covers bytes captured);
every qube is captured so, with the key state's epoch the same before and
after (else again), then the bytes are sent from the open descriptors
with no lock held, so rotation or retention removing a file meanwhile
changes nothing sent. Seal files are cut
at their last complete line. No captured seal is newer than the epoch, and
at most one epoch passes between the captures and the epoch read.

Argument: nothing (every qube) or qube names joined by ``+``
(``logvm.Export+work+personal``).
"""

import contextlib
import fcntl
import os
import resource
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from ..core.errors import InvalidQubeName, LogvmError, ProtocolError, StoreError
from ..core.names import validate_qube_name
from ..core.snapshot_format import (
    FILE_NAME,
    MAX_STATE_FILE,
    MAX_STORE_JSON,
    SNAPSHOT_MAGIC,
    header,
)
from ..store.keystate import read_epoch
from ..store.layout import DEFAULT_STORE, StoreLayout

CHUNK = 1 << 20
CAPTURE_ATTEMPTS = 50
_TAIL = 4096  # bytes read back to find a seal file's last complete line


@dataclass
class Captured:
    """One file opened under the qube's lock, and how much of it is sent."""

    name: str
    fd: int
    size: int


def parse_argument(untrusted_argument: str) -> list[str] | None:
    """Qube names from the service argument; None for every qube."""
    if not untrusted_argument:
        return None
    try:
        return [validate_qube_name(part) for part in untrusted_argument.split("+")]
    except InvalidQubeName as err:
        raise ProtocolError(f"bad argument: {err}") from err


@contextlib.contextmanager
def _briefly_locked(layout: StoreLayout, qube: str) -> Iterator[None]:
    """The qube's flock, taken read-only (this service creates nothing)."""
    try:
        fd = os.open(layout.lock(qube), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield  # the collector creates the lock with the first segment
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _complete_lines(fd: int, size: int) -> int:
    """A seal file's size cut back to its last newline (a torn tail is not sent)."""
    start = max(0, size - _TAIL)
    tail = os.pread(fd, size - start, start)
    cut = tail.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else 0 if size <= _TAIL else size


def capture(layout: StoreLayout, qube: str) -> list[Captured]:
    """Open a qube's files under its lock; seal files are sized before segments."""
    directory = layout.qube_dir(qube)
    opened: list[Captured] = []
    with _briefly_locked(layout, qube):
        names = sorted(n for n in os.listdir(directory) if FILE_NAME.fullmatch(n.encode()))
        try:
            for name in names:
                fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                opened.append(Captured(name, fd, 0))
            for item in sorted(opened, key=lambda c: not c.name.endswith(".seal")):
                item.size = os.fstat(item.fd).st_size
                if item.name.endswith(".seal"):
                    item.size = _complete_lines(item.fd, item.size)
        except OSError:
            for item in opened:
                os.close(item.fd)
            raise
    return opened


def capture_state(layout: StoreLayout) -> list[Captured]:
    """Format 2's store-wide epoch seals (``state/epochs.seal``, ``state/epoch-leaves``).

    Taken before any qube: every line captured covers only seals already
    written, so the qubes captured after hold every seal a line covers.
    Both files are bounded as the verifier bounds them; the seal file is
    cut at its last complete line, the leaves file is replaced whole
    (rename), so the open descriptor holds one version.
    """
    opened: list[Captured] = []
    for name in ("epochs.seal", "epoch-leaves"):
        try:
            fd = os.open(layout.state_dir / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        item = Captured(name, fd, 0)
        opened.append(item)
        try:
            item.size = min(os.fstat(fd).st_size, MAX_STATE_FILE)
            if name == "epochs.seal":
                item.size = _complete_lines(fd, item.size)
        except OSError:
            for done in opened:
                os.close(done.fd)
            raise
    return opened


def _send(out: BinaryIO, item: Captured, word: str = "file") -> None:
    out.write(header(word, item.name, item.size))
    out.flush()
    offset, out_fd = 0, out.fileno()
    while offset < item.size:
        want = min(CHUNK, item.size - offset)
        try:
            sent = os.sendfile(out_fd, item.fd, offset, want)
        except OSError:
            data = os.pread(item.fd, want, offset)
            out.write(data)
            out.flush()
            sent = len(data)
        if sent == 0:
            raise StoreError(f"{item.name} shrank while being exported")
        offset += sent


def _close_all(captured: list[tuple[str, list[Captured]]]) -> None:
    for _, files in captured:
        for item in files:
            os.close(item.fd)


def _capture_all(
    layout: StoreLayout, names: list[str]
) -> tuple[list[tuple[str, list[Captured]]], int | None]:
    """The state files (as qube ``""``), every qube's files, and the epoch, with no
    epoch change during the capture.

    The collector seals every open segment (format 2: the epoch file) at each
    epoch change; when the epoch is the same before and after capturing
    (milliseconds), each open segment's last seal is at most one epoch
    behind the epoch reported.
    """
    for _ in range(CAPTURE_ATTEMPTS):
        before = read_epoch(layout)
        captured: list[tuple[str, list[Captured]]] = []
        try:
            captured.append(("", capture_state(layout)))
            for qube in names:
                if layout.qube_dir(qube).is_dir():  # a named qube the store lacks: reported
                    captured.append((qube, capture(layout, qube)))
        except BaseException:
            _close_all(captured)
            raise
        epoch = read_epoch(layout)
        if epoch == before:
            break
        _close_all(captured)  # an epoch changed meanwhile: capture again
    else:
        raise StoreError("the epoch kept changing while the store was captured")
    return captured, epoch


def write_snapshot(layout: StoreLayout, qubes: list[str] | None, out: BinaryIO) -> None:
    """The whole snapshot, in the order of docs/snapshot-format.md."""
    out.write(SNAPSHOT_MAGIC + b"\n")
    try:
        with layout.store_json.open("rb") as stream:
            identity = stream.read(MAX_STORE_JSON)
    except FileNotFoundError:
        identity = b""
    out.write(header("store", len(identity)) + identity)
    names = layout.qubes() if qubes is None else qubes
    captured: list[tuple[str, list[Captured]]] = []
    try:
        captured, epoch = _capture_all(layout, names)
        if epoch is not None:  # known before any byte is sent: a verifier may stream
            out.write(header("epoch", epoch))
        counts = [len(captured) - 1, 0, 0]
        for qube, files in captured:
            if qube:
                out.write(header("qube", qube))
            for item in files:
                _send(out, item, "file" if qube else "state")
                counts[1] += 1
                counts[2] += item.size
    finally:
        _close_all(captured)
    out.write(header("end", *counts))
    out.flush()


def _raise_fd_limit() -> None:
    """Open descriptors of a qube's files are held at once: allow as many as the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    out: BinaryIO | None = None,
) -> int:
    """Entry point of the ``logvm.Export`` service."""
    env = os.environ if environ is None else environ
    args = sys.argv[1:] if argv is None else argv
    store = env.get("LOGVM_STORE", str(DEFAULT_STORE))
    try:
        if env.get("QREXEC_REMOTE_DOMAIN") != "dom0":
            raise ProtocolError("only dom0 may call logvm.Export")
        qubes = parse_argument(env.get("QREXEC_SERVICE_ARGUMENT", args[0] if args else ""))
        _raise_fd_limit()
        write_snapshot(StoreLayout(store), qubes, out or sys.stdout.buffer)
    except (LogvmError, OSError) as err:
        print(f"logvm.Export: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
