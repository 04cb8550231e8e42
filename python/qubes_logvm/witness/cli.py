"""``logvm-witness``: the ``logvm.Witness`` qrexec service and admin commands.

Runs in dom0 by default (or the qube the pillar chooses): the most trusted
place of the system, so the witness imports only the pure core and the
stdlib. Everything read from the LogVM is hostile input: parsed strictly
(:mod:`qubes_logvm.core.witness_format`), read with a byte limit, rate
limited, and answered with one fixed line. The LogVM's identity is
``QREXEC_REMOTE_DOMAIN`` and nothing else.

Commands: ``serve`` (what the qrexec service runs), ``list``,
``export LOGVM``, ``export-key LOGVM``, ``reset-key LOGVM``, and
``verify LOGVM [QUBE...]`` (outside verification through a fresh offline
DispVM, :mod:`.verify`). See docs/witness.md and docs/verifying.md.
"""

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from .. import __version__
from ..core.errors import LogvmError
from ..core.names import validate_qube_name
from ..core.ratelimit import TokenBucket
from ..core.records import format_timestamp
from ..core.seal import Seal, format_verification_key
from ..core.witness_format import (
    MAX_LINE_BYTES,
    MAX_POLICY_BYTES,
    format_export_header,
    format_held_line,
    format_policy_line,
)
from .bounds import kept_summary
from .state import (
    Clock,
    Limits,
    WitnessState,
    fsync_dir,
    read_checkpoints,
    read_created,
    read_epoch_seconds,
    read_key,
    write_file,
)
from .verify import format_verdict, last_verify_path, settings_from, verify_outside

logger = logging.getLogger(__name__)
_QUBE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,30}")

DEFAULT_ROOT = Path("/var/lib/qubes-logvm-witness")
#: Where the Salt formula writes each LogVM's deployed retention policy.
DEFAULT_POLICY_DIR = Path("/etc/qubes-logvm/witness-policy")


def _read_message(untrusted_in: BinaryIO) -> bytes | None:
    """One line (newline stripped), b"\\0too-long" for an overlong one, None at EOF."""
    untrusted_line = untrusted_in.readline(MAX_LINE_BYTES)
    if not untrusted_line:
        return None
    if untrusted_line.endswith(b"\n"):
        return untrusted_line[:-1]
    if len(untrusted_line) < MAX_LINE_BYTES:
        return b"\0eof"  # a last line without newline: never a message
    while untrusted_line and not untrusted_line.endswith(b"\n"):
        untrusted_line = untrusted_in.readline(MAX_LINE_BYTES)
    return b"\0too-long"


_READ_FAULTS = {b"\0too-long": "err too-long", b"\0eof": "err malformed"}


def serve_stream(state: WitnessState, untrusted_in: BinaryIO, out: BinaryIO) -> int:
    """Answer messages until EOF (0), too many refusals (1) or the call's limit (0)."""
    limits = state.limits
    bucket = TokenBucket(limits.rate, limits.burst, state.clock())
    refusals = messages = 0
    ends = time.monotonic() + limits.max_call_seconds
    while True:
        untrusted_line = _read_message(untrusted_in)
        if untrusted_line is None:
            break
        messages += 1
        if messages > limits.max_call_messages or time.monotonic() > ends:
            out.write(b"err call-limit\n")
            out.flush()
            state.event("call-limit", always=True, messages=messages - 1)
            break
        if not bucket.take(1, state.clock()):
            reply = "err rate-limit"
        elif untrusted_line in _READ_FAULTS:
            reply = _READ_FAULTS[untrusted_line]
        else:
            reply = state.handle(untrusted_line)
        out.write(reply.encode("ascii") + b"\n")
        out.flush()
        if reply.startswith("err"):
            refusals += 1
            state.counts["refused"] += 1
        if reply == "err reset" or refusals > limits.max_refusals:
            break
    if state.counts["refused"]:
        state.event("connection-end", always=True, **state.counts)
    return 1 if refusals > limits.max_refusals else 0


