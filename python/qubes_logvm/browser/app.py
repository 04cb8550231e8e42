"""The ``Gtk.Application`` and the ``logvm-browser`` entry point (floor 4)."""

import argparse
import sys
from pathlib import Path

import gi

gi.require_version("Gtk", "3.0")
from gi.repository import Gio, Gtk  # noqa: E402

from .. import __version__  # noqa: E402
from ..core.errors import LogvmError  # noqa: E402
from ..store.layout import StoreLayout, add_store_argument  # noqa: E402
from .window import BrowserWindow, load_css  # noqa: E402

APP_ID = "org.qubes_os.logvm.Browser"


class BrowserApp(Gtk.Application):
    """One window on one store; a second start raises the first window."""

    def __init__(self, layout: StoreLayout, configs: tuple[Path, ...]) -> None:
        super().__init__(application_id=APP_ID, flags=Gio.ApplicationFlags.NON_UNIQUE)
        self.layout = layout
        self.configs = configs
        self.browser: BrowserWindow | None = None

    def do_activate(self) -> None:
        """Build the window, then set it up (read the store)."""
        if self.browser is None:
            load_css()
            self.browser = BrowserWindow(self, self.layout, self.configs)
            self.browser.setup()
        self.browser.window.present()


def main(argv: list[str] | None = None) -> int:
    """Start the browser; one clear line and exit 2 when it cannot."""
    parser = argparse.ArgumentParser(
        prog="logvm-browser",
        description="Browse the LogVM's store (GTK).",
        epilog="Example: sudo logvm-browser   (or from the LogVM's app menu)",
    )
    add_store_argument(parser)
    parser.add_argument(
        "--config",
        type=Path,
        help="collector.yaml for quotas (default: /etc and /rw/config/qubes-logvm files)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if not args.store.is_dir():
        print(f"logvm-browser: no store at {args.store}", file=sys.stderr)
        return 2
    configs = (args.config,) if args.config else ()
    try:
        return int(BrowserApp(StoreLayout(args.store), configs).run([sys.argv[0]]))
    except LogvmError as err:
        print(f"logvm-browser: {err}", file=sys.stderr)
        return 2
