"""Fixtures for the exporter: a fake collector, a real journald, the real daemon."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from exporter.helpers import ExporterProcess, FakeCollector

from support.journald import Journald, unavailable_reason


@pytest.fixture
def collector(tmp_path: Path) -> FakeCollector:
    return FakeCollector(tmp_path / "collector")


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[Journald]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Journald(tmp_path / "journald") as jd:
        yield jd


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
