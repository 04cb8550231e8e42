"""Fixtures shared across test folders."""

import shutil
from pathlib import Path

import pytest

from support.storebuilder import Built, build_store


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A store built once per module with the real writer (see support.storebuilder)."""
    return build_store(tmp_path_factory.mktemp("pristine") / "store")


@pytest.fixture
def store(pristine: Built, tmp_path: Path) -> Built:
    """A private copy of the pristine store, free to tamper with."""
    root = tmp_path / "store"
    shutil.copytree(pristine.root, root)
    return Built(root, pristine.key)
