"""Rotation, quota and retention settings of ``collector.yaml`` (floor 2).

The collector's loader (:mod:`.collector`) hands the top-level
:class:`~.schema.Section` to :func:`parse_retention`, which reads exactly the
keys in :data:`RETENTION_KEYS` (and nothing else), checks each of them and
every key below them, and leaves the top-level unknown-key check to the
loader. ``logvm-rotate`` reads the same file with that loader.

Trust side: admin-written (or rendered by Salt from pillar); trusted but may
be wrong, so every value is checked and an error names its dotted key.
"""

import fnmatch
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TypeVar

from ..core.errors import ConfigError, InvalidQubeName
from ..core.names import validate_qube_name
from .schema import Section

_T = TypeVar("_T", int, float)

#: The top-level keys of collector.yaml that belong to this module.
RETENTION_KEYS = ("segment", "quota", "classes", "global", "retention", "compress")

#: Classes known without configuration; ``classes:`` may redefine them.
BUILTIN_CLASSES: Mapping[str, tuple[str, ...]] = MappingProxyType({"dispvm": ("disp[0-9]*",)})

DISPVM_CLASS = "dispvm"
MB = 1 << 20
GB = 1 << 30


@dataclass(frozen=True)
class RetentionConfig:
    """How segments roll, how much each qube may keep, and for how long.

    Sizes are bytes, durations seconds. ``classes`` is ordered: the first
    class whose patterns match a qube name is the qube's class.
    """

    segment_max_bytes: int = 32 * MB
    segment_max_age: float = 86400.0
    quota_default: int = GB
    quota_classes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    quota_qubes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    plain_ratio: float = 8.0  # plain (uncompressed) text a qube keeps: this times its quota
    classes: tuple[tuple[str, tuple[str, ...]], ...] = tuple(BUILTIN_CLASSES.items())
    global_max_bytes: int = 0  # 0: no cap
    #: 256 MiB: room for the journal and a few segments' worth of writes, yet
    #: small beside the 16 GiB global cap on a stock 20 GiB private volume
    #: (Salt) or on Qubes' default 2 GiB one; a larger floor on a nearly full
    #: volume would delete every closed segment (reported at start).
    global_keep_free: int = 256 * MB
    global_keep_free_inodes: int = 10000
    max_age_default: float = 0.0  # 0: forever
    max_age_classes: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    max_age_qubes: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    dispvm_delete_after_close: float | None = None  # None: keep (max_age applies)
    dispvm_grace: float = 86400.0  # a DispVM's flood spares sessions that ended within this
    compress_after: float = 3600.0
    compress_level: int = 3


def settings_digest(cfg: RetentionConfig) -> bytes:
    """SHA-256 of the settings in one canonical form.

    The collector seals it in its settings note to the witness; the verifier
    computes it over the policy dom0 deployed, to say whether they agree.
    """

    def plain(value: object) -> object:
        if isinstance(value, Mapping):
            return sorted((str(k), plain(v)) for k, v in value.items())
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    text = json.dumps([[f.name, plain(getattr(cfg, f.name))] for f in fields(cfg)])
    return hashlib.sha256(b"logvm-settings-v1\0" + text.encode("utf-8")).digest()


def class_of(cfg: RetentionConfig, qube: str) -> str | None:
    """The class of a qube: the first class with a matching glob, or None."""
    for name, patterns in cfg.classes:
        if any(fnmatch.fnmatchcase(qube, pattern) for pattern in patterns):
            return name
    return None


def _per_qube(
    cfg: RetentionConfig,
    qube: str,
    by_name: Mapping[str, _T],
    by_class: Mapping[str, _T],
    default: _T,
) -> _T:
    """A per-qube setting: by name, else by the qube's class, else the default."""
    if qube in by_name:
        return by_name[qube]
    klass = class_of(cfg, qube)
    if klass is not None and klass in by_class:
        return by_class[klass]
    return default


def quota_for(cfg: RetentionConfig, qube: str) -> int:
    """Bytes a qube may keep."""
    return _per_qube(cfg, qube, cfg.quota_qubes, cfg.quota_classes, cfg.quota_default)


def plain_quota_for(cfg: RetentionConfig, qube: str) -> int:
    """Plain (uncompressed) text bytes a qube may keep: ``quota.plain_ratio`` times its quota."""
    return int(quota_for(cfg, qube) * cfg.plain_ratio)


def max_age_for(cfg: RetentionConfig, qube: str) -> float:
    """Seconds a closed segment of the qube is kept (0: forever)."""
    return _per_qube(cfg, qube, cfg.max_age_qubes, cfg.max_age_classes, cfg.max_age_default)


# -- parsing -----------------------------------------------------------------


