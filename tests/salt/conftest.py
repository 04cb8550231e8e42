"""Fixtures for the Salt formula tests (helpers in salt_helpers.py)."""

from pathlib import Path

import pytest

from support.fake_qvm.saltenv import SaltEnv


@pytest.fixture
def salt_env(tmp_path: Path) -> SaltEnv:
    """A fresh private minion acting as dom0, with the seed world."""
    env = SaltEnv(tmp_path)
    env.configure("dom0")
    env.seed_world()
    return env
