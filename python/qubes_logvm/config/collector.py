"""``collector.yaml``: the collector's configuration, loaded and validated (floor 2).

Read from ``/etc/qubes-logvm/collector.yaml`` (from the template, rendered by
Salt) deep-merged with ``/rw/config/qubes-logvm/collector.yaml`` (local
override in the LogVM). Trust side: admin-written; every key is checked and
an unknown key is an error naming it.

The rotation keys (``segment``, ``quota``, ``classes``, ``global``,
``retention``, ``compress``) are shared with ``logvm-rotate`` and parsed by
:func:`qubes_logvm.config.storage_policy.parse_retention`; this module reads the
collector's own keys.
"""

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.names import WITNESS_SERVICE
from .schema import Section, load_yaml_files
from .storage_policy import RetentionConfig, parse_retention

#: The least ``pending_bytes_total``: below it flooders could hardly be read at all.
MIN_PENDING_TOTAL = 1 << 20
#: The most ``pending_bytes``: a crash leaves at most four batches' worth and a
#: read unsealed (collector/qubewriter.py FEW_BATCH_FACTOR), which the verifier
#: reads to judge (store/verify/segment.py TAIL_READ, 64 MiB).
MAX_PENDING = 8 << 20

DEFAULT_PATHS = (
    Path("/etc/qubes-logvm/collector.yaml"),
    Path("/rw/config/qubes-logvm/collector.yaml"),
)


@dataclass(frozen=True)
class RateLimit:
    """Token bucket per qube: a sustained rate and a burst (0 rate: unlimited)."""

    lines_per_second: float = 20000.0
    burst: int = 200000


@dataclass(frozen=True)
class WitnessConfig:
    """Where checkpoints go (``target`` None: no witness configured)."""

    target: str | None = None
    interval_seconds: float = 5.0
    command: tuple[str, ...] = ()

    def argv(self) -> tuple[str, ...]:
        """The command that reaches the witness's ``logvm.Witness`` service."""
        if self.command:
            return self.command
        return ("qrexec-client-vm", self.target or "dom0", WITNESS_SERVICE)


@dataclass(frozen=True)
class CollectorConfig:
    """Everything ``logvm-collector`` needs."""

    max_line_bytes: int = 64 * 1024
    max_connections: int = 256
    max_connections_per_qube: int = 8
    allowed_uids: tuple[int, ...] = (0,)
    allowed_group: str | int | None = "qubes"
    descriptor_timeout: float = 10.0
    pending_bytes: int = 1 << 20
    pending_bytes_total: int = 32 << 20  # across all connections
    housekeeping_seconds: float = 5.0
    session_linger: float = 2.0  # a reconnect within this continues the session
    rate_limit: RateLimit = field(default_factory=RateLimit)
    per_qube_rate: dict[str, RateLimit] = field(default_factory=dict)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    witness: WitnessConfig = field(default_factory=WitnessConfig)

    def rate_for(self, qube: str) -> RateLimit:
        """A qube's rate limit: its own entry (exact name or glob), else the default."""
        if qube in self.per_qube_rate:
            return self.per_qube_rate[qube]
        for pattern, limit in self.per_qube_rate.items():
            if fnmatch.fnmatchcase(qube, pattern):
                return limit
        return self.rate_limit


def _rate(section: Section, default: RateLimit) -> RateLimit:
    return RateLimit(
        lines_per_second=section.number("lines_per_second", default.lines_per_second),
        burst=section.integer("burst", default.burst, minimum=1),
    )


def _rates(section: Section) -> tuple[RateLimit, dict[str, RateLimit]]:
    qubes = section.section("qubes")
    default = _rate(section, RateLimit())
    section.done()
    per_qube = {}
    for name in qubes.names():
        sub = qubes.section(name)
        per_qube[name] = _rate(sub, default)
        sub.done()
    return default, per_qube


def _witness(section: Section) -> WitnessConfig:
    target = section.string("target", "") if section.raw("target") is not None else None
    config = WitnessConfig(
        target=target,
        interval_seconds=section.number("interval_seconds", 5.0, minimum=0.1),
        command=tuple(section.strings("command", [])),
    )
    section.done()
    return config


def _group(value: object) -> str | int | None:
    """``allowed_group``: a group name, a gid, or null (root only)."""
    if value is None or (isinstance(value, str) and value):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"allowed_group: expected a group name, a gid or null, got {value!r:.60}")


def parse_collector_config(data: dict[str, Any]) -> CollectorConfig:
    """Validate merged YAML data (ConfigError names a wrong or unknown key)."""
    top = Section(data, "")
    rate_default, per_qube = _rates(top.section("rate_limit"))
    uids = top.raw("allowed_uids", [0])
    if not isinstance(uids, list) or not all(
        isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in uids
    ):
        raise ConfigError(f"allowed_uids: expected a list of user ids, got {uids!r:.60}")
    config = CollectorConfig(
        max_line_bytes=top.size("max_line_bytes", 64 * 1024),
        max_connections=top.integer("max_connections", 256, minimum=1),
        max_connections_per_qube=top.integer("max_connections_per_qube", 8, minimum=1),
        allowed_uids=tuple(uids),
        allowed_group=_group(top.raw("allowed_group", "qubes")),
        descriptor_timeout=top.duration("descriptor_timeout", 10.0),
        pending_bytes=top.size("pending_bytes", "1M"),
        pending_bytes_total=top.size("pending_bytes_total", "32M"),
        housekeeping_seconds=top.duration("housekeeping_seconds", 5.0),
        session_linger=top.duration("session_linger", 2.0),
        rate_limit=rate_default,
        per_qube_rate=per_qube,
        retention=parse_retention(top),
        witness=_witness(top.section("witness")),
    )
    if config.max_line_bytes < 1:
        raise ConfigError("max_line_bytes: must be at least 1 byte")
    if not 1 <= config.pending_bytes <= MAX_PENDING:
        raise ConfigError(
            f"pending_bytes: must be 1 byte to {MAX_PENDING >> 20} MiB, got {config.pending_bytes}"
        )
    if config.pending_bytes_total < MIN_PENDING_TOTAL:
        raise ConfigError(
            f"pending_bytes_total: must be at least {MIN_PENDING_TOTAL >> 20} MiB, "
            f"got {config.pending_bytes_total}"
        )
    top.done()
    return config


def load_collector_config(*paths: Path) -> CollectorConfig:
    """Load and deep-merge ``paths`` in order (later wins), or by default the
    template's file merged with the qube's override in /rw."""
    return parse_collector_config(load_yaml_files(*(paths or DEFAULT_PATHS)))
