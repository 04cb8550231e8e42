"""Reading seal files back (floor 2).

Trust side: seal files may have been edited by an intruder or cut short by a
crash; parsing is strict and a torn last line is reported as such.
"""

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StoreError
from ..core.seal import Seal, parse_seal
from .files import read_regular

#: A seal file larger than this is not one the collector wrote.
MAX_SEAL_FILE = 256 << 20


@dataclass
class SealFile:
    """The parsed lines of one seal file."""

    seals: list[Seal]
    torn_tail: bytes  # bytes after the last newline (a crash mid-write)
    bad_lines: list[tuple[int, str]]  # (1-based line number, problem)


def read_seal_file(path: Path) -> SealFile:
    """Parse a seal file (a regular file, never followed through a link);
    unparsable lines are collected, not raised."""
    try:
        data = read_regular(path, MAX_SEAL_FILE)
    except FileNotFoundError as err:
        raise StoreError(f"{path}: cannot read: {err.strerror}") from err
    return parse_seal_data(data)


def parse_seal_data(data: bytes) -> SealFile:
    """Parse the bytes of a seal file."""
    body, _, torn = data.rpartition(b"\n")
    if not _:
        body, torn = b"", data
    result = SealFile([], torn, [])
    if not body:
        return result
    for number, line in enumerate(body.split(b"\n"), start=1):
        try:
            result.seals.append(parse_seal(line))
        except StoreError as err:
            result.bad_lines.append((number, str(err)))
    return result