def cmd_serve(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    clock: Clock,
    untrusted_in: BinaryIO,
    out: BinaryIO,
) -> int:
    """The qrexec service: the caller is QREXEC_REMOTE_DOMAIN, nothing else."""
    untrusted_name = environ.get("QREXEC_REMOTE_DOMAIN")
    if not untrusted_name:
        raise LogvmError("QREXEC_REMOTE_DOMAIN is not set: serve runs as a qrexec service")
    logvm = validate_qube_name(untrusted_name)
    limits = Limits(
        rate=args.rate,
        burst=args.burst,
        max_log_bytes=args.max_log_bytes,
        max_qubes=args.max_qubes,
        max_retired=args.max_retired,
        hash_rate=args.hash_rate,
        hash_burst=args.hash_burst,
        min_epoch_seconds=args.min_epoch_seconds,
        max_call_seconds=args.max_call_seconds,
        max_call_messages=args.max_call_messages,
    )
    limits.check()
    args.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = WitnessState(args.dir / logvm, limits, clock)
    try:
        if not state.lock():
            out.write(b"err locked\n")
            out.flush()
            return 1
        return serve_stream(state, untrusted_in, out)
    finally:
        state.close()


def _logvm_dir(args: argparse.Namespace) -> Path:
    path: Path = args.dir / validate_qube_name(args.logvm)
    if not path.is_dir():
        raise LogvmError(f"the witness holds nothing for {args.logvm}")
    return path


def cmd_list(args: argparse.Namespace, out: BinaryIO) -> int:
    """What the witness holds, per LogVM and qube."""
    if not args.dir.is_dir():
        out.write(b"(nothing held)\n")
        return 0
    for name in sorted(os.listdir(args.dir)):
        path = args.dir / name
        if not path.is_dir() or ".reset-" in name or not _QUBE_NAME.fullmatch(name):
            continue  # archives left by reset-key, or not a LogVM's directory
        key = read_key(path)
        status = f"store {key[0]}" if key else "no key registered"
        out.write(f"{name}: {status}\n".encode())
        refused = path / "refused-key"
        if refused.exists():
            with open(refused, "rb") as f:
                when = f.read(27).decode("ascii", "replace")
            out.write(
                f"  WARNING: a different key was offered and refused (last {when}); "
                "see docs/witness.md\n".encode()
            )
        out.write(f"  last verification: {_last_verify(path)}\n".encode())
        out.write(f"  bounds: {kept_summary(path)}\n".encode())
        deployed = (args.policy_dir / f"{name}.json").exists()
        out.write(f"  deployed policy: {'yes' if deployed else 'none'}\n".encode())
        latest: dict[str, tuple[bytes, Seal]] = {}
        for stamp, seal in read_checkpoints(path):
            if isinstance(seal, Seal):
                latest[seal.qube] = (stamp, seal)
        out.write(
            b"  %-31s %9s %12s %10s  %s\n"
            % (b"QUBE", b"SEGMENT", b"RECORDS", b"EPOCH", b"LAST CHECKPOINT")
        )
        for qube in sorted(latest):
            stamp, seal = latest[qube]
            out.write(
                b"  %-31s %9d %12d %10d  %s\n"
                % (qube.encode(), seal.seq, seal.lines, seal.epoch, stamp)
            )
    return 0


def cmd_export_key(args: argparse.Namespace, out: BinaryIO) -> int:
    """Print the registered verification key (for ``logvm verify --key``)."""
    key = read_key(_logvm_dir(args))
    if key is None:
        raise LogvmError(f"{args.logvm} has not registered a key")
    out.write(format_verification_key(*key).encode("ascii") + b"\n")
    return 0


def export_records(path: Path, policy_dir: Path | None = None) -> bytes:
    """The witness's records of one LogVM as ``logvm verify --witness`` reads them.

    With the retention policy Salt deployed for it (``policy_dir/<logvm>.json``),
    passed on as bytes: dom0 never parses it, the verifier does.
    """
    key = read_key(path)
    if key is None:
        raise LogvmError(f"{path.name} has not registered a key")
    data = [format_export_header(path.name, key[0], read_epoch_seconds(path), read_created(path))]
    policy = _deployed_policy(policy_dir, path.name) if policy_dir is not None else None
    if policy is not None:
        data.append(format_policy_line(policy))
    seen: set[bytes] = set()
    for stamp, held in read_checkpoints(path):
        line = format_held_line(stamp, held)
        if line not in seen:
            seen.add(line)
            data.append(line)
    return b"".join(data)


