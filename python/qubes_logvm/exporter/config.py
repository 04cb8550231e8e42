"""``exporter.yaml``: the exporter's configuration, loaded and validated (floor 3).

Read from ``/etc/qubes-logvm/exporter.yaml`` (from the template, rendered by
Salt) deep-merged with ``/rw/config/qubes-logvm/exporter.yaml`` (per qube).
Trust side: admin-written; every key is checked and an unknown key is an
error naming it.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..config.schema import Section, load_yaml_files
from ..core.errors import ConfigError, InvalidQubeName
from ..core.names import SEND_SERVICE, validate_qube_name

DEFAULT_PATHS = (
    Path("/etc/qubes-logvm/exporter.yaml"),
    Path("/rw/config/qubes-logvm/exporter.yaml"),
)
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


@dataclass(frozen=True)
class Filter:
    """Include/exclude lists of names or shell globs (empty include = all)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class JournalConfig:
    """The local journal source."""

    enabled: bool = True
    min_priority: int = 7
    units: Filter = field(default_factory=Filter)
    identifiers: Filter = field(default_factory=Filter)


@dataclass(frozen=True)
class FileConfig:
    """One followed file glob and the tag its records carry."""

    path: str
    tag: str


@dataclass(frozen=True)
class SyslogConfig:
    """The syslog listener: a Unix datagram socket and optional loopback ports."""

    enabled: bool = False
    socket: str = "/run/qubes-logvm/syslog.sock"
    udp: int | None = None
    tcp: int | None = None


@dataclass(frozen=True)
class Dom0Config:
    """dom0 as a source (docs/dom0.md): whom to call, what to follow for each qube."""

    enabled: bool = False
    logvm: str = "sys-log"
    #: qubesadmin.config.QREXEC_CLIENT: dom0's client, outside policy.
    qrexec_client: str = "/usr/bin/qrexec-client"
    consoles: bool = True
    console_dir: str = "/var/log/xen/console"
    qubes_logs: bool = True
    qubes_log_dir: str = "/var/log/qubes"
    remove_dispvm_consoles: bool = False
    #: Qubes whose files dom0 never ships (the formula's excluded sources).
    exclude: tuple[str, ...] = ()
    #: (qube, LogVM) for qubes whose logs go to another LogVM than ``logvm``.
    routes: tuple[tuple[str, str], ...] = ()
    #: Where qrexec-daemon keeps ``qrexec.<qube>`` (a running qube has one).
    qrexec_socket_dir: str = "/var/run/qubes"
    idle_close: float = 60.0


@dataclass(frozen=True)
class ExporterConfig:
    """Everything ``logvm-exporter`` needs."""

    qrexec_command: tuple[str, ...] = ("qrexec-client-vm", "@default", SEND_SERVICE)
    state_dir: Path = Path("/var/lib/qubes-logvm-exporter")
    batch_max_lines: int = 1000
    batch_max_delay: float = 0.05
    journal: JournalConfig = field(default_factory=JournalConfig)
    files: tuple[FileConfig, ...] = ()
    syslog: SyslogConfig = field(default_factory=SyslogConfig)
    stdin: bool = False
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    ack_timeout: float = 60.0
    shutdown_drain: float = 10.0
    dom0: Dom0Config = field(default_factory=Dom0Config)


def _filter(section: Section) -> Filter:
    result = Filter(tuple(section.strings("include")), tuple(section.strings("exclude")))
    section.done()
    return result


def _priority(section: Section) -> int:
    value = section.raw("min_priority", "debug")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return value
    if isinstance(value, str) and value in SEVERITIES:
        return SEVERITIES.index(value)
    allowed = ", ".join(SEVERITIES)
    raise ConfigError(f"{section.key('min_priority')}: expected 0-7 or one of {allowed}")


def _journal(section: Section) -> JournalConfig:
    result = JournalConfig(
        enabled=section.boolean("enabled", True),
        min_priority=_priority(section),
        units=_filter(section.section("units")),
        identifiers=_filter(section.section("identifiers")),
    )
    section.done()
    return result


