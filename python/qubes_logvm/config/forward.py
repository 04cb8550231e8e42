"""``forward.yaml``: the configuration of ``logvm-forward``, loaded and validated (floor 2).

Read from ``/etc/qubes-logvm/forward.yaml`` (from the template, rendered by
Salt from pillar ``logvm:forward:``) deep-merged with
``/rw/config/qubes-logvm/forward.yaml`` (local override in the LogVM).
Trust side: admin-written; every key is checked and an unknown key is an
error naming it. docs/forwarding.md describes each key.
"""

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.names import validate_qube_name
from ..core.syslog5424 import DEFAULT_PEN
from .schema import Section, load_yaml_files

DEFAULT_PATHS = (
    Path("/etc/qubes-logvm/forward.yaml"),
    Path("/rw/config/qubes-logvm/forward.yaml"),
)
DEFAULT_STATE = Path("/var/lib/qubes-logvm-forward")
_TLS_DIR = Path("/rw/config/qubes-logvm/forward")
#: Syslog facilities by name (RFC 5424 table 1), for ``facility:``.
FACILITIES = {
    "user": 1,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    **{f"local{n}": 16 + n for n in range(8)},
}


@dataclass(frozen=True)
class ForwardConfig:
    """Everything ``logvm-forward`` needs."""

    server_name: str  # the name the server's certificate must carry
    command: tuple[str, ...]  # how the byte stream reaches the server
    ca_file: Path = _TLS_DIR / "ca.pem"
    cert_file: Path = _TLS_DIR / "client.pem"
    key_file: Path = _TLS_DIR / "client.key"
    hostname: str = ""
    qubes: tuple[str, ...] = ("*",)
    window_records: int = 200000
    window_bytes: int = 64 << 20
    window_seconds: float = 30.0
    connect_timeout: float = 30.0
    poll_seconds: float = 1.0
    retry_max: float = 60.0
    facility: int = 1
    pen: int = DEFAULT_PEN
    state_dir: Path = DEFAULT_STATE


def _command(section: Section) -> tuple[str, ...]:
    """``connect:``: a forwarder qube and its service, or a whole command."""
    command = section.strings("command")
    qube = section.string("qube", "")
    service = section.string("service", "logvm.Forward")
    if command:
        if qube:
            raise ConfigError(f"{section.key('command')}: give either qube or command, not both")
        return tuple(command)
    if not qube:
        raise ConfigError(f"{section.key('qube')}: the forwarder qube is required")
    if not qube.startswith("@"):
        validate_qube_name(qube)
    return ("qrexec-client-vm", qube, service)


def parse_forward(data: dict[str, Any]) -> ForwardConfig:
    """Validate a merged configuration mapping."""
    top = Section(data, "")
    server = top.section("server")
    name = server.string("name", "")
    if not name:
        raise ConfigError(f"{server.key('name')}: the server's certificate name is required")
    server.done()
    connect = top.section("connect")
    command = _command(connect)
    connect.done()
    tls = top.section("tls")
    window = top.section("window")
    facility = top.choice("facility", "user", tuple(FACILITIES))
    config = ForwardConfig(
        server_name=name,
        command=command,
        ca_file=Path(tls.string("ca", str(_TLS_DIR / "ca.pem"))),
        cert_file=Path(tls.string("cert", str(_TLS_DIR / "client.pem"))),
        key_file=Path(tls.string("key", str(_TLS_DIR / "client.key"))),
        hostname=top.string("hostname", "") or socket.gethostname(),
        qubes=tuple(top.strings("qubes", ["*"])),
        window_records=window.integer("records", 200000, minimum=1),
        window_bytes=window.size("bytes", "64M"),
        window_seconds=window.duration("seconds", "30s"),
        connect_timeout=top.duration("connect_timeout", "30s"),
        poll_seconds=top.duration("poll", "1s"),
        retry_max=top.duration("retry_max", "60s"),
        facility=FACILITIES[facility],
        pen=top.integer("pen", DEFAULT_PEN, minimum=1),
        state_dir=Path(top.string("state_dir", str(DEFAULT_STATE))),
    )
    tls.done()
    window.done()
    top.done()
    if config.window_bytes < 1 << 16:
        raise ConfigError("window.bytes: must be at least 64K (one record)")
    if config.poll_seconds <= 0 or config.window_seconds <= 0:
        raise ConfigError("poll and window.seconds: must be more than 0")
    return config


def load_forward_config(*paths: Path) -> ForwardConfig:
    """Load, merge and validate (default: the shipped file and the local override)."""
    return parse_forward(load_yaml_files(*(paths or DEFAULT_PATHS)))
