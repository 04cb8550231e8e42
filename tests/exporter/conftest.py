"""Fixtures for the exporter: a fake collector, the real daemon (journald: tests/conftest.py)."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from exporter.helpers import ExporterProcess, FakeCollector

from support.journald import Journald


@pytest.fixture
def collector(tmp_path: Path) -> FakeCollector:
    return FakeCollector(tmp_path / "collector")


@pytest.fixture
def make_exporter(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    made: list[ExporterProcess] = []

    def make(config: Path, journald: Journald | None = None) -> ExporterProcess:
        exporter = ExporterProcess(config, tmp_path, journald)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.cleanup()
