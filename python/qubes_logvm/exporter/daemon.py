"""``logvm-exporter``: the daemon each source qube runs (and ``--stdin`` for pipes).

Role: the entry point: parses the command line, loads the configuration and
hands over to :mod:`.runner`. It keeps the process lean first: the exporter
runs in every qube (RSS bar 25 MiB) and never speaks TLS, so asyncio's
optional ``ssl`` import (several MiB of OpenSSL) is refused before asyncio
is loaded.

Trust side: runs in the source qube with the qube's trust; its output is
treated by the LogVM as hostile.
"""

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import LogvmError
from ..core.sender_record import SEVERITIES
from ..daemon_support import EXIT_OK, fatal, setup_logging
from .config import load_exporter_config


def _parse_args(argv: Sequence[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Ship this qube's logs to the LogVM over qrexec.",
        epilog=f"Examples: {prog} -v   (as the unit runs it);  "
        f"make 2>&1 | {prog} --stdin -t build -p notice",
    )
    parser.add_argument(
        "--config",
        action="append",
        type=Path,
        help="config file (repeat to merge; default: "
        "/etc/qubes-logvm/exporter.yaml then /rw/config/qubes-logvm/exporter.yaml)",
    )
    parser.add_argument("--stdin", action="store_true", help="ship standard input, then exit")
    parser.add_argument(
        "-t", "--tag", default="stdin", help="identifier for --stdin lines (default stdin)"
    )
    parser.add_argument(
        "-p",
        "--priority",
        default="info",
        choices=SEVERITIES,
        help="priority of --stdin lines (default info)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _lean_imports() -> None:
    """Refuse asyncio's optional ssl import when we are the process's entry point."""
    if "asyncio" not in sys.modules and "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]


def main(
    argv: Sequence[str] | None = None,
    *,
    spawn: Any = None,
    environ: Mapping[str, str] = os.environ,
    prog: str = "logvm-exporter",
) -> int:
    """Entry point of ``logvm-exporter``; ``spawn`` replaces the subprocess launcher."""
    args = _parse_args(argv, prog)
    _lean_imports()
    import asyncio

    from . import runner

    setup_logging(
        logging.DEBUG if args.verbose else logging.INFO, "%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_exporter_config(*(args.config or ()))

        async def go() -> bool:
            sources = runner.build_sources(
                config,
                stdin_only=args.stdin,
                tag=args.tag,
                priority=SEVERITIES.index(args.priority),
                spawn=spawn or asyncio.create_subprocess_exec,
            )
            return await runner.run_exporter(
                config, sources, spawn=spawn or asyncio.create_subprocess_exec, environ=environ
            )

        delivered = asyncio.run(go())
    except LogvmError as err:
        return fatal(prog, str(err))
    if args.stdin and not delivered:
        return fatal(prog, "not every line reached the LogVM")
    return EXIT_OK


def send_main(argv: Sequence[str] | None = None, **edges: Any) -> int:
    """``logvm-send``: the same as ``logvm-exporter --stdin``."""
    return main(["--stdin", *(sys.argv[1:] if argv is None else argv)], prog="logvm-send", **edges)


if __name__ == "__main__":
    sys.exit(main())
