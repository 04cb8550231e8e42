"""``logvm.VerifySnapshot``: the verifier end in a fresh offline DispVM (programs floor).

dom0 calls this service in a new disposable qube and writes into it the
verifier input of docs/snapshot-format.md: the verification key and the
witness's records (from dom0), then the LogVM's snapshot as the LogVM sent it.
This program writes the files into a private temporary directory as a store
copy and verifies each qube with the same verifier as ``logvm verify``
(its streaming entry, :class:`Pipelined`, :func:`verify_copy`) while the
next qube arrives, then writes one bounded verdict to stdout. It always answers with a verdict;
whatever is wrong with the input (garbage, truncation, a file over the byte
limit or over the free disk) is the verdict ``error`` with the reason.

Trust side: the snapshot is hostile (it comes from the LogVM); every header
is parsed exactly and every length is checked before anything is read. The
only secret here is the verification key, which dies with the DispVM.
"""

import os
import queue
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..core.errors import LogvmError, ProtocolError, StoreError
from ..core.names import validate_qube_name
from ..core.snapshot_format import (
    FILE_NAME,
    INPUT_MAGIC,
    MAX_HEADER,
    MAX_KEY_TEXT,
    MAX_STATE_FILE,
    MAX_STORE_JSON,
    MAX_WITNESS_BYTES,
    SNAPSHOT_MAGIC,
    Frame,
    Verdict,
    parse_header,
)
from .framereader import FrameReader

if TYPE_CHECKING:  # imported by the verify thread (Pipelined), while the input arrives
    from ..store.verify import Report
    from ..store.verify.stream import QubeStream

#: Disk kept free in the DispVM beyond what a file needs.
DISK_MARGIN = 16 << 20


def verify_copy(run: "Callable[[], Report]") -> Verdict:
    """The one adapter from the verifier's report (as ``logvm verify`` prints it) to a verdict."""
    from ..store.verify import WrongKey

    try:
        report = run()
    except WrongKey as err:
        return Verdict("error", findings=[f"cannot verify: {err}"])
    lines = [str(f) for f in report.errors] + [str(f) for f in report.warnings]
    lines += [f"limit: {limit}" for limit in report.limits]
    return Verdict(
        "failed" if report.errors else "ok",
        errors=len(report.errors),
        warnings=len(report.warnings),
        qubes=report.qubes,
        segments=report.segments,
        hashed=report.bytes_hashed,
        findings=lines,
    )


class Pipelined:
    """The verifier end: each qube of the copy verified in a thread while the next arrives.

    :class:`~qubes_logvm.store.verify.stream.QubeStream` is the engine's
    streaming entry (the findings ``verify_store`` gives on the finished
    copy); receiving and verifying overlap, so the copy costs little more
    than the verification itself. The thread starts first and imports the
    verifier while the input's first bytes are received (half of this
    program's start-up), then takes what :meth:`begin` and :meth:`qube` queue.
    """

    def __init__(self, workdir: Path, requested: list[str] | None) -> None:
        self.workdir, self.root, self.requested = workdir, workdir / "store", requested
        self.stream: QubeStream | None = None
        self.queue: queue.SimpleQueue[Received | str | None] = queue.SimpleQueue()
        self.failure: Exception | None = None
        self.stopping = False
        self.thread: threading.Thread | None = threading.Thread(
            target=self._work, name="verify", daemon=True
        )
        self.thread.start()

    def begin(self, got: "Received") -> None:
        """Prefix, store.json and epoch received: the engine can start."""
        self.queue.put(got)

    def qube(self, name: str) -> None:
        """``qubes/NAME`` is complete (a failure of the engine so far stops the input)."""
        if self.failure is not None:
            raise self.failure
        self.queue.put(name)

    def _start(self, got: "Received") -> None:
        """The key file, the witness's records, the engine (in the thread)."""
        from ..core.seal import parse_verification_key
        from ..store.layout import StoreLayout
        from ..store.verify.stream import QubeStream

        parse_verification_key(got.key)
        rebuild_key_file(self.root, got.key, got.epoch)
        witness = None
        if got.witness:
            witness = self.workdir / "witness"
            witness.write_bytes(got.witness)
        StoreLayout(self.root)  # the copy is laid out as a store
        self.stream = QubeStream(self.root, got.key, self.requested, witness)

    def _work(self) -> None:
        try:
            from ..store.verify import stream  # noqa: F401  (while the input arrives)
        except Exception as err:  # noqa: BLE001  (re-raised by qube and finish)
            self.failure = err
        while (item := self.queue.get()) is not None:
            if self.stopping or self.failure is not None:
                continue
            try:
                if isinstance(item, Received):
                    self._start(item)
                elif self.stream is not None:
                    self.stream.qube(item)
            except Exception as err:  # noqa: BLE001  (re-raised by qube and finish)
                self.failure = err

    def _join(self) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None

    def stop(self) -> None:
        """The input was refused: the qube being verified is the last."""
        self.stopping = True
        self._join()

    def finish(self) -> "Report":
        """Wait for the qubes queued, then the report (the engine's own errors re-raised)."""
        self._join()
        if self.failure is not None:
            raise self.failure
        if self.stream is None:
            raise ProtocolError("the snapshot ended before its qubes")
        return self.stream.finish()


