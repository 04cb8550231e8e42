"""``qvm-run`` stand-in: dom0-initiated service calls, to a qube or a fresh DispVM (test-only).

Run as ``fake-qvm-run`` (linked as ``qvm-run`` by :meth:`support.qrexec.World.bin_dir`)
with ``QREXEC_FAKE_WORLD`` set and ``QREXEC_FAKE_SOURCE=dom0``. Modelled on
QubesOS/qubes-core-admin-client ``qubesadmin/tools/qvm_run.py``:

- the same options (argparse: an option the real tool lacks is a usage
  error, exit 2); ``--service`` runs COMMAND as a qrexec service,
  ``--dispvm[=TEMPLATE]`` is exclusive with VMNAME (``target_parser``);
- dom0's calls are not subject to policy: ``QubesLocal.run_service``
  (``qubesadmin/app.py``) starts the target (``admin.vm.Start``) and runs
  ``qrexec-client -d VM DEFAULT:QUBESRPC SERVICE[+] dom0`` directly, so the
  service sees ``QREXEC_REMOTE_DOMAIN=dom0``; the exit code is the service's;
- ``--dispvm``: ``DispVM.from_appvm`` + ``admin.vm.CreateDisposable`` make
  a new ``dispN`` from a qube with ``template_for_dispvms`` (else the call
  fails, exit 255 as ``return -1``); the disposable's root is a fresh copy
  of its template's root; ``dispvm.cleanup()`` in ``main``'s ``finally``
  removes it when the call ends, also after SIGINT (KeyboardInterrupt), but
  **not** after SIGTERM or SIGKILL, which end the real tool before its
  ``finally`` runs: the disposable is then left behind, as in Qubes.

Parts of the real tool the stand-in does not do exit 2 with a message saying
so (shell commands, ``--all``, ``--localcmd``, ``--user``, arguments).
Every call is logged to the world's call log; every disposable's creation
and removal to ``BASE/dispvms.jsonl``; what a (non-disposable) qube's service
received on stdin is kept in ``BASE/received/QUBE.SERVICE.N`` so that tests
can see what went into which qube.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from support.qrexec import SOURCE_ENV, WORLD_ENV, Qube, World, load_world
from support.qrexec_client import (
    EXIT_PROBLEM,
    CallFailed,
    find_service,
    load_rpc_config,
    log_call,
    mark_running,
    run_socket_service,
    service_env,
)

PROG = "qvm-run"
EXIT_QUBES_ERROR = 255  # main() returns -1 on QubesException


def build_parser() -> argparse.ArgumentParser:
    """The real tool's options (qvm_run.py ``parser``), no more."""
    p = argparse.ArgumentParser(prog=PROG)
    p.add_argument("--verbose", "-v", action="count", default=0)
    p.add_argument("--quiet", "-q", action="count", default=0)
    p.add_argument("--user", "-u")
    p.add_argument("--autostart", "--auto", "-a", action="store_true", default=True)
    p.add_argument("--no-autostart", "--no-auto", "-n", action="store_false", dest="autostart")
    p.add_argument("--pass-io", "-p", action="store_true", dest="passio")
    p.add_argument("--localcmd")
    p.add_argument("--gui", action="store_true", default=None)
    p.add_argument("--no-gui", "--nogui", action="store_false", dest="gui")
    p.add_argument("--colour-output", "--color-output", dest="color_output")
    p.add_argument("--colour-stderr", "--color-stderr", dest="color_stderr")
    p.add_argument(
        "--no-colour-output", "--no-color-output", action="store_false", dest="color_output"
    )
    p.add_argument(
        "--no-colour-stderr", "--no-color-stderr", action="store_false", dest="color_stderr"
    )
    p.add_argument("--filter-escape-chars", action="store_true", dest="filter_esc")
    p.add_argument("--no-filter-escape-chars", action="store_false", dest="filter_esc")
    p.add_argument("--service", action="store_true")
    p.add_argument("--no-shell", action="store_true")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--dispvm", nargs="?", const=True)
    p.add_argument("VMNAME", nargs="?")
    target.add_argument("--all", action="store_true", dest="all_domains")
    p.add_argument("--exclude", action="append", default=[])
    p.add_argument("cmd")
    p.add_argument("cmd_args", nargs=argparse.REMAINDER)
    return p


def _unsupported(args: argparse.Namespace) -> str | None:
    if not args.service:
        return "shell commands are not supported by the stand-in (use --service)"
    if args.dispvm is not None and args.VMNAME is not None:
        return "a VMNAME with --dispvm (the real tool's 'ugly hack') is not supported"
    for name, value in (
        ("--all", args.all_domains),
        ("--localcmd", args.localcmd),
        ("--user", args.user),
        ("arguments after COMMAND", args.cmd_args),
        ("--exclude", args.exclude),
    ):
        if value:
            return f"{name} is not supported by the stand-in"
    return None


def _dispvm_log(world: World, record: dict[str, object]) -> None:
    with (world.base / "dispvms.jsonl").open("a", encoding="utf-8") as log:
        log.write(json.dumps(record, sort_keys=True) + "\n")


