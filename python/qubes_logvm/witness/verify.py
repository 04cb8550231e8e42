"""``logvm-witness verify``: verify a LogVM's store from outside it (dom0, programs floor).

dom0 asks the LogVM for a snapshot (``logvm.Export``) and pipes it, unread,
into a fresh DispVM of an offline disposable template running
``logvm.VerifySnapshot``, after a short prefix of its own: the verification
key and the witness's records for that LogVM (docs/snapshot-format.md). It
reads back only the DispVM's small verdict, parses it strictly
(:func:`qubes_logvm.core.snapshot_format.parse_verdict`), prints it, keeps it
(``last-verify``, shown by ``list``) and exits 0 / 1 / 2 like ``logvm verify``.

Both calls go through ``qvm-run --pass-io --no-gui --service``
(QubesOS/qubes-core-admin-client ``qubesadmin/tools/qvm_run.py``): in dom0 it
starts the target and runs ``qrexec-client`` without policy; with
``--dispvm=TEMPLATE`` it creates the disposable (``admin.vm.CreateDisposable``)
and kills it in ``main``'s ``finally`` (``dispvm.cleanup()``), which runs on a
normal end and after SIGINT (KeyboardInterrupt) but not after SIGTERM. So
every stop here is a SIGINT first, SIGKILL only after a grace period.

Trust side: nothing from the LogVM is read here (bytes are moved, counted
against a limit, and the copy ends at a deadline); the verdict comes from a
qube that read hostile data and is handled as hostile; the export's stdin is
/dev/null, so the key can only reach the DispVM.
"""

import contextlib
import fcntl
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..core.errors import LogvmError, ProtocolError
from ..core.snapshot_format import MAX_VERDICT_BYTES, Verdict, input_prefix, parse_verdict

CHUNK = 1 << 20
#: splice(2) calls per turn of the loop, between looks at the deadline and the answer.
TURN = 64
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
GRACE_SECONDS = 30.0
NETVM_SECONDS = 60.0
EXPORT_SERVICE = "logvm.Export"
CHECK_SERVICE = "logvm.VerifySnapshot"


@dataclass(frozen=True)
class Settings:
    """How one verification runs."""

    dispvm_template: str
    timeout: float = 3600.0
    max_bytes: int = 64 << 30
    qvm_run: str = "qvm-run"
    qvm_prefs: str = "qvm-prefs"


def _argument(qubes: Sequence[str]) -> str:
    return "+" + "+".join(qubes) if qubes else ""


