"""Who may connect: qrexec as root or as the default user (group qubes), nobody else.

Real collector, real fake-qrexec-client-vm processes that connect with the
credentials real qrexec would use (see support.qrexec ``socket_peer``).
"""

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from collector.helpers import Collector, sent_lines

from qubes_logvm.store.layout import StoreLayout
from support.qrexec import CLIENT_SCRIPT, OTHER_USER, QUBES_GID, SOCKET_PEERS, World

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def _call(tmp_path: Path, collector: Collector, peer: dict[str, Any] | None) -> int:
    world = World(tmp_path / f"world-{len(list(tmp_path.glob('world-*')))}")
    world.add_qube("sys-log", socket_peer=peer)
    world.add_qube("work")
    world.link_socket_service("sys-log", "logvm.Send", collector.socket)
    proc = subprocess.run(
        [str(CLIENT_SCRIPT), "@default", "logvm.Send"],
        input=b"hello\n",
        env=world.client_env("work"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    return proc.returncode


@pytest.mark.parametrize("peer", sorted(SOCKET_PEERS))
def test_qrexec_as_root_or_default_user_is_admitted(
    tmp_path: Path, start_collector: Callable[..., Collector], peer: str
) -> None:
    collector = start_collector()
    assert _call(tmp_path, collector, SOCKET_PEERS[peer]) == 0
    assert sent_lines(collector.store, "work") == [("L", b"hello", 0)]
    assert "refused" not in collector.stderr()


def test_another_local_user_is_refused(
    tmp_path: Path, start_collector: Callable[..., Collector]
) -> None:
    collector = start_collector()
    # The socket's mode refuses first (connect: EACCES, the call fails)...
    assert _call(tmp_path, collector, OTHER_USER) != 0
    # ...and the collector's own check holds if the mode is ever wrong.
    os.chmod(collector.socket, 0o666)  # noqa: S103 (a mis-set socket, on purpose)
    _call(tmp_path, collector, OTHER_USER)
    assert StoreLayout(collector.store).qubes() == []
    assert "refused a connection from uid 61002 gid 61002" in collector.stderr()


def test_primary_group_qubes_is_enough(
    tmp_path: Path, start_collector: Callable[..., Collector]
) -> None:
    collector = start_collector()
    assert _call(tmp_path, collector, {"uid": 61003, "gid": QUBES_GID, "groups": []}) == 0
    assert sent_lines(collector.store, "work") == [("L", b"hello", 0)]


def test_without_a_group_only_root(
    tmp_path: Path, start_collector: Callable[..., Collector]
) -> None:
    collector = start_collector({"allowed_group": None})
    assert os.stat(collector.socket).st_mode & 0o777 == 0o600
    os.chmod(collector.socket, 0o666)  # noqa: S103 (a mis-set socket, on purpose)
    _call(tmp_path, collector, SOCKET_PEERS["default-user"])
    assert StoreLayout(collector.store).qubes() == []
    assert "refused a connection from uid 61000" in collector.stderr()


def test_missing_group_name_is_reported_and_root_still_works(
    tmp_path: Path, start_collector: Callable[..., Collector]
) -> None:
    collector = start_collector({"allowed_group": "no-such-group-here"})
    assert _call(tmp_path, collector, None) == 0
    assert sent_lines(collector.store, "work") == [("L", b"hello", 0)]
    assert "allowed_group: no group 'no-such-group-here'" in collector.stderr()


def test_socket_is_root_group_qubes_0660(start_collector: Callable[..., Collector]) -> None:
    collector = start_collector()
    st = os.stat(collector.socket)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, QUBES_GID, 0o660)
