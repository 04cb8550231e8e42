"""Fixtures for the forwarder's tests: certificates, a central rsyslog, a qrexec world."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.central import RSYSLOGD, Rsyslog, make_pki
from support.programs import program
from support.qrexec import World

FORWARD_BIN = program("logvm-forward")
__all__ = ["FORWARD_BIN", "Rsyslog", "forward_world"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (make test installs it)")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def rsyslog(tmp_path: Path, pki: Path) -> Iterator[Rsyslog]:
    if not os.path.exists(RSYSLOGD):
        pytest.skip("rsyslogd is not installed (make test installs rsyslog)")
    server = Rsyslog(tmp_path / "central", pki).start()
    yield server
    server.stop()


FORWARD_POLICY = """\
logvm.Forward   *   sys-log     @default    allow   target=sys-logfwd
logvm.Forward   *   @anyvm      @anyvm      deny
"""


def forward_world(base: Path, port: int) -> World:
    """sys-log, and sys-logfwd whose logvm.Forward service is a /dev/tcp link."""
    world = World(base)
    world.add_qube("sys-log")
    world.add_qube("sys-logfwd")
    world.add_qube("work")
    world.write_policy("50-forward-test.policy", FORWARD_POLICY)
    link = world.qubes["sys-logfwd"].rpc_dir / "logvm.Forward"
    link.symlink_to(f"/dev/tcp/127.0.0.1/{port}")
    config = world.qubes["sys-logfwd"].rpc_config_dir / "logvm.Forward"
    config.write_text("skip-service-descriptor = true\n", encoding="ascii")
    world.save()
    return world
