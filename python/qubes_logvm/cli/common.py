"""Shared pieces of the ``logvm`` CLI: output, config (floor 3).

Trust side: runs in the LogVM; everything it prints may come from a disk
an intruder edited, so every byte written goes through
:func:`qubes_logvm.core.escape.terminal_safe` here, in one place.
"""

from datetime import datetime, tzinfo
from pathlib import Path
from typing import BinaryIO, TextIO

from ..core.errors import LogvmError
from ..core.escape import terminal_safe
from ..core.records import parse_timestamp
from ..store.layout import StoreLayout


class UsageError(LogvmError):
    """A command-line argument is wrong (exit 2)."""


class Output:
    """The terminal-safe writer every command prints through."""

    def __init__(self, stream: BinaryIO, *, colour: bool = False, terminal: bool = False) -> None:
        self.stream = stream
        self.terminal = terminal  # stdout is a terminal (not a file or a pipe)
        self.colour = colour  # SGR colours of ours, added after the text is made safe

    def line(self, text: str | bytes = b"") -> None:
        """Write one line, made safe for a terminal."""
        data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
        self.stream.write(terminal_safe(data) + b"\n")

    def parts(self, parts: "list[tuple[bytes, str | None]]") -> None:
        """Write one line from pieces, each made safe, then styled (SGR) if colour is on."""
        out = []
        for text, style in parts:
            safe = terminal_safe(text)
            if self.colour and style:
                out.append(b"\x1b[%sm%s\x1b[0m" % (style.encode("ascii"), safe))
            else:
                out.append(safe)
        self.stream.write(b"".join(out) + b"\n")

    def flush(self) -> None:
        """Flush (follow mode prints as lines arrive)."""
        self.stream.flush()


class Env:
    """What every command gets: parsed paths, output and injectable edges."""

    def __init__(
        self, layout: StoreLayout, config: Path | None, out: Output, err: TextIO, stdin: TextIO
    ) -> None:
        self.layout = layout
        self.config = config
        self.out = out
        self.err = err
        self.stdin = stdin

    @property
    def configs(self) -> tuple[Path, ...]:
        """The collector config files to merge (none: the system's defaults)."""
        return (self.config,) if self.config is not None else ()


def stamp_moment(stamp: bytes, zone: tzinfo | None) -> datetime:
    """A stored stamp as a time in ``zone``; None: local time, with the offset
    of that moment (summer and winter time as journalctl shows them). Raises
    ValueError for a stamp that is not a time."""
    seconds = parse_timestamp(stamp)
    if zone is not None:
        return datetime.fromtimestamp(seconds, zone)
    return datetime.fromtimestamp(seconds).astimezone()
