"""``qrexec-client-vm`` stand-in: policy, then the target qube's service (test-only).

Run as ``fake-qrexec-client-vm [--buffer-size=N] TARGET SERVICE[+ARG]`` with
``QREXEC_FAKE_WORLD`` and ``QREXEC_FAKE_SOURCE`` set (see :mod:`support.qrexec`).
It does in one process what qrexec-client-vm, qrexec-agent, qrexec-daemon
and the policy daemon do together, following QubesOS/qubes-core-qrexec:

- agent/qrexec-client-vm.c: options, ``$`` → ``@`` in the target, usage exit
  2, ``Request refused`` and exit 126 when dom0 refuses;
- daemon/qrexec-daemon.c: service name checks, ``+`` appended to an
  argument-less service name, the dom0 command form
  ``SERVICE SOURCE TYPE TARGET`` (type ``name`` or ``keyword``);
- libqrexec/exec.c: service lookup (``SERVICE+ARG`` then ``SERVICE``, per
  directory), socket vs executable vs anything else, ``skip-service-descriptor``,
  exit 127 for a missing service and 125 for other failures;
- lib/qubes-rpc-multiplexer: the environment of an executable service.

- libqrexec/exec.c (find_file, the ``/dev/tcp`` branch): a service that is a
  symlink to ``/dev/tcp/HOST/PORT``, ``/dev/tcp/HOST`` (the argument is the
  port) or ``/dev/tcp`` (the argument is ``HOST+PORT``) connects to that TCP
  address: numeric hosts only (``AI_NUMERICHOST``), a decimal port without
  leading zeros, an argument with ``/dev/tcp/HOST/PORT`` refused; the
  descriptor is sent unless ``skip-service-descriptor``.

Differences, on purpose: no local program argument, no disposable targets,
no ``wait-for-session`` or ``force-user`` (accepted and ignored), stdout is
never filtered.

Trust side: everything about the request comes from the calling "qube".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from support.qrexec import (
    RPC_CONFIG_DIRS,
    SERVICE_DIRS,
    SOURCE_ENV,
    WORLD_ENV,
    Qube,
    World,
    WorldError,
    load_world,
)
from support.qrexec_eval import AccessDenied, Decision, evaluate, make_request
from support.qrexec_policy import PolicyError, PolicySyntaxError, load_policy

EXIT_PROBLEM = 125  # QREXEC_EXIT_PROBLEM
EXIT_REFUSED = 126  # QREXEC_EXIT_REQUEST_REFUSED
EXIT_NOT_FOUND = 127  # QREXEC_EXIT_SERVICE_NOT_FOUND
EXIT_USAGE = 2
#: Longest service name (with argument) accepted; qrexec bounds it too
#: (MAX_SERVICE_NAME_LEN); the exact figure here is the stand-in's.
MAX_SERVICE_LEN = 255
CHUNK = 65536
_SANITIZE = re.compile(r"[^A-Za-z0-9_.\-+]")
PROG = "fake-qrexec-client-vm"


class CallFailed(Exception):
    """The call cannot go on; ``code`` is what the client exits with."""

    def __init__(self, code: int, message: str, *, notify: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.notify = notify  # for refusals: would dom0 show a notification?


@dataclass
class Call:
    """One parsed command line."""

    target: str
    service: str  # as given: SERVICE or SERVICE+ARG


def parse_argv(argv: list[str]) -> Call:
    """getopt_long("+tTa:") with qrexec-client-vm's long options; stops at the first operand."""
    takes_value = {"--buffer-size", "--agent-socket", "-a"}
    flags = {
        "-t",
        "-T",
        "--filter-escape-chars-stdout",
        "--filter-escape-chars-stderr",
        "--no-filter-escape-chars-stdout",
        "--no-filter-escape-chars-stderr",
    }
    rest = list(argv)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        opt = rest.pop(0)
        if opt == "--":
            break
        name = opt.split("=", 1)[0] if opt.startswith("--") else opt[:2]
        if name in takes_value:
            if "=" not in opt and len(opt) == len(name):
                if not rest:
                    raise CallFailed(EXIT_USAGE, f"option {name} needs a value")
                rest.pop(0)
        elif opt not in flags and not (re.fullmatch(r"-[tT]+", opt)):
            raise CallFailed(EXIT_USAGE, f"unknown option {opt}")
    if len(rest) < 2:
        raise CallFailed(EXIT_USAGE, "usage: TARGET SERVICE[+ARG]")
    if len(rest) > 2:
        raise CallFailed(EXIT_PROBLEM, "a local program is not supported by the stand-in")
    return Call(rest[0].replace("$", "@")[:63], rest[1])