def _start(settings: Settings, where: list[str], stdin: int) -> "subprocess.Popen[bytes]":
    """``qvm-run --pass-io --no-gui [--dispvm=T] --service -- [QUBE] SERVICE``; stderr dropped
    (it carries the remote service's words, which dom0 does not show)."""
    dispvm = [w for w in where if w.startswith("--dispvm=")]
    rest = [w for w in where if not w.startswith("--dispvm=")]
    argv = [settings.qvm_run, "--pass-io", "--no-gui", *dispvm, "--service", "--", *rest]
    return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def stop(proc: "subprocess.Popen[bytes]", grace: float = GRACE_SECONDS) -> None:
    """SIGINT (qvm-run then removes its DispVM), SIGKILL if it does not end."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Pump:
    """Moves the prefix, then the export's bytes, into the DispVM; collects the verdict.

    The export's bytes go pipe to pipe with ``splice(2)``: the kernel moves
    them and they never enter dom0's memory (dom0 counts them, nothing else).
    """

    def __init__(
        self, source: IO[bytes], sink: IO[bytes], answer: IO[bytes], prefix: bytes
    ) -> None:
        self.source, self.sink, self.answer = source, sink, answer
        self.pending = prefix
        self.moved = 0
        self.source_open = True
        self.sink_open = True
        self.verdict = bytearray()
        self.armed: set[IO[bytes]] = set()
        self.ready: set[IO[bytes]] = set()  # seen ready since the last would-block
        for stream in (source, sink):  # fewer, larger moves through dom0 (Linux pipes)
            os.set_blocking(stream.fileno(), False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, CHUNK)

    def run(self, deadline: float, max_bytes: int) -> bytes:
        """Until the DispVM closes its output; ProtocolError on timeout or excess."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.answer, selectors.EVENT_READ)
            while True:
                self._arm(sel)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProtocolError("timed out (the LogVM or the DispVM did not finish)")
                for key, _ in sel.select(min(left, 5.0)):
                    if key.fileobj is self.answer:
                        if self._read_answer():
                            return bytes(self.verdict)
                    else:
                        self.ready.add(key.fileobj)  # type: ignore[arg-type]
                if self.pending:
                    self._write_prefix()
                elif {self.source, self.sink} <= self.ready:
                    self._splice(max_bytes)

    def _arm(self, sel: selectors.BaseSelector) -> None:
        moving = self.source_open and self.sink_open
        want_sink = self.sink_open and (bool(self.pending) or moving)
        want_source = moving and not self.pending
        for fileobj, wanted, event in (
            (self.source, want_source and self.source not in self.ready, selectors.EVENT_READ),
            (self.sink, want_sink and self.sink not in self.ready, selectors.EVENT_WRITE),
        ):
            registered = fileobj in self.armed
            if wanted and not registered:
                sel.register(fileobj, event)
                self.armed.add(fileobj)
            elif not wanted and registered:
                sel.unregister(fileobj)
                self.armed.discard(fileobj)

    def _read_answer(self) -> bool:
        data = os.read(self.answer.fileno(), 4096)
        if not data:
            return True
        self.verdict += data
        if len(self.verdict) > MAX_VERDICT_BYTES:
            raise ProtocolError(f"the DispVM's answer is longer than {MAX_VERDICT_BYTES} bytes")
        return False

    def _write_prefix(self) -> None:
        if self.sink not in self.ready:
            return
        try:
            written = os.write(self.sink.fileno(), self.pending)
        except BlockingIOError:
            self.ready.discard(self.sink)
            return
        except BrokenPipeError:
            self._close_sink()  # the DispVM stopped reading: its verdict follows
            return
        self.pending = self.pending[written:]
        if self.pending:
            self.ready.discard(self.sink)

    def _splice(self, max_bytes: int) -> None:
        """Up to TURN moves, then back to the loop (the deadline, the answer)."""
        source, sink = self.source.fileno(), self.sink.fileno()
        for _ in range(TURN):
            want = min(CHUNK, max_bytes - self.moved + 1)
            try:
                moved = os.splice(source, sink, want, flags=SPLICE_FLAGS)
            except BlockingIOError:
                self.ready.clear()  # one side would block: wait for both again
                return
            except BrokenPipeError:
                self._close_sink()
                return
            if not moved:
                self.source_open = False
                self._close_sink()  # EOF: the DispVM sees the end of the input
                return
            self.moved += moved
            if self.moved > max_bytes:
                raise ProtocolError(f"the LogVM sent more than {max_bytes} bytes (--max-bytes)")

    def _close_sink(self) -> None:
        self.sink_open = False
        self.pending = b""
        self.ready.discard(self.sink)
        with contextlib.suppress(OSError):
            self.sink.close()


