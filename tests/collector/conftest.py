"""Fixtures: a fresh store and a real collector process on it."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from collector.helpers import Collector, make_store


@pytest.fixture
def start_collector(tmp_path: Path) -> Iterator[Callable[..., Collector]]:
    """Start collectors on fresh stores; every one is killed at the end."""
    started: list[Collector] = []

    def start(config: dict[str, Any] | None = None, name: str = "c") -> Collector:
        workdir = tmp_path / name
        workdir.mkdir()
        collector = Collector(workdir, config)
        collector.vkey = make_store(collector.store)
        started.append(collector)
        return collector.start()

    yield start
    for collector in started:
        collector.kill()
