"""The fake qrexec-client-vm as a real process: policy, socket and executable services."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.qrexec import CLIENT_SCRIPT, World

pytestmark = pytest.mark.timeout(60)


class ServiceSocket:
    """A one-connection socket service written for the tests.

    It records everything it receives until the client's EOF (half-close),
    then writes ``reply`` and closes; with ``echo`` it sends back what it
    reads as it reads it.
    """

    def __init__(self, path: Path, reply: bytes = b"", *, echo: bool = False) -> None:
        self.path = path
        self.reply = reply
        self.echo = echo
        self.received = b""
        self.connections = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.server.settimeout(30)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        self.connections += 1
        with conn:
            while data := conn.recv(65536):
                self.received += data
                if self.echo:
                    conn.sendall(data)
            conn.sendall(self.reply)

    def wait(self) -> bytes:
        self.thread.join(30)
        return self.received

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.add_qube("work")
    w.add_qube("sys-log")
    return w


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[ServiceSocket]]:
    made: list[ServiceSocket] = []
    yield made
    for service in made:
        service.close()


def serve(
    services: list[ServiceSocket], world: World, qube: str, name: str, **kw: object
) -> ServiceSocket:
    path = world.base / f"{qube}-{name}.sock"
    service = ServiceSocket(path, **kw)  # type: ignore[arg-type]
    services.append(service)
    world.link_socket_service(qube, name, path)
    return service


def call(
    world: World, source: str, target: str, service: str, data: bytes = b"", *args: str
) -> subprocess.CompletedProcess[bytes]:
    argv, env = world.client_command(source, target, service)
    argv[1:1] = args
    return subprocess.run(argv, input=data, env=env, capture_output=True, timeout=30, check=False)


def test_denied_call_exits_126_without_reaching_service(
    world: World, services: list[ServiceSocket]
) -> None:
    service = serve(services, world, "sys-log", "logvm.Send")
    result = call(world, "work", "sys-log", "logvm.Send", b"x\n")
    assert result.returncode == 126
    assert result.stderr.startswith(b"Request refused\n")
    assert service.connections == 0
    assert world.calls()[-1]["result"] == "deny"


def test_socket_service_descriptor_data_and_reply_after_eof(
    world: World, services: list[ServiceSocket]
) -> None:
    service = serve(services, world, "sys-log", "logvm.Send", reply=b"ack 2\n")
    result = call(world, "work", "@default", "logvm.Send", b"one\ntwo\n")
    # the service saw the client's EOF (half-close) and still got its ack through
    assert (result.returncode, result.stdout) == (0, b"ack 2\n")
    assert service.wait() == b"logvm.Send+ work\0one\ntwo\n"
    assert world.calls()[-1]["resolved_target"] == "sys-log"


def test_documented_descriptor_without_plus(world: World, services: list[ServiceSocket]) -> None:
    world.descriptor_plus = False
    service = serve(services, world, "sys-log", "logvm.Send")
    assert call(world, "work", "@default", "logvm.Send", b"x").returncode == 0
    assert service.wait() == b"logvm.Send work\0x"


def test_service_with_argument_prefers_specific_file(
    world: World, services: list[ServiceSocket]
) -> None:
    general = serve(services, world, "sys-log", "logvm.Send")
    specific = serve(services, world, "sys-log", "logvm.Send+v2")
    assert call(world, "work", "@default", "logvm.Send+v2", b"x").returncode == 0
    assert specific.wait() == b"logvm.Send+v2 work\0x"
    assert general.connections == 0


@pytest.mark.parametrize(
    ("target", "descriptor"),
    [
        # policy redirect: the requested target is the keyword
        ("@default", b"logvm.Witness+ sys-log keyword default\0"),
        # dom0 by name is @adminvm for qrexec
        ("dom0", b"logvm.Witness+ sys-log keyword adminvm\0"),
    ],
)
def test_dom0_service_gets_long_descriptor(
    world: World, services: list[ServiceSocket], target: str, descriptor: bytes
) -> None:
    service = serve(services, world, "dom0", "logvm.Witness")
    assert call(world, "sys-log", target, "logvm.Witness", b"cp").returncode == 0
    assert service.wait() == descriptor + b"cp"


def test_streams_both_ways_without_deadlock(world: World, services: list[ServiceSocket]) -> None:
    serve(services, world, "sys-log", "logvm.Send", echo=True, reply=b"bye")
    data = os.urandom(4 << 20)
    result = call(world, "work", "@default", "logvm.Send", data)
    assert result.returncode == 0
    assert result.stdout == b"logvm.Send+ work\0" + data + b"bye"


ENV_SCRIPT = """#!/bin/sh
echo "args:$#:$*"
for v in QREXEC_REMOTE_DOMAIN QREXEC_SERVICE_FULL_NAME QREXEC_SERVICE_ARGUMENT \\
         QREXEC_REQUESTED_TARGET_TYPE QREXEC_REQUESTED_TARGET \\
         QREXEC_REQUESTED_TARGET_KEYWORD; do
    eval "isset=\\${$v+yes}"
    eval "echo $v=\\${$v-UNSET}"