def create_dispvm(world: World, template_name: str) -> Qube:
    """admin.vm.CreateDisposable: a new dispN with a fresh copy of its template's root."""
    template = world.qubes.get(template_name)
    if template is None or not template.template_for_dispvms:
        raise CallFailed(EXIT_QUBES_ERROR, f"{template_name} is not a disposable template")
    while True:
        name = f"disp{secrets.randbelow(9999) + 1}"
        root = world.base / "roots" / name
        if name not in world.qubes and not root.exists():
            break
    shutil.copytree(template.root, root, symlinks=True)
    qube = Qube(
        name=name, root=root, type="DispVM", tags=list(template.tags), env=dict(template.env)
    )
    _dispvm_log(world, {"event": "created", "name": name, "template": template_name})
    return qube


def remove_dispvm(world: World, qube: Qube) -> None:
    """dispvm.cleanup(): kill; an auto-cleanup disposable is then removed with its root."""
    shutil.rmtree(qube.root, ignore_errors=True)
    _dispvm_log(world, {"event": "removed", "name": qube.name})


def _recorder(world: World, target: Qube, service: str) -> IO[bytes]:
    directory = world.base / "received"
    directory.mkdir(exist_ok=True)
    for n in range(1, 100000):
        path = directory / f"{target.name}.{service}.{n}"
        try:
            return path.open("xb")
        except FileExistsError:
            continue
    raise CallFailed(EXIT_PROBLEM, "too many recorded calls")


def _is_pipe(stream: IO[bytes]) -> bool:
    return stat.S_ISFIFO(os.fstat(stream.fileno()).st_mode)


def _tee(source: IO[bytes], sink: IO[bytes], record: IO[bytes] | None) -> None:
    """Caller's stdin to the service; kept when recording. Unrecorded pipe to pipe, the
    kernel moves the bytes (as qrexec's C loop does: no Python copy in the measured path)."""
    try:
        if record is None and _is_pipe(source) and _is_pipe(sink):
            with contextlib.suppress(OSError):
                fcntl.fcntl(sink.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            while os.splice(source.fileno(), sink.fileno(), 1 << 20):
                pass
            return
        while data := os.read(source.fileno(), 65536):
            if record is not None:
                record.write(data)
            sink.write(data)
            sink.flush()
    except OSError:
        pass
    finally:
        if record is not None:
            record.close()
        with contextlib.suppress(OSError):
            sink.close()


def run_service(world: World, target: Qube, service_full: str, passio: bool, record: bool) -> int:
    """qrexec-client -d TARGET DEFAULT:QUBESRPC SERVICE dom0, as the stand-in does it."""
    command = f"{service_full}{'' if '+' in service_full else '+'} dom0"
    name = command.split(" ")[0]
    path = find_service(target.root, name)
    stdin = sys.stdin.buffer if passio else open(os.devnull, "rb")  # noqa: SIM115
    if stat.S_ISSOCK(path.stat().st_mode):
        config = load_rpc_config(target.root, name)
        skip = config.get("skip-service-descriptor") in ("true", "1")
        return run_socket_service(path, None if skip else command.encode() + b"\0", config, stdin)
    if not os.access(path, os.X_OK):
        raise CallFailed(EXIT_PROBLEM, f"not executable: {path}")
    env = service_env(target, "dom0", command)
    argument = env.get("QREXEC_SERVICE_ARGUMENT", "")
    log_dir = target.root / "var/log/qrexec"
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as journal:
        proc = subprocess.Popen(
            [str(path), *([argument] if argument else [])],
            env=env,
            cwd=target.root,
            stdin=subprocess.PIPE,
            stdout=None if passio else subprocess.DEVNULL,
            stderr=journal,
        )
        assert proc.stdin is not None
        sink = _recorder(world, target, service_full.split("+")[0]) if record else None
        feeder = threading.Thread(target=_tee, args=(stdin, proc.stdin, sink), daemon=True)
        feeder.start()
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the stand-in; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    problem = _unsupported(args)
    if problem:
        parser.error(problem)
    world_file, source = os.environ.get(WORLD_ENV), os.environ.get(SOURCE_ENV)
    if not world_file:
        parser.error(f"set {WORLD_ENV}")
    world = load_world(Path(world_file))
    caller = world.qubes.get(source or "")
    if caller is None or caller.type != "AdminVM":
        print(f"{PROG}: only dom0 runs qvm-run with local admin access", file=sys.stderr)
        return EXIT_QUBES_ERROR
    dispvm = None
    try:
        if args.dispvm is not None:
            template = "default-dvm" if args.dispvm is True else args.dispvm
            dispvm = create_dispvm(world, template)
            target = dispvm
        else:
            if args.VMNAME not in world.qubes:
                parser.error(f"no such domain: {args.VMNAME!r}")
            target = world.qubes[args.VMNAME]
            if not target.running:
                if not args.autostart:
                    return 1
                mark_running(Path(world_file), target.name)
        log_call(
            world,
            {
                "source": "dom0",
                "via": "qvm-run",
                "target": target.name,
                "service": args.cmd,
                "dispvm_template": None if dispvm is None else args.dispvm,
                "result": "allow",
            },
        )
        return run_service(world, target, args.cmd, args.passio, record=dispvm is None)
    except CallFailed as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.code
    finally:
        if dispvm is not None:
            remove_dispvm(world, dispvm)
