"""daemon_support in-process: priority prefixes, readiness, socket activation."""

import logging
import os
import socket
from pathlib import Path

import pytest

from qubes_logvm.daemon_support import (
    SD_LISTEN_FDS_START,
    JournalFormatter,
    is_journal_stream,
    listen_fds,
    sd_notify,
    syslog_priority,
)

pytestmark = pytest.mark.inprocess


def test_priorities_follow_syslog() -> None:
    levels = [logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]
    assert [syslog_priority(level) for level in levels] == [2, 3, 4, 6, 7]


def test_every_line_of_a_record_is_prefixed() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "one\ntwo", None, None)
    assert JournalFormatter("%(message)s").format(record) == "<4>one\n<4>two"


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "err").open("w") as stream:
        info = os.fstat(stream.fileno())
        assert is_journal_stream(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": f"{info.st_dev}:1"})
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": "garbage"})
        assert not is_journal_stream(stream, {})


def test_sd_notify_sends_a_datagram(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        sd_notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert server.recv(64) == b"READY=1"
    sd_notify("READY=1", {})  # not asked: nothing happens


def test_listen_fds_only_for_this_process() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(env) == [SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + 1]
    assert env == {}  # not inherited by children
    assert listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == []
    assert listen_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) == []
