"""``logvm``: list, show, follow, verify, stats, open, setup-keys (floor 3).

The reading side of the LogVM. Trust side: runs in the LogVM as its admin;
the store it reads may have been edited by an intruder, so everything
printed is made terminal-safe (:mod:`.common`) and verification trusts only
the key given on the command line. One small function per subcommand; the
edges (output streams, stdin, the viewer command, sleeping, the clock) are
parameters of :func:`main` so tests swap them without patching.

Exit status: 0 success (``verify``: intact), 1 ``verify`` found tampering,
2 usage, configuration or store errors (``verify``: also "this key does not belong
to this store").
"""

import argparse
import os
import pwd
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from .. import __version__
from ..core.errors import LogvmError
from ..core.escape import terminal_safe
from ..store.layout import DEFAULT_STORE, STORE_FORMAT, STORE_FORMATS, StoreLayout
from .common import Env, Output
from .pager import paged, pager_command, use_pager
from .show import (
    add_show_args,
    join_dash_values,
    options_from_args,
    run_follow,
    run_show,
    stdout_is_terminal,
)

EXIT_TAMPERED, EXIT_USAGE = 1, 2


EXAMPLES = """\
examples:
  sudo logvm list                         qubes in the store, sizes, times
  sudo logvm show work -n 50              the last 50 records of qube work
  sudo logvm --store /mnt/copy verify --key vk.txt
  sudo -u qubes-logvm logvm setup-keys > vk.txt   (without a witness)

Who can read: the store belongs to the collector's user (qubes-logvm) and
is readable by it and root only; run logvm with sudo (the LogVM's default
user has passwordless sudo in Qubes templates)."""


def _common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """--store and --config, before the subcommand (``top``) or after it."""
    # After the subcommand the default is SUPPRESS, so it never hides a value
    # given before it (`logvm --store DIR list` as `git -C`, `journalctl -D`).
    store = DEFAULT_STORE if top else argparse.SUPPRESS
    parser.add_argument("--store", type=Path, default=store,
                        help=f"store directory (default: {DEFAULT_STORE})")  # fmt: skip
    parser.add_argument("--config", type=Path, default=None if top else argparse.SUPPRESS,
                        help="collector.yaml (default: the system one)")  # fmt: skip


def _add_setup_keys(keys: argparse.ArgumentParser) -> None:
    keys.add_argument("--epoch-seconds", type=float, default=10.0,
                      help="how often the sealing key evolves (default: 10)")  # fmt: skip
    keys.add_argument("--format", type=int, choices=STORE_FORMATS, default=STORE_FORMAT,
                      dest="store_format", help=f"store format (default: {STORE_FORMAT}; "
                      "1 only for tools that read nothing newer)")  # fmt: skip


def _add_list(listing: argparse.ArgumentParser) -> None:
    listing.add_argument("qubes", nargs="*", metavar="QUBE", help="qubes or globs (default: all)")
    listing.add_argument("--json", action="store_true", help="one JSON object per qube")
    listing.add_argument("--utc", action="store_true", help="times in UTC (default: local)")


def _add_verify(verify: argparse.ArgumentParser) -> None:
    verify.add_argument("qubes", nargs="*", metavar="QUBE", help="qubes (default: all)")
    verify.add_argument("--key", required=True, help="file with logvm-vk1:... ('-': stdin)")
    verify.add_argument("--witness", help="checkpoints exported by the witness")
    verify.add_argument(
        "--forwarded",
        metavar="FILE",
        help="verify a central server's copy (logvm-forward's messages, "
        "RSYSLOG_SyslogProtocol23Format) instead of the store",
    )


def _add_stats(stats: argparse.ArgumentParser) -> None:
    stats.add_argument("qubes", nargs="*", metavar="QUBE", help="qubes (default: all)")


def _add_open(opener: argparse.ArgumentParser) -> None:
    opener.add_argument("qube")
    opener.add_argument("segment", nargs="?")


