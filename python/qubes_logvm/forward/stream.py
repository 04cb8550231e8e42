"""TLS to the central server over the stdin/stdout of a qrexec call.

Role: runs ``qrexec-client-vm FORWARDER logvm.Forward`` (or the configured
command) and speaks TLS through its pipes with :class:`ssl.SSLObject` and
memory BIOs, so the LogVM needs no network and the forwarder qube sees only
ciphertext. TLS 1.2 or later, the server's certificate checked against the
pinned CA and the configured name, our client certificate for mutual TLS.

Confirmation (RFC 5425 has no application acknowledgement): a window of
messages ends with our ``close_notify`` and the end of our stdin; the server
reads to that point, then closes; the end of its stream (or its own
``close_notify``) *after* ours confirms the window. A server that hangs up
before we close (it refused our certificate, restarted, or failed) confirms
nothing, so the window is sent again: at least once, at most one window
twice. docs/forwarding.md says what this does and does not guarantee.

Trust side: what comes back is from the network through an untrusted
forwarder qube: only TLS records, read in bounded pieces; the server never
sends application data in this protocol, and any is an error.
"""

import contextlib
import fcntl
import os
import select
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.errors import LogvmError

_READ = 1 << 16
_PIPE = 1 << 20  # the default pipe-max-size for unprivileged processes


class StreamError(LogvmError):
    """The connection to the server failed or did not confirm a window."""


def tls_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Client context: pinned CA only (no system store), mutual TLS, TLS >= 1.2."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca_file))
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as err:
        raise StreamError(f"TLS files ({ca_file}, {cert_file}, {key_file}): {err}") from err
    return context


class TlsStream:
    """One qrexec call carrying one TLS session (one window or more)."""

    def __init__(
        self,
        argv: Sequence[str],
        context: ssl.SSLContext,
        server_name: str,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_name)
        try:
            self._proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
            )
        except OSError as err:
            raise StreamError(f"cannot run {argv[0]}: {err.strerror}") from err
        assert self._proc.stdin is not None and self._proc.stdout is not None  # noqa: S101
        self._stdin = self._proc.stdin.fileno()
        self._stdout = self._proc.stdout.fileno()
        for fd in (self._stdin, self._stdout):
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):  # larger pipes: fewer writes and wake-ups
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE)
        self._eof = False
        self._ready = False
        self._server_closed = False  # its close_notify came before ours
        self._grace_until = 0.0

    def handshake(self, server_name: str, grace: float = 0.5) -> None:
        """TLS handshake. A server that refuses our certificate may say so only
        after it (TLS 1.3): the window is confirmed no sooner than ``grace``
        after the handshake, so such a hang-up is seen first."""
        deadline = self._clock() + self._timeout
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush(deadline)
                self._receive(deadline)
            except ssl.SSLCertVerificationError as err:
                raise StreamError(
                    f"the server's certificate is refused ({err.verify_message}): not signed "
                    f"by the pinned CA, or not for {server_name!r}"
                ) from err
            except ssl.SSLError as err:
                raise StreamError(f"TLS handshake failed: {err.reason or err}") from err
        self._ready = True
        self._flush(deadline)
        self._grace_until = self._clock() + grace

    def send(self, data: bytes) -> None:
        """Encrypt and write; fails when the server has hung up meanwhile."""
        deadline = self._clock() + self._timeout
        self._receive(deadline, wait_only=True, wait=0.0)
        if self._eof or self._server_closed:
            raise StreamError(self._hung_up("in the middle of a window"))
        try:
            self._tls.write(data)
        except ssl.SSLError as err:
            raise StreamError(f"TLS error: {err.reason or err}") from err
        self._flush(deadline)

    def confirm(self) -> None:
        """End the window: close_notify, end of stdin, the server's close after ours."""
        deadline = self._clock() + self._timeout
        while True:  # the rest of the grace after the handshake, if any
            self._receive(
                deadline, wait_only=True, wait=max(0.0, self._grace_until - self._clock())
            )
            if self._eof or self._server_closed:
                raise StreamError(self._hung_up("before the window was confirmed"))
            if self._clock() >= self._grace_until:
                break
        with contextlib.suppress(ssl.SSLWantReadError):
            self._tls.unwrap()
        self._flush(deadline)
        self._close_stdin()
        while not self._eof:
            try:
                self._tls.unwrap()
                return  # the server's own close_notify
            except ssl.SSLWantReadError:
                self._receive(deadline)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return
            except ssl.SSLError as err:
                raise StreamError(f"TLS error at close: {err.reason or err}") from err
        # The end of the stream after our close_notify: the server read it all.

    def _hung_up(self, when: str) -> str:
        if self._clock() < self._grace_until:
            return (
                "the server closed the connection right after the handshake "
                "(is our client certificate accepted there?)"
            )
        return f"the server closed the connection {when}"

    def close(self) -> None:
        """Stop the qrexec call (it is done or abandoned)."""
        self._close_stdin()
        with contextlib.suppress(OSError):
            self._proc.stdout.close()  # type: ignore[union-attr]
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)

    def _close_stdin(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    def _flush(self, deadline: float) -> None:
        """Write all pending TLS bytes to the call's stdin, by the deadline."""
        data = memoryview(self._outgoing.read())
        while data:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise StreamError("the server does not take data (timed out)")
            _, writable, _ = select.select([], [self._stdin], [], remaining)
            if not writable:
                continue
            try:
                data = data[os.write(self._stdin, data) :]
            except BlockingIOError:
                continue
            except OSError as err:
                raise StreamError(f"the connection broke: {err.strerror}") from err

    def _receive(
        self, deadline: float, *, wait_only: bool = False, wait: float | None = None
    ) -> None:
        """Feed what the server sent into TLS; mark the end of its stream.

        Blocks until something arrives or the deadline passes (an error unless
        ``wait_only``); ``wait`` caps the wait (0: just look).
        """
        if self._eof:
            return
        remaining = max(0.0, deadline - self._clock())
        if wait is not None:
            remaining = min(remaining, wait)
        readable, _, _ = select.select([self._stdout], [], [], remaining)
        if not readable:
            if not wait_only:
                raise StreamError("no answer from the server (timed out)")
            return
        try:
            chunk = os.read(self._stdout, _READ)
        except BlockingIOError:
            return
        except OSError as err:
            raise StreamError(f"the connection broke: {err.strerror}") from err
        if not chunk:
            self._eof = True
            self._incoming.write_eof()
            return
        self._incoming.write(chunk)
        if self._ready:
            self._decrypt()

    def _decrypt(self) -> None:
        """Process what the server sent: it may close, never send data."""
        try:
            data = self._tls.read(_READ)
        except ssl.SSLWantReadError:
            return
        except ssl.SSLZeroReturnError:
            self._server_closed = True  # before our close_notify: confirms nothing
            return
        except ssl.SSLError as err:
            raise StreamError(f"TLS error from the server: {err.reason or err}") from err
        if data:
            raise StreamError("the server sent data; RFC 5425 servers send none")