def _deployed_policy(policy_dir: Path, logvm: str) -> bytes | None:
    """The policy file Salt wrote for ``logvm`` (None: none deployed)."""
    try:
        with open(policy_dir / f"{validate_qube_name(logvm)}.json", "rb") as f:
            policy = f.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(policy) > MAX_POLICY_BYTES:
        raise LogvmError(f"{policy_dir}/{logvm}.json: larger than {MAX_POLICY_BYTES} bytes")
    return policy


def cmd_export(args: argparse.Namespace, out: BinaryIO) -> int:
    """Write the checkpoints held (for ``logvm verify --witness``)."""
    data = export_records(_logvm_dir(args), args.policy_dir)
    if args.output:
        write_file(Path(args.output), data, exclusive=False)
    else:
        out.write(data)
    return 0


def _last_verify(path: Path) -> str:
    try:
        with open(last_verify_path(path), "rb") as f:
            return f.read(256).decode("ascii", "replace").strip() or "never"
    except FileNotFoundError:
        return "never"


def _verify_one(args: argparse.Namespace, logvm: str, clock: Clock, out: BinaryIO) -> int:
    """Verify one LogVM from outside; print, keep and (with --notify) report the verdict."""
    path = args.dir / validate_qube_name(logvm)
    qubes = [validate_qube_name(q) for q in args.qubes]
    key = read_key(path) if path.is_dir() else None
    if key is None:
        raise LogvmError(f"{logvm} has not registered a key with this witness")
    settings = settings_from(args.dispvm_template, args.timeout, args.max_bytes)
    records = export_records(path, args.policy_dir)
    verdict, _ = verify_outside(logvm, qubes, format_verification_key(*key), records, settings)
    for line in format_verdict(logvm, verdict):
        out.write(line.encode("ascii") + b"\n")
    out.flush()
    stamp = format_timestamp(clock()).decode("ascii")
    scope = ",".join(qubes) or "all"
    record = f"{stamp} {verdict.status} {verdict.counts()} qubes-asked={scope}\n"
    write_file(last_verify_path(path), record.encode("ascii"), exclusive=False)
    if args.notify and verdict.status != "ok":
        _notify(logvm, verdict.status, verdict.findings[:1])
    return verdict.exit_code


