"""``logvm show`` and ``logvm follow``: one timeline of some qubes (floor 3).

Options follow journalctl's (see man/logvm.1); reading, filtering and
merging are :mod:`qubes_logvm.store.timeline` (shared with the GUI), the
formats :mod:`.render`, the pager :mod:`.pager`. Trust side: reads segments
an intruder may have edited; all output goes through :class:`.common.Output`
(terminal-safe, colours added after).
"""

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from ..core.errors import StoreError
from ..core.records import format_timestamp
from ..core.sender_record import SEVERITIES
from ..core.timespec import HELP, parse_timespec
from ..store.timeline import Entry, Follower, Query, merged, newest, require_qubes, resolve_qubes
from .common import Env, UsageError
from .render import FORMATS, Renderer

POLL_SECONDS = 0.5
FOLLOW_LINES = 10
#: Options whose value may start with "-" (``--since -1h``): see :func:`join_dash_values`.
DASH_VALUE_OPTIONS = ("--since", "--until", "-S", "-U")


class ShowOptions(NamedTuple):
    """What ``show`` was asked for."""

    qubes: tuple[str, ...]
    every: bool
    query: Query
    fmt: str = "short"
    last: int | None = None  # only the last N entries (before following)
    reverse: bool = False
    follow: bool = False
    utc: bool = False
    no_pager: bool = False


def add_show_args(parser: argparse.ArgumentParser, *, follow: bool) -> None:
    """The options of ``show`` and ``follow``."""
    add = parser.add_argument
    add("qubes", nargs="*", metavar="QUBE", help="qube names or globs (none: all)")
    add("--all", action="store_true", help="every qube in the store")
    add("-S", "--since", metavar="TIME", help=f"receive time: {HELP}")
    add("-U", "--until", metavar="TIME", help="receive time, inclusive")
    add("--utc", action="store_true", help="read and show times in UTC (default: local)")
    add("-p", "--priority", metavar="PRIO", help="err, warning..err, 0..3 (sender's claim)")
    add("-u", "--unit", action="append", default=[], metavar="UNIT", help="sender's unit (glob)")
    add("-t", "--identifier", action="append", default=[], metavar="ID", help="syslog ident")
    add(
        "--console",
        action="store_true",
        help="also what dom0 delivered for the qubes (console, dom0's per-qube logs)",
    )
    add("--session", metavar="TOKEN", help="one session (a segment-start note's session=)")
    add("-g", "--grep", metavar="RE", help="regular expression on the message (smart case)")
    add("-i", "--ignore-case", action="store_true", help="--grep ignores case")
    add("-n", "--lines", metavar="N", help="only the last N entries ('all': no limit)")
    add("-r", "--reverse", action="store_true", help="newest first")
    add("-o", "--output", choices=FORMATS, default="short", help="output format")
    add("--raw", action="store_true", help="the same as -o raw")
    add("--no-pager", action="store_true", help="do not pipe into a pager")
    if not follow:
        add("-f", "--follow", action="store_true", help="then wait for new entries")


def join_dash_values(argv: Sequence[str]) -> list[str]:
    """``--since -1h`` -> ``--since=-1h``: argparse takes ``-1h`` for an option."""
    out: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        if item in DASH_VALUE_OPTIONS and index + 1 < len(items):
            value = items[index + 1]
            if value.startswith("-") and not value.startswith("--"):
                out.append(f"{item}={value}")
                index += 2
                continue
        out.append(item)
        index += 1
    return out


def parse_priorities(text: str) -> frozenset[int]:
    """``err`` -> 0..3 (that and more severe); ``warning..err`` and ``0..4`` ranges."""
    low, dots, high = text.partition("..")
    first = _severity(low)
    if not dots:
        return frozenset(range(first + 1))
    second = _severity(high)
    return frozenset(range(min(first, second), max(first, second) + 1))


def _severity(word: str) -> int:
    word = word.strip().lower()
    if word.isdigit() and int(word) < len(SEVERITIES):
        return int(word)
    if word in SEVERITIES:
        return SEVERITIES.index(word)
    raise UsageError(f"--priority: {word!r} is not one of {', '.join(SEVERITIES)} or 0..7")