def _files(section: Section) -> tuple[FileConfig, ...]:
    value = section.raw("files", [])
    key = section.key("files")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of {{path, tag}} mappings")
    result = []
    for index, item in enumerate(value):
        entry = Section(item, f"{key}[{index}]")
        path = entry.string("path", "")
        if not path.startswith("/"):
            raise ConfigError(f"{entry.key('path')}: expected an absolute path or glob")
        tag = entry.string("tag", Path(path).name)
        entry.done()
        result.append(FileConfig(path, tag))
    return tuple(result)


def _port(section: Section, name: str) -> int | None:
    value = section.raw(name)
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{section.key(name)}: expected a port number 1-65535 or null")
    return value


def _syslog(section: Section) -> SyslogConfig:
    socket = section.string("socket", SyslogConfig.socket)
    if not socket.startswith("/"):
        raise ConfigError(f"{section.key('socket')}: expected an absolute path")
    result = SyslogConfig(
        enabled=section.boolean("enabled", False),
        socket=socket,
        udp=_port(section, "udp"),
        tcp=_port(section, "tcp"),
    )
    section.done()
    return result


def _absolute(section: Section, name: str, default: str) -> str:
    value = section.string(name, default)
    if not value.startswith("/"):
        raise ConfigError(f"{section.key(name)}: expected an absolute path")
    return value


def _routes(section: Section) -> tuple[tuple[str, str], ...]:
    value = section.raw("routes", {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{section.key('routes')}: expected a mapping of qube: LogVM")
    return tuple(sorted(value.items()))


def _dom0(section: Section) -> Dom0Config:
    defaults = Dom0Config()
    result = Dom0Config(
        enabled=section.boolean("enabled", False),
        logvm=section.string("logvm", defaults.logvm),
        qrexec_client=_absolute(section, "qrexec_client", defaults.qrexec_client),
        consoles=section.boolean("consoles", True),
        console_dir=_absolute(section, "console_dir", defaults.console_dir),
        qubes_logs=section.boolean("qubes_logs", True),
        qubes_log_dir=_absolute(section, "qubes_log_dir", defaults.qubes_log_dir),
        remove_dispvm_consoles=section.boolean("remove_dispvm_consoles", False),
        exclude=tuple(section.strings("exclude", [])),
        routes=_routes(section),
        qrexec_socket_dir=_absolute(section, "qrexec_socket_dir", defaults.qrexec_socket_dir),
        idle_close=section.duration("idle_close", "60s"),
    )
    section.done()
    named = [("logvm", result.logvm), *(("exclude", n) for n in result.exclude)]
    named += [("routes", n) for pair in result.routes for n in pair]
    for key, name in named:
        try:
            validate_qube_name(name)
        except InvalidQubeName as err:
            raise ConfigError(f"{section.key(key)}: {err}") from err
    return result


def parse_exporter_config(data: object) -> ExporterConfig:
    """Validate a merged YAML document into an :class:`ExporterConfig`."""
    top = Section(data, "")
    command = top.strings("qrexec_command", list(ExporterConfig.qrexec_command))
    if not command:
        raise ConfigError("qrexec_command: must not be empty")
    batch = top.section("batch")
    backoff = top.section("backoff")
    sources = top.section("sources")
    config = ExporterConfig(
        qrexec_command=tuple(command),
        state_dir=Path(top.string("state_dir", str(ExporterConfig.state_dir))),
        batch_max_lines=batch.integer("max_lines", 1000, minimum=1),
        batch_max_delay=batch.duration("max_delay", "50ms"),
        journal=_journal(sources.section("journal")),
        files=_files(sources),
        syslog=_syslog(sources.section("syslog")),
        stdin=sources.boolean("stdin", False),
        backoff_initial=backoff.duration("initial", "1s"),
        backoff_max=backoff.duration("max", "60s"),
        ack_timeout=top.duration("ack_timeout", "60s"),
        shutdown_drain=top.duration("shutdown_drain", "10s"),
        dom0=_dom0(top.section("dom0")),
    )
    for section in (batch, backoff, sources, top):
        section.done()
    if config.backoff_initial <= 0 or config.backoff_max < config.backoff_initial:
        raise ConfigError("backoff: need 0 < initial <= max")
    if config.ack_timeout <= 0:
        raise ConfigError("ack_timeout: must be more than 0")
    return config


def load_exporter_config(*paths: Path) -> ExporterConfig:
    """Load, merge and validate; default paths when none are given."""
    return parse_exporter_config(load_yaml_files(*(paths or DEFAULT_PATHS)))