def _notify(logvm: str, status: str, first: list[str]) -> None:
    """A desktop notification to the dom0 user (libnotify's notify-send)."""
    title = f"Log verification of {logvm} " + ("FAILED" if status == "failed" else "could not run")
    body = (first[0] if first else "") + f"\nlogvm-witness verify {logvm} shows the details."
    tool = shutil.which("notify-send")
    if tool is None:
        logger.error("notify-send not found: %s", title)
        return
    subprocess.run(
        [
            tool,
            "--urgency=critical",
            "--app-name=logvm-witness",
            "--icon=dialog-warning",
            title,
            body,
        ],
        check=False,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def cmd_verify(args: argparse.Namespace, clock: Clock, out: BinaryIO) -> int:
    """``verify LOGVM [QUBE...]`` or ``verify --all``: the worst exit code of all."""
    if args.all:
        if args.logvm or args.qubes:
            raise LogvmError("--all takes no LogVM or qube names")
        names = [n for n in sorted(os.listdir(args.dir)) if _QUBE_NAME.fullmatch(n)]
        logvms = [n for n in names if read_key(args.dir / n) is not None]
    elif args.logvm:
        logvms = [args.logvm]
    else:
        raise LogvmError("name a LogVM (or --all)")
    worst = 0
    for logvm in logvms:
        try:
            worst = max(worst, _verify_one(args, logvm, clock, out))
        except (LogvmError, OSError) as err:
            print(f"logvm-witness: {logvm}: {err}", file=sys.stderr)
            if args.notify:
                _notify(logvm, "error", [str(err)])
            worst = 2
    return worst


def cmd_reset_key(args: argparse.Namespace, clock: Clock, out: BinaryIO) -> int:
    """Move a LogVM's state aside so that it may register a new key."""
    path = _logvm_dir(args)
    stamp = format_timestamp(clock()).decode("ascii").replace(":", "")
    archive = path.with_name(f"{path.name}.reset-{stamp}")
    os.rename(path, archive)
    fsync_dir(path.parent)
    out.write(
        f"{args.logvm}: state moved to {archive}; the next key it sends is trusted\n".encode()
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logvm-witness",
        description="The logvm.Witness qrexec service (dom0) and its admin commands.",
        epilog="Examples: logvm-witness list;  logvm-witness verify sys-log;  "
        "logvm-witness export sys-log -o /tmp/sys-log.witness",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_ROOT,
        help=f"witness state root (default {DEFAULT_ROOT})",
    )
    parser.add_argument(
        "--policy-dir",
        type=Path,
        default=DEFAULT_POLICY_DIR,
        help=f"the retention policies Salt deployed, LOGVM.json (default {DEFAULT_POLICY_DIR})",
    )
    parser.add_argument("--version", action="version", version=f"logvm-witness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="the logvm.Witness service (run by qrexec)")
    defaults = Limits()
    serve.add_argument("--rate", type=float, default=defaults.rate)
    serve.add_argument("--burst", type=float, default=defaults.burst)
    serve.add_argument("--max-log-bytes", type=int, default=defaults.max_log_bytes)
    serve.add_argument("--max-qubes", type=int, default=defaults.max_qubes)
    serve.add_argument("--max-retired", type=int, default=defaults.max_retired)
    serve.add_argument("--hash-rate", type=float, default=defaults.hash_rate)
    serve.add_argument("--hash-burst", type=float, default=defaults.hash_burst)
    serve.add_argument(
        "--min-epoch-seconds",
        type=float,
        default=defaults.min_epoch_seconds,
        help="shortest epoch any store uses: caps the epochs a LogVM may claim "
        f"(default {defaults.min_epoch_seconds:g})",
    )
    serve.add_argument("--max-call-seconds", type=float, default=defaults.max_call_seconds)
    serve.add_argument("--max-call-messages", type=int, default=defaults.max_call_messages)
    sub.add_parser("list", help="what is held per LogVM and qube")
    for name, text in (
        ("export-key", "print the verification key"),
        ("export", "write the checkpoints for logvm verify --witness"),
        ("reset-key", "forget a LogVM's key (after a deliberate re-key)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("logvm")
        if name == "export":
            cmd.add_argument("-o", "--output", help="file to write (default stdout)")
    verify = sub.add_parser("verify", help="verify a LogVM's store in a fresh offline DispVM")
    verify.add_argument("logvm", nargs="?")
    verify.add_argument("qubes", nargs="*", metavar="QUBE")
    verify.add_argument("--all", action="store_true", help="every LogVM with a registered key")
    verify.add_argument(
        "--dispvm-template", help="offline disposable template for the verifier (no netvm)"
    )
    verify.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    verify.add_argument(
        "--max-bytes",
        type=int,
        default=64 << 30,
        help="largest snapshot accepted (default 64 GiB)",
    )
    verify.add_argument(
        "--notify", action="store_true", help="desktop notification when it fails or cannot run"
    )
    for command in sub.choices.values():  # also after the subcommand (as `logvm`)
        command.add_argument("--dir", type=Path, default=argparse.SUPPRESS,
                             help=f"witness state root (default {DEFAULT_ROOT})")  # fmt: skip
        command.add_argument("--policy-dir", type=Path, default=argparse.SUPPRESS,
                             help="deployed retention policies, LOGVM.json (Salt)")  # fmt: skip
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    clock: Clock = time.time,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Entry point of ``logvm-witness``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="logvm-witness: %(levelname)s: %(message)s"
    )
    out = stdout if stdout is not None else sys.stdout.buffer
    failed = 2 if args.command == "verify" else 1  # verify: "could not verify"
    try:
        if args.command == "serve":
            untrusted_in = stdin if stdin is not None else sys.stdin.buffer
            env = environ if environ is not None else os.environ
            return cmd_serve(args, env, clock, untrusted_in, out)
        simple = {"list": cmd_list, "export-key": cmd_export_key, "export": cmd_export}
        if args.command in simple:
            return simple[args.command](args, out)
        timed = {"verify": cmd_verify, "reset-key": cmd_reset_key}
        return timed[args.command](args, clock, out)
    except (LogvmError, OSError) as err:
        print(f"logvm-witness: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("logvm-witness: interrupted", file=sys.stderr)
    return failed
