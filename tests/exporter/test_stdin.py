"""``logvm-send`` / ``logvm-exporter --stdin``: a pipe's lines, acknowledged, then exit."""

import subprocess
from pathlib import Path

import pytest
from exporter.helpers import FakeCollector, wait_for, write_config

from support.programs import program

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "command",
    [
        ["logvm-send"],  # the console script
        ["logvm-exporter", "--stdin"],  # the same through the daemon's flag
    ],
)
def test_pipe_is_shipped_and_acknowledged(
    tmp_path: Path, collector: FakeCollector, command: list[str]
) -> None:
    config = write_config(tmp_path / "e.yaml", collector.command, tmp_path / "state")
    lines = b"".join(b"line %d \x1b[1m\n" % i for i in range(500)) + b"no newline"
    result = subprocess.run(
        [str(program(command[0])), *command[1:], "--config", str(config),
         "-t", "backup", "-p", "warning"],
        input=lines, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = collector.records()
    assert [r.message for r in records] == [b"line %d \x1b[1m" % i for i in range(500)] + [
        b"no newline"
    ]
    assert {(r.ident, r.priority) for r in records} == {("backup", "warning")}


def test_send_fails_when_the_logvm_never_acknowledges(
    tmp_path: Path, collector: FakeCollector
) -> None:
    collector.set("noack")
    config = write_config(
        tmp_path / "e.yaml", collector.command, tmp_path / "state", shutdown_drain="1s"
    )
    result = subprocess.run(
        [str(program("logvm-send")), "--config", str(config)],
        input=b"lost?\n", capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert b"logvm-send: not every line reached the LogVM" in result.stderr


def test_a_hung_call_is_abandoned_and_nothing_is_lost(
    tmp_path: Path, collector: FakeCollector
) -> None:
    collector.set("hang")
    config = write_config(
        tmp_path / "e.yaml", collector.command, tmp_path / "state", ack_timeout="300ms"
    )
    send = subprocess.Popen(
        [str(program("logvm-send")), "--config", str(config), "-t", "hung"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert send.stdin is not None
    send.stdin.write(b"".join(b"line %d\n" % i for i in range(50)))
    send.stdin.close()
    wait_for(lambda: collector.connections() >= 2, what="a second call after the hung one")
    collector.clear("hang")  # the LogVM is back
    assert send.wait(30) == 0
    assert send.stderr is not None
    assert b"abandoning the call" in send.stderr.read()
    assert [r.message for r in collector.records()] == [b"line %d" % i for i in range(50)]