done
echo "stdin:$(cat)"
echo "to the journal" >&2
exit 3
"""


def env_of(stdout: bytes) -> dict[str, str]:
    lines = stdout.decode().splitlines()
    return dict(line.split("=", 1) for line in lines if line.startswith("QREXEC_"))


def test_executable_service_environment_and_exit_code(world: World) -> None:
    world.add_executable_service("sys-log", "logvm.Send", ENV_SCRIPT)
    result = call(world, "work", "@default", "logvm.Send+v2", b"hello")
    assert result.returncode == 3
    out = result.stdout.decode()
    assert "args:1:v2" in out and "stdin:hello" in out
    assert env_of(result.stdout) == {
        "QREXEC_REMOTE_DOMAIN": "work",
        "QREXEC_SERVICE_FULL_NAME": "logvm.Send+v2",
        "QREXEC_SERVICE_ARGUMENT": "v2",
        "QREXEC_REQUESTED_TARGET_TYPE": "",
        "QREXEC_REQUESTED_TARGET": "UNSET",
        "QREXEC_REQUESTED_TARGET_KEYWORD": "UNSET",
    }
    journal = world.qubes["sys-log"].root / "var/log/qrexec/logvm.Send+v2.log"
    assert journal.read_text() == "to the journal\n"
    assert b"journal" not in result.stderr


def test_executable_service_without_argument(world: World) -> None:
    world.add_executable_service("sys-log", "logvm.Send", ENV_SCRIPT)
    result = call(world, "work", "@default", "logvm.Send")
    assert "args:0:" in result.stdout.decode()
    env = env_of(result.stdout)
    # dom0 appended "+": the argument is present and empty
    assert env["QREXEC_SERVICE_FULL_NAME"] == "logvm.Send+"
    assert env["QREXEC_SERVICE_ARGUMENT"] == ""


def test_executable_service_in_dom0_sees_requested_target(world: World) -> None:
    world.add_executable_service("dom0", "logvm.Witness", ENV_SCRIPT)
    env = env_of(call(world, "sys-log", "@default", "logvm.Witness").stdout)
    assert env["QREXEC_REQUESTED_TARGET_TYPE"] == "keyword"
    assert env["QREXEC_REQUESTED_TARGET_KEYWORD"] == "default"
    assert env["QREXEC_REQUESTED_TARGET"] == "UNSET"


def test_missing_service_exits_127(world: World) -> None:
    assert call(world, "work", "@default", "logvm.Send").returncode == 127


def test_link_to_absent_socket_is_a_missing_service(world: World) -> None:
    world.link_socket_service("sys-log", "logvm.Send", world.base / "not-yet.sock")
    assert call(world, "work", "@default", "logvm.Send").returncode == 127


def test_non_executable_file_exits_125(world: World) -> None:
    path = world.qubes["sys-log"].rpc_dir / "logvm.Send"
    path.write_text("#!/bin/sh\ncat\n")
    result = call(world, "work", "@default", "logvm.Send")
    assert result.returncode == 125
    assert b"not executable, not a socket" in result.stderr


def test_stale_socket_exits_125(world: World) -> None:
    path = world.base / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    world.link_socket_service("sys-log", "logvm.Send", path)
    assert call(world, "work", "@default", "logvm.Send").returncode == 125


def test_bad_policy_file_name_fails_every_call(
    world: World, services: list[ServiceSocket]
) -> None:
    serve(services, world, "sys-log", "logvm.Send")
    world.write_policy("30-User.policy", "")
    result = call(world, "work", "@default", "logvm.Send", b"x")
    assert result.returncode == 126
    assert b"invalid filename" in result.stderr


def test_policy_syntax_error_fails_every_call(world: World) -> None:
    world.write_policy("30-user.policy", "logvm.Send * @anyvm @default allow\n")
    result = call(world, "work", "@default", "logvm.Send")
    assert result.returncode == 126
    assert b"30-user.policy:1" in result.stderr


def test_skip_service_descriptor(world: World, services: list[ServiceSocket]) -> None:
    service = serve(services, world, "sys-log", "logvm.Send")
    config = world.qubes["sys-log"].rpc_config_dir / "logvm.Send"
    config.write_text("skip-service-descriptor = true\n")
    assert call(world, "work", "@default", "logvm.Send", b"raw").returncode == 0
    assert service.wait() == b"raw"


def test_halted_target_is_started(world: World, services: list[ServiceSocket]) -> None:
    world.qubes["sys-log"].running = False
    serve(services, world, "sys-log", "logvm.Send")
    assert call(world, "work", "@default", "logvm.Send").returncode == 0
    assert world.calls()[-1]["autostarted"] is True
    assert json.loads(world.path.read_text())["qubes"]["sys-log"]["running"] is True


@pytest.mark.parametrize(
    ("argv", "env", "code"),
    [
        # usage errors exit 2, as getopt in the real client
        ([], True, 2),
        (["@default"], True, 2),
        (["--bogus", "@default", "logvm.Send"], True, 2),
        # no world: the stand-in's own failure
        (["@default", "logvm.Send"], False, 125),
        # options are accepted before the operands
        (["--buffer-size=65536", "-t", "@default", "nothing.Here"], True, 126),
    ],
)
def test_command_line(world: World, argv: list[str], env: bool, code: int) -> None:
    _, client_env = world.client_command("work")
    if not env:
        del client_env["QREXEC_FAKE_WORLD"]
    result = subprocess.run(
        [str(CLIENT_SCRIPT), *argv], env=client_env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == code


def test_unknown_or_halted_source_is_refused(world: World) -> None:
    world.add_qube("off", running=False)
    assert call(world, "off", "@default", "logvm.Send").returncode == 125
    _, env = world.client_command("work")
    env["QREXEC_FAKE_SOURCE"] = "ghost"
    result = subprocess.run(
        [str(CLIENT_SCRIPT), "@default", "logvm.Send"], env=env, capture_output=True, check=False
    )
    assert result.returncode == 125


def test_found_on_path_as_qrexec_client_vm(world: World, services: list[ServiceSocket]) -> None:
    service = serve(services, world, "sys-log", "logvm.Send")
    env = world.client_env("work")
    result = subprocess.run(
        ["qrexec-client-vm", "@default", "logvm.Send"],
        input=b"via PATH",
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert service.wait().endswith(b"via PATH")
