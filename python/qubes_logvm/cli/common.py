"""Shared pieces of the ``logvm`` CLI: output, time arguments, config (floor 3).

Trust side: runs in the LogVM; everything it prints may come from a disk
an intruder edited, so every byte written goes through
:func:`qubes_logvm.core.escape.terminal_safe` here, in one place.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, TextIO

from ..core.errors import LogvmError
from ..core.escape import terminal_safe
from ..core.records import format_timestamp
from ..store.layout import StoreLayout

_RELATIVE = re.compile(r"-?([0-9]+)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(LogvmError):
    """A command-line argument is wrong (exit 2)."""


class Output:
    """The terminal-safe writer every command prints through."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def line(self, text: str | bytes = b"") -> None:
        """Write one line, made safe for a terminal."""
        data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
        self._stream.write(terminal_safe(data) + b"\n")

    def flush(self) -> None:
        """Flush (follow mode prints as lines arrive)."""
        self._stream.flush()


@dataclass
class Env:
    """What every command gets: parsed paths, output and injectable edges."""

    layout: StoreLayout
    config: Path | None
    out: Output
    err: TextIO
    stdin: TextIO

    @property
    def configs(self) -> tuple[Path, ...]:
        """The collector config files to merge (none: the system's defaults)."""
        return (self.config,) if self.config is not None else ()


def parse_time(text: str, *, now: float) -> bytes:
    """A ``--since``/``--until`` value as a stored receive-time stamp (UTC).

    Accepts ISO 8601 (``2026-11-28``, ``2026-11-28T17:58``, ``2026-11-28
    17:58:34Z``, with an offset or without: then UTC, as stored), ``now``,
    ``today``, ``yesterday``, and relative times ``-30m``, ``2h``, ``7d``.
    """
    word = text.strip().lower()
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "now":
        return format_timestamp(now)
    if word in ("today", "yesterday"):
        day = today - timedelta(days=1 if word == "yesterday" else 0)
        return format_timestamp(day.timestamp())
    match = _RELATIVE.fullmatch(word)
    if match:
        return format_timestamp(now - int(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise UsageError(
            f"cannot read time {text!r}: use 2026-11-28, 2026-11-28T17:58:34, -1h, today"
        ) from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_timestamp(moment.timestamp())


def human_size(size: int) -> str:
    """``1.5 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