#: The subcommands: (help, what adds its arguments).
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "setup-keys": ("create the sealing state, show the key once", _add_setup_keys),
    "list": ("qubes, segments, sizes, record counts, times", _add_list),
    "show": ("records of qubes, one timeline", lambda p: add_show_args(p, follow=False)),
    "follow": ("show -f", lambda p: add_show_args(p, follow=True)),
    "verify": ("check seals and hash chains", _add_verify),
    "stats": ("usage, quota, compression, drops, evictions", _add_stats),
    "open": ("view a copy in a disposable qube", _add_open),
}
#: Options before the subcommand that take a value (``--store DIR``).
_TOP_VALUE_OPTIONS = ("--store", "--config")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``only``, the other subcommands are listed without
    their options (building all of them is most of argparse's start-up cost)."""
    parser = argparse.ArgumentParser(
        prog="logvm",
        description="Read and verify the LogVM's log store.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"logvm {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (summary, add_arguments) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=summary)
        if only is None or only == name:
            add_arguments(command)
            _common(command)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (the first word that is no option or
    option value before it), or None when there is none or it is unknown."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            index += 1
            break
        if not word.startswith("-") or word == "-":
            break
        # "--store DIR", and argparse's abbreviations of it ("--sto DIR").
        if (
            "=" not in word
            and len(word) > 2
            and any(o.startswith(word) for o in _TOP_VALUE_OPTIONS)
        ):
            index += 1
        index += 1
    if index < len(argv) and argv[index] in SUBCOMMANDS:
        return argv[index]
    return None


def _show(
    env: Env, args: argparse.Namespace, clock: Callable[[], float], sleep: Callable[[float], None]
) -> int:
    options = options_from_args(args, clock())
    if options.follow:
        return run_follow(env, options, sleep)
    if not use_pager(isatty=env.out.colour, no_pager=options.no_pager, follow=False):
        return run_show(env, options)
    command = pager_command(os.environ)
    if command is None:
        return run_show(env, options)
    with paged(command, os.environ) as stream:
        if stream is not None:
            env.out.stream = stream
        return run_show(env, options)


def _dispatch(
    env: Env,
    args: argparse.Namespace,
    open_command: Sequence[str] | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> int:
    # Each subcommand imports what only it needs (the verify engine, YAML,
    # the eviction planner): `logvm show -n 10` starts in a few milliseconds
    # more than the interpreter (issue 13's bench).
    command = args.command
    if command in ("show", "follow"):
        return _show(env, args, clock, sleep)
    # Only the other commands log (the store's writer, verify); `show` does not.
    import logging

    logging.basicConfig(level=logging.WARNING, stream=env.err, format="logvm: %(message)s")
    if command in ("setup-keys", "verify"):
        from .verify_cmd import run_setup_keys, run_verify

        if command == "setup-keys":
            return run_setup_keys(env, args.epoch_seconds, args.store_format)
        return run_verify(env, args.qubes, args.key, args.witness, args.forwarded)
    if command in ("list", "stats"):
        from .listing import run_list, run_stats

        if command == "list":
            return run_list(env, args.qubes, as_json=args.json, utc=args.utc)
        return run_stats(env, args.qubes)
    from .open_cmd import OPEN_COMMAND, run_open

    return run_open(env, args.qube, args.segment, open_command or OPEN_COMMAND)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: BinaryIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
    open_command: Sequence[str] | None = None,  # default: qvm-open-in-dvm (store/viewcopy.py)
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run one ``logvm`` command; return its exit status."""
    err = stderr if stderr is not None else sys.stderr
    try:
        words = join_dash_values(sys.argv[1:] if argv is None else argv)
        args = build_parser(command_of(words)).parse_args(words)
    except SystemExit as exit_:
        return int(exit_.code) if isinstance(exit_.code, int) else EXIT_USAGE
    out_stream = stdout if stdout is not None else sys.stdout.buffer
    env = Env(
        StoreLayout(args.store),
        args.config,
        Output(
            out_stream,
            colour=stdout is None and stdout_is_terminal(),
            terminal=stdout is None and stdout_is_terminal(),
        ),
        err,
        stdin if stdin is not None else sys.stdin,
    )
    try:
        status = _dispatch(env, args, open_command, clock, sleep)
        env.out.flush()
        return status
    except LogvmError as error:
        message = terminal_safe(str(error).encode("utf-8", "backslashreplace"))
        err.write(f"logvm {args.command}: {message.decode('utf-8')}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`logvm show work | head`): not an error.
        if stdout is None:
            os.dup2(os.open(os.devnull, os.O_WRONLY), out_stream.fileno())
        return 0
    except OSError as error:  # one line, never a traceback
        err.write(f"logvm {args.command}: {_os_error(error, args.store)}\n")
        return EXIT_USAGE


def _os_error(error: OSError, store: Path) -> str:
    """One line for a failed file operation; who may read the store, if denied."""
    path = error.filename or store
    if not isinstance(error, PermissionError):
        return f"{path}: {error.strerror or error}"
    try:
        owner = pwd.getpwuid(Path(store).stat().st_uid).pw_name
    except (OSError, KeyError):
        owner = "the collector's user"
    return (
        f"{path}: permission denied: the store is readable by {owner} and root only; "
        'run it with sudo (docs/install.md, "Who can read the logs")'
    )