def _classes(section: Section) -> tuple[tuple[str, tuple[str, ...]], ...]:
    defined: dict[str, tuple[str, ...]] = {}
    for name in section.names():
        patterns = tuple(section.strings(name))
        if not patterns:
            raise ConfigError(f"{section.key(name)}: a class needs at least one name pattern")
        defined[name] = patterns
    section.done()
    # Configured classes first (in file order), then built-ins not redefined.
    merged = list(defined.items())
    merged += [(n, p) for n, p in BUILTIN_CLASSES.items() if n not in defined]
    return tuple(merged)


def _qube_key(section: Section, name: str) -> None:
    try:
        validate_qube_name(name)
    except InvalidQubeName as err:
        raise ConfigError(f"{section.key(name)}: not a valid qube name") from err


def _class_key(section: Section, name: str, known: set[str]) -> None:
    if name not in known:
        listed = ", ".join(sorted(known))
        raise ConfigError(f"{section.key(name)}: unknown class (known: {listed})")


@dataclass(frozen=True)
class _Overrides:
    """A default with overrides by class and by qube name."""

    default: float
    classes: Mapping[str, float]
    qubes: Mapping[str, float]


def _overrides(
    section: Section, known: set[str], parse: Callable[[Section, str, str], float], default: str
) -> _Overrides:
    """Read ``{default, classes: {CLASS: v}, qubes: {NAME: v}}``."""
    fallback = parse(section, "default", default)
    by_class: dict[str, float] = {}
    classes = section.section("classes")
    for name in classes.names():
        _class_key(classes, name, known)
        by_class[name] = parse(classes, name, default)
    classes.done()
    by_qube: dict[str, float] = {}
    qubes = section.section("qubes")
    for name in qubes.names():
        _qube_key(qubes, name)
        by_qube[name] = parse(qubes, name, default)
    qubes.done()
    return _Overrides(fallback, MappingProxyType(by_class), MappingProxyType(by_qube))


def _ints(mapping: Mapping[str, float]) -> Mapping[str, int]:
    return MappingProxyType({k: int(v) for k, v in mapping.items()})


def _segment(section: Section) -> tuple[int, float]:
    max_bytes = section.size("max_bytes", "32M")
    if max_bytes < 4096:
        raise ConfigError(f"{section.key('max_bytes')}: must be at least 4K, got {max_bytes}")
    max_age = section.duration("max_age", "1d")
    if max_age <= 0:
        raise ConfigError(f"{section.key('max_age')}: must be more than 0")
    section.done()
    return max_bytes, max_age


def _compress(section: Section) -> tuple[float, int]:
    after = section.duration("after", "1h")
    level = section.integer("level", 3, minimum=1)
    if level > 22:
        raise ConfigError(f"{section.key('level')}: zstd levels go up to 22, got {level}")
    section.done()
    return after, level


def _duration(section: Section, name: str, default: str) -> float:
    return section.duration(name, default)


def parse_retention(section: Section) -> RetentionConfig:
    """Read the rotation keys (:data:`RETENTION_KEYS`) of the top-level section.

    Marks those keys as read so the caller's ``section.done()`` still
    refuses any other unknown key; never calls ``done()`` on ``section``.
    """
    segment_bytes, segment_age = _segment(section.section("segment"))
    classes = _classes(section.section("classes"))
    known = {name for name, _ in classes}

    def quota(sub: Section, name: str, default: str) -> float:
        value = sub.size(name, default)
        if value < segment_bytes:
            raise ConfigError(
                f"{sub.key(name)}: quota {value} bytes is below one segment "
                f"(segment.max_bytes = {segment_bytes} bytes)"
            )
        return value

    quota_section = section.section("quota")
    quotas = _overrides(quota_section, known, quota, "1G")
    plain_ratio = quota_section.number("plain_ratio", 8.0, minimum=1.0)
    quota_section.done()
    retention = section.section("retention")
    ages_section = retention.section("max_age")
    ages = _overrides(ages_section, known, _duration, "0")
    ages_section.done()
    after_close = None
    if retention.raw("dispvm_delete_after_close") is not None:
        after_close = retention.duration("dispvm_delete_after_close", 0)
    grace = retention.duration("dispvm_grace", "1d")
    retention.done()
    cap = section.section("global")
    global_max, keep_free = cap.size("max_bytes", 0), cap.size("keep_free", "256M")
    keep_free_inodes = cap.integer("keep_free_inodes", 10000, minimum=0)
    cap.done()
    compress_after, level = _compress(section.section("compress"))
    return RetentionConfig(
        segment_max_bytes=segment_bytes,
        segment_max_age=segment_age,
        quota_default=int(quotas.default),
        quota_classes=_ints(quotas.classes),
        quota_qubes=_ints(quotas.qubes),
        plain_ratio=plain_ratio,
        classes=classes,
        global_max_bytes=global_max,
        global_keep_free=keep_free,
        global_keep_free_inodes=keep_free_inodes,
        max_age_default=ages.default,
        max_age_classes=ages.classes,
        max_age_qubes=ages.qubes,
        dispvm_delete_after_close=after_close,
        dispvm_grace=grace,
        compress_after=compress_after,
        compress_level=level,
    )