def check_service_name(untrusted: str) -> str:
    """qrexec-daemon validate_service_name: not empty, no leading ``+``, bad chars → ``_``."""
    if not untrusted:
        raise CallFailed(EXIT_REFUSED, "empty service name")
    if untrusted.startswith("+"):
        raise CallFailed(EXIT_REFUSED, "service name must not start with '+'")
    if len(untrusted) > MAX_SERVICE_LEN:
        raise CallFailed(EXIT_REFUSED, "service name too long")
    return _SANITIZE.sub("_", untrusted)


def decide(world: World, source: str, call: Call) -> tuple[Decision, str]:
    """Evaluate the policy; returns the decision and the service name."""
    service_full = check_service_name(call.service)
    service, plus, arg = service_full.partition("+")
    qubes = {name: q.info() for name, q in world.qubes.items()}
    try:
        rules = load_policy(world.policy_dirs)
        request = make_request(service, "+" + arg, source, call.target, qubes)
        decision = evaluate(rules, request, ask_answer=world.ask_answer)
    except AccessDenied as err:
        raise CallFailed(EXIT_REFUSED, str(err), notify=err.notify) from err
    except (PolicySyntaxError, PolicyError) as err:
        raise CallFailed(EXIT_REFUSED, f"policy unusable: {err}", notify=True) from err
    if decision.target.startswith("@dispvm:"):
        raise CallFailed(EXIT_PROBLEM, "disposable targets are not supported by the stand-in")
    return decision, service_full


