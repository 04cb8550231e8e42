"""The file follower's polling rounds: bounded in lines and bytes, whatever the lines."""

from pathlib import Path
from typing import Any

import pytest

from qubes_logvm.exporter.config import FileConfig
from qubes_logvm.exporter.files import MAX_ITEMS, MAX_MESSAGE, ROUND_BYTES, FilesSource
from qubes_logvm.exporter.state import StateDir


def _messages(data: bytes) -> list[bytes]:
    """The messages of formatted records (``... tag: message``)."""
    return [line.split(b": ", 1)[1] for line in data.splitlines()]


def _rounds(source: FilesSource) -> list[list[tuple[bytes, int, Any]]]:
    """Poll until three rounds in a row bring nothing (a round that only
    notices a truncation or rotation brings nothing, yet more follows)."""
    rounds, quiet = [], 0
    while quiet < 3:
        chunks = source.poll()
        quiet = 0 if chunks else quiet + 1
        if chunks:
            rounds.append(chunks)
    return rounds


def _drain(source: FilesSource) -> tuple[list[bytes], list[int], list[tuple[int, int]]]:
    """Every message, the end offset of each round, and each round's lines and bytes."""
    messages: list[bytes] = []
    ends: list[int] = []
    rounds: list[tuple[int, int]] = []
    for chunks in _rounds(source):
        rounds.append((sum(c[1] for c in chunks), sum(len(c[0]) for c in chunks)))
        for data, _lines, position in chunks:
            messages += _messages(data)
            ends.append(position[2])
    return messages, ends, rounds


@pytest.mark.parametrize(
    "lines",
    [
        [b""] * 300_000,  # a flood of empty lines: more lines than bytes in a read
        [b"x" * 100] * 20_000,  # ordinary lines
        [b"y" * (MAX_MESSAGE - 10)] * 40,  # long lines, each under the cap
        [b"a", b"z" * (3 * MAX_MESSAGE), b"b"] * 5,  # overlong lines, cut with a marker
    ],
)
def test_each_round_is_bounded_and_every_line_arrives_in_order(
    tmp_path: Path, lines: list[bytes]
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    source = FilesSource((FileConfig(str(path), "app"),), StateDir(tmp_path / "state"))
    messages, ends, rounds = _drain(source)
    source.close()
    expected = [
        line
        if len(line) <= MAX_MESSAGE
        else line[:MAX_MESSAGE] + b" [logvm-exporter: "
        b"%d bytes cut]" % (len(line) - MAX_MESSAGE)
        for line in lines
    ]
    assert messages == expected
    assert ends[-1] == path.stat().st_size and ends == sorted(ends)
    for count, _size in rounds:
        assert count <= MAX_ITEMS
    # bytes: what a round read (ROUND_BYTES) plus what an earlier one left unsplit
    longest = max(len(line) for line in expected)
    assert max(size for _count, size in rounds) <= 2 * ROUND_BYTES + MAX_ITEMS * 64 + longest


def test_lines_left_unsplit_survive_a_truncation(tmp_path: Path) -> None:
    """Copy-truncate while a round's budget left lines read but unsent."""
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(b"%d\n" % n for n in range(3 * MAX_ITEMS)))
    source = FilesSource((FileConfig(str(path), "app"),), StateDir(tmp_path / "state"))
    first = source.poll()
    path.write_bytes(b"new\n")  # truncated and rewritten: smaller than what was read
    messages = [m for data, _l, _p in first for m in _messages(data)]
    for chunks in _rounds(source):
        messages += [m for data, _l, _p in chunks for m in _messages(data)]
    source.close()
    assert messages == [b"%d" % n for n in range(3 * MAX_ITEMS)] + [b"new"]


class _Held(FilesSource):
    """A source whose files are not ready (dom0: their LogVM's window is full)."""

    held = True

    def _ready(self, follower: Any) -> bool:
        del follower
        return not self.held


def test_a_file_not_ready_is_left_unread_even_when_rotated(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"old 1\nold 2\n")
    source = _Held((FileConfig(str(path), "app"),), StateDir(tmp_path / "state"))
    path.rename(tmp_path / "app.log.1")  # rotated while its lines wait
    path.write_bytes(b"new 1\n")
    assert [source.poll() for _ in range(3)] == [[], [], []]
    source.held = False
    messages = [m for chunks in _rounds(source) for data, _, _ in chunks for m in _messages(data)]
    assert messages == [b"old 1", b"old 2", b"new 1"]
