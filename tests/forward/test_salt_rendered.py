"""Forwarding as the Salt formula deploys it, end to end.

``logvm.collector`` (in the LogVM) renders /rw/config/qubes-logvm/forward.yaml
from pillar ``logvm:forward``, and ``logvm.forwarder`` (in the forwarder
qube) makes the qrexec service ``logvm.Forward`` a ``/dev/tcp`` link with
``skip-service-descriptor``; both are applied for real with ``salt-call
--local``. The files they wrote are then used as they are: the shipped
/etc/qubes-logvm/forward.yaml with the rendered override merged over it
runs the real ``logvm-forward``, and the forwarder qube's rendered service
(moved into the qrexec stand-in's copy of that qube) carries the TLS stream
to a real rsyslog. Every record arrives and the copy verifies.
"""

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import testinfra
from forward.conftest import FORWARD_POLICY
from forward.test_forward import Forward, _received, _sealed_records, _verify, _wait

from qubes_logvm.config.forward import load_forward_config
from support.central import SERVER_NAME, Rsyslog
from support.fake_qvm.saltenv import REPO, SaltEnv
from support.qrexec import World
from support.storebuilder import build_store

HOST = testinfra.get_host("local://")
SHIPPED = REPO / "etc/qubes-logvm/forward.yaml"
RENDERED = "rw/config/qubes-logvm/forward.yaml"
SERVICE = "usr/local/etc/qubes-rpc/logvm.Forward"
SERVICE_CONFIG = "usr/local/etc/qubes/rpc-config/logvm.Forward"

pytestmark = [pytest.mark.timeout(240)]


def _pillar(pki: Path, state: Path, port: int) -> dict[str, Any]:
    return {
        "logvm": {
            "sources": {"names": ["work"]},
            "forward": {
                "enabled": True,
                "server": {"name": SERVER_NAME, "address": "127.0.0.1", "port": port},
                "tls": {
                    "ca": str(pki / "ca.pem"),
                    "cert": str(pki / "client.pem"),
                    "key": str(pki / "client.key"),
                },
                "hostname": "qubes-test",
                "window": {"records": 500, "seconds": "2s"},
                "poll": "0.1s",
                "retry_max": "0.5s",
                "connect_timeout": "5s",
                "state_dir": str(state),
            },
        }
    }


def _system(base: Path) -> dict[str, str]:
    """Commands the states run, recording into BASE/restarts (seen from the chroot)."""
    restart = f"echo restart >> {base}/restarts"
    return {"reload_command": "true", "forward_restart_command": restart}


def _apply(base: Path, minion: str, sls: str, pillar: dict[str, Any]) -> SaltEnv:
    env = SaltEnv(base)
    env.configure(minion)
    pillar["logvm"]["system"] = _system(base)
    env.pillar(pillar)
    run = env.apply(sls)
    assert run.returncode == 0, run.failed or run.output
    assert env.apply(sls).changed == {}  # a second apply changes nothing
    return env


def test_rendered_files_forward_every_record_and_the_copy_verifies(
    tmp_path: Path, rsyslog: Rsyslog, pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pillar = _pillar(pki, tmp_path / "state", rsyslog.port)
    logvm = _apply(tmp_path / "salt-logvm", "sys-log", "logvm.collector", pillar)
    forwarder = _apply(tmp_path / "salt-fwd", "sys-logfwd", "logvm.forwarder", pillar)
    # once, for the first render only
    assert (logvm.base / "restarts").read_text(encoding="ascii") == "restart\n"

    rendered = logvm.root / RENDERED
    f = HOST.file(str(rendered))
    assert f.is_file and f.user == "root" and f.mode == 0o644 and f.contains("Managed by Salt")
    config = load_forward_config(SHIPPED, rendered)  # as logvm-forward loads them
    assert config.server_name == SERVER_NAME
    assert config.command == ("qrexec-client-vm", "@default", "logvm.Forward")
    assert (config.ca_file, config.cert_file) == (pki / "ca.pem", pki / "client.pem")
    assert config.window_records == 500 and config.hostname == "qubes-test"
    # The server's address is the forwarder's business: the LogVM's file has none.
    assert "127.0.0.1" not in rendered.read_text(encoding="utf-8")

    service = forwarder.root / SERVICE
    assert os.readlink(service) == f"/dev/tcp/127.0.0.1/{rsyslog.port}"
    options = (forwarder.root / SERVICE_CONFIG).read_text(encoding="ascii")
    assert "skip-service-descriptor = true" in options.splitlines()
    assert forwarder.written() == [SERVICE_CONFIG]  # the link itself is not a regular file

    world = World(tmp_path / "world")
    world.add_qube("sys-log")
    qube = world.add_qube("sys-logfwd")
    shutil.copytree(forwarder.root / "usr/local", qube.root / "usr/local", symlinks=True,
                    dirs_exist_ok=True)  # fmt: skip
    world.write_policy("50-forward-test.policy", FORWARD_POLICY)
    world.save()

    built = build_store(tmp_path / "store", leave_open=False)
    # The two files exactly as a LogVM has them: shipped, then the /rw override.
    forward = Forward(tmp_path, built.root, world, SHIPPED, rendered).start()
    try:
        expected = _sealed_records(built)
        _wait(lambda: set(_received(rsyslog)) == set(expected), "every record at the server")
    finally:
        forward.stop()
    assert _received(rsyslog) == expected, forward.log()
    code, out = _verify(tmp_path, built, rsyslog.output, capsys)
    assert code == 0, out
    assert {c["resolved_target"] for c in world.calls() if c["result"] == "allow"} == {
        "sys-logfwd"
    }


def test_a_changed_pillar_restarts_the_forwarder_and_off_renders_nothing(
    tmp_path: Path, pki: Path
) -> None:
    pillar = _pillar(pki, tmp_path / "state", 6514)
    env = _apply(tmp_path / "salt", "sys-log", "logvm.collector", pillar)
    pillar["logvm"]["forward"]["window"]["records"] = 1000
    env.pillar(pillar)
    run = env.apply("logvm.collector")
    assert set(run.changed) == {"logvm-collector-forward", "logvm-collector-forward-restart"}
    assert (env.base / "restarts").read_text(encoding="ascii") == "restart\nrestart\n"
    assert load_forward_config(SHIPPED, env.root / RENDERED).window_records == 1000

    off = SaltEnv(tmp_path / "salt-off")
    off.configure("sys-log")
    off.pillar({"logvm": {"system": pillar["logvm"]["system"]}})
    assert off.apply("logvm.collector").returncode == 0
    assert not (off.root / RENDERED).exists()