def log_call(world: World, record: Mapping[str, object]) -> None:
    """Append one JSON line to the world's call log (one write: lines never interleave)."""
    line = (json.dumps(dict(record), sort_keys=True) + "\n").encode()
    fd = os.open(world.call_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def command_descriptor(world: World, decision: Decision, service: str, source: str) -> str:
    """The part after ``QUBESRPC`` that the target's agent receives.

    In a qube: ``SERVICE[+ARG] SOURCE``; in dom0 also ``TYPE TARGET`` with the
    requested target (``keyword default`` for ``@default``, ``keyword adminvm``
    for ``dom0``/``@adminvm``, or ``name NAME``).
    """
    trailer = "+" if world.descriptor_plus and "+" not in service else ""
    command = f"{service}{trailer} {source}"
    if world.qubes[decision.target].type == "AdminVM":
        requested = decision.requested_target.text
        kind = "keyword" if requested.startswith("@") else "name"
        command += f" {kind} {requested.lstrip('@')}"
    return command


def find_service(root: Path, service_full: str) -> Path:
    """libqrexec find_file: ``SERVICE+ARG`` in each directory, then ``SERVICE``.

    A missing file (or a symlink to nothing) lets the search go on; any other
    error stops it (exit 125); nothing found exits 127.
    """
    names = [service_full]
    if "+" in service_full:
        names.append(service_full.split("+", 1)[0])
    for name in names:
        for directory in SERVICE_DIRS:
            path = root / directory / name
            if path.is_symlink() and _is_tcp_link(os.readlink(path)):
                return path
            try:
                path.stat()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise CallFailed(EXIT_PROBLEM, f"error finding service {path}: {err}") from err
            return path
    raise CallFailed(EXIT_NOT_FOUND, f"service not found: {service_full}")


def _is_tcp_link(target: str) -> bool:
    return target == "/dev/tcp" or target.startswith("/dev/tcp/")


def tcp_address(link: str, argument: str) -> tuple[str, int]:
    """The address a ``/dev/tcp`` service connects to (libqrexec exec.c rules)."""
    parts = link[len("/dev/tcp") :].lstrip("/").split("/") if link != "/dev/tcp" else []
    if len(parts) > 2 or (parts and not parts[0]):
        raise CallFailed(EXIT_PROBLEM, f"bad /dev/tcp link {link}")
    if len(parts) == 2:
        if argument:
            raise CallFailed(EXIT_PROBLEM, f"Unexpected argument {argument} to {link}")
        host, port = parts
    elif not argument:
        raise CallFailed(EXIT_PROBLEM, f"No or empty argument provided, cannot connect to {link}")
    elif len(parts) == 1:
        host, port = parts[0], argument
    else:
        host, plus, port = argument.rpartition("+")
        if not plus or "_" in host:
            raise CallFailed(EXIT_PROBLEM, f"No port provided, cannot connect to {argument}")
        host = host.replace("+", ":")
    if not re.fullmatch(r"[1-9][0-9]{0,4}", port) or int(port) > 65535:
        raise CallFailed(EXIT_PROBLEM, f"bad port {port!r}")
    try:
        socket.getaddrinfo(host, int(port), flags=socket.AI_NUMERICHOST)
    except socket.gaierror as err:
        raise CallFailed(EXIT_PROBLEM, f"{host!r} is not a numeric address") from err
    return host, int(port)


def run_tcp_service(
    address: tuple[str, int], descriptor: bytes | None, config: Mapping[str, str], stdin: IO[bytes]
) -> int:
    """Like :func:`run_socket_service`, to a TCP address."""
    try:
        sock = socket.create_connection(address, timeout=10)
    except OSError as err:
        raise CallFailed(EXIT_PROBLEM, f"connect to {address}: {err}") from err
    sock.settimeout(None)
    return _serve(sock, descriptor, config, stdin)


def load_rpc_config(root: Path, service_full: str) -> dict[str, str]:
    """The service's rpc-config (``key = value`` TOML subset); bad syntax exits 125."""
    names = [service_full, service_full.split("+", 1)[0]]
    for name in names:
        for directory in RPC_CONFIG_DIRS:
            path = root / directory / name
            if path.exists():
                return _parse_rpc_config(path)
    return {}


def _parse_rpc_config(path: Path) -> dict[str, str]:
    config: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([a-z-]+)\s*=\s*(true|false|[01]|'[^']*'|\"[^\"]*\")", line)
        if match is None:
            raise CallFailed(EXIT_PROBLEM, f"{path}:{lineno}: invalid service config")
        config[match.group(1)] = match.group(2).strip("'\"")
    return config


def become(peer: Mapping[str, Any] | None) -> None:
    """Connect as root (None) or drop to the default user, as the fork server runs."""
    if peer is None:
        return
    os.setgroups([int(g) for g in peer["groups"]])
    os.setgid(int(peer["gid"]))
    os.setuid(int(peer["uid"]))


def run_socket_service(
    path: Path, descriptor: bytes | None, config: Mapping[str, str], stdin: IO[bytes]
) -> int:
    """Connect, send the descriptor, pump both ways with half-close; 0 when done.

    Client EOF becomes ``shutdown(SHUT_WR)``; replies (acks) keep flowing until
    the service closes. The call ends when both directions are finished, or
    at the service's EOF with ``exit-on-service-eof``, or at the client's EOF
    with ``exit-on-client-eof``.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _connect_unix(sock, path)
    except OSError as err:
        sock.close()
        raise CallFailed(EXIT_PROBLEM, f"connect to {path}: {err}") from err
    return _serve(sock, descriptor, config, stdin)


def _serve(
    sock: socket.socket, descriptor: bytes | None, config: Mapping[str, str], stdin: IO[bytes]
) -> int:
    if descriptor is not None:
        sock.sendall(descriptor)
    to_service = threading.Thread(target=_pump_stdin, args=(stdin, sock), daemon=True)
    to_service.start()
    _pump_socket(sock)
    # The service's EOF reaches the caller as the end of its stdout, while its
    # stdin may still be open (libqrexec process_io closes stdout_fd then).
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.close(sys.stdout.fileno())
    if config.get("exit-on-service-eof") not in ("true", "1"):
        to_service.join()
    sock.close()
    return 0


def _connect_unix(sock: socket.socket, path: Path) -> None:
    """Connect even when the path is too long for sockaddr_un.

    libqrexec qubes_connect does the same: it connects through a short
    symlink in a fresh temporary directory.
    """
    if len(os.fsencode(path)) < 108:
        sock.connect(str(path))
        return
    with tempfile.TemporaryDirectory(prefix="qrexec-") as tmp:
        link = Path(tmp) / "qrexec-socket"
        link.symlink_to(path)
        sock.connect(str(link))


def _pump_stdin(stdin: IO[bytes], sock: socket.socket) -> None:
    fd = stdin.fileno()
    try:
        while data := os.read(fd, CHUNK):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        # the service closed its end: nothing more can be delivered
        return


def _pump_socket(sock: socket.socket) -> None:
    out = sys.stdout.buffer
    while True:
        try:
            data = sock.recv(CHUNK)
        except OSError:
            return
        if not data:
            return
        try:
            out.write(data)
            out.flush()
        except OSError:
            # our reader went away; keep draining so the service is not stuck
            continue


def service_env(target: Qube, source: str, command: str) -> dict[str, str]:
    """What qubes-rpc-multiplexer exports, plus a minimal base environment."""
    parts = command.split(" ")
    full_name = parts[0]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    env.update(target.env)
    env.update(
        HOME=str(target.root),
        QREXEC_REMOTE_DOMAIN=source,
        QREXEC_SERVICE_FULL_NAME=full_name,
        QREXEC_REQUESTED_TARGET_TYPE=parts[2] if len(parts) == 4 else "",
        QREXEC_FAKE_QUBE=target.name,
        QREXEC_FAKE_ROOT=str(target.root),
    )
    if "+" in full_name:
        env["QREXEC_SERVICE_ARGUMENT"] = full_name.split("+", 1)[1]
    if len(parts) == 4:
        suffix = "" if parts[2] == "name" else "_KEYWORD"
        env["QREXEC_REQUESTED_TARGET" + suffix] = parts[3]
    return env


def run_executable_service(path: Path, target: Qube, source: str, command: str) -> int:
    """Run the service with stdin/stdout wired; its stderr goes to the qube's "journal"."""
    if not path.is_file() or not os.access(path, os.X_OK):
        raise CallFailed(
            EXIT_PROBLEM, f"unknown service type (not executable, not a socket): {path}"
        )
    env = service_env(target, source, command)
    argument = env.get("QREXEC_SERVICE_ARGUMENT", "")
    log_dir = target.root / "var/log/qrexec"
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{command.split(' ')[0]}.log").open("ab") as journal:
        try:
            proc = subprocess.run(
                [str(path), *([argument] if argument else [])],
                env=env,
                cwd=target.root,
                stderr=journal,
                check=False,
            )
        except OSError as err:
            raise CallFailed(EXIT_PROBLEM, f"exec {path}: {err}") from err
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


def mark_running(world_path: Path, name: str) -> None:
    """Autostart: record in the world file that ``name`` now runs (under a lock)."""
    import fcntl

    with (world_path.parent / "world.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(world_path.read_text(encoding="utf-8"))
        data["qubes"][name]["running"] = True
        tmp = world_path.with_suffix(".autostart.tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(world_path)


def connect(world_path: Path, world: World, source: str, call: Call) -> int:
    """Evaluate, log, then reach the target's service; returns the exit code."""
    record: dict[str, object] = {"source": source, "target": call.target, "service": call.service}
    try:
        decision, service_full = decide(world, source, call)
    except CallFailed as err:
        result = "deny" if err.code == EXIT_REFUSED else "error"
        log_call(world, {**record, "result": result, "reason": str(err), "notify": err.notify})
        raise
    target = world.qubes[decision.target]
    log_call(
        world,
        {
            **record,
            "result": "allow",
            "resolved_target": decision.target,
            "rule": decision.rule.where,
            "autostarted": not target.running,
            "user": decision.user,
        },
    )
    if not target.running:
        mark_running(world_path, target.name)
    command = command_descriptor(world, decision, service_full, source)
    service = command.split(" ")[0]
    path = find_service(target.root, service)
    is_tcp = path.is_symlink() and _is_tcp_link(os.readlink(path))
    if is_tcp or stat.S_ISSOCK(path.stat().st_mode):
        config = load_rpc_config(target.root, service)
        skip = config.get("skip-service-descriptor") in ("true", "1")
        descriptor = None if skip else command.encode("ascii") + b"\0"
        if is_tcp:
            address = tcp_address(os.readlink(path), service.partition("+")[2])
            return run_tcp_service(address, descriptor, config, sys.stdin.buffer)
        become(target.socket_peer)
        return run_socket_service(path, descriptor, config, sys.stdin.buffer)
    return run_executable_service(path, target, source, command)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of ``fake-qrexec-client-vm``; returns the exit code."""
    env = os.environ if environ is None else environ
    try:
        call = parse_argv(sys.argv[1:] if argv is None else argv)
        world_path, world, source = _locate_caller(env)
        return connect(world_path, world, source, call)
    except WorldError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_PROBLEM
    except CallFailed as err:
        if err.code == EXIT_REFUSED:
            print("Request refused", file=sys.stderr)
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.code


def _locate_caller(env: Mapping[str, str]) -> tuple[Path, World, str]:
    """The world file and the calling qube, from the environment."""
    world_file, source = env.get(WORLD_ENV), env.get(SOURCE_ENV)
    if not world_file or not source:
        raise CallFailed(EXIT_PROBLEM, f"set {WORLD_ENV} and {SOURCE_ENV}")
    world = load_world(Path(world_file))
    caller = world.qubes.get(source)
    if caller is None or caller.type == "AdminVM" or not caller.running:
        raise CallFailed(EXIT_PROBLEM, f"{source!r} is not a running qube of the world")
    return Path(world_file), world, source
