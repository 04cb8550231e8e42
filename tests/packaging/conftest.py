"""Fixtures of the packaging tests: the packages, built once per session.

Builds run in a copy of the working tree (what ``make srpm-tarball`` packs),
so they never write into the checkout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import testinfra

from support.packages import VERSION, copy_tree, run


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the working tree, so that builds never write into the checkout."""
    return copy_tree(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="session")
def deb(tree: Path) -> Path:
    run(["make", "--no-print-directory", "deb"], cwd=tree)
    return tree / "dist" / f"qubes-logvm_{VERSION}_all.deb"


@pytest.fixture(scope="session")
def rpms(tree: Path) -> dict[str, Path]:
    run(["make", "--no-print-directory", "rpm"], cwd=tree)
    return {
        "vm": tree / "dist" / f"qubes-logvm-{VERSION}-1.noarch.rpm",
        "dom0": tree / "dist" / f"qubes-logvm-dom0-{VERSION}-1.noarch.rpm",
    }


def _rpm_root(base: Path, rpm: Path) -> Path:
    root = base / rpm.name.split("-0")[0]
    root.mkdir()
    options = ["--root", str(root), "--dbpath", "/var/lib/rpm", "--nodeps", "--noscripts"]
    run(["rpm", "-i", *options, str(rpm)])
    return root


@pytest.fixture(scope="session")
def rpm_roots(rpms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each RPM installed into its own scratch root (rpm -i --root --nodeps --noscripts)."""
    base = tmp_path_factory.mktemp("rpmroot")
    return {name: _rpm_root(base, rpm) for name, rpm in rpms.items()}


@pytest.fixture(scope="session")
def local() -> testinfra.host.Host:
    return testinfra.get_host("local://")