def compile_pattern(text: str | None, *, ignore_case: bool) -> "re.Pattern[str] | None":
    """``--grep``: case-insensitive when asked or when the pattern has no capital."""
    if text is None:
        return None
    flags = re.IGNORECASE if ignore_case or text == text.lower() else 0
    try:
        return re.compile(text, flags)
    except re.error as err:
        raise UsageError(f"--grep: not a regular expression: {err}") from err


def _stamp(text: str | None, now: float, utc: bool) -> bytes | None:
    return None if text is None else format_timestamp(parse_timespec(text, now=now, utc=utc))


def _count(text: str | None, *, follow: bool) -> int | None:
    if text is None:
        return FOLLOW_LINES if follow else None
    if text == "all":
        return None
    if not text.isdigit():
        raise UsageError(f"--lines: expected a number >= 0 or 'all', got {text!r}")
    return int(text)


def options_from_args(args: argparse.Namespace, now: float) -> ShowOptions:
    """Validate the parsed command line into :class:`ShowOptions`."""
    follow = args.command == "follow" or bool(getattr(args, "follow", False))
    since, until = _stamp(args.since, now, args.utc), _stamp(args.until, now, args.utc)
    if since is not None and until is not None and since > until:
        raise UsageError(f"--since {args.since!r} is after --until {args.until!r}")
    if follow and args.reverse:
        raise UsageError("--reverse cannot be combined with following")
    query = Query(
        since=since,
        until=until,
        severities=parse_priorities(args.priority) if args.priority else None,
        units=tuple(args.unit),
        identifiers=tuple(args.identifier),
        session=args.session,
        pattern=compile_pattern(args.grep, ignore_case=args.ignore_case),
        delivered=args.console,
        senders_only=args.output == "cat" and not args.raw,
    )
    return ShowOptions(
        tuple(args.qubes),
        args.all or not args.qubes,
        query,
        "raw" if args.raw else args.output,
        _count(args.lines, follow=follow),
        args.reverse,
        follow,
        args.utc,
        args.no_pager,
    )


def _print(env: Env, renderer: Renderer, entries: Iterable[Entry]) -> None:
    for entry in entries:
        parts = renderer.parts(entry)
        if parts is not None:
            env.out.parts(parts)


def run_show(env: Env, options: ShowOptions) -> int:
    """Print the matching entries of the chosen qubes as one timeline."""
    qubes = resolve_qubes(env.layout, options.qubes, every=options.every)
    require_qubes(env.layout, qubes)
    renderer = Renderer(options.fmt, utc=options.utc)
    if options.last is not None:
        found: Iterable[Entry] = newest(env.layout, qubes, options.last, options.query)
    else:
        found = merged(env.layout, qubes, options.query)
    if options.reverse:
        found = reversed(list(found))
    _print(env, renderer, found)
    return 0


def run_follow(env: Env, options: ShowOptions, sleep: Callable[[float], None]) -> int:
    """The last entries (10 by default), then new ones as they are stored, until Ctrl-C."""
    qubes = resolve_qubes(env.layout, options.qubes, every=options.every)
    if not qubes:
        raise StoreError(f"no qube matches in {env.layout.root}")
    follower = Follower(env.layout, qubes, options.query)
    follower.start()
    for qube in follower.missing():
        env.err.write(f"logvm follow: no qube {qube!r} in {env.layout.root} yet; waiting for it\n")
    env.err.flush()
    renderer = Renderer(options.fmt, utc=options.utc)
    present = [q for q in qubes if q not in follower.missing()]
    backlog = newest(env.layout, present, options.last or 0, options.query)
    _print(env, renderer, (e for e in backlog if follower.before_start(e)))
    env.out.flush()
    while True:
        sleep(POLL_SECONDS)
        _print(env, renderer, follower.poll())
        env.out.flush()


def stdout_is_terminal() -> bool:
    """True when the real standard output is a terminal."""
    return sys.stdout.isatty()
