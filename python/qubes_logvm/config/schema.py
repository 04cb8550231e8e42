"""Typed access to parsed YAML with errors that name the key (floor 2).

Trust side: config files are written by the admin (or rendered by Salt from
pillar); they are trusted but may be wrong, so every value is checked and a
wrong one raises :class:`ConfigError` naming its dotted key path.
"""

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_size(value: object, key: str) -> int:
    """``512M``, ``2G``, ``64K``, ``1024`` (bytes) -> bytes; 1K is 1024."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like 512M or 2G, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a size like 512M or 2G, got {value!r}")
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ConfigError(f"{key}: expected a size like 512M or 2G, got {value!r}")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: object, key: str) -> float:
    """``30s``, ``10m``, ``12h``, ``7d``, ``250ms`` or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 30s, 10m, 7d, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{key}: duration must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a duration like 30s, 10m, 7d, got {value!r}")
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ConfigError(f"{key}: expected a duration like 30s, 10m, 7d, got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


class Section:
    """A mapping from the config with its dotted path, handing out typed values.

    Call :meth:`done` after reading every key: unknown keys (typos) are
    errors, never silently ignored.
    """

    def __init__(self, data: object, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'top level'}: expected a mapping, got {data!r:.60}")
        for k in data:
            if not isinstance(k, str):
                raise ConfigError(f"{path or 'top level'}: key {k!r} is not a string")
        self._data: Mapping[str, Any] = data
        self._path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        """The dotted path of a key in this section."""
        return f"{self._path}.{name}" if self._path else name

    def raw(self, name: str, default: object = None) -> object:
        """The value as parsed from YAML (marks the key as known)."""
        self._seen.add(name)
        return self._data.get(name, default)

    def has(self, name: str) -> bool:
        """True when the key is present."""
        return name in self._data

    def section(self, name: str) -> "Section":
        """A nested mapping."""
        return Section(self.raw(name), self.key(name))

    def size(self, name: str, default: int | str) -> int:
        """A size in bytes."""
        return parse_size(self.raw(name, default), self.key(name))

    def duration(self, name: str, default: float | str) -> float:
        """A duration in seconds."""
        return parse_duration(self.raw(name, default), self.key(name))

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        """An integer no smaller than ``minimum``."""
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(name)}: expected an integer, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{self.key(name)}: must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        """A number no smaller than ``minimum``."""
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.key(name)}: expected a number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{self.key(name)}: must be at least {minimum}, got {value}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        """A true/false value (YAML booleans only)."""
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def string(self, name: str, default: str) -> str:
        """A string."""
        value = self.raw(name, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(name)}: expected a string, got {value!r}")
        return value

    def strings(self, name: str, default: list[str] | None = None) -> list[str]:
        """A list of strings."""
        value = self.raw(name, [] if default is None else default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings, got {value!r:.60}")
        return list(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of a fixed set of strings."""
        value = self.string(name, default)
        if value not in choices:
            allowed = ", ".join(choices)
            raise ConfigError(f"{self.key(name)}: must be one of {allowed}, got {value!r}")
        return value

    def names(self) -> list[str]:
        """All keys of this section (for maps keyed by qube name)."""
        self._seen.update(self._data)
        return list(self._data)

    def done(self) -> None:
        """Raise on any key that was never read: a typo must not pass silently."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            where = self._path or "top level"
            raise ConfigError(f"{self.key(unknown[0])}: unknown key in {where}")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` (mappings merged, everything else replaced)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _json_body(text: str) -> str | None:
    """The text after its leading comment lines, if it is a JSON object's."""
    lines = text.splitlines(keepends=True)
    skip = 0
    while skip < len(lines) and lines[skip].lstrip()[:1] in ("#", ""):
        skip += 1
    body = "".join(lines[skip:])
    return body if body.startswith("{") else None


def parse_yaml(text: str, path: Path) -> object:
    """A YAML document; JSON (which is YAML) without loading PyYAML.

    Salt renders the exporters' files as comment lines and a JSON object: the
    exporter, in every qube and in dom0, then never imports PyYAML (1.3 MiB
    resident). Anything else, a hand-written override included, is YAML.
    """
    body = _json_body(text)
    if body is not None:
        try:
            return json.loads(body)
        except ValueError:
            pass  # a YAML flow mapping that is not JSON
    # Imported here: JSON files need no yaml, nor does the verifier's policy
    # check, which needs this module but never YAML.
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def load_yaml_files(*paths: Path) -> dict[str, Any]:
    """Load and deep-merge YAML files; missing files are skipped."""
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except OSError as err:
            raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
        data = parse_yaml(text, path)
        if data is None:
            continue
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: top level must be a mapping")
        merged = deep_merge(merged, data)
    return merged