def ask_netvm(settings: Settings) -> "subprocess.Popen[bytes]":
    """Start ``qvm-prefs -- TEMPLATE netvm`` (read by :func:`check_offline`)."""
    template = settings.dispvm_template
    try:
        return subprocess.Popen(
            [settings.qvm_prefs, "--", template, "netvm"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError as err:
        raise ProtocolError(f"cannot read {template}'s netvm: {_reason(err)}") from err


def check_offline(settings: Settings, asked: "subprocess.Popen[bytes]") -> None:
    """Refuse a disposable template with a netvm: a DispVM inherits it.

    ``qvm-prefs TEMPLATE netvm`` prints the netvm's name, or nothing when it
    is none (qubesadmin/tools/qvm_prefs.py prints a value only if not None).
    """
    template = settings.dispvm_template
    try:
        stdout, _ = asked.communicate(timeout=NETVM_SECONDS)
    except subprocess.TimeoutExpired as err:
        asked.kill()
        asked.wait()
        raise ProtocolError(f"cannot read {template}'s netvm: {_reason(err)}") from err
    if asked.returncode != 0:
        raise ProtocolError(f"cannot read {template}'s netvm (no such qube?)")
    netvm = stdout.strip()[:64].decode("ascii", "replace")
    if netvm:
        raise ProtocolError(
            f"{template} has a netvm ({netvm!r}): the verifier must run in an offline DispVM"
        )


def verify_outside(
    logvm: str, qubes: Sequence[str], key: str, records: bytes, settings: Settings
) -> tuple[Verdict, int]:
    """Run one outside verification; returns the verdict and the bytes moved.

    The template's netvm is asked while the DispVM and the export start (on
    Qubes each start takes seconds); nothing is written into the DispVM, the
    key least of all, before the answer says the template is offline.
    Any failure to get a verdict is a verdict ``error`` naming the reason;
    every process started is stopped in every case.
    """
    deadline = time.monotonic() + settings.timeout
    arg = _argument(qubes)
    started: list[subprocess.Popen[bytes]] = []
    pump = None
    try:
        asked = ask_netvm(settings)
        started.append(asked)
        check = _start(
            settings,
            [f"--dispvm={settings.dispvm_template}", CHECK_SERVICE + arg],
            subprocess.PIPE,
        )
        started.append(check)
        export = _start(settings, [logvm, EXPORT_SERVICE + arg], subprocess.DEVNULL)
        started.append(export)
        check_offline(settings, asked)
        prefix = input_prefix(key, records, settings.max_bytes)
        pump = Pump(_pipe(export.stdout), _pipe(check.stdin), _pipe(check.stdout), prefix)
        raw = pump.run(deadline, settings.max_bytes)
        return _verdict_of(raw, check, deadline), pump.moved
    except (ProtocolError, OSError, subprocess.TimeoutExpired) as err:
        moved = pump.moved if pump else 0
        return Verdict("error", findings=[f"cannot verify: {_reason(err)}"]), moved
    finally:
        for proc in reversed(started):
            stop(proc)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    if stream is None:
        raise ProtocolError("qvm-run started without its pipes")
    return stream


def _verdict_of(raw: bytes, check: "subprocess.Popen[bytes]", deadline: float) -> Verdict:
    if not raw:
        code = check.wait(max(1.0, deadline - time.monotonic()))
        raise ProtocolError(f"the DispVM gave no verdict (qvm-run exit {code})")
    return parse_verdict(raw)


def _reason(err: Exception) -> str:
    if isinstance(err, subprocess.TimeoutExpired):
        return "timed out waiting for the DispVM"
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err)


def settings_from(template: str | None, timeout: float, max_bytes: int) -> Settings:
    """Checked settings; LogvmError naming the option."""
    if not template:
        raise LogvmError(
            "--dispvm-template is required: an offline disposable template "
            "(the formula's verify:dispvm_template)"
        )
    if timeout <= 0 or max_bytes <= 0:
        raise LogvmError("--timeout and --max-bytes must be more than 0")
    return Settings(template, timeout, max_bytes)


def format_verdict(logvm: str, verdict: Verdict) -> list[str]:
    """What the terminal shows: finding lines, then one summary line."""
    lines = list(verdict.findings)
    if verdict.more:
        lines.append(f"... {verdict.more} more finding(s) not shown")
    word = {"ok": "OK", "failed": "FAILED", "error": "CANNOT VERIFY"}[verdict.status]
    lines.append(f"{word}: {logvm} (outside the LogVM): {verdict.counts()}")
    return lines


def last_verify_path(state_dir: Path) -> Path:
    """Where the last verification's result is kept."""
    return state_dir / "last-verify"
