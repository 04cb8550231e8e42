"""Fixtures shared across test folders."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubes_logvm.core.escape import escape_block
from support.journald import Journald, unavailable_reason
from support.storebuilder import Built, build_store

# The first non-ASCII escaping builds the refused characters' patterns (tens
# of ms, more on a loaded machine): built here, not inside a hypothesis
# example with a deadline.
escape_block(b"\x80")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A store built once per module with the real writer (see support.storebuilder)."""
    return build_store(tmp_path_factory.mktemp("pristine") / "store")


@pytest.fixture(scope="module")
def pristine_v1(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The same store in format 1 (tick seals per qube, no store-wide epoch seals)."""
    return build_store(tmp_path_factory.mktemp("pristine1") / "store", store_format=1)


@pytest.fixture
def store(pristine: Built, tmp_path: Path) -> Built:
    """A private copy of the pristine store, free to tamper with."""
    root = tmp_path / "store"
    shutil.copytree(pristine.root, root)
    return Built(root, pristine.key)


@pytest.fixture(params=[2, 1], ids=["format2", "format1"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Built:
    """A private copy of the pristine store of each format (2, the default, and 1)."""
    pristine: Built = request.getfixturevalue("pristine" if request.param == 2 else "pristine_v1")
    root = tmp_path / "store"
    shutil.copytree(pristine.root, root)
    return Built(root, pristine.key)


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[Journald]:
    """A real journald in private namespaces (skips where it cannot run)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Journald(tmp_path / "journald") as jd:
        yield jd


@pytest.fixture(autouse=True)
def _inprocess_means_no_subprocess(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests marked ``inprocess`` (make test-fast) fail if they start a process."""
    if request.node.get_closest_marker("inprocess") is None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an inprocess test started a subprocess: drop the marker")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(autouse=True, scope="session")
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``logvm verify`` keeps results in the user's state directory: a private one here."""
    path = tmp_path_factory.mktemp("state-home")
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(path)
    yield path
    if old is None:
        del os.environ["XDG_STATE_HOME"]
    else:
        os.environ["XDG_STATE_HOME"] = old