@dataclass
class Received:
    """What the input held besides the files written."""

    key: str = ""
    witness: bytes = b""
    limit: int = 0
    epoch: int | None = None
    qubes: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


class Receiver:
    """Reads the verifier input into a store copy at ``root``, checking as it goes."""

    def __init__(self, untrusted_in: BinaryIO, root: Path, sink: Pipelined | None = None) -> None:
        self.stream = FrameReader(untrusted_in)
        self.root = root
        self.got = Received()
        self.sink = sink

    def line(self, allowed: tuple[bytes, ...]) -> Frame:
        untrusted = self.stream.readline(MAX_HEADER)
        if not untrusted:
            raise ProtocolError("the snapshot ends early (no end frame): truncated in transit")
        if not untrusted.endswith(b"\n"):
            if len(untrusted) < MAX_HEADER:
                raise ProtocolError("the snapshot ends inside a header: truncated in transit")
            raise ProtocolError(f"header line longer than {MAX_HEADER} bytes")
        return parse_header(untrusted[:-1], allowed)

    def small(self, size: int, bound: int, what: str) -> bytes:
        if size > bound:
            raise ProtocolError(f"{what} larger than {bound} bytes")
        data = self.stream.read(size)
        if len(data) != size:
            raise ProtocolError(f"the input ends inside {what}")
        return data

    def receive(self) -> Received:
        """Read everything; raise ProtocolError at the first thing out of place."""
        if self.stream.readline(MAX_HEADER) != INPUT_MAGIC + b"\n":
            raise ProtocolError("not a verifier input")
        got = self.got
        got.limit = self.line((b"limit",)).number(0)
        key = self.small(self.line((b"key",)).number(0), MAX_KEY_TEXT, "the key")
        got.key = key.decode("ascii", "replace")
        witness = self.line((b"witness",)).number(0)
        got.witness = self.small(witness, MAX_WITNESS_BYTES, "the witness records")
        first = self.stream.readline(MAX_HEADER)
        if not first:
            raise ProtocolError("the LogVM sent nothing: the snapshot ends early (no end frame)")
        if first != SNAPSHOT_MAGIC + b"\n":
            raise ProtocolError("the LogVM's answer is not a snapshot (bad first line)")
        identity = self.small(self.line((b"store",)).number(0), MAX_STORE_JSON, "store.json")
        (self.root / "qubes").mkdir(parents=True)
        (self.root / "state").mkdir()
        if identity:
            (self.root / "store.json").write_bytes(identity)
        self._body()
        if not self.stream.at_end():
            raise ProtocolError("data after the end frame")
        return got

    def _body(self) -> None:
        got, qube_dir = self.got, None
        seen: set[str] = set()
        frame = self.line((b"epoch", b"qube", b"end"))
        if frame.word == b"epoch":
            got.epoch = frame.number(0)
            frame = self.line((b"state", b"qube", b"end"))
        while frame.word == b"state":
            frame = self._state_file(frame, seen)
        if self.sink is not None:
            self.sink.begin(got)
        while True:
            if frame.word in (b"qube", b"end") and qube_dir is not None and self.sink:
                self.sink.qube(qube_dir.name)  # the previous qube is complete
            if frame.word == b"qube":
                name = validate_qube_name(frame.fields[0].decode())
                if name in got.qubes:
                    raise ProtocolError(f"qube {name} sent twice")
                got.qubes.append(name)
                qube_dir, seen = self.root / "qubes" / name, set()
                qube_dir.mkdir()
            elif frame.word == b"file":
                if qube_dir is None:
                    raise ProtocolError("file frame outside a qube")
                name = self._file_name(frame, seen)
                self._copy(qube_dir / name, frame.number(1))
            else:
                self._check_end(frame)
                return
            frame = self.line((b"qube", b"file", b"end"))

    def _state_file(self, frame: Frame, seen: set[str]) -> Frame:
        """One of format 2's store-wide files, into the copy's state/."""
        name = frame.fields[0].decode()
        if name in seen:
            raise ProtocolError(f"state file {name} sent twice")
        seen.add(name)
        if frame.number(1) > MAX_STATE_FILE:
            raise ProtocolError(f"state/{name} larger than {MAX_STATE_FILE} bytes")
        self._copy(self.root / "state" / name, frame.number(1))
        return self.line((b"state", b"qube", b"end"))

    @staticmethod
    def _file_name(frame: Frame, seen: set[str]) -> str:
        if FILE_NAME.fullmatch(frame.fields[0]) is None:
            raise ProtocolError("file frame with a name no store file has")
        name = frame.fields[0].decode()
        if name in seen:
            raise ProtocolError(f"file {name} sent twice")
        seen.add(name)
        return name

    def _copy(self, path: Path, size: int) -> None:
        got = self.got
        if got.bytes + size > got.limit:
            raise ProtocolError(f"the snapshot is larger than the limit of {got.limit} bytes")
        disk = os.statvfs(self.root)
        if size + DISK_MARGIN > disk.f_bavail * disk.f_frsize:
            raise ProtocolError(f"no room in the DispVM for a file of {size} bytes")
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            done = self.stream.copy_to(out, size)
        finally:
            os.close(out)
        if done != size:
            raise ProtocolError(f"the snapshot ends inside {path.parent.name}/{path.name}")
        got.files += 1
        got.bytes += size

    def _check_end(self, frame: Frame) -> None:
        got = self.got
        if (frame.number(0), frame.number(1), frame.number(2)) != (
            len(got.qubes),
            got.files,
            got.bytes,
        ):
            raise ProtocolError("the end frame disagrees with what was sent")


