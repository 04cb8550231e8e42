"""Who may connect to the ``logvm.Send`` socket: root and group ``qubes``.

qrexec connects to a socket service "as root or as the default user. Which
one is used is unspecified ... the socket should be owned by root:qubes with
0660 permissions" (QubesOS/qubes-core-qrexec ``doc/execution.rst``, "Socket
services"). Once a GUI session runs, the agent hands the call to the default
user's ``qrexec-fork-server`` (``agent/qrexec-agent.c`` ``try_fork_server``),
so both peers occur on one running LogVM. The default user is a member of
group ``qubes`` in every Qubes template; any other local user is refused.

The check uses the credentials the kernel recorded at ``connect()``
(``SO_PEERCRED`` for uid and primary gid, ``SO_PEERGROUPS`` for the
supplementary groups), never a lookup of the user's name, so a process that
dropped its groups is refused even if its user is listed in the group.
"""

import functools
import grp
import logging
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

_PEERCRED = struct.Struct("3i")
#: linux/include/uapi/asm-generic/socket.h; the socket module does not name it.
SO_PEERGROUPS = 59
_MAX_GROUPS = 65536


@dataclass(frozen=True)
class Peer:
    """The credentials of a connected peer, as the kernel recorded them."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]

    def describe(self) -> str:
        return f"uid {self.uid} gid {self.gid} (pid {self.pid})"


def peer_of(sock: socket.socket) -> Peer:
    """The peer of a connected Unix socket (SO_PEERCRED and SO_PEERGROUPS)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
            break
        except OSError as err:  # ERANGE: more groups than fit
            if size >= _MAX_GROUPS * 4:
                raise
            size *= 4
            log.debug("peer groups: %s, retrying with %d bytes", err, size)
    groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return Peer(pid, uid, gid, frozenset(groups))


@dataclass(frozen=True)
class PeerPolicy:
    """Admit these uids and the members of one group (gid None: no group)."""

    uids: tuple[int, ...]
    gid: int | None

    def admits(self, peer: Peer) -> bool:
        if peer.uid in self.uids:
            return True
        return self.gid is not None and (peer.gid == self.gid or self.gid in peer.groups)


@functools.lru_cache(maxsize=8)
def peer_policy(uids: tuple[int, ...], group: str | int | None) -> PeerPolicy:
    """The policy for ``allowed_uids`` and ``allowed_group`` (a name is looked up once)."""
    return PeerPolicy(uids, resolve_group(group))


def resolve_group(group: str | int | None) -> int | None:
    """A group's id; None (with a warning) when the name does not exist here."""
    if group is None or isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning(
            "allowed_group: no group %r on this system; only allowed_uids may connect", group
        )
        return None
