"""The journal source in-process, on a real journald's files (private namespace)."""

import asyncio
import time
from pathlib import Path

import pytest

from qubes_logvm.core.sender_record import parse_sender_record
from qubes_logvm.exporter import journal as journal_module
from qubes_logvm.exporter.config import Filter, JournalConfig
from qubes_logvm.exporter.journal import JournalSource
from qubes_logvm.exporter.state import StateDir
from support.journald import Journald

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


class Collecting:
    """Stands in for the transport: keeps what the source puts."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.arrived = asyncio.Event()

    async def put(self, data: bytes, lines: int, source: object, position: object) -> None:
        assert data.count(b"\n") == lines and data.endswith(b"\n")
        assert isinstance(position, str) and position
        self.lines += data.splitlines()
        self.arrived.set()

    def messages(self) -> list[str]:
        return [parse_sender_record(line).message.decode() for line in self.lines]


def _source(journald: Journald, tmp_path: Path, **config: object) -> JournalSource:
    from systemd import _reader  # type: ignore[attr-defined]

    path = str(journald.journal_dir)
    return JournalSource(
        JournalConfig(**config),  # type: ignore[arg-type]
        StateDir(tmp_path / "state"),
        reader=lambda: _reader._Reader(0, path),
    )


async def _wait_for(sink: Collecting, message: str) -> None:
    while message not in sink.messages():
        sink.arrived.clear()
        await sink.arrived.wait()


def test_wakes_up_after_reopening_the_journal(
    tmp_path: Path, journald: Journald, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: after a reopen the new descriptor often has the old number;
    it must be registered again, or new entries wait for the safety-net timer
    (an hour here; the bench hung at 5 s per entry)."""
    monkeypatch.setattr(journal_module, "REOPEN_BYTES", 1)
    monkeypatch.setattr(journal_module, "WAKE_SECONDS", 3600.0)
    monkeypatch.setattr(journal_module, "ACTIVE_SECONDS", 0.0)  # only the descriptor wakes it
    only_tester = Filter(include=("tester",))
    source = _source(journald, tmp_path, identifiers=only_tester)
    sink = Collecting()

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(sink, stop))  # type: ignore[arg-type]
        for round_ in range(5):  # each round reads, so each one reopens
            await asyncio.to_thread(
                journald.send, [{"MESSAGE": f"m {round_}", "SYSLOG_IDENTIFIER": "tester"}]
            )
            await _wait_for(sink, f"m {round_}")
        stop.set()
        await task

    try:
        asyncio.run(asyncio.wait_for(go(), 45))
    finally:
        source.close()
    assert sink.messages() == [f"m {i}" for i in range(5)]


def test_chunks_keep_order_fields_and_newlines(tmp_path: Path, journald: Journald) -> None:
    source = _source(journald, tmp_path, identifiers=Filter(include=("tester",)))
    entries = [{"MESSAGE": f"plain {i}", "SYSLOG_IDENTIFIER": "tester"} for i in range(3000)]
    entries[7]["MESSAGE"] = "two\nlines \\ and \x1b[1m"
    entries[8]["SYSLOG_IDENTIFIER"] = "other"  # filtered out
    entries[9].update(PRIORITY="2", SYSLOG_PID="77")
    journald.send(entries)
    journald.sync()
    expected = [e["MESSAGE"] for e in entries if e["SYSLOG_IDENTIFIER"] == "tester"]
    got: list[bytes] = []
    # Under load the journal files may show the entries a moment after
    # sync: read until all are there (or 30 s), never stop at the first
    # empty read.
    deadline = time.monotonic() + 30
    try:
        while len(got) < len(expected) and time.monotonic() < deadline:
            data, lines, read = source.read_chunk()
            if not read:
                time.sleep(0.05)
                continue
            assert data.count(b"\n") == lines
            got += data.splitlines()
    finally:
        source.close()
    records = [parse_sender_record(line) for line in got]
    assert [r.message.decode() for r in records] == expected
    assert (records[8].priority, records[8].pid) == ("crit", 77)
    assert {r.ident for r in records} == {"tester"}
