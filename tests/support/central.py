"""A real central syslog server for logvm-forward: rsyslog with TLS on loopback (test-only).

rsyslog's imtcp with the gtls driver, mutual TLS (``x509/name``: the client's
certificate must come from the CA and carry the permitted name), writing
``RSYSLOG_SyslogProtocol23Format`` lines to a file: the documented central
set-up of docs/forwarding.md. Certificates are made with openssl. Used by
tests/forward and bench/forward_bench.py.
"""

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
SERVER_NAME = "logs.example.test"
CLIENT_NAME = "sys-log.example.test"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(directory: Path, ca: str, name: str, san: str, usage: str) -> None:
    (directory / f"{name}.ext").write_text(
        f"subjectAltName={san}\nextendedKeyUsage={usage}\n", encoding="ascii"
    )
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
             "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


def _ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=directory)  # fmt: skip


def make_pki(directory: Path) -> Path:
    """ca (server and client), other-ca (a server the client must refuse)."""
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca")
    _ca(directory, "other-ca")
    _issue(directory, "ca", "server", f"DNS:{SERVER_NAME},IP:127.0.0.1", "serverAuth")
    _issue(directory, "ca", "client", f"DNS:{CLIENT_NAME}", "clientAuth")
    _issue(directory, "other-ca", "rogue", f"DNS:{SERVER_NAME}", "serverAuth")
    _issue(directory, "other-ca", "rogue-client", f"DNS:{CLIENT_NAME}", "clientAuth")
    return directory


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Rsyslog:
    """One rsyslogd in the foreground, restartable on the same port and file."""

    directory: Path
    pki: Path
    server_cert: str = "server"
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> Path:
        return self.directory / "central.log"

    def config(self) -> str:
        p, d = self.pki, self.directory
        return f"""
global(workDirectory="{d}" maxMessageSize="512k" parser.escapeControlCharacterTab="off"
  DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{p}/ca.pem"
  DefaultNetstreamDriverCertFile="{p}/{self.server_cert}.pem"
  DefaultNetstreamDriverKeyFile="{p}/{self.server_cert}.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
  StreamDriver.AuthMode="x509/name" PermittedPeer=["{CLIENT_NAME}"])
input(type="imtcp" port="{self.port}" address="127.0.0.1" ruleset="qubes")
ruleset(name="qubes") {{
    action(type="omfile" file="{self.output}"
           template="RSYSLOG_SyslogProtocol23Format")
}}
"""

    def start(self) -> "Rsyslog":
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "rsyslog.conf"
        conf.write_text(self.config(), encoding="ascii")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.directory / "pid")],
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "rsyslogd.err").open("ab"),
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError((self.directory / "rsyslogd.err").read_text())
            time.sleep(0.05)
        raise RuntimeError("rsyslogd did not listen")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None

    def lines(self) -> list[bytes]:
        try:
            return self.output.read_bytes().splitlines()
        except FileNotFoundError:
            return []