def rebuild_key_file(root: Path, key: str, epoch: int | None) -> None:
    """The store copy's key file, derived from ``K[0]`` at the epoch the LogVM reported.

    The LogVM never sends key material; the copy gets the key file the
    verifier expects so that seals newer than the key state are still refused.
    """
    from ..core.seal import EpochKeys, parse_verification_key
    from ..store.keystate import encode_key_record
    from ..store.verify.context import MAX_EPOCH

    if epoch is None or epoch > MAX_EPOCH:
        return  # the verifier reports the missing key file
    store_id, key0 = parse_verification_key(key)
    record = encode_key_record(store_id, epoch, EpochKeys(key0).key(epoch))
    (root / "state" / "sealkey").write_bytes(record)


def check_input(untrusted_in: BinaryIO, workdir: Path, requested: list[str] | None) -> Verdict:
    """Receive into ``workdir/store``, verifying as qubes arrive; every failure is a verdict."""
    pipeline = Pipelined(workdir, requested)
    receiver = Receiver(untrusted_in, pipeline.root, pipeline)
    try:
        receiver.receive()
        return verify_copy(pipeline.finish)
    except (LogvmError, OSError) as err:
        pipeline.stop()
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return Verdict("error", findings=[f"cannot verify: {detail}"])


def main(
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    untrusted_in: BinaryIO | None = None,
    out: BinaryIO | None = None,
) -> int:
    """Entry point of the ``logvm.VerifySnapshot`` service; always writes a verdict."""
    env = os.environ if environ is None else environ
    args = sys.argv[1:] if argv is None else argv
    argument = env.get("QREXEC_SERVICE_ARGUMENT", args[0] if args else "")
    stdout = out or sys.stdout.buffer
    workdir = Path(tempfile.mkdtemp(prefix="logvm-verify-", dir=env.get("HOME") or None))
    try:
        requested = [validate_qube_name(q) for q in argument.split("+")] if argument else None
        verdict = check_input(untrusted_in or sys.stdin.buffer, workdir, requested)
    except (LogvmError, StoreError) as err:
        verdict = Verdict("error", findings=[f"cannot verify: {err}"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stdout.write(verdict.to_bytes())
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
