"""dom0's ``qrexec-client`` stand-in: a dom0-initiated service call (test-only).

Run as ``fake-qrexec-client -d TARGET [-w N] [-t] [-T] 'USER:QUBESRPC SERVICE[+ARG] dom0'``
with ``QREXEC_FAKE_WORLD`` set and ``QREXEC_FAKE_SOURCE=dom0``. Modelled on
QubesOS/qubes-core-qrexec ``daemon/qrexec-client.c`` (``main``):

- options ``getopt("d:l:ec:tTw:W")``; an unknown option, no ``-d`` or no
  command line is ``usage()``: exit 1; the command line is the one operand;
- ``-d dom0`` needs ``-c`` (a reply to a VM's call), which dom0 as a
  *caller* never uses: refused, exit 1;
- the client connects to ``/var/run/qubes/qrexec.TARGET``, the socket of
  the target's qrexec-daemon: a halted (or unknown) target has none, so
  ``connect`` fails (``perror``) and the client exits 1. It never starts
  the target (``qvm-run`` does that first with ``admin.vm.Start``); dom0's
  calls are not subject to policy;
- the command line reaches the target's agent as is; for ``QUBESRPC`` the
  agent runs the service with the descriptor ``SERVICE[+ARG] SOURCE`` (as
  :mod:`support.qrexec_client` does for socket services) and the call ends
  with exit 0 when the socket closes.

Not done by the stand-in (usage error, exit 1 with a message): ``-l``, ``-e``,
``-c``, ``-W``, a command line that is not ``QUBESRPC`` (shell commands).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

from support.qrexec import SOURCE_ENV, WORLD_ENV, load_world
from support.qrexec_client import (
    CallFailed,
    find_service,
    load_rpc_config,
    log_call,
    run_socket_service,
)

PROG = "qrexec-client"
EXIT_USAGE = 1
_COMMAND = re.compile(r"([A-Za-z0-9_.-]+):QUBESRPC ([A-Za-z0-9_.+-]+) (dom0)")


def _option(letter: str, value: str) -> str | None:
    """The target for ``-d``; checks the other options (None)."""
    if letter == "d":
        return value
    if letter == "w" and not value.isdigit():
        raise CallFailed(EXIT_USAGE, "-w takes a number of seconds")
    if letter in "lc":
        raise CallFailed(EXIT_USAGE, f"-{letter} is not supported by the stand-in")
    return None


def parse_argv(argv: list[str]) -> tuple[str, str]:
    """(target, command line), as ``getopt("d:l:ec:tTw:W")`` would read them."""
    target = None
    rest = list(argv)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        opt = rest.pop(0)
        if opt == "--":
            break
        letter, value = opt[1:2], opt[2:]
        if letter in "dlcw":
            if not value:
                if not rest:
                    raise CallFailed(EXIT_USAGE, f"option -{letter} requires an argument")
                value = rest.pop(0)
            target = _option(letter, value) or target
        elif letter in "eW" or letter not in "tT" or value:
            raise CallFailed(EXIT_USAGE, f"option {opt} is not supported by the stand-in")
    if not rest or target is None:
        raise CallFailed(EXIT_USAGE, "usage: qrexec-client -d domain_name remote_cmdline")
    if len(rest) > 1:
        raise CallFailed(EXIT_USAGE, "one remote command line only")
    return target, rest[0]


def call(target_name: str, cmdline: str) -> int:
    """Reach the target's socket service as dom0; returns the exit code."""
    world_file, source = os.environ.get(WORLD_ENV), os.environ.get(SOURCE_ENV)
    if not world_file or source != "dom0":
        raise CallFailed(EXIT_USAGE, f"set {WORLD_ENV} and {SOURCE_ENV}=dom0 (dom0's client)")
    world = load_world(Path(world_file))
    if target_name in ("dom0", "@adminvm"):
        raise CallFailed(EXIT_USAGE, "ERROR: when target domain is 'dom0', -c must be specified")
    match = _COMMAND.fullmatch(cmdline)
    if match is None:
        raise CallFailed(EXIT_USAGE, f"not a QUBESRPC call from dom0: {cmdline!r}")
    service = match.group(2)
    target = world.qubes.get(target_name)
    record: dict[str, object] = {"source": "dom0", "via": PROG, "target": target_name}
    if target is None or not target.running:
        log_call(world, {**record, "service": service, "result": "error", "reason": "halted"})
        raise CallFailed(1, f"connect: No such file or directory (qrexec.{target_name})")
    log_call(world, {**record, "service": service, "result": "allow"})
    path = find_service(target.root, service)
    if not stat.S_ISSOCK(path.stat().st_mode):
        raise CallFailed(EXIT_USAGE, "only socket services are supported by the stand-in")
    config = load_rpc_config(target.root, service)
    skip = config.get("skip-service-descriptor") in ("true", "1")
    descriptor = None if skip else f"{service} dom0".encode("ascii") + b"\0"
    return run_socket_service(path, descriptor, config, sys.stdin.buffer)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fake-qrexec-client``; returns the exit code."""
    try:
        target, cmdline = parse_argv(sys.argv[1:] if argv is None else argv)
        return call(target, cmdline)
    except CallFailed as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.code
