"""Reading seal files back (floor 2).

Trust side: seal files may have been edited by an intruder or cut short by a
crash; parsing is strict and a torn last line is reported as such.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StoreError
from ..core.seal import Seal, parse_seal
from .files import read_regular
from .layout import SegmentFiles

#: A seal file larger than this is not one the collector wrote.
MAX_SEAL_FILE = 256 << 20
#: Lines that are not seal lines parsed before the rest of a seal file is
#: given up (the collector writes none; memory stays bounded on garbage).
MAX_BAD_LINES = 1000
_GIVEN_UP = f"not read: more than {MAX_BAD_LINES} lines before it are not seal lines"
#: How much of a seal file's end :func:`last_seal_line` reads.
SEAL_TAIL = 1024


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
    start, number = 0, 0
    while start <= len(body):  # line by line: a file of newlines makes no list of lines
        end = body.find(b"\n", start)
        end = len(body) if end < 0 else end
        number += 1
        if len(result.bad_lines) >= MAX_BAD_LINES:
            result.bad_lines.append((number, _GIVEN_UP))
            break
        try:
            result.seals.append(parse_seal(body[start:end]))
        except StoreError as err:
            result.bad_lines.append((number, str(err)))
        start = end + 1
    return result


def last_good_seal(path: Path) -> Seal | None:
    """The last seal of a seal file that parses, as :func:`read_seal_file`'s
    ``seals[-1]`` (same reading, same torn tail), without parsing the others."""
    try:
        data = read_regular(path, MAX_SEAL_FILE)
    except FileNotFoundError as err:
        raise StoreError(f"{path}: cannot read: {err.strerror}") from err
    body, newline, _ = data.rpartition(b"\n")
    end = len(body) if newline else 0
    while end > 0:
        start = body.rfind(b"\n", 0, end) + 1
        try:
            return parse_seal(body[start:end])
        except StoreError:
            end = start - 1
    return None


def last_seal_line(path: Path | None) -> Seal | None:
    """The last complete seal line of a seal file (read from the file's end)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, os.fstat(stream.fileno()).st_size - SEAL_TAIL))
            tail = stream.read(SEAL_TAIL)
    except FileNotFoundError:
        return None
    lines = tail.split(b"\n")
    if len(lines) < 2:
        return None  # no complete line in the tail
    try:
        return parse_seal(lines[-2])
    except StoreError:
        return None


def last_seal(files: SegmentFiles) -> Seal | None:
    """The last complete seal line of a segment."""
    return last_seal_line(files.seal)


def is_closed(files: SegmentFiles) -> bool:
    """True when the segment's seal file ends with a ``close``/``recover`` seal."""
    seal = last_seal(files)
    return seal is not None and seal.is_final
